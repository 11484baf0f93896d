"""Test-time augmentation (config.eval.tta, fer_jax/evals/tta.py): the views, a flip-invariant
model gains nothing from flip TTA, another one does change, and the evaluators report both."""

import os

import jax
import numpy as np
import pytest

from fer_jax import config_loading, data, models
from fer_jax.evals import calibration, tta
from fer_jax.evals import common as evals_common
from fer_jax.platform import sharding
from fer_jax.report import run_report
from fer_jax.report import summary as report_summary
from fer_jax.train import feeding, steps
from tests.conftest import TEST_CACHE_DIR

# A tiny Model 0 with a global-average-pooled head: with kernels that are mirror-symmetric, every
# layer commutes with a horizontal flip (3x3 'same' convs, ReLU, BN, 2x2 pools on even widths)
# and the pooling forgets it, so the model's output is invariant to the flip.
OVERRIDES = {
  "model.widths": (4, 8, 8),
  "model.dense_widths": (16,),
  "model.head_pool": "gap",
  "model.conv_impl": "xla",
  "data.builtin_per_class": 32,
  "eval.batch_size": 16,
  "data.cache_dir": TEST_CACHE_DIR,
}


def test_views():
  images = np.arange(2 * 6 * 6).reshape(2, 6, 6, 1).astype(np.uint8)
  np.testing.assert_array_equal(tta.view(images, True, 0, 0), images[:, :, ::-1])
  down = tta.view(images, False, 2, 0)  # moved 2 pixels down, the top row repeated
  np.testing.assert_array_equal(down[:, 2:], images[:, :-2])
  np.testing.assert_array_equal(down[:, :2], np.repeat(images[:, :1], 2, axis=1))
  left = tta.view(images, False, 0, -2)
  np.testing.assert_array_equal(left[:, :, :-2], images[:, :, 2:])
  np.testing.assert_array_equal(left[:, :, -2:], np.repeat(images[:, :, -1:], 2, axis=2))
  assert [len(tta.VIEWS[m]) for m in ("none", "flip", "flip+shifts")] == [1, 2, 10]
  distinct = {tta.view(images, *v).tobytes() for v in tta.VIEWS["flip+shifts"]}
  assert len(distinct) == 10


def _evaluate(mode, symmetric, tmp_path):
  """The calibration and test evaluators on an untrained model's weights, with `mode` TTA."""
  config = config_loading.load_config("configs/model_0.py:quick", {**OVERRIDES, "eval.tta": mode})
  ds = data.load(config.data)
  model = models.build(config.model, len(ds.classes))
  state, _, _ = steps.create_state(config, model, (48, 48, 1), steps_per_epoch=1)
  # an untrained model is near uniform: a larger output layer makes it confident (and the views'
  # differences visible)
  sharpen = lambda k: 50 * k if k.ndim == 2 and k.shape[-1] == 4 else k  # noqa: E731
  state = state.replace(params=jax.tree.map(sharpen, state.params))
  if symmetric:  # conv kernels [h, w, in, out]: the mean of each and its mirror
    params = jax.tree.map(lambda k: (k + k[:, ::-1]) / 2 if k.ndim == 4 else k, state.params)
    state = state.replace(params=params)
  mesh = sharding.make_mesh()
  feed = feeding.Feed.for_run(config, mesh, ds, steps_per_epoch=1)
  evaluate = lambda split: feeding.EvalPass(config, model, feed, 4)(state, split)  # noqa: E731
  summary = {}
  os.makedirs(tmp_path / "checkpoints")
  ctx = evals_common.Context(config, ds, evaluate, [], str(tmp_path), True, summary)
  evaluators = [(n, e) for n, e in evals_common.from_config(config) if n != "train_gap"]
  evals_common.run_all(evaluators, ctx)
  with np.load(tmp_path / "test_predictions.npz") as npz:
    return summary, dict(npz), ds, evaluate


def test_a_flip_invariant_model_gains_nothing_from_flip_tta(tmp_path):
  summary, npz, _, _ = _evaluate("flip", symmetric=True, tmp_path=tmp_path)
  assert npz["raw_probs"].max() > 0.5
  np.testing.assert_allclose(npz["tta_raw_probs"], npz["raw_probs"], atol=1e-5)
  np.testing.assert_allclose(npz["tta_probs"], npz["probs"], atol=1e-4)
  assert summary["test_tta"]["accuracy"] == summary["test"]["accuracy"]
  tta_cal = summary["calibration"]["tta"]
  assert tta_cal["accuracy"] == tta_cal["plain_accuracy"]
  assert tta_cal["temperature"] == pytest.approx(summary["calibration"]["temperature"], rel=1e-3)


@pytest.mark.parametrize("mode", ["flip", "flip+shifts"])
def test_tta_changes_another_model_and_both_figures_are_reported(tmp_path, mode):
  summary, npz, ds, evaluate = _evaluate(mode, symmetric=False, tmp_path=tmp_path)
  assert np.abs(npz["tta_raw_probs"] - npz["raw_probs"]).max() > 1e-3  # 100x the symmetric case
  assert summary["test_tta"]["views"] == mode and summary["test_tta"]["num_views"] == len(
    tta.VIEWS[mode]
  )
  # The TTA temperature is fitted on the averaged val probabilities, and applied to test's.
  _, val_log_probs = tta.evaluate(evaluate, ds.splits["val"], mode)
  t = calibration.fit_temperature(val_log_probs, ds.splits["val"].labels)
  assert summary["calibration"]["tta"]["temperature"] == pytest.approx(t)
  assert float(npz["tta_temperature"]) == pytest.approx(t)
  with np.load(tmp_path / "val_predictions.npz") as val:  # what it was fitted on, for ensembles
    np.testing.assert_allclose(val["tta_raw_probs"], np.exp(val_log_probs), atol=1e-6)
    np.testing.assert_allclose(
      val["tta_probs"], calibration.probabilities(val_log_probs, t), atol=1e-6
    )
  _, test_log_probs = tta.evaluate(evaluate, ds.splits["test"], mode)
  np.testing.assert_allclose(
    npz["tta_probs"], calibration.probabilities(test_log_probs, t), atol=1e-6
  )
  tta_accuracy = np.mean(npz["tta_probs"].argmax(1) == npz["labels"])
  assert summary["test_tta"]["accuracy"] == pytest.approx(tta_accuracy)
  assert summary["test"]["accuracy"] == pytest.approx(
    np.mean(npz["probs"].argmax(1) == npz["labels"])
  )
  # the closing lines and the run report carry both figures
  (line,) = report_summary.tta_lines(summary)
  assert f"with TTA ({mode}, {len(tta.VIEWS[mode])} views): test accuracy" in line
  rows = dict((r[0], r[1]) for r in run_report.tta_rows(summary))
  assert rows[f"test accuracy with TTA {mode}, {len(tta.VIEWS[mode])} views"].endswith("%")


def test_without_tta_nothing_is_added(tmp_path):
  summary, npz, _, _ = _evaluate("none", symmetric=False, tmp_path=tmp_path)
  assert "test_tta" not in summary and "tta" not in summary["calibration"]
  assert "tta_probs" not in npz and report_summary.tta_lines(summary) == []
  with np.load(tmp_path / "val_predictions.npz") as val:
    assert "tta_probs" not in val.files and "probs" in val.files
  assert len(str(npz["fingerprint"])) == 16
