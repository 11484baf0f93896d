"""Metrics against values worked out by hand (see the comments for the arithmetic)."""

import json
import math

import numpy as np
import pytest

from fer_jax.evals import metrics

CLASSES = ("a", "b", "c")
# true:  a a a a b b b c c c
# pred:  a a b c b b a c c b   -> confusion rows (true) [[2,1,1],[1,2,0],[0,1,2]]
LABELS = np.array([0, 0, 0, 0, 1, 1, 1, 2, 2, 2])
PREDS = np.array([0, 0, 1, 2, 1, 1, 0, 2, 2, 1])
# Top-class confidence per face; none sits on a 1/15 bin edge.
CONF = np.array([0.90, 0.78, 0.62, 0.52, 0.95, 0.75, 0.65, 0.85, 0.72, 0.42])


def _probs(preds, conf, k=3):
  probs = np.tile(((1 - conf) / (k - 1))[:, None], (1, k))
  probs[np.arange(len(preds)), preds] = conf
  return probs


def test_hand_worked_three_class_example():
  m = metrics.classification_metrics(LABELS, _probs(PREDS, CONF), CLASSES, 0.7)
  json.dumps(m)  # must be serialisable as-is
  assert m["confusion"] == [[2, 1, 1], [1, 2, 0], [0, 1, 2]]
  np.testing.assert_allclose(
    m["confusion_normalized"], [[0.5, 0.25, 0.25], [1 / 3, 2 / 3, 0], [0, 1 / 3, 2 / 3]]
  )
  assert m["accuracy"] == pytest.approx(0.6)
  # precision = tp / column sum (3, 4, 3); recall = tp / row sum (4, 3, 3)
  pc = m["per_class"]
  assert [pc[c]["precision"] for c in CLASSES] == pytest.approx([2 / 3, 1 / 2, 2 / 3])
  assert [pc[c]["recall"] for c in CLASSES] == pytest.approx([1 / 2, 2 / 3, 2 / 3])
  assert [pc[c]["accuracy"] for c in CLASSES] == pytest.approx([1 / 2, 2 / 3, 2 / 3])
  # f1(a) = f1(b) = 2 (2/3)(1/2) / (7/6) = 4/7; f1(c) = 2/3
  assert [pc[c]["f1"] for c in CLASSES] == pytest.approx([4 / 7, 4 / 7, 2 / 3])
  assert [pc[c]["support"] for c in CLASSES] == [4, 3, 3]
  assert m["macro_f1"] == pytest.approx((4 / 7 + 4 / 7 + 2 / 3) / 3)
  assert m["weighted_f1"] == pytest.approx((4 * 4 / 7 + 3 * 4 / 7 + 3 * 2 / 3) / 10)
  # Off-diagonal rates above 10 %, largest first (ties keep row order).
  assert [(x["true"], x["predicted"]) for x in m["main_confusions"]] == [
    ("b", "a"),
    ("c", "b"),
    ("a", "b"),
    ("a", "c"),
  ]
  assert m["main_confusions"][0]["rate"] == pytest.approx(1 / 3)


def test_calibration_and_confidence_rule():
  m = metrics.classification_metrics(LABELS, _probs(PREDS, CONF), CLASSES, 0.7)
  # Bins of 1/15: {.78, .75} right -> 2 x .235; {.62, .65} wrong -> 2 x .635; singletons
  # .90 r .10, .52 w .52, .95 r .05, .85 r .15, .72 r .28, .42 w .42; sum 3.26 over 10 faces.
  assert m["calibration"]["ece"] == pytest.approx(0.326)
  bins = m["calibration"]["bins"]
  assert len(bins) == 15 and sum(b["count"] for b in bins) == 10
  assert bins[11]["count"] == 2 and bins[11]["confidence"] == pytest.approx(0.765)
  assert bins[0]["confidence"] is None
  # Answered at >= 0.7: .90 .78 .95 .75 .85 .72, all right.
  rule = m["confidence_rule"]
  assert (rule["coverage"], rule["accuracy"], rule["answered"]) == (pytest.approx(0.6), 1.0, 6)
  curve = m["coverage_curve"]
  assert [c["threshold"] for c in curve] == pytest.approx(np.arange(20) * 0.05)
  assert (curve[0]["coverage"], curve[0]["accuracy"]) == (1.0, pytest.approx(0.6))
  assert (curve[-1]["coverage"], curve[-1]["accuracy"]) == (pytest.approx(0.1), 1.0)
  none_answered = metrics.confidence_rule(LABELS, _probs(PREDS, CONF), 0.99)
  assert none_answered["coverage"] == 0 and none_answered["accuracy"] is None


