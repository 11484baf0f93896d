"""Weight averaging (config.optim.ema_decay, fer_jax/train/ema.py): the formula, the train step,
the evaluations, checkpoints and resume, vectorized members and the scorer."""

import os

import flax
import jax
import numpy as np
import pytest

from fer_jax import config_loading, models
from fer_jax.report import study
from fer_jax.train import checkpoint, ema, loop, members, steps
from tests.conftest import TEST_CACHE_DIR, read_history

DECAY = 0.9
OVERRIDES = {
  "model.widths": (4, 8, 8),
  "model.dense_widths": (16,),
  "data.builtin_per_class": 16,
  "train.batch_size": 8,
  "eval.batch_size": 8,
  "train.log_every_steps": 4,
  "train.epochs": 3,
  "train.early_stopping": False,
  "optim.ema_decay": DECAY,
  "eval.tta": "flip",  # end to end with test-time augmentation too
  "train.seed": 1,
  "eval.report": False,  # report.md and its plots: seconds a run, checked in test_train
  "data.cache_dir": TEST_CACHE_DIR,
}


def _config(**changes):
  return config_loading.load_config("configs/model_0.py:quick", {**OVERRIDES, **changes})


def _assert_trees_close(got, want, **tolerance):
  assert jax.tree.structure(got) == jax.tree.structure(want)
  for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
    np.testing.assert_allclose(np.asarray(g), np.asarray(w), **tolerance)


def test_the_update_is_the_ema_formula_and_decay_zero_gives_the_weights():
  rng = np.random.default_rng(0)
  weights = [
    {"params": {"w": rng.normal(size=3).astype(np.float32)}, "batch_stats": {}} for _ in range(6)
  ]
  average, want = ema.init(weights[0], DECAY), weights[0]["params"]["w"]
  for t, w in enumerate(weights[1:]):
    d = min(DECAY, (1 + t) / (10 + t))  # TF's warm-up: 0.1, 0.18, 0.25, ...
    want = d * want + (1 - d) * w["params"]["w"]
    average = ema.update(average, w, t, DECAY)
    np.testing.assert_allclose(average["params"]["w"], want, rtol=1e-6)
    # decay 0: the average is the new weights exactly
    np.testing.assert_array_equal(ema.update(average, w, t, 0.0)["params"]["w"], w["params"]["w"])
  assert ema.init(weights[0], 0.0) is None and ema.update(None, weights[1], 0, 0.0) is None


def test_train_steps_keep_the_average_and_evaluations_use_it():
  config = _config(**{"optim.ema_decay": 0.5})
  model = models.build(config.model, 4)
  state, tx, labels = steps.create_state(config, model, (48, 48, 1), steps_per_epoch=10)
  train_step = steps.make_train_step(config, model, tx, 4, param_labels=labels)
  rng = np.random.default_rng(0)
  x = rng.integers(0, 256, (8, 48, 48, 1), dtype=np.uint8)
  y = rng.integers(0, 4, 8).astype(np.int32)
  want = jax.device_get(state.variables())
  for t in range(4):
    state, _ = train_step(state, x, y, jax.random.key(0))
    d = min(0.5, (1 + t) / (10 + t))
    new = jax.device_get(state.variables())
    want = jax.tree.map(lambda a, w, d=d: d * a + (1 - d) * w, want, new)
  _assert_trees_close(state.ema, want, rtol=1e-5, atol=1e-7)
  # the averaged BatchNorm statistics moved too
  assert jax.tree.leaves(state.ema["batch_stats"])
  eval_step = steps.make_eval_step(config, model, 4)
  _, logits = eval_step(state, x, y, np.ones(8, np.float32))
  averaged = models.apply(model, state.ema, models.to_float(x), train=False)
  live = models.apply(model, state.variables(), models.to_float(x), train=False)
  np.testing.assert_allclose(logits, averaged, rtol=1e-5, atol=1e-6)
  assert not np.allclose(averaged, live, atol=1e-4)
  plain, _, _ = steps.create_state(_config(**{"optim.ema_decay": 0.0}), model, (48, 48, 1), 10)
  assert plain.ema is None and plain.eval_variables() is not None
  _assert_trees_close(plain.eval_variables(), plain.variables(), rtol=0, atol=0)


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory):
  """An uninterrupted 3-epoch run with EMA."""
  workdir = str(tmp_path_factory.mktemp("ema") / "reference")
  return workdir, loop.train_and_evaluate(_config(**{"eval.report": True}), workdir)


