"""Precision and recall of dedup's near-duplicate decision on real faces (benchmarks/real_faces.py).

Builds the labelled set (every face plus 16 kinds of copies, 48x48 gray), runs dedup's hash
candidates and pixel verification on all of it at once, and reports against the truth:
  - per kind of copy: the share of copies linked directly to their original;
  - links: precision / recall of the verified pairs (every pair from one face is a duplicate);
  - groups: pair-counting precision / recall of the groups (connected components of the links);
  - the hard negatives: distinct-face pairs the hash proposed, and the verifier alone on every
    pair of distinct originals;
  - the same figures for other --min_similarity values (from the same similarities).

  python -m benchmarks.dedup_quality [--threshold=8 --shift=2 --zoom=0.08 --min_similarity=0.97]

The defaults of data_tools.dedup were chosen from this table; measured figures: docs/data_tools.md.
"""

import types

import numpy as np
from absl import app, flags

from benchmarks import real_faces
from benchmarks.timing import timed
from data_tools import hashing, verify


def define_flags():
  """Defined only when run as a program: tests import this module next to others with flags."""
  flags.DEFINE_integer(
    "threshold", hashing.DEFAULT_THRESHOLD, "hash candidates: max differing bits"
  )
  flags.DEFINE_integer("shift", hashing.DEFAULT_SHIFT, "hash candidates: shifted copies (px)")
  flags.DEFINE_float("zoom", hashing.DEFAULT_ZOOM, "hash candidates and verifier: zoom fraction")
  flags.DEFINE_integer(
    "max_shift", hashing.DEFAULT_MAX_SHIFT, "verifier: translations searched (px)"
  )
  flags.DEFINE_float("min_similarity", hashing.DEFAULT_MIN_SIMILARITY, "verifier threshold")
  flags.DEFINE_string("hash", "phash", "perceptual hash")
  flags.DEFINE_bool("mirror", True, "match mirrored copies")
  flags.DEFINE_string(
    "cache_dir", None, "where the insightface wheel is kept (default: a temp folder)"
  )


_SWEEP = (0.9, 0.93, 0.95, 0.96, 0.965, 0.97, 0.975, 0.98)


def settings():
  f = flags.FLAGS
  return types.SimpleNamespace(
    hash=f.hash,
    threshold=f.threshold,
    mirror=f.mirror,
    shift=f.shift,
    zoom=f.zoom,
    max_shift=f.max_shift,
    min_similarity=f.min_similarity,
    image_size=real_faces.SIZE,
  )


def evaluate(images, source, made, s, workers=0):
  """dedup's decision on the labelled set -> dict of figures (see the module docstring)."""
  hashes = hashing.hash_images(images, s, workers, label="hashing")
  pairs = verify.find_pairs(images, hashes, s)
  same = source[pairs.i] == source[pairs.j]
  result = {
    "pairs": pairs,
    "candidates": len(pairs),
    "hard_negatives": int((~same).sum()),
    "hard_negative_max": float(pairs.similarity[~same].max()) if (~same).any() else float("nan"),
  }
  n = int((made == "original").sum())
  per_copy = {}
  linked = set(zip(pairs.i[pairs.linked].tolist(), pairs.j[pairs.linked].tolist()))
  for kind in dict.fromkeys(made[n:]):
    copies = np.flatnonzero(made == kind)
    per_copy[kind] = float(np.mean([(int(source[c]), int(c)) in linked for c in copies]))
  result["per_copy"] = per_copy
  scores = {}
  for t in sorted(set(_SWEEP) | {s.min_similarity}):
    keep = (pairs.kind == "exact") | (pairs.similarity >= t)
    sub = verify.Pairs(
      pairs.i[keep],
      pairs.j[keep],
      pairs.distance[keep],
      pairs.kind[keep],
      pairs.similarity[keep],
      pairs.verdict[keep],
    )
    sub.verdict[:] = "near"
    scores[t] = real_faces.pair_scores(sub.i, sub.j, verify.group_labels(len(images), sub), source)
  result["scores"] = scores
  return result


def main(_):
  s = settings()
  faces, names, missing = real_faces.faces(flags.FLAGS.cache_dir)
  if missing:
    print(f"without the insightface faces: {missing}")
  images, source, made = real_faces.duplicate_benchmark(faces)
  print(
    f"{len(faces)} real faces ({sum(n.startswith('lfw') for n in names)} LFW, "
    f"{sum(n.startswith('insightface') for n in names)} insightface, 1 astronaut) + "
    f"{len(images) - len(faces):,} copies; {len(images):,} images 48x48"
  )
  print(
    f"hash {s.hash}, threshold {s.threshold}, shift {s.shift}, zoom {s.zoom}, mirror {s.mirror}; "
    f"verifier max_shift {s.max_shift}, min_similarity {s.min_similarity}"
  )
  result, wall, cpu = timed(lambda: evaluate(images, source, made, s))
  print(
    f"{result['candidates']:,} candidate pairs from the hash, {result['hard_negatives']:,} of them "
    f"distinct faces (highest similarity among those {result['hard_negative_max']:.3f}); "
    f"{wall:.1f} s (CPU {cpu:.1f} s)"
  )
  print("copies linked directly to their original:")
  for kind, share in result["per_copy"].items():
    print(f"  {kind:32s} {share:6.1%}")
  print(
    f"{'min_similarity':>14} {'link precision':>15} {'link recall':>12} {'group precision':>16} "
    f"{'group recall':>13}"
  )
  for t, sc in result["scores"].items():
    mark = "  <- default" if t == s.min_similarity else ""
    print(
      f"{t:>14.3f} {sc['links'][0]:>15.2%} {sc['links'][1]:>12.2%} {sc['groups'][0]:>16.2%} "
      f"{sc['groups'][1]:>13.2%}{mark}"
    )
  iu = np.triu_indices(len(faces), 1)
  alone = verify.similarity(images, iu[0], iu[1], s)
  print(
    f"verifier alone on all {len(alone):,} pairs of distinct originals: max similarity "
    f"{alone.max():.3f}, {(alone >= s.min_similarity).sum()} at or above {s.min_similarity}"
  )


if __name__ == "__main__":
  define_flags()
  app.run(main)
