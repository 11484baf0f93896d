"""Temperature scaling and the threshold from a target accuracy, on logits whose calibration is
known."""

import json
from dataclasses import asdict

import jax
import ml_collections
import numpy as np
import pytest

from fer_jax.evals import calibration, metrics
from tests.conftest import gaussian_logits


def _split(seed, sharpness, n=2000):
  rng = np.random.default_rng(seed)
  labels = rng.integers(0, 4, n)
  return labels, gaussian_logits(rng, labels, separation=1.5, sharpness=sharpness)


def _ece(labels, logits, temperature=1.0):
  return metrics.calibration(labels, calibration.probabilities(logits, temperature))["ece"]


@pytest.mark.parametrize("sharpness", [3.0, 0.3])
def test_temperature_undoes_over_and_underconfidence(sharpness):
  val_labels, val_logits = _split(0, sharpness)
  test_labels, test_logits = _split(1, sharpness)
  t = calibration.fit_temperature(val_logits, val_labels)
  # The calibrated logits are the raw ones / sharpness: T > 1 for an overconfident model, < 1 for
  # an underconfident one.
  assert t == pytest.approx(sharpness, rel=0.15)
  raw_ece, cal_ece = _ece(test_labels, test_logits), _ece(test_labels, test_logits, t)
  assert cal_ece < raw_ece / 3 and cal_ece < 0.03
  raw, cal = calibration.probabilities(test_logits), calibration.probabilities(test_logits, t)
  np.testing.assert_array_equal(
    raw.argmax(1), cal.argmax(1)
  )  # predictions, hence accuracy, unchanged
  assert calibration.nll(test_logits, test_labels, t) < calibration.nll(test_logits, test_labels)


def test_temperature_one_changes_nothing_and_a_calibrated_model_keeps_it():
  labels, logits = _split(2, 1.0)
  np.testing.assert_allclose(
    calibration.probabilities(logits, 1.0), jax.nn.softmax(logits, axis=-1), atol=1e-6
  )
  np.testing.assert_allclose(
    calibration.probabilities(logits), calibration.probabilities(logits, 1.0)
  )
  assert calibration.fit_temperature(logits, labels) == pytest.approx(1.0, abs=0.1)
  with pytest.raises(ValueError, match="empty"):
    calibration.fit_temperature(np.zeros((0, 4)), np.zeros(0, int))


def test_threshold_for_accuracy_is_the_lowest_reaching_the_target():
  # Confidences, most confident first: right, right, wrong, right, (tie) right + wrong, wrong.
  conf = np.array([0.95, 0.9, 0.8, 0.7, 0.6, 0.6, 0.5])
  right = np.array([1, 1, 0, 1, 1, 0, 0], bool)
  probs = np.stack([conf, 1 - conf], 1)
  labels = np.where(right, 0, 1)
  # Accuracy of the k most confident: 1, 1, 2/3, 3/4, -, 4/6 (the 0.6 tie goes in together), 4/7.
  assert calibration.threshold_for_accuracy(labels, probs, 0.75) == 0.7
  assert calibration.threshold_for_accuracy(labels, probs, 0.66) == 0.6
  assert calibration.threshold_for_accuracy(labels, probs, 0.5) == 0.5
  assert calibration.threshold_for_accuracy(labels, probs, 1.0) == 0.9
  assert (
    calibration.threshold_for_accuracy(1 - labels, probs, 0.5) is None
  )  # never reached: the caller answers nothing


def test_calibrate_fits_t_and_picks_the_threshold_on_calibrated_val():
  labels, logits = _split(3, 3.0)
  config = ml_collections.ConfigDict(
    {"confidence_threshold": 0.7, "threshold_target_accuracy": 0.0}
  )
  cal, record = calibration.calibrate(logits, labels, config)
  assert cal.threshold == 0.7 and record["threshold_target_accuracy"] is None
  assert record["temperature"] == cal.temperature > 1
  assert record["val_calibrated"]["ece"] < record["val_raw"]["ece"]
  assert record["val_calibrated"]["nll"] < record["val_raw"]["nll"]

  config.threshold_target_accuracy = 0.9
  cal, record = calibration.calibrate(logits, labels, config)
  probs = calibration.probabilities(logits, cal.temperature)
  assert record["val_rule"]["accuracy"] >= 0.9
  assert record["val_rule"] == metrics.confidence_rule(labels, probs, cal.threshold)
  below = np.max(probs, 1)[np.max(probs, 1) < cal.threshold].max()
  assert (
    metrics.confidence_rule(labels, probs, below)["accuracy"] < 0.9
  )  # no lower threshold reaches it

  top = np.argmax(probs.max(1))
  labels[top] = (
    probs[top].argmax() + 1
  ) % 4  # the most confident face wrong: 100 % is out of reach
  config.threshold_target_accuracy = 1.0
  assert calibration.calibrate(logits, labels, config)[0].threshold == 1.0  # so nothing is answered


def test_save_load_and_runs_without_calibration(tmp_path):
  (tmp_path / "checkpoints").mkdir()
  assert calibration.load(str(tmp_path), default_threshold=0.6) == calibration.Calibration(1.0, 0.6)
  calibration.save(str(tmp_path), calibration.Calibration(temperature=1.7, threshold=0.55))
  assert calibration.load(str(tmp_path), 0.6) == calibration.Calibration(1.7, 0.55)
  with_tta = calibration.Calibration(1.7, 0.55, tta=calibration.Calibration(1.4, 0.6))
  calibration.save(str(tmp_path), with_tta)
  assert calibration.load(str(tmp_path), 0.6) == with_tta
  for bad in (
    {"temperature": -1, "threshold": 0.5},
    {**asdict(with_tta), "tta": {"temperature": 0, "threshold": 0.5}},
  ):
    (tmp_path / calibration.FILE).write_text(json.dumps(bad))
    with pytest.raises(ValueError, match="calibration.json: unreadable calibration .*temperature"):
      calibration.load(str(tmp_path), 0.6)
  (tmp_path / calibration.FILE).write_text("{not json")
  with pytest.raises(ValueError, match="calibration.json: unreadable"):
    calibration.load(str(tmp_path), 0.6)
