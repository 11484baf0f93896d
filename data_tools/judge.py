"""The judge of `data_tools.mislabel`: out-of-fold class probabilities and confident learning.

out_of_fold_probs trains a config once per stratified fold (fer_jax.train.loop) so that every
image gets class probabilities from a model that never saw it; judge_quality reports how good
that judge is. Confident learning (Northcutt et al. 2021: class_thresholds, confident_joint,
estimate_joint) turns the probabilities into the suspects find_suspects returns.
"""

import os

import numpy as np

from fer_jax import data
from fer_jax.data import splits

from . import common, stratify

# Below these the fold models' out-of-fold predictions are called a weak judge.
WEAK_ACCURACY = 0.6
WEAK_RECALL = 0.3


# ---------------------------------------------------------------------------- confident learning


def class_thresholds(probs, labels):
  """t_j = mean p_j over the images labelled j (inf for a class with no images)."""
  k = probs.shape[1]
  return np.array(
    [probs[labels == j, j].mean() if np.any(labels == j) else np.inf for j in range(k)]
  )


def confident_joint(probs, labels, thresholds):
  """C [K, K]: C[i, j] counts the images labelled i whose most probable class among those
  reaching their threshold (p_j >= t_j) is j; images reaching none are not counted."""
  k = probs.shape[1]
  above = probs >= thresholds[None, :]
  counted = above.any(axis=1)
  confident = np.argmax(np.where(above, probs, -1.0), axis=1)
  joint = np.zeros((k, k), np.int64)
  np.add.at(joint, (labels[counted], confident[counted]), 1)
  return joint


def estimate_joint(confident, labels, k):
  """Q [K, K]: the estimated joint distribution of (given label, true label). Each row of the
  confident joint is calibrated to the number of images carrying that label, then the whole
  is normalised to sum to 1 (Northcutt et al. 2021, eq. 3)."""
  given = np.bincount(labels, minlength=k).astype(np.float64)
  rows = confident.sum(axis=1, keepdims=True).astype(np.float64)
  calibrated = np.where(rows > 0, confident / np.maximum(rows, 1), 0.0) * given[:, None]
  return calibrated / max(calibrated.sum(), 1e-12)


def find_suspects(probs, labels):
  """Confident learning -> Suspects.

  The estimated joint Q of given and true labels says how many images labelled i are really
  j: n * Q[i, j]. For each such cell, that many images labelled i with the largest margin
  p_j - p_i are flagged (prune by noise rate), suggested label j; the count flagged follows
  the noise estimate 1 - trace(Q), not every image under a threshold.
  """
  probs, labels = np.asarray(probs, np.float64), np.asarray(labels)
  n, k = probs.shape
  thresholds = class_thresholds(probs, labels)
  joint = estimate_joint(confident_joint(probs, labels, thresholds), labels, k)
  given = probs[np.arange(n), labels]
  suggested = np.full(n, -1)
  margin = np.full(n, np.nan)
  for i in range(k):
    members = np.flatnonzero(labels == i)
    for j in range(k):
      count = int(round(n * joint[i, j]))
      if j == i or count == 0:
        continue
      cell_margin = probs[members, j] - given[members]
      top = members[np.argsort(-cell_margin, kind="stable")[:count]]
      better = np.isnan(margin[top]) | (probs[top, j] - given[top] > margin[top])
      suggested[top[better]] = j
      margin[top[better]] = probs[top[better], j] - given[top[better]]
  flagged = np.flatnonzero(suggested >= 0)
  # worst first: largest margin, then least self-confidence, then index (deterministic)
  ranked = flagged[np.lexsort((flagged, given[flagged], -margin[flagged]))]
  return Suspects(ranked, suggested, margin, thresholds, joint)


