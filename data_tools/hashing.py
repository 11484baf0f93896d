"""Perceptual hashes and the candidate pairs they give (step 1 of `data_tools.dedup`).

Per image: a digest of its pixels (exact copies) and a 64-bit perceptual hash (imagehash) of the
image and of its transformed copies (mirror image, shifts, zooms); the hash and verification flags
the tools share (add_hash_flags); the all-pairs search for codes within --threshold bits
(multi-index hashing: near_pairs) and the candidate pairs it gives (duplicate_pairs, pair_match).
The candidates are verified on the pixels by data_tools.verify.
"""

import argparse
import functools
import hashlib

import imagehash
import numpy as np
from PIL import Image

from fer_jax.data import folders
from fer_jax.data.progress import Progress

from . import common

HASHES = {
  "phash": imagehash.phash,
  "dhash": imagehash.dhash,
  "ahash": imagehash.average_hash,
  "whash": imagehash.whash,
}
MAX_THRESHOLD = 31  # t + 1 bands of 64 bits must each keep 2 bits

# Defaults chosen on the labelled real-face benchmark (benchmarks/dedup_quality.py,
# docs/data_tools.md): precision and recall of grouping at 48x48.
DEFAULT_THRESHOLD = (
  6  # pHash distances are even (32 bits set per code): 7 = 6; 8 costs ~3x the search
)
DEFAULT_SHIFT = 2
DEFAULT_ZOOM = 0.08
DEFAULT_MAX_SHIFT = 3
# chosen on FER2013 pairs labelled by eye (different people in one frontal pose reach 0.965;
# docs/data_tools.md, "On FER2013, by eye")
DEFAULT_MIN_SIMILARITY = 0.97

# Candidate pairs gathered at once: bounds the temporary arrays to a few hundred MB.
PAIR_CHUNK = 4_000_000


# ---------------------------------------------------------------------------- hashing


def add_hash_flags(parser):
  parser.add_argument("--hash", choices=sorted(HASHES), default="phash", help="perceptual hash")
  parser.add_argument(
    "--threshold",
    type=int,
    default=DEFAULT_THRESHOLD,
    help=f"max differing bits (of 64) of a candidate pair, 0..{MAX_THRESHOLD}",
  )
  parser.add_argument(
    "--no_mirror",
    dest="mirror",
    action="store_false",
    help="do not match horizontally flipped copies (matching them: %(default)s)",
  )
  parser.add_argument(
    "--shift",
    type=int,
    default=DEFAULT_SHIFT,
    choices=(0, 1, 2, 3),
    help="also hash each image moved by this many px in 8 directions (0: off)",
  )
  parser.add_argument(
    "--zoom",
    type=float,
    default=DEFAULT_ZOOM,
    help="also hash each image zoomed in and out by this fraction, and verify "
    "at these scales (0: off)",
  )
  parser.add_argument(
    "--max_shift",
    type=int,
    default=DEFAULT_MAX_SHIFT,
    help="verification: largest translation (px) searched between two images",
  )
  parser.add_argument(
    "--min_similarity",
    type=float,
    default=DEFAULT_MIN_SIMILARITY,
    help="verification: the similarity (band-passed correlation at the best alignment, on "
    "the pixels that agree best) a near duplicate reaches",
  )
  parser.add_argument(
    "--image_size",
    type=int,
    default=48,
    help="side the images are decoded to before hashing (the dataset's size)",
  )


def default_settings():
  """The hash and verification flags at their defaults (the audit's definition of a duplicate)."""
  parser = argparse.ArgumentParser()
  add_hash_flags(parser)
  return parser.parse_args([])


def hash_flag_values(args) -> dict:
  """{flag: value} of the hash and verification flags (those `add_hash_flags` defines) in `args`."""
  return {k: getattr(args, k) for k in vars(default_settings())}