def test_interrupted_then_resumed_equals_uninterrupted(reference_run, tmp_path, monkeypatch):
  ref_dir, ref = reference_run
  workdir = str(tmp_path / "interrupted")
  saves = []

  def stop_after_two_epochs():  # what a Ctrl-C after epoch 2's save does (loop.save_epoch)
    saves.append(1)
    if len(saves) == 2:
      raise KeyboardInterrupt

  monkeypatch.setattr(loop.run_errors, "stop_if_interrupted", stop_after_two_epochs)
  with pytest.raises(KeyboardInterrupt):
    loop.train_and_evaluate(_config(), workdir)
  monkeypatch.undo()
  assert not os.path.exists(os.path.join(workdir, "metrics.json"))
  got = loop.train_and_evaluate(_config(), workdir)
  for key in ("train_loss", "val_loss", "val_accuracy"):
    np.testing.assert_allclose(
      [r[key] for r in read_history(workdir)], [r[key] for r in read_history(ref_dir)], rtol=1e-6
    )
  assert got["weights"] == ref["weights"] == f"ema {DECAY:g}"
  assert got["test"]["accuracy"] == ref["test"]["accuracy"]
  assert got["calibration"]["temperature"] == pytest.approx(ref["calibration"]["temperature"])


def test_the_best_checkpoint_holds_the_average_and_the_scorer_reads_it(reference_run):
  ref_dir, summary = reference_run
  config = _config()
  like, _, _ = steps.create_state(config, models.build(config.model, 4), (48, 48, 1), 10)
  directory = os.path.join(ref_dir, "checkpoints")
  ckpts = checkpoint.RunCheckpoints(directory)
  best, _ = ckpts.restore_best(like, summary["best"]["epoch"])
  ckpts.close()
  assert best.ema is not None
  scored = checkpoint.restore_best_variables(directory, like.variables())
  _assert_trees_close(scored, best.ema, rtol=0, atol=0)
  live = zip(jax.tree.leaves(scored["params"]), jax.tree.leaves(best.params))
  assert not all(np.allclose(a, b) for a, b in live)  # the average, not the live weights
  report = open(os.path.join(ref_dir, "report.md")).read()
  assert f"EMA of the parameters and BatchNorm statistics, decay {DECAY:g}" in report
  assert "test accuracy with TTA flip, 2 views" in report


def test_vectorized_members_with_ema_equal_separate_runs(reference_run, tmp_path):
  ref_dir, ref = reference_run
  configs = [_config(), _config(**{"train.seed": 2})]
  workdirs = [tmp_path / "model_0" / "seed1", tmp_path / "model_0" / "seed2"]
  summaries = members.train_together(configs, [str(w) for w in workdirs])
  for key in ("train_loss", "val_loss", "val_accuracy"):
    np.testing.assert_allclose(
      [r[key] for r in read_history(workdirs[0])],
      [r[key] for r in read_history(ref_dir)],
      rtol=1e-4,
    )
  assert summaries[0]["test"]["accuracy"] == ref["test"]["accuracy"]
  assert summaries[0]["test_tta"]["accuracy"] == ref["test_tta"]["accuracy"]
  assert summaries[1]["weights"] == f"ema {DECAY:g}"
  assert read_history(workdirs[1])[0]["train_loss"] != read_history(ref_dir)[0]["train_loss"]
  # the two members as one seed ensemble, with and without TTA (fer_jax/report/seeds.py)
  (group,) = study.aggregate(str(tmp_path))[0]["groups"]
  assert set(group["ensemble"]) == {"plain", "TTA"}
  plain = group["ensemble"]["plain"]
  assert plain["member_accuracy"]["values"] == [s["test"]["accuracy"] for s in summaries]


def test_a_checkpoint_from_before_weight_averaging_restores(tmp_path):
  config = _config(**{"optim.ema_decay": 0.0})
  state, _, _ = steps.create_state(config, models.build(config.model, 4), (48, 48, 1), 10)
  old = flax.serialization.to_state_dict(state)  # what runs saved before TrainState.ema
  del old["ema"]
  ckpts = checkpoint.RunCheckpoints(str(tmp_path))
  ckpts.save(1, old, {"epoch": 1}, val_accuracy=0.5)
  ckpts.close()
  ckpts = checkpoint.RunCheckpoints(str(tmp_path))
  restored, meta = ckpts.restore_latest(state)
  ckpts.close()
  assert meta == {"epoch": 1} and restored.ema is None
  _assert_trees_close(restored.variables(), state.variables(), rtol=0, atol=0)
