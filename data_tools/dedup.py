"""Finds exact and near-duplicate images, reports leakage between splits, and removes it.

  python -m data_tools.dedup SRC --out DST [--apply] [--review DST/pairs.csv]
      [--hash phash --threshold 6 --shift 2 --zoom 0.08 --min_similarity 0.92]
      [--leaks drop|keep] [--within keep-one|keep-all] [--conflicts review|drop|keep]

Every image is decoded as the loader decodes it (gray, --image_size, so "exact" means the model
sees identical pixels). Two steps decide whether two images are copies of one photograph:

1. Candidates (fast): a digest of the pixels (exact copies) and a 64-bit perceptual hash
   (imagehash: pHash by default). A pair is a candidate when the hashes differ in at most
   --threshold bits, or one image's hash is that close to the hash of a transformed copy of the
   other: its mirror image, the image moved by --shift px in each of 8 directions, zoomed in and
   out by --zoom. (pHash alone misses 2-3 px shifts and small crops; the transformed copies
   catch them.) The all-pairs search is multi-index hashing, no loop over pairs.
2. Verification (decides): the normalised cross-correlation of the two images' pixels (lightly
   blurred; the central two thirds of one against the other moved by up to --max_shift px,
   zoomed by 1 -/+ --zoom, mirrored when mirrored copies are matched), best over these. A
   candidate pair is a near duplicate when it reaches --min_similarity. Different faces in the
   same pose and light share a hash far more often than they reach that correlation. Two
   verified pairs A-B and B-C make A-C a candidate too (the second hop), verified likewise.

No chaining: an image is only ever dropped for a kept image it was verified against directly.
Groups (the `group` column) are the connected components of verified pairs, for reporting.
Findings: an image in val/test verified against one in train (or test against val) is a leak;
verified copies within a split are within-split copies; verified pairs whose labels differ are
label conflicts. Policies: --leaks drop drops an image with a kept verified twin in an earlier
split (train, then val, then test); --within keep-one drops an image with a kept verified twin
in its split (the largest file of a group is considered first and kept); --conflicts review
keeps one per label and lists them in DST/conflicts.csv (apply decisions with
`data_tools.mislabel --review`), drop drops every image of a conflicting pair, keep ignores
labels. DST/duplicates.csv lists every candidate pair with its hash distance, similarity and
verdict; DST/pairs.csv and DST/pairs.png show the near pairs closest to --min_similarity for a
person to confirm: fill `decision` (duplicate | distinct) and re-run with --review DST/pairs.csv.
"""

import argparse
import collections
import csv
import functools
import hashlib
import io
import os
import sys

import imagehash
import numpy as np
from matplotlib.figure import Figure
from PIL import Image
from scipy import fft as scipy_fft
from scipy import ndimage
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

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
SPLIT_ORDER = {"train": 0, "val": 1, "test": 2}  # which copy of a leaked pair survives
# Defaults chosen on the labelled real-face benchmark (benchmarks/dedup_quality.py,
# docs/data_tools.md): precision and recall of grouping at 48x48.
DEFAULT_THRESHOLD = (
  6  # pHash distances are even (32 bits set per code): 7 = 6; 8 costs 4x the search
)
DEFAULT_SHIFT = 2
DEFAULT_ZOOM = 0.08
DEFAULT_MAX_SHIFT = 3
DEFAULT_MIN_SIMILARITY = 0.92
SIMILARITY_BLUR = 1.0  # px: JPEG blocks and noise barely move the correlation after this blur
# Candidate pairs gathered at once: bounds the temporary arrays to a few hundred MB.
PAIR_CHUNK = 4_000_000
VERIFY_CHUNK = 2_048  # pairs verified at once (a few tens of MB of float32)
MAX_HOP_DEGREE = 32  # second-hop candidates only through images with at most this many links


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
    help="verification: normalised cross-correlation a near duplicate reaches",
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


# ---------------------------------------------------------------------------- verification


