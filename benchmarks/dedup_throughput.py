"""dedup's duplicate search with verification, as the tool runs it by default, on 100,000 images.

Draws `--hashes` 64-bit codes, uniformly random, plus `--planted` near copies of random ones
(0..threshold bits flipped), each with the default set of variant hashes (mirror, 8 shifts,
2 zooms: random codes), and one 48x48 image per code: random pixels, a planted copy being its
original's pixels plus a little noise. Then times what `data_tools.dedup` does after hashing:
the all-pairs candidate search (the code against every code and every variant: multi-index
hashing), the match kinds, the pixel verification of every candidate and the grouping. Checks
that every planted pair is found and verified, that no random pair passes verification, and
that the search equals brute force on a subset. (Hashing itself, imagehash one image at a
time in worker processes, is timed in docs/data_tools.md.)

  python -m benchmarks.dedup_throughput [--hashes=100000] [--planted=5000]

Target: 100,000 images under 60 s on 2 cores. Measured figure: docs/data_tools.md.
"""

import numpy as np
from absl import app, flags

from benchmarks.timing import timed
from data_tools import hashing, verify

_HASHES = flags.DEFINE_integer("hashes", 100_000, "images in total (random + planted)")
_PLANTED = flags.DEFINE_integer("planted", 5_000, "near-duplicate images among them")
_CHECK = flags.DEFINE_integer("check", 3_000, "codes in the brute-force cross-check")


def random_codes(rng, shape):
  return rng.integers(0, 2**64, shape, dtype=np.uint64, endpoint=False)


def plant(rng, codes, n, threshold):
  """n copies of random codes, each with 0..threshold random bits flipped; (copies, originals)."""
  originals = rng.choice(len(codes), n, replace=False)
  copies = codes[originals].copy()
  for k in range(n):
    for bit in rng.choice(64, rng.integers(0, threshold + 1), replace=False):
      copies[k] ^= np.uint64(1) << np.uint64(bit)
  return copies, originals


def brute_force(codes, threshold):
  d = np.bitwise_count(codes[:, None] ^ codes[None, :])
  i, j = np.nonzero(np.triu(d <= threshold, 1))
  return set(zip(i.tolist(), j.tolist()))


def main(_):
  rng = np.random.default_rng(0)
  settings = hashing.default_settings()
  n, t = _HASHES.value, settings.threshold
  kinds = hashing.variant_kinds(settings.mirror, settings.shift, settings.zoom)
  base = random_codes(rng, n - _PLANTED.value)
  copies, originals = plant(rng, base, _PLANTED.value, t)
  codes = np.concatenate([base, copies])
  hashes = hashing.Hashes(
    np.arange(n, dtype=np.uint64), codes, random_codes(rng, (n, len(kinds))), kinds
  )
  images = rng.integers(0, 256, (n, 48, 48), dtype=np.uint8)
  noise = rng.integers(-6, 7, (len(copies), 48, 48))
  images[len(base) :] = np.clip(images[originals].astype(int) + noise, 0, 255).astype(np.uint8)
  print(
    f"{n:,} images ({_PLANTED.value:,} planted near copies), {len(kinds)} variant hashes each, "
    f"threshold {t}, min_similarity {settings.min_similarity}"
  )

  (i, j), search_s, search_cpu = timed(lambda: hashing.duplicate_pairs(hashes, t))
  print(f"candidate search: {search_s:6.2f} s (CPU {search_cpu:.2f} s)  {len(i):,} candidate pairs")
  pairs, verify_s, verify_cpu = timed(lambda: verify.verify_pairs(images, hashes, i, j, settings))
  print(
    f"match kinds + verification of {len(pairs):,} pairs: "
    f"{verify_s:6.2f} s (CPU {verify_cpu:.2f} s)"
  )
  labels, group_s, group_cpu = timed(lambda: verify.group_labels(n, pairs))
  print(
    f"grouping (connected components): {group_s:6.2f} s (CPU {group_cpu:.2f} s)  "
    f"{n - len(np.unique(labels)):,} images in groups"
  )

  planted = {(int(o), len(base) + k) for k, o in enumerate(originals)}
  linked = set(zip(pairs.i[pairs.linked].tolist(), pairs.j[pairs.linked].tolist()))
  found = set(zip(pairs.i.tolist(), pairs.j.tolist()))
  print(
    f"planted pairs: {len(planted & found):,}/{len(planted):,} proposed, "
    f"{len(planted & linked):,} verified; random pairs verified: {len(linked - planted):,}"
  )
  sub = codes[rng.choice(n, _CHECK.value, replace=False)]
  si, sj, _ = hashing.near_pairs(sub, t)
  agrees = set(zip(si.tolist(), sj.tolist())) == brute_force(sub, t)
  print(f"brute-force cross-check on {_CHECK.value:,} codes: {'equal' if agrees else 'DIFFERENT'}")
  total = search_s + verify_s + group_s
  print(
    f"dedup search + verification for {n:,} images: {total:.1f} s, CPU "
    f"{search_cpu + verify_cpu + group_cpu:.1f} s "
    f"({'within' if total < 60 else 'OVER'} the 60 s target)"
  )
  if planted - linked or linked - planted or not agrees:
    raise SystemExit("the search or the verification missed or invented pairs")


if __name__ == "__main__":
  app.run(main)