def test_zero_division_and_bad_input():
  # Class c is never true and never predicted; class b is never predicted.
  labels = np.array([0, 0, 1])
  m = metrics.classification_metrics(
    labels, _probs(np.array([0, 0, 0]), np.full(3, 0.8)), CLASSES, 0.7
  )
  assert m["per_class"]["b"] == {
    "precision": 0.0,
    "recall": 0.0,
    "f1": 0.0,
    "support": 1,
    "accuracy": 0.0,
  }
  assert m["per_class"]["c"]["support"] == 0 and m["confusion_normalized"][2] == [0, 0, 0]
  assert m["per_class"]["a"]["precision"] == pytest.approx(2 / 3)
  with pytest.raises(ValueError, match="3 classes"):
    metrics.classification_metrics(labels, np.ones((3, 4)) / 4, CLASSES, 0.7)
  with pytest.raises(ValueError, match="labels must lie"):
    metrics.classification_metrics(np.array([0, 3, 1]), np.ones((3, 3)) / 3, CLASSES, 0.7)


@pytest.mark.parametrize(
  "gap,name",
  [
    (15.1, "severe overfit"),
    (15.0, "high overfit"),
    (14.6, "high overfit"),
    (10.0, "moderate overfit"),
    (5.0, "healthy"),
    (3.6, "healthy"),
    (0.0, "healthy"),
    (-5.7, "negative (check data / strong regularisation)"),
  ],
)
def test_gap_diagnosis_bands(gap, name):
  assert metrics.gap_diagnosis(gap) == name


def test_negative_gap_read_with_the_eval_mode_gap():
  # Model 0 in the study: -5.7 points with dropout on; in eval mode train is ahead of val.
  assert metrics.gap_diagnosis(-5.7, 2.0) == metrics.GAP_NEGATIVE_TRAIN_MODE
  assert "check data" not in metrics.gap_diagnosis(-5.7, 0.0)
  assert "check data" in metrics.gap_diagnosis(-5.7, -3.0)
  assert (
    metrics.gap_diagnosis(12.0, -1.0) == "high overfit"
  )  # the bands read the running gap, as the study


def test_nll_and_brier():
  probs = np.array([[0.7, 0.2, 0.1], [0.5, 0.25, 0.25]])
  cal = metrics.calibration(np.array([0, 1]), probs)
  assert cal["nll"] == pytest.approx(-(math.log(0.7) + math.log(0.25)) / 2)
  # (0.3² + 0.2² + 0.1²) and (0.5² + 0.75² + 0.25²)
  assert cal["brier"] == pytest.approx((0.14 + 0.875) / 2)
  assert metrics.calibration(np.array([0]), np.array([[0.0, 1.0, 0.0]]))["nll"] == pytest.approx(
    -math.log(metrics.PROB_FLOOR)
  )


def test_bootstrap_interval():
  labels = np.zeros(400, np.int64)
  preds = np.where(np.arange(400) < 300, 0, 1)  # 75 % right
  ci = metrics.bootstrap_accuracy_ci(labels, preds, n=1000, seed=0)
  # Normal approximation: 0.75 +- 1.96 sqrt(.75 .25 / 400) = 0.75 +- 0.042.
  assert ci["accuracy"] == 0.75
  assert 0.70 < ci["low"] < 0.725 and 0.775 < ci["high"] < 0.80
  assert ci == metrics.bootstrap_accuracy_ci(labels, preds, n=1000, seed=0)
  perfect = metrics.bootstrap_accuracy_ci(labels, labels)
  assert perfect["low"] == perfect["high"] == 1.0
  # Several seeds on one test set: examples are resampled jointly, accuracy averaged over seeds.
  two = metrics.bootstrap_accuracy_ci(labels, np.stack([preds, labels]))
  assert two["accuracy"] == pytest.approx(0.875) and two["low"] < 0.875 < two["high"]


def test_mcnemar_exact_and_chi_square():
  labels = np.zeros(20, np.int64)
  # A right / B wrong on 1 face, A wrong / B right on 6, both right on the rest.
  a = np.array([0] * 1 + [1] * 6 + [0] * 13)
  b = np.array([1] * 1 + [0] * 6 + [0] * 13)
  r = metrics.mcnemar(labels, a, b)
  # Exact: 2 * (C(7,0) + C(7,1)) / 2^7 = 0.125
  assert (r["b"], r["c"], r["method"]) == (1, 6, "exact")
  assert r["p_value"] == pytest.approx(0.125)
  labels = np.zeros(100, np.int64)
  a = np.array([0] * 30 + [1] * 10 + [0] * 60)
  b = np.array([1] * 30 + [0] * 10 + [0] * 60)
  r = metrics.mcnemar(labels, a, b)
  # (|30 - 10| - 1)^2 / 40 = 9.025; chi2(1) survival = 2 (1 - Phi(3.00416)) = 0.002662
  assert r["method"] == "chi2" and r["statistic"] == pytest.approx(9.025)
  assert r["p_value"] == pytest.approx(0.002662, rel=1e-3)
  same = metrics.mcnemar(labels, a, a)
  assert (same["b"], same["c"], same["p_value"]) == (0, 0, 1.0)
  assert not math.isnan(r["p_value"])
