"""The judge of `data_tools.mislabel`: out-of-fold class probabilities and confident learning.

out_of_fold_probs trains a config once per stratified fold (fer_jax.train.loop) so that every
image gets class probabilities from a model that never saw it nor a copy of it (fold_parts keeps
duplicate groups whole); judge_quality reports how good that judge is. Confident learning
(Northcutt et al. 2021, through `cleanlab`: class_thresholds, confident_joint, estimate_joint)
turns the probabilities into the suspects find_suspects returns.
"""

import os

import cleanlab.count
import cleanlab.filter
import numpy as np

from fer_jax import data

from . import common, stratify

# Below these the fold models' out-of-fold predictions are called a weak judge.
WEAK_ACCURACY = 0.6
WEAK_RECALL = 0.3


# ---------------------------------------------------------------------------- confident learning
# cleanlab (the field's reference implementation of Northcutt et al. 2021) does the counting; on
# simulated judges (4 classes, 62-96 % accurate, 5-20 % planted flips) it matched this module's
# former hand-written NumPy to within 0.1 point of precision and recall (docs/data_tools.md).


def class_thresholds(probs, labels):
  """t_j = mean p_j over the images labelled j."""
  return cleanlab.count.get_confident_thresholds(np.asarray(labels), np.asarray(probs, np.float64))


def confident_joint(probs, labels):
  """C [K, K]: C[i, j] counts the images labelled i whose most probable class among those
  reaching their threshold (p_j >= t_j) is j; images reaching none are not counted."""
  return cleanlab.count.compute_confident_joint(
    np.asarray(labels), np.asarray(probs, np.float64), calibrate=False
  )


def estimate_joint(probs, labels):
  """Q [K, K]: the estimated joint distribution of (given label, true label): each row of the
  confident joint calibrated to the number of images carrying that label, the whole normalised
  to sum to 1 (Northcutt et al. 2021, eq. 3)."""
  return cleanlab.count.estimate_joint(np.asarray(labels), np.asarray(probs, np.float64))


def find_suspects(probs, labels):
  """Confident learning -> Suspects.

  The estimated joint Q of given and true labels says how many images labelled i are really
  j: n * Q[i, j]. For each such cell, that many images labelled i with the largest margin
  p_j - p_i are flagged (cleanlab's prune by noise rate), so the count flagged follows the
  noise estimate 1 - trace(Q), not every image under a threshold. The suggested class is the
  most probable other class.
  """
  probs, labels = np.asarray(probs, np.float64), np.asarray(labels)
  n = len(labels)
  rows = np.arange(n)
  given = probs[rows, labels]
  others = probs.copy()
  others[rows, labels] = -np.inf
  best_other = np.argmax(others, axis=1)
  # n_jobs=1: cleanlab's worker pool would fork a process that has JAX's threads running
  flagged = cleanlab.filter.find_label_issues(
    labels, probs, filter_by="prune_by_noise_rate", n_jobs=1
  )
  suggested = np.where(flagged, best_other, -1)
  margin = np.where(flagged, probs[rows, best_other] - given, np.nan)
  found = np.flatnonzero(flagged)
  # worst first: largest margin, then least self-confidence, then index (deterministic)
  ranked = found[np.lexsort((found, given[found], -margin[found]))]
  return Suspects(
    ranked, suggested, margin, class_thresholds(probs, labels), estimate_joint(probs, labels)
  )


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


def fold_parts(labels, groups, folds, val_fraction, seed, split_seed):
  """Per fold: {"train", "val", "test"} image indices. The folds and, within the other folds,
  the val hold-out are stratified by class (stratify.assign_parts) with each duplicate group
  (equal ids in `groups`) in one part: FER2013 holds many copies of a photograph, and a copy in
  the training folds lets the model recall the label instead of judging it (on FER2013, folds
  by class alone put a copy of 16.6 % of the faces in their own model's training set, which
  then scored 86 % against 72 % for the rest; docs/data_tools.md)."""
  labels, groups = np.asarray(labels), np.asarray(groups)
  fold_of = stratify.assign_parts(labels, groups, [1 / folds] * folds, seed)
  parts = []
  for f in range(folds):
    rest = np.flatnonzero(fold_of != f)
    hold = stratify.assign_parts(
      labels[rest], groups[rest], [1 - val_fraction, val_fraction], split_seed
    )
    test = np.flatnonzero(fold_of == f)
    parts.append({"train": rest[hold == 0], "val": rest[hold == 1], "test": test})
  return parts, fold_of


def out_of_fold_probs(images, labels, groups, classes, config, folds, seed, workdir):
  """(class probabilities [N, K] for every image from the fold model that did not train on it
  or on a copy of it (`groups`: duplicate group id per image), each image's fold [N])."""
  import jax

  from fer_jax.train import loop  # JAX starts here, only when a model is trained

  if not jax.config.jax_compilation_cache_dir:
    # The fold models share their programs (same model, same shapes): compile them once.
    jax.config.update(
      "jax_compilation_cache_dir", os.path.join(os.path.dirname(workdir), "jax_cache")
    )
  by_fold, fold_of = fold_parts(
    labels, groups, folds, config.data.val_fraction, seed, config.data.split_seed
  )
  probs = np.zeros((len(labels), len(classes)), np.float32)
  for f, parts in enumerate(by_fold):
    test_idx = parts["test"]
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
