"""Classification metrics, calibration and paired statistics, in NumPy.

Everything returned is JSON-serialisable (Python floats, ints, lists, dicts; `None` where a
value is undefined, e.g. the accuracy of answered faces when no face is answered).
Zero-division conventions (as scikit-learn's `zero_division=0`): a class that is never
predicted has precision 0, a class with no true examples has recall 0, and F1 is 0 when
precision + recall is 0. Macro averages run over every configured class, present or not.
"""

import numpy as np

ECE_BINS = 15  # equal-width confidence bins (Guo et al. 2017)
MAIN_CONFUSION_RATE = 0.10  # the study listed misclassifications above 10 % of a class
COVERAGE_THRESHOLDS = tuple(round(0.05 * i, 2) for i in range(20))  # 0.00 .. 0.95

# The study's gap bands: a gap (points of train - val accuracy) above the bound gets the name.
OVERFIT_BANDS = ((15.0, "severe overfit"), (10.0, "high overfit"), (5.0, "moderate overfit"))
GAP_HEALTHY = "healthy"  # 0 <= gap <= 5
GAP_NEGATIVE = (
  "negative (check data / strong regularisation)"  # gap < 0, no eval-mode figure to tell why
)
# The running train accuracy is measured with dropout and augmentation on; when train accuracy in
# eval mode is not below val, they explain a negative gap and the data needs no check.
GAP_NEGATIVE_TRAIN_MODE = "negative in train mode only: dropout / augmentation, eval-mode gap >= 0"
GAP_NEGATIVE_EVAL_MODE = "negative in eval mode too: check data (val easier than train?)"
PROB_FLOOR = 1e-12  # log(0) guard for the NLL of probabilities that underflowed in float32


def _safe_div(num, den):
  """num / den elementwise, 0 where den is 0."""
  num = np.asarray(num, np.float64)
  den = np.asarray(den, np.float64)
  return np.divide(num, den, out=np.zeros_like(num), where=den != 0)


def _check(labels, probs, classes):
  labels = np.asarray(labels)
  probs = np.asarray(probs, np.float64)
  if labels.ndim != 1 or probs.ndim != 2 or len(labels) != len(probs):
    raise ValueError(
      f"labels [N] and probs [N, K] expected; got shapes {labels.shape} and {probs.shape}"
    )
  if probs.shape[1] != len(classes):
    raise ValueError(f"probs has {probs.shape[1]} columns but {len(classes)} classes were given")
  if len(labels) and (labels.min() < 0 or labels.max() >= len(classes)):
    raise ValueError(f"labels must lie in [0, {len(classes)}); got {labels.min()}..{labels.max()}")
  return labels.astype(np.int64), probs


def confusion_matrix(labels, preds, num_classes):
  """Counts [K, K]; rows are true classes, columns predicted ones."""
  cm = np.zeros((num_classes, num_classes), np.int64)
  np.add.at(cm, (labels, preds), 1)
  return cm


def calibration(labels, probs, num_bins=ECE_BINS):
  """Expected calibration error, reliability bins, NLL and Brier score of the probabilities.

  Bins are right-closed, (lo, hi], with confidence 0 put in the first. ECE is the
  count-weighted mean of |accuracy - confidence| over the bins (top class only); NLL is the
  mean -log p(true class); Brier is the mean over faces of sum_k (p_k - [k = true])^2.
  """
  labels, probs = np.asarray(labels), np.asarray(probs, np.float64)
  n = len(labels)
  true_p = probs[np.arange(n), labels]
  nll = float(-np.mean(np.log(np.maximum(true_p, PROB_FLOOR)))) if n else 0.0
  brier = float(np.mean(np.sum(probs**2, axis=1) - 2 * true_p + 1)) if n else 0.0
  conf = probs.max(axis=1)
  correct = probs.argmax(axis=1) == labels
  idx = np.clip(np.ceil(conf * num_bins).astype(np.int64) - 1, 0, num_bins - 1)
  counts = np.bincount(idx, minlength=num_bins)
  mean_conf = _safe_div(np.bincount(idx, conf, num_bins), counts)
  mean_acc = _safe_div(np.bincount(idx, correct, num_bins), counts)
  ece = float(np.sum(counts * np.abs(mean_acc - mean_conf)) / max(len(labels), 1))
  bins = [
    {
      "lower": i / num_bins,
      "upper": (i + 1) / num_bins,
      "confidence": float(mean_conf[i]) if counts[i] else None,
      "accuracy": float(mean_acc[i]) if counts[i] else None,
      "count": int(counts[i]),
    }
    for i in range(num_bins)
  ]
  return {"ece": ece, "nll": nll, "brier": brier, "num_bins": num_bins, "bins": bins}


def confidence_rule(labels, probs, threshold):
  """The deployment rule: answer only faces whose top probability is >= threshold.

  Returns coverage (fraction answered) and the accuracy of the answered faces
  (None when none is answered).
  """
  conf = probs.max(axis=1)
  correct = probs.argmax(axis=1) == labels
  answered = conf >= threshold
  n = int(answered.sum())
  return {
    "threshold": float(threshold),
    "coverage": n / max(len(labels), 1),
    "answered": n,
    "accuracy": float(correct[answered].mean()) if n else None,
  }


