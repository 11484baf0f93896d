"""All-pairs near-duplicate search: `data_tools.dedup.near_pairs` on 100,000 64-bit hashes.

Draws `--hashes` codes: uniformly random ones plus `--planted` copies of random codes with
0..threshold bits flipped (near duplicates), then times the self-join (pairs within the
threshold), the mirrored join (every code against a second random set, as dedup does with
mirrored hashes) and the grouping (connected components). Checks that every planted pair is
found and, on a random subset, that the result equals a brute-force search.

  python -m benchmarks.dedup_throughput [--hashes=100000] [--threshold=6]

Target: 100,000 hashes, threshold 6, under 60 s on 2 cores. Measured figure: docs/data_tools.md.
"""

from absl import app
from absl import flags
import numpy as np

from benchmarks.timing import timed
from data_tools import dedup

_HASHES = flags.DEFINE_integer("hashes", 100_000, "codes in total (random + planted)")
_PLANTED = flags.DEFINE_integer("planted", 5_000, "near-duplicate codes among them")
_THRESHOLD = flags.DEFINE_integer("threshold", 6, "max differing bits")
_CHECK = flags.DEFINE_integer("check", 3_000, "codes in the brute-force cross-check")


def random_codes(rng, n):
  return rng.integers(0, 2**64, n, dtype=np.uint64, endpoint=False)


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
  n, t = _HASHES.value, _THRESHOLD.value
  base = random_codes(rng, n - _PLANTED.value)
  copies, originals = plant(rng, base, _PLANTED.value, t)
  codes = np.concatenate([base, copies])
  mirrors = random_codes(rng, n)
  print(f"{n:,} codes ({_PLANTED.value:,} planted near copies), threshold {t}")

  (i, j, _), self_s, self_cpu = timed(lambda: dedup.near_pairs(codes, t))
  found = set(zip(i.tolist(), j.tolist()))
  planted = {(int(o), len(base) + k) for k, o in enumerate(originals)}
  missing = planted - found
  print(f"self-join:     {self_s:6.2f} s (CPU {self_cpu:.2f} s)  {len(i):,} pairs; planted pairs found "
        f"{len(planted) - len(missing):,}/{len(planted):,}")
  (mi, _, _), mirror_s, mirror_cpu = timed(lambda: dedup.near_pairs(codes, t, mirrors))
  print(f"mirrored join: {mirror_s:6.2f} s (CPU {mirror_cpu:.2f} s)  {len(mi):,} pairs")
  hashes = dedup.Hashes(np.arange(n, dtype=np.uint64), codes, mirrors[:, None], ["mirrored"])
  labels, group_s, group_cpu = timed(lambda: dedup.group_labels(hashes, t))
  print(f"grouping (both joins + connected components): {group_s:6.2f} s (CPU {group_cpu:.2f} s)  "
        f"{len(np.unique(labels)):,} groups")

  sub = codes[rng.choice(n, _CHECK.value, replace=False)]
  si, sj, _ = dedup.near_pairs(sub, t)
  agrees = set(zip(si.tolist(), sj.tolist())) == brute_force(sub, t)
  print(f"brute-force cross-check on {_CHECK.value:,} codes: {'equal' if agrees else 'DIFFERENT'}")
  print(f"dedup search for {n:,} hashes at threshold {t}: {group_s:.1f} s "
        f"({'within' if group_s < 60 else 'OVER'} the 60 s target)")
  if missing or not agrees:
    raise SystemExit("near_pairs missed pairs")


if __name__ == "__main__":
  app.run(main)