def check_hash_flags(args):
  if not 0 <= args.threshold <= MAX_THRESHOLD:
    raise common.ToolError(f"--threshold: must be in 0..{MAX_THRESHOLD}, got {args.threshold}")
  if args.image_size < 16:
    raise common.ToolError(f"--image_size: must be at least 16, got {args.image_size}")
  if not 0 <= args.zoom <= 0.3:
    raise common.ToolError(f"--zoom: must be in 0..0.3, got {args.zoom}")
  if not 0 <= args.max_shift <= args.image_size // 8:
    raise common.ToolError(
      f"--max_shift: must be in 0..{args.image_size // 8}, got {args.max_shift}"
    )
  if not 0 < args.min_similarity <= 1:
    raise common.ToolError(f"--min_similarity: must be in (0, 1], got {args.min_similarity}")


def _translate(pixels, dy, dx):
  """The image moved by (dy, dx) pixels, the uncovered border filled with its edge pixels."""
  h, w = pixels.shape[:2]
  padded = np.pad(
    pixels, ((abs(dy), abs(dy)), (abs(dx), abs(dx))) + ((0, 0),) * (pixels.ndim - 2), mode="edge"
  )
  return padded[abs(dy) - dy : abs(dy) - dy + h, abs(dx) - dx : abs(dx) - dx + w]


@functools.lru_cache(maxsize=16)
def zoom_matrix(size, scale):
  """[size, size] float32 M: M @ column is the column zoomed by `scale` about its centre
  (linear interpolation, edges repeated), so M @ image @ M.T zooms an image."""
  source = np.clip((np.arange(size) - (size - 1) / 2) / scale + (size - 1) / 2, 0, size - 1)
  lo = np.floor(source).astype(int)
  hi = np.minimum(lo + 1, size - 1)
  weight = (source - lo).astype(np.float32)
  m = np.zeros((size, size), np.float32)
  np.add.at(m, (np.arange(size), lo), 1 - weight)
  np.add.at(m, (np.arange(size), hi), weight)
  return m


def _zoom(pixels, scale):
  m = zoom_matrix(pixels.shape[0], scale)
  return np.clip(np.rint(m @ pixels.astype(np.float32) @ m.T), 0, 255).astype(np.uint8)


def variant_kinds(mirror, shift, zoom):
  """Names of the transformed copies hashed besides the image itself, in column order."""
  offsets = [
    (dy * shift, dx * shift) for dy in (-1, 0, 1) for dx in (-1, 0, 1) if (dy, dx) != (0, 0)
  ]
  return (
    (["mirrored"] if mirror else [])
    + [f"shifted {dy:+d},{dx:+d}" for dy, dx in offsets if shift]
    + [f"zoomed {s:.2f}" for s in zoom_scales(zoom) if s != 1]
  )


def zoom_scales(zoom):
  return (1 - zoom, 1.0, 1 + zoom) if zoom else (1.0,)


def _variant(pixels, kind):
  name, _, value = kind.partition(" ")
  if name == "mirrored":
    return pixels[:, ::-1]
  if name == "zoomed":
    return _zoom(pixels, float(value))
  dy, dx = (int(v) for v in value.split(","))
  return _translate(pixels, dy, dx)


def _pack(bits):
  """bool [N, 64] -> uint64 [N] (first bit most significant)."""
  return np.packbits(bits, axis=1).view(">u8")[:, 0].astype(np.uint64)


def _hash_chunk(images, method, kinds):
  fn = HASHES[method]
  digests = np.zeros(len(images), np.uint64)
  bits = np.zeros((len(kinds) + 1, len(images), 64), bool)
  for k, pixels in enumerate(images):
    digests[k] = int.from_bytes(hashlib.blake2b(pixels.tobytes(), digest_size=8).digest(), "big")
    for v, kind in enumerate([None] + kinds):
      bits[v, k] = fn(
        Image.fromarray(pixels if kind is None else np.ascontiguousarray(_variant(pixels, kind)))
      ).hash.ravel()
  codes = np.stack([_pack(b) for b in bits], axis=1)
  return digests, codes[:, 0], codes[:, 1:]


class Hashes:
  """Per image: `digest` of its pixels, perceptual hash `code`, and `variants` [N, V]: the hashes
  of its transformed copies named by `kinds` (mirror image, translations, zooms)."""

  def __init__(self, digest, code, variants, kinds):
    self.digest, self.code, self.variants, self.kinds = digest, code, variants, list(kinds)

  def __len__(self):
    return len(self.code)


