"""Split names as researchers write them, and the study's stratified hold-out.

`normalize_split` maps a folder name (or a FER2013 `Usage` value) to 'train' | 'val' | 'test';
`stratified_holdout` moves a seeded, per-class fraction of one split to another, which is how
a missing val split is made (docs/study.md: 10 % of train, stratified by class, seed 42).
"""

import numpy as np

# Keys are lower-case with '_', '-' and spaces removed (see `name_key`).
SPLIT_ALIASES = {
  "train": "train",
  "training": "train",
  "val": "val",
  "valid": "val",
  "validation": "val",
  "dev": "val",
  "eval": "val",
  "publictest": "val",
  "public": "val",
  "test": "test",
  "testing": "test",
  "privatetest": "test",
  "private": "test",
}


def name_key(name):
  """Lower case without '_', '-' and spaces: how split and class folder names are compared."""
  return "".join(ch for ch in str(name).strip().lower() if ch not in "_- ")


def normalize_split(folder_name):
  """'Training' -> 'train', 'PublicTest' -> 'val', 'private_test' -> 'test'; None if unknown."""
  return SPLIT_ALIASES.get(name_key(folder_name))


def stratified_holdout(labels, fraction, seed):
  """Splits indices into (keep_idx, holdout_idx), `fraction` of every class held out.

  The loaders' way to make a missing val split, image by image. `data_tools.stratify.assign_parts`
  is the other stratified splitter: k parts by ratios, keeping duplicate groups whole, for
  re-splitting a dataset on disk and for the mislabel judge's folds; this one stays separate so
  that every loaded dataset keeps the val split it has always had.

  Each class holds out round(count * fraction) of its images, chosen by a permutation seeded
  with `seed` (the same labels, fraction and seed always give the same split). A class with at
  least 2 images keeps at least one on each side; a class with a single image keeps it.
  Both index arrays are sorted int64.
  """
  labels = np.asarray(labels)
  if not 0.0 < fraction < 1.0:
    raise ValueError(f"hold-out fraction must be in (0, 1), got {fraction}")
  rng = np.random.default_rng(seed)
  keep, holdout = [], []
  for c in np.unique(labels):
    idx = np.flatnonzero(labels == c)
    idx = idx[rng.permutation(len(idx))]
    # floor(x + 0.5): half-up rounding, so the count does not depend on Python's banker's rounding.
    n_out = int(np.floor(len(idx) * fraction + 0.5))
    if len(idx) >= 2:
      n_out = min(max(n_out, 1), len(idx) - 1)
    else:
      n_out = 0
    holdout.append(idx[:n_out])
    keep.append(idx[n_out:])

  def as_sorted(parts):
    return np.sort(np.concatenate(parts)) if parts else np.zeros(0, np.int64)

  return as_sorted(keep).astype(np.int64), as_sorted(holdout).astype(np.int64)