def classification_metrics(labels, probs, classes, confidence_threshold):
  """All test-set metrics of one run, from the true labels and the predicted probabilities."""
  labels, probs = _check(labels, probs, classes)
  k = len(classes)
  preds = probs.argmax(axis=1)
  cm = confusion_matrix(labels, preds, k)
  tp = np.diag(cm)
  support = cm.sum(axis=1)
  precision = _safe_div(tp, cm.sum(axis=0))
  recall = _safe_div(tp, support)
  f1 = _safe_div(2 * precision * recall, precision + recall)
  cm_norm = _safe_div(cm, support[:, None])
  per_class = {
    name: {
      "precision": float(precision[i]),
      "recall": float(recall[i]),
      "f1": float(f1[i]),
      "support": int(support[i]),
      "accuracy": float(recall[i]),
    }
    for i, name in enumerate(classes)
  }
  confusions = [
    {"true": classes[t], "predicted": classes[p], "rate": float(cm_norm[t, p])}
    for t in range(k)
    for p in range(k)
    if t != p and cm_norm[t, p] > MAIN_CONFUSION_RATE
  ]
  confusions.sort(key=lambda m: -m["rate"])
  n = len(labels)
  return {
    "num_examples": n,
    "accuracy": float(tp.sum() / n) if n else 0.0,
    "macro_f1": float(f1.mean()),
    "weighted_f1": float(np.sum(f1 * support) / n) if n else 0.0,
    "per_class": per_class,
    "confusion": cm.tolist(),
    "confusion_normalized": cm_norm.tolist(),
    "main_confusions": confusions,
    **confidence_metrics(labels, probs, confidence_threshold),
  }


def confidence_metrics(labels, probs, confidence_threshold):
  """What depends on the confidences (not only on the predictions): calibration and the rule."""
  return {
    "calibration": calibration(labels, probs),
    "confidence_rule": confidence_rule(labels, probs, confidence_threshold),
    "coverage_curve": [confidence_rule(labels, probs, t) for t in COVERAGE_THRESHOLDS],
  }


def gap_diagnosis(gap_points, eval_gap_points=None):
  """The study's reading of the train - val accuracy gap, in percentage points.

  `gap_points` uses the running train accuracy (train mode), as the study did; a negative one
  is read with `eval_gap_points` (train accuracy in eval mode - val) when it is known.
  """
  for bound, name in OVERFIT_BANDS:
    if gap_points > bound:
      return name
  if gap_points >= 0:
    return GAP_HEALTHY
  if eval_gap_points is None:
    return GAP_NEGATIVE
  return GAP_NEGATIVE_TRAIN_MODE if eval_gap_points >= 0 else GAP_NEGATIVE_EVAL_MODE


def bootstrap_accuracy_ci(labels, preds, n=1000, seed=0, level=0.95):
  """Percentile bootstrap interval of the accuracy, resampling test examples with replacement.

  `preds` is [N], or [S, N] for S seeds of one model on the same test set: then the examples
  are resampled jointly and the accuracy is averaged over the seeds, so the interval is that
  of the seed-mean accuracy under test-set sampling.
  """
  correct = np.atleast_2d(np.asarray(preds) == np.asarray(labels))
  if correct.shape[1] == 0:
    raise ValueError("bootstrap_accuracy_ci needs at least one example")
  rng = np.random.default_rng(seed)
  per_example = correct.mean(axis=0)  # the seed-mean is linear, so resample its per-example value
  # Chunks of 100 resamples keep the index matrix small for large test sets.
  accs = np.concatenate(
    [
      per_example[rng.integers(0, per_example.size, (min(100, n - i), per_example.size))].mean(
        axis=1
      )
      for i in range(0, n, 100)
    ]
  )
  tail = (1.0 - level) / 2 * 100
  low, high = np.percentile(accs, [tail, 100 - tail])
  return {
    "accuracy": float(per_example.mean()),
    "low": float(low),
    "high": float(high),
    "level": level,
    "n": n,
  }


# Below this many discordant pairs McNemar uses the exact binomial test; the chi-square
# approximation is the usual choice above it (Edwards' continuity correction).
MCNEMAR_EXACT_BELOW = 25


def mcnemar(labels, preds_a, preds_b):
  """McNemar's paired test: do models A and B err on different test examples more than by chance?

  b = A right and B wrong, c = A wrong and B right. Two-sided p-value: the exact binomial test
  of b against b + c at p = 0.5 for few discordant pairs, otherwise the chi-square (1 dof) test
  of Edwards' continuity-corrected statistic (scipy.stats).
  """
  # Imported here: scipy.stats costs 1.6 s of CPU, which predict and serve (they import this
  # module through calibration) would pay at every start without using it.
  from scipy import stats

  labels = np.asarray(labels)
  right_a = np.asarray(preds_a) == labels
  right_b = np.asarray(preds_b) == labels
  b = int(np.sum(right_a & ~right_b))
  c = int(np.sum(~right_a & right_b))
  m = b + c
  if m == 0:
    return {"b": 0, "c": 0, "statistic": 0.0, "p_value": 1.0, "method": "exact"}
  if m < MCNEMAR_EXACT_BELOW:
    return {
      "b": b,
      "c": c,
      "statistic": float(min(b, c)),
      "p_value": float(stats.binomtest(b, m).pvalue),
      "method": "exact",
    }
  stat = (abs(b - c) - 1.0) ** 2 / m
  return {
    "b": b,
    "c": c,
    "statistic": stat,
    "p_value": float(stats.chi2.sf(stat, 1)),
    "method": "chi2",
  }