def gray(images):
  """uint8 [N, H, W] or [N, H, W, C] -> uint8 [N, H, W] (colour averaged, as hashing sees it)."""
  images = np.asarray(images)
  if images.ndim == 4:
    images = images[..., 0] if images.shape[-1] == 1 else np.rint(images.mean(-1)).astype(np.uint8)
  return images


def hash_images(images, settings, workers=1, label="hashing"):
  """uint8 [N, H, W(, C)] -> Hashes, with the variants `settings` (the hash flags) ask for.

  imagehash works one image at a time, so chunks go to processes.
  """
  kinds = variant_kinds(settings.mirror, settings.shift, settings.zoom)
  images = gray(images)
  progress = Progress(label, len(images))
  # The loader's pool: processes, or threads once JAX is imported (see folders.executor).
  parts = dict(
    folders.map_chunks(
      functools.partial(_hash_chunk, method=settings.hash, kinds=kinds),
      images,
      256,
      workers,
      progress,
    )
  )
  progress.close()
  ordered = [parts[s] for s in sorted(parts)] or [
    (np.zeros(0, np.uint64), np.zeros(0, np.uint64), np.zeros((0, len(kinds)), np.uint64))
  ]
  return Hashes(*(np.concatenate([p[f] for p in ordered]) for f in range(3)), kinds)


def decode_and_hash(paths, args, label="hashing"):
  """Decodes and hashes files -> (gray uint8 [n, S, S] of the readable ones, their Hashes,
  ok mask [N], [(path, reason)])."""
  images, ok, errors = folders.decode_many(
    paths, args.image_size, 1, "bilinear", args.workers, label="decoding"
  )
  images = gray(images[ok])
  return images, hash_images(images, args, args.workers, label), ok, errors


# ---------------------------------------------------------------------------- candidate pairs


def hamming(a, b):
  return np.bitwise_count(np.bitwise_xor(a, b)).astype(np.int64)


def _probe_radius(threshold):
  """Bits a band may differ in and still be probed: 1 from threshold 3 up (fewer, wider bands)."""
  return 1 if threshold >= 3 else 0