def _blurred(images):
  return ndimage.gaussian_filter(images.astype(np.float32), (0, SIMILARITY_BLUR, SIMILARITY_BLUR))


def _similarity_chunk(a, b, max_shift, scales, mirror):
  """Best normalised cross-correlation between blurred a[k] and b[k] (float32 [P, S, S] each)."""
  p, size, _ = a.shape
  s = max_shift
  margin = max(s, size // 6)
  h = size - 2 * margin  # the central two thirds of a are compared: borders and edge fill vary
  n = h * h
  centre = a[:, margin : size - margin, margin : size - margin]
  centre = centre - centre.mean((1, 2), keepdims=True)
  centre /= np.maximum(np.sqrt((centre**2).sum((1, 2), keepdims=True)), 1e-3)
  shape = (h + 2 * s,) * 2
  conj_centre = np.conj(scipy_fft.rfft2(centre, shape))
  window = lambda c: c[:, h:, h:] - c[:, :-h, h:] - c[:, h:, :-h] + c[:, :-h, :-h]  # noqa: E731
  best = np.full(p, -1.0, np.float32)
  for scale in scales:
    m = zoom_matrix(size, scale)
    zoomed = b if scale == 1 else m @ b @ m.T
    region = np.ascontiguousarray(
      zoomed[:, margin - s : size - margin + s, margin - s : size - margin + s]
    )
    # sums of every h x h window from integral images: the windows' means and norms
    sums = window(np.pad(region, ((0, 0), (1, 0), (1, 0))).cumsum(1).cumsum(2))
    squares = window(np.pad(region * region, ((0, 0), (1, 0), (1, 0))).cumsum(1).cumsum(2))
    norm = np.sqrt(np.maximum(squares - sums * sums / n, 1e-6))
    for flip in (False, True) if mirror else (False,):
      r = region[:, :, ::-1] if flip else region
      # correlation with every translation at once (the centre is zero-mean, unit-norm)
      corr = scipy_fft.irfft2(scipy_fft.rfft2(r) * conj_centre, shape)[:, : 2 * s + 1, : 2 * s + 1]
      best = np.maximum(
        best, (corr / np.maximum(norm[:, :, ::-1] if flip else norm, 1e-3)).max((1, 2))
      )
  return best


def similarity(images, i, j, settings, other=None):
  """Verified similarity of the pairs (images[i], other[j]) (other = images by default): float32.

  The normalised cross-correlation (-1..1) of the blurred images, best over translations up to
  --max_shift px, zooms by 1 -/+ --zoom and (with mirrored copies matched) the mirror image;
  invariant to brightness and contrast.
  """
  other = images if other is None else other
  out = np.zeros(len(i), np.float32)
  scales = zoom_scales(settings.zoom)
  for start in range(0, len(i), VERIFY_CHUNK):
    sl = slice(start, start + VERIFY_CHUNK)
    out[sl] = _similarity_chunk(
      _blurred(images[i[sl]]), _blurred(other[j[sl]]), settings.max_shift, scales, settings.mirror
    )
  return out


# ---------------------------------------------------------------------------- pairs and groups


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


class Pairs:
  """Candidate pairs (i < j) with their hash `distance`, `kind` of match, verified `similarity`
  and `verdict`: 'exact' (same pixels), 'near' (similarity >= --min_similarity, or reviewed as a
  duplicate) or 'distinct'. `review` holds a person's decision ('' if none)."""

  def __init__(self, i, j, distance, kind, similarity, verdict):
    self.i, self.j, self.distance, self.kind = i, j, distance, kind
    self.similarity, self.verdict = similarity, verdict
    self.review = np.full(len(i), "", object)

  def __len__(self):
    return len(self.i)

  @property
  def linked(self):
    return self.verdict != "distinct"

  def __add__(self, other):
    fields = ("i", "j", "distance", "kind", "similarity", "verdict")
    return Pairs(*(np.concatenate([getattr(self, f), getattr(other, f)]) for f in fields))


def find_pairs(images, hashes, settings):
  """Candidates by hash, each verified on the pixels -> Pairs. `images`: gray uint8 [N, S, S].

  The hash misses some copies of a photograph (a 3 px shift, a one-sided crop) that it finds
  for another copy of it; two verified pairs A-B and B-C therefore make A-C a candidate as
  well ('second hop'), verified like the others, so a drop can rest on a direct link.
  """
  i, j = duplicate_pairs(hashes, settings.threshold)
  pairs = verify_pairs(images, hashes, i, j, settings)
  hop_i, hop_j = second_hop(pairs, len(hashes))
  if not len(hop_i):
    return pairs
  hop = verify_pairs(images, hashes, hop_i, hop_j, settings, label="verifying second hops")
  hop.kind[hop.kind != "exact"] = "second hop"
  return pairs + hop


def second_hop(pairs, n):
  """(i, j), i < j: the pairs not yet candidates whose images are linked to a common image.

  Only through images with at most MAX_HOP_DEGREE links: a large group of copies (a frame
  repeated a thousand times) would otherwise ask for a million pairs.
  """
  linked = pairs.linked
  ends = np.concatenate([pairs.i[linked], pairs.j[linked]])
  others = np.concatenate([pairs.j[linked], pairs.i[linked]])
  order = np.argsort(ends, kind="stable")
  ends, others = ends[order], others[order]
  starts = np.searchsorted(ends, np.arange(n + 1))
  known = set((pairs.i * n + pairs.j).tolist())
  found = set()
  for b in np.flatnonzero((np.diff(starts) >= 2) & (np.diff(starts) <= MAX_HOP_DEGREE)):
    twins = np.sort(others[starts[b] : starts[b + 1]])
    a, c = np.triu_indices(len(twins), 1)
    found.update(k for k in (twins[a] * n + twins[c]).tolist() if k not in known)
  keys = np.array(sorted(found), np.int64)
  return keys // n, keys % n


def verify_pairs(images, hashes, i, j, settings, label="verifying"):
  """Candidate pairs (i, j) -> Pairs with their match kind, similarity and verdict."""
  distance, kind = pair_match(hashes, i, j)
  exact = kind == "exact"
  sim = np.ones(len(i), np.float32)
  progress = Progress(label, int((~exact).sum()))
  sim[~exact] = similarity(images, i[~exact], j[~exact], settings)
  progress.update(int((~exact).sum()))
  progress.close()
  verdict = np.where(exact, "exact", np.where(sim >= settings.min_similarity, "near", "distinct"))
  return Pairs(i, j, distance, kind, sim, verdict.astype(object))


def group_labels(n, pairs):
  """Connected components of the linked (exact or near) pairs -> group id per image (int64 [n])."""
  keep = pairs.linked
  graph = coo_matrix(
    (np.ones(int(keep.sum()), np.int8), (pairs.i[keep], pairs.j[keep])), shape=(n, n)
  )
  return connected_components(graph, directed=False)[1].astype(np.int64)


def groups_of(n, pairs):
  """Lists of member indices (sorted) of every group with two or more images, in index order."""
  members = collections.defaultdict(list)
  for idx, g in enumerate(group_labels(n, pairs)):
    members[g].append(idx)
  return [m for m in sorted(members.values()) if len(m) > 1]


def find_groups(images, settings, workers=1):
  """Exact and verified near duplicates of an image array -> (Pairs, groups): the definition
  `dedup` applies to files, for callers holding arrays (the audit)."""
  images = gray(images)
  pairs = find_pairs(images, hash_images(images, settings, workers), settings)
  return pairs, groups_of(len(images), pairs)


# ---------------------------------------------------------------------------- policies


def _best_copy_first(records, members):
  """Members in the order they are considered for keeping: earliest split, then the largest
  file (least compressed / largest original), then path."""
  return sorted(
    members, key=lambda m: (SPLIT_ORDER[records[m].split], -records[m].size, records[m].path)
  )


def decide(records, pairs, args, classes):
  """Applies the policies to the linked pairs.

  Returns ({image: (action, reason, pair index)}, {image: [findings]}, review rows). An image is
  dropped only for a kept image it is linked to directly, so links never chain into drops.
  """
  neighbours = collections.defaultdict(list)
  for k in np.flatnonzero(pairs.linked):
    a, b = int(pairs.i[k]), int(pairs.j[k])
    neighbours[a].append((b, k))
    neighbours[b].append((a, k))
  split = lambda m: records[m].split  # noqa: E731
  label = lambda m: records[m].class_name  # noqa: E731
  outcome, findings, kept = {}, {}, set()
  for m in _best_copy_first(records, list(neighbours)):
    found = []
    for o, _ in neighbours[m]:
      if SPLIT_ORDER[split(o)] < SPLIT_ORDER[split(m)]:
        found.append(f"leak {split(m)}<-{split(o)}")
      if split(o) == split(m):
        found.append(f"within-split copy ({split(m)})")
      if label(o) != label(m):
        found.append("label conflict")
    findings[m] = list(dict.fromkeys(found))
    conflicting = [(o, k) for o, k in neighbours[m] if label(o) != label(m)]
    earlier = [
      (o, k)
      for o, k in neighbours[m]
      if o in kept and SPLIT_ORDER[split(o)] < SPLIT_ORDER[split(m)]
    ]
    same = [
      (o, k)
      for o, k in neighbours[m]
      if o in kept and split(o) == split(m) and (args.conflicts != "review" or label(o) == label(m))
    ]
    most_similar = lambda twins: max(twins, key=lambda t: (pairs.similarity[t[1]], -t[0]))  # noqa: E731
    if args.conflicts == "drop" and conflicting:
      o, k = most_similar(conflicting)
      outcome[m] = (
        "dropped",
        f"label conflict: {pairs.kind[k]} copy of {records[o].path} ({label(o)})",
        k,
      )
    elif args.leaks == "drop" and earlier:
      o, k = most_similar(earlier)
      outcome[m] = ("dropped", f"leak: {pairs.kind[k]} copy of {records[o].path} ({split(o)})", k)
    elif args.within == "keep-one" and same:
      o, k = most_similar(same)
      outcome[m] = ("dropped", f"within-split {pairs.kind[k]} copy of {records[o].path}", k)
    else:
      outcome[m] = (
        "kept",
        "kept: linked to "
        + ", ".join(f"{records[o].path} ({pairs.kind[k]})" for o, k in neighbours[m][:3])
        + (f" and {len(neighbours[m]) - 3} more" if len(neighbours[m]) > 3 else ""),
        None,
      )
      kept.add(m)
  review = []
  if args.conflicts == "review":
    for m in sorted(kept):
      others = collections.Counter(
        label(o) for o, _ in neighbours[m] if o in kept and label(o) != label(m)
      )
      if others:
        suggested = max(others, key=lambda c: (others[c], -classes.index(c)))
        review.append(
          {
            "record": m,
            "given_label": label(m),
            "suggested_label": suggested,
            "reason": f"verified duplicate of an image labelled {suggested}",
          }
        )
  return outcome, findings, review


# ---------------------------------------------------------------------------- human review

PAIR_COLUMNS = (
  "group",
  "file_a",
  "split_a",
  "class_a",
  "file_b",
  "split_b",
  "class_b",
  "hash_distance",
  "match",
  "similarity",
  "verdict",
  "review",
  "outcome",
)
REVIEW_PAIR_COLUMNS = (
  "rank",
  "file_a",
  "file_b",
  "hash_distance",
  "match",
  "similarity",
  "verdict",
  "decision",
)
PAIR_DECISIONS = ("duplicate", "distinct")


def borderline(pairs, min_similarity, count):
  """Indices of the `count` non-exact pairs whose similarity is closest to the threshold."""
  near = np.flatnonzero(pairs.kind != "exact")
  return near[np.argsort(np.abs(pairs.similarity[near] - min_similarity), kind="stable")][:count]


def pairs_sheet(images, pairs, chosen, min_similarity):
  """PNG bytes: each chosen pair side by side with its similarity, hash distance and verdict."""
  cols = 4
  rows = max(1, -(-len(chosen) // cols))
  fig = Figure(figsize=(cols * 2.2, rows * 1.45))  # no pyplot: no global state, no GUI backend
  axes = fig.subplots(rows, cols, squeeze=False)
  for ax in axes.ravel():
    ax.axis("off")
  for ax, (rank, k) in zip(axes.ravel(), enumerate(chosen, 1)):
    a, b = images[pairs.i[k]], images[pairs.j[k]]
    ax.imshow(
      np.concatenate([a, np.full((a.shape[0], 2), 255, np.uint8), b], axis=1),
      cmap="gray",
      vmin=0,
      vmax=255,
    )
    ax.set_title(
      f"#{rank} sim {pairs.similarity[k]:.3f} ({pairs.verdict[k]})\n"
      f"hash {pairs.distance[k]} bits, {pairs.kind[k]}",
      fontsize=6.5,
    )
  if not len(chosen):
    axes[0, 0].text(0.5, 0.5, "no near pairs", ha="center", va="center")
  fig.suptitle(
    f"Pairs closest to --min_similarity {min_similarity} (duplicate at or above)", fontsize=8
  )
  fig.tight_layout()
  buf = io.BytesIO()
  fig.savefig(buf, format="png", dpi=110)
  return buf.getvalue()


def apply_pair_review(paths, pairs, tree, records):
  """Overrides verdicts with a person's decisions from reviewed pairs.csv files.

  Their paths are relative to SRC.
  """
  index = {tree.tree_path(r): n for n, r in enumerate(records)}
  by_pair = {(int(a), int(b)): k for k, (a, b) in enumerate(zip(pairs.i, pairs.j))}
  for path in paths:
    try:
      with open(path, newline="", encoding="utf-8-sig") as f:  # -sig: a CSV saved by a spreadsheet
        reader = csv.DictReader(f)
        missing = {"file_a", "file_b", "decision"} - set(reader.fieldnames or [])
        if missing:
          raise common.ToolError(f"--review {path}: no column {', '.join(sorted(missing))}")
        for row in reader:
          where = f"--review {path} line {reader.line_num}"
          decision = (row["decision"] or "").strip().lower()
          if not decision:
            continue
          if decision not in PAIR_DECISIONS:
            raise common.ToolError(
              f"{where}: decision {row['decision']!r} is not one of "
              f"{' | '.join(PAIR_DECISIONS)} | empty"
            )
          ends = [index.get(os.path.normpath(row[c] or "")) for c in ("file_a", "file_b")]
          if None in ends:
            raise common.ToolError(
              f"{where}: {row['file_a']!r} / {row['file_b']!r} are not images of SRC {tree.root}"
            )
          k = by_pair.get((min(ends), max(ends)))
          if k is None:
            raise common.ToolError(
              f"{where}: {row['file_a']} and {row['file_b']} are not a candidate "
              "pair (duplicates.csv lists them all)"
            )
          if pairs.review[k] and pairs.review[k] != decision:
            raise common.ToolError(f"{where}: the pair has another decision in an earlier row")
          pairs.review[k] = decision
          if pairs.kind[k] != "exact":  # identical pixels stay identical whatever is decided
            pairs.verdict[k] = "near" if decision == "duplicate" else "distinct"
    except FileNotFoundError:
      raise common.ToolError(f"--review {path}: no such file") from None


# ---------------------------------------------------------------------------- the tool


def summarise(pairs, outcome, findings, records, args, groups, classes):
  verdicts = collections.Counter(pairs.verdict)
  reviewed = collections.Counter(pairs.review[pairs.review != ""])
  lines = [
    f"hash {args.hash}, threshold {args.threshold}, mirrored copies "
    f"{'matched' if args.mirror else 'ignored'}, shifted {args.shift} px, zoomed {args.zoom}: "
    f"{len(pairs):,} candidate pairs; verified (similarity >= {args.min_similarity}): "
    f"{verdicts['exact']:,} exact, {verdicts['near']:,} near, {verdicts['distinct']:,} distinct"
    + ("; reviewed: " + ", ".join(f"{d} {n}" for d, n in reviewed.items()) if reviewed else "")
  ]
  if groups:
    lines.append(
      f"  {len(groups):,} duplicate groups, {sum(map(len, groups)):,} images; largest "
      f"{max(map(len, groups))} images (no image is dropped for one it was not verified against)"
    )
  leaks = collections.Counter(
    f.split()[1] for fs in findings.values() for f in fs if f.startswith("leak")
  )
  lines.append(
    f"cross-split leakage: {sum(leaks.values()):,} images"
    + "".join(f", {d} {n:,}" for d, n in sorted(leaks.items()))
    + f" (--leaks {args.leaks})"
  )
  within = collections.Counter(
    records[m].split for m, fs in findings.items() if any(f.startswith("within") for f in fs)
  )
  lines.append(
    "within-split copies: "
    + (", ".join(f"{s} {within[s]:,} images" for s in common.SPLITS if within[s]) or "none")
    + f" (--within {args.within})"
  )
  conflicts = collections.Counter()
  for k in np.flatnonzero(pairs.linked):
    a, b = records[pairs.i[k]].class_name, records[pairs.j[k]].class_name
    if a != b:
      conflicts["/".join(sorted((a, b), key=classes.index))] += 1
  lines.append(
    f"label conflicts: {sum(conflicts.values()):,} pairs"
    + "".join(f", {p} {n:,}" for p, n in conflicts.most_common())
    + f" (--conflicts {args.conflicts})"
  )
  dropped = sum(action == "dropped" for action, _, _ in outcome.values())
  lines.append(f"dropped {dropped:,} images, each for a kept image it was verified against")
  return lines


def pair_rows(pairs, records, groups, outcome, tree):
  group_of = {m: f"g{n}" for n, members in enumerate(groups, 1) for m in members}
  rows = []
  for k in range(len(pairs)):
    a, b = int(pairs.i[k]), int(pairs.j[k])
    dropped = [
      side
      for side, m in (("a", a), ("b", b))
      if m in outcome and outcome[m][0] == "dropped" and outcome[m][2] == k
    ]
    rows.append(
      {
        "group": group_of.get(a, "") if pairs.linked[k] else "",
        "file_a": tree.tree_path(records[a]),
        "split_a": records[a].split,
        "class_a": records[a].class_name,
        "file_b": tree.tree_path(records[b]),
        "split_b": records[b].split,
        "class_b": records[b].class_name,
        "hash_distance": int(pairs.distance[k]),
        "match": pairs.kind[k],
        "similarity": f"{pairs.similarity[k]:.4f}",
        "verdict": pairs.verdict[k],
        "review": pairs.review[k],
        "decision": "",
        "outcome": f"{dropped[0]} dropped" if dropped else "",
      }
    )
  return rows


def plan_dedup(args):
  check_hash_flags(args)
  common.check_output(args.out, args.overwrite, SRC=args.src)
  classes = list(args.classes)
  tree = common.read_tree(args.src, args.classes)
  images, hashes, ok, errors = decode_and_hash([r.path for r in tree.files], args)
  readable, unreadable = common.split_readable(tree, tree.files, ok, errors)
  entries = list(tree.not_read) + unreadable

  pairs = find_pairs(images, hashes, args)
  apply_pair_review(args.review, pairs, tree, readable)
  groups = groups_of(len(readable), pairs)
  group_of = {m: f"g{n}" for n, members in enumerate(groups, 1) for m in members}
  outcome, findings, reviews = decide(readable, pairs, args, classes)
  for m, r in enumerate(readable):
    if m in outcome:
      action, reason, k = outcome[m]
      score = "" if k is None else f"{pairs.similarity[k]:.4f}"
      entries.append(
        common.entry_for(tree, r, action, reason=reason, group=group_of[m], score=score)
      )
    else:
      entries.append(common.entry_for(tree, r, "kept"))
  entries.sort(key=lambda e: e.source_path)
  common.resolve_name_clashes(entries)

  new_path = {e.source_path: e.new_path for e in entries}
  review_rows = [
    {
      "rank": k,
      "file": new_path[readable[v["record"]].path],
      "split": readable[v["record"]].split,
      "given_label": v["given_label"],
      "suggested_label": v["suggested_label"],
      "score": "",
      "reason": v["reason"],
      "decision": "",
    }
    for k, v in enumerate(reviews, 1)
  ]
  summary = summarise(pairs, outcome, findings, readable, args, groups, classes)
  if review_rows:
    summary.append(
      f"  {len(review_rows)} conflicting images listed in conflicts.csv for review "
      "(paths relative to DST)"
    )
  rows = pair_rows(pairs, readable, groups, outcome, tree)
  chosen = borderline(pairs, args.min_similarity, args.review_pairs)
  summary.append(
    f"review: DST/pairs.png and DST/pairs.csv show the {len(chosen)} near pairs closest to "
    f"--min_similarity; fill `decision` ({' | '.join(PAIR_DECISIONS)}) and re-run with "
    "--review DST/pairs.csv"
  )
  summary += common.split_class_table(entries, classes, "result (images per class and split):")
  reports_out = {
    "duplicates.csv": common.csv_text(rows, PAIR_COLUMNS),
    "pairs.csv": common.csv_text(
      [{**rows[k], "rank": n} for n, k in enumerate(chosen, 1)], REVIEW_PAIR_COLUMNS
    ),
    "pairs.png": pairs_sheet(images, pairs, chosen, args.min_similarity),
  }
  if args.conflicts == "review":
    reports_out["conflicts.csv"] = common.review_csv(review_rows)
  options = {
    k: getattr(args, k)
    for k in (
      "hash",
      "threshold",
      "mirror",
      "shift",
      "zoom",
      "max_shift",
      "min_similarity",
      "image_size",
      "leaks",
      "within",
      "conflicts",
      "review",
      "classes",
    )
  }
  return common.Plan(
    "dedup", {"SRC": tree.root}, os.path.abspath(args.out), options, entries, summary, reports_out
  )


def build_parser():
  p = common.tool_parser("dedup", __doc__.split("\n")[0])
  add_hash_flags(p)
  p.add_argument(
    "--leaks",
    choices=("drop", "keep"),
    default="drop",
    help="drop: an image with a kept verified twin in an earlier split (train, val, "
    "test) is dropped",
  )
  p.add_argument(
    "--within",
    choices=("keep-one", "keep-all"),
    default="keep-one",
    help="keep-one: an image with a kept verified twin in its split is dropped "
    "(the largest file is kept)",
  )
  p.add_argument(
    "--conflicts",
    choices=("review", "drop", "keep"),
    default="review",
    help="verified pairs whose labels disagree: review = keep one per label and list "
    "them in conflicts.csv; drop = drop both; keep = ignore the labels",
  )
  p.add_argument(
    "--review",
    action="append",
    default=[],
    metavar="CSV",
    help="reviewed pairs.csv (repeatable): decision duplicate | distinct overrides "
    "the verifier for that pair",
  )
  p.add_argument(
    "--review_pairs",
    type=int,
    default=48,
    help="near pairs closest to --min_similarity shown in pairs.png / pairs.csv",
  )
  return p


def main(argv=None):
  return common.run_main(lambda args: common.finish(plan_dedup(args), args), build_parser(), argv)


if __name__ == "__main__":
  sys.exit(main())