class Suspects:
  """`ranked` image indices (worst first), per image the `suggested` class (-1: not flagged) and
  `margin` p_suggested - p_given, the class `thresholds` and the estimated `joint` Q."""

  def __init__(self, ranked, suggested, margin, thresholds, joint):
    self.ranked, self.suggested, self.margin = ranked, suggested, margin
    self.thresholds, self.joint = thresholds, joint

  @property
  def noise_rate(self):
    """Estimated share of wrong labels: the off-diagonal mass of the joint."""
    return float(1 - np.trace(self.joint))


def judge_quality(probs, labels, k, fold_of):
  """(out-of-fold accuracy, per-class recall [K], per-fold accuracy, warning or '') of the fold
  models. Each fold is judged too: one fold model that failed to train hides in the average."""
  right = np.argmax(probs, axis=1) == labels
  accuracy = float(np.mean(right))
  recall = np.array(
    [np.mean(right[labels == c]) if np.any(labels == c) else np.nan for c in range(k)]
  )
  per_fold = np.array([np.mean(right[fold_of == f]) for f in np.unique(fold_of)])
  weak = per_fold.min() < WEAK_ACCURACY or np.nanmin(recall) < WEAK_RECALL
  warning = (
    (
      f"WARNING: weak judge (out-of-fold accuracy {accuracy:.1%}, "
      f"lowest fold {per_fold.min():.1%}, "
      f"lowest class recall {np.nanmin(recall):.1%}; wanted >= {WEAK_ACCURACY:.0%} in every fold "
      f"and >= {WEAK_RECALL:.0%} per class): the suspects and the noise estimate then reflect the "
      "model's errors more than the labels; train longer or choose a stronger --config"
    )
    if weak
    else ""
  )
  return accuracy, recall, per_fold, warning


# ------------------------------------------------------------------ out-of-fold probabilities


def out_of_fold_probs(images, labels, classes, config, folds, seed, workdir):
  """(class probabilities [N, K] for every image from the fold model that did not train on it,
  each image's fold [N])."""
  import jax

  from fer_jax.train import loop  # JAX starts here, only when a model is trained

  if not jax.config.jax_compilation_cache_dir:
    # The fold models share their programs (same model, same shapes): compile them once.
    jax.config.update(
      "jax_compilation_cache_dir", os.path.join(os.path.dirname(workdir), "jax_cache")
    )
  fold_of = stratify.assign_parts(labels, np.arange(len(labels)), [1 / folds] * folds, seed)
  probs = np.zeros((len(labels), len(classes)), np.float32)
  for f in range(folds):
    test_idx = np.flatnonzero(fold_of == f)
    rest = np.flatnonzero(fold_of != f)
    keep, hold = splits.stratified_holdout(
      labels[rest], config.data.val_fraction, config.data.split_seed
    )
    parts = {"train": rest[keep], "val": rest[hold], "test": test_idx}
    dataset = data.Dataset(
      name=f"mislabel fold {f + 1}/{folds}",
      classes=tuple(classes),
      splits={
        name: data.Split(images[idx], labels[idx].astype(np.int32)) for name, idx in parts.items()
      },
    )
    print(
      f"mislabel: fold {f + 1}/{folds}: train {len(parts['train']):,}, val {len(parts['val']):,}, "
      f"scored {len(test_idx):,}",
      flush=True,
    )
    run_dir = os.path.join(workdir, f"fold_{f + 1}")
    loop.train_and_evaluate(config, run_dir, dataset=dataset)
    with np.load(os.path.join(run_dir, "test_predictions.npz"), allow_pickle=False) as z:
      if not np.array_equal(z["labels"], labels[test_idx]):
        raise common.ToolError(
          f"{run_dir}: test_predictions.npz does not match this fold; delete the folder and re-run"
        )
      # The fold model's own softmax, not the calibrated one: confident learning's per-class
      # thresholds absorb miscalibration, and a temperature fitted on a small fold's val can
      # flatten a weak judge's probabilities to near-uniform (folds trained before calibration
      # saved only `probs`, which are raw).
      probs[test_idx] = z["raw_probs"] if "raw_probs" in z.files else z["probs"]
  return probs, fold_of