def _bands(threshold):
  """(shift, mask, width) of the bands covering the 64 bits: ceil((t + 1) / (r + 1)) bands, so
  two codes within t bits differ in at most r bits in at least one band (pigeonhole)."""
  m = -(-(threshold + 1) // (_probe_radius(threshold) + 1))
  widths = [64 // m + (1 if b < 64 % m else 0) for b in range(m)]
  shifts = np.cumsum([0] + widths[:-1])
  return [(np.uint64(s), np.uint64((1 << w) - 1), w) for s, w in zip(shifts, widths)]


def _expand(lo, hi):
  """Yields (query, position) arrays covering every query q and position in [lo[q], hi[q]).

  In chunks of about PAIR_CHUNK pairs, so memory stays bounded however many candidates there are.
  """
  count = hi - lo
  cum = np.cumsum(count)
  start = 0
  while start < len(count):
    base = cum[start - 1] if start else 0
    stop = max(start + 1, int(np.searchsorted(cum, base + PAIR_CHUNK, "right")))
    c = count[start:stop]
    query = np.repeat(np.arange(start, stop), c)
    offset = np.arange(len(query)) - np.repeat(np.cumsum(c) - c, c)
    yield query, lo[query] + offset
    start = stop


def near_pairs(a, threshold, b=None):
  """(i, j, distance) for every pair with at most `threshold` differing bits between a[i] and b[j].

  Without `b`: pairs within `a`, i < j. Multi-index hashing: the 64 bits are cut into bands such
  that two codes within the threshold differ in at most r (0 or 1) bits of at least one band.
  Per band, b's band values are sorted and each code of `a` looks up its own band value and
  (r = 1) the values one bit away; the pairs found are checked by popcount and reported from the
  first band they qualify in. No Python loop over pairs; with r = 1 the bands are twice as wide,
  so far fewer random codes share a band value.
  """
  self_join = b is None
  b = a if self_join else b
  radius = _probe_radius(threshold)
  bands = _bands(threshold)
  found = []
  for k, (shift, mask, width) in enumerate(bands):
    key_b = (b >> shift) & mask
    order = np.argsort(key_b, kind="stable")
    sorted_b = key_b[order]
    flips = [np.uint64(0)] + (
      [np.uint64(1) << np.uint64(bit) for bit in range(width)] if radius else []
    )
    query = (((a >> shift) & mask)[None, :] ^ np.array(flips, np.uint64)[:, None]).ravel()
    lo = np.searchsorted(sorted_b, query, "left")
    hi = np.searchsorted(sorted_b, query, "right")
    for q, pos in _expand(lo, hi):
      i, j = q % len(a), order[pos]
      if self_join:
        keep = i < j  # each pair is found from both ends
        i, j = i[keep], j[keep]
      x = a[i] ^ b[j]
      keep = np.bitwise_count(x) <= threshold
      for s, m, _ in bands[:k]:
        keep &= (
          np.bitwise_count((x >> s) & m) > radius
        )  # qualified in an earlier band: reported there
      found.append((i[keep], j[keep], np.bitwise_count(x[keep]).astype(np.int64)))
  if not found:
    return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.int64)
  i, j, d = (np.concatenate(f) for f in zip(*found))
  order = np.lexsort((j, i))
  return i[order], j[order], d[order]


def duplicate_pairs(hashes, threshold, other=None):
  """Index arrays (i, j) of the duplicate pairs within `hashes` (i < j), or between hashes[i] and
  other[j].

  A pair is a duplicate when its digests are equal, its codes differ in at most `threshold`
  bits, or one image's code is that close to a variant (mirror, shift, zoom) of the other's.
  """
  self_join = other is None
  other = hashes if self_join else other
  pairs = [near_pairs(hashes.code, threshold, None if self_join else other.code)[:2]]
  v = len(hashes.kinds)
  if v:  # all variants in one search: one sort per band instead of one per variant
    i, j, _ = near_pairs(hashes.code, threshold, other.variants.ravel())
    pairs.append((i, j // v))
    if not self_join:  # within one set, the pair (j, i) above covers this direction
      i, j, _ = near_pairs(hashes.variants.ravel(), threshold, other.code)
      pairs.append((i // v, j))
  order = np.argsort(other.digest, kind="stable")
  lo = np.searchsorted(other.digest[order], hashes.digest, "left")
  hi = np.searchsorted(other.digest[order], hashes.digest, "right")
  pairs += [(i, order[pos]) for i, pos in _expand(lo, hi)]  # exact copies, even at threshold 0
  i = np.concatenate([p[0] for p in pairs]).astype(np.int64)
  j = np.concatenate([p[1] for p in pairs]).astype(np.int64)
  if self_join:
    i, j = np.minimum(i, j), np.maximum(i, j)
    keep = i != j  # an image always resembles itself, its own mirror and shifts
    i, j = i[keep], j[keep]
  key = np.unique(i * len(other) + j)
  return key // len(other), key % len(other)


def pair_match(hashes, i, j):
  """Hash distance and kind of pairs (i, j).

  Kinds: 'exact' | 'near' | 'mirrored' | 'shifted ..' | 'zoomed ..'.
  """
  direct = hamming(hashes.code[i], hashes.code[j])
  # either image may be the transformed copy of the other
  variant = np.minimum(
    hamming(hashes.code[i][:, None], hashes.variants[j]),
    hamming(hashes.variants[i], hashes.code[j][:, None]),
  )
  distances = np.concatenate([direct[:, None], variant], axis=1)
  best = np.argmin(distances, axis=1)  # ties -> 'near'
  kinds = np.array(["near"] + hashes.kinds)
  exact = hashes.digest[i] == hashes.digest[j]
  return (
    np.where(exact, 0, distances[np.arange(len(i)), best]),
    np.where(exact, "exact", kinds[best]).astype(object),
  )
