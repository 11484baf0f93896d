"""Feeding (fer_jax/train/feeding.py): data resident on the devices and N train steps per dispatch
give the run that host feeding one step at a time gives: the same metrics.jsonl (accuracies
exactly, losses to 1e-6), progress lines, checkpoints and test predictions, for a plain run and
one killed mid-epoch and resumed. Resident data on 4 devices is part of tests/test_train.py's
4-device run, on 2 processes part of tests/test_multiprocess.py's killed-and-resumed run, on
vectorized members part of tests/test_vectorized.py's members: each against a host-fed run, to
the tolerance of those tests (other summation orders)."""

import contextlib
import io
import os
import signal

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from fer_jax import config_loading
from fer_jax.train import feeding, loop
from tests.conftest import TEST_CACHE_DIR, config_flags, launch, launch_until, read_history

# Tiny Model 0 with its dropout, augmentation and a plateau (the lr changes inside the state): 12
# steps per epoch, so N = 8 crosses a log step (every 4) and leaves a shorter last dispatch.
OVERRIDES = {
  "model.widths": (4, 8, 8),
  "model.dense_widths": (16,),
  "data.builtin_per_class": 24,
  "train.batch_size": 8,
  "eval.batch_size": 8,
  "train.log_every_steps": 4,
  "train.epochs": 2,
  "train.augment": True,
  "train.early_stopping": False,
  "optim.plateau_patience": 0,
  "eval.report": False,  # report.md and its plots: seconds a run, checked in test_train
  "data.cache_dir": TEST_CACHE_DIR,
}
WHOLE_EPOCH = 1000  # capped at the steps of an epoch
HOST_1 = {"data.on_device": "false", "train.steps_per_dispatch": 1}
DEVICE_8 = {"data.on_device": "true", "train.steps_per_dispatch": 8}


def _config(feed, seed=42):
  return config_loading.load_config(
    "configs/model_0.py:quick", {**OVERRIDES, **feed, "train.seed": seed}
  )


def _flags(feed):
  overrides = {**OVERRIDES, **feed}
  return ["--config=configs/model_0.py:quick", *config_flags(overrides)]


def _checkpoint(path):
  """A saved train state as NumPy arrays, whatever devices saved it."""
  with ocp.PyTreeCheckpointer() as ckpt:
    tree = ckpt.metadata(path).item_metadata.tree
    args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), tree)
    return ckpt.restore(path, args=ocp.args.PyTreeRestore(restore_args=args))


def assert_same_run(got, want):
  rows, ref = read_history(got), read_history(want)
  assert [r["epoch"] for r in rows] == [r["epoch"] for r in ref]
  for row, ref_row in zip(rows, ref):
    for key in ("train_accuracy", "val_accuracy", "gap", "lr"):
      assert row[key] == ref_row[key], (got, row["epoch"], key)
    for key in ("train_loss", "val_loss"):
      assert abs(row[key] - ref_row[key]) <= 1e-6, (got, row["epoch"], key)
  ckpts = sorted(d for d in os.listdir(os.path.join(got, "checkpoints")) if d.isdigit())
  assert ckpts == sorted(d for d in os.listdir(os.path.join(want, "checkpoints")) if d.isdigit())
  for epoch in ckpts:
    states = [_checkpoint(os.path.join(w, "checkpoints", epoch, "state")) for w in (got, want)]
    assert jax.tree.structure(states[0]) == jax.tree.structure(states[1])
    for a, b in zip(*map(jax.tree.leaves, states)):
      np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6, err_msg=f"{got} epoch {epoch}")
  probs = [np.load(os.path.join(w, "test_predictions.npz"))["probs"] for w in (got, want)]
  np.testing.assert_allclose(*probs, atol=1e-6)


def _progress_lines(text):
  return [line for line in text.splitlines() if line.startswith("  epoch ")]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
  """Host-fed, one step per dispatch: the run as it always was (and its progress lines)."""
  workdir = str(tmp_path_factory.mktemp("host_1"))
  with contextlib.redirect_stdout(io.StringIO()) as out:
    loop.train_and_evaluate(_config(HOST_1), workdir)
  assert "12 steps/epoch  host-fed, 1 step(s)/dispatch" in out.getvalue()
  return workdir, _progress_lines(out.getvalue())


@pytest.mark.parametrize(
  "feed",
  [
    {"data.on_device": "true", "train.steps_per_dispatch": 1},
    DEVICE_8,
    {"data.on_device": "false", "train.steps_per_dispatch": WHOLE_EPOCH},
  ],
  ids=["device_1", "device_8", "host_epoch"],
)
def test_plain_run_is_the_same_whatever_the_feeding(reference, feed, tmp_path, capsys):
  ref_dir, ref_lines = reference
  workdir = str(tmp_path / "run")
  loop.train_and_evaluate(_config(feed), workdir)
  out = capsys.readouterr().out
  where = "data on the devices" if feed["data.on_device"] == "true" else "host-fed"
  n = min(feed["train.steps_per_dispatch"], 12)
  assert f"12 steps/epoch  {where}, {n} step(s)/dispatch" in out
  assert _progress_lines(out) == ref_lines  # the same lines at every log step
  assert len(ref_lines) == 4  # steps 4 and 8 of each epoch
  assert_same_run(workdir, ref_dir)


def test_killed_mid_epoch_and_resumed_is_the_same(reference, tmp_path):
  workdir = str(tmp_path / "killed")
  args = [*_flags(DEVICE_8), f"--workdir={workdir}"]
  # inside epoch 2's first dispatch of 8 steps
  proc = launch_until(args, "  epoch 2 step 4/", signal.SIGKILL, checkpointed=workdir)
  proc.wait(timeout=60)
  assert proc.returncode == -signal.SIGKILL
  resumed = launch(args)
  assert "Resuming" in resumed.stdout and "after epoch 1" in resumed.stdout
  assert_same_run(workdir, reference[0])


def test_auto_keeps_host_feeding_for_data_too_large(monkeypatch):
  config = _config({})
  dataset = type("Dataset", (), {"splits": {}})()
  assert feeding.resolve_on_device("true", dataset) and not feeding.resolve_on_device("false", 0)
  monkeypatch.setattr(feeding, "ON_DEVICE_ON_CPU", True)
  assert feeding.resolve_on_device("auto", dataset)
  monkeypatch.setattr(feeding, "device_budget", lambda: -1)
  assert not feeding.resolve_on_device("auto", dataset)
  assert config.data.on_device == "auto" and config.train.steps_per_dispatch == 0
  assert feeding.resolve_steps_per_dispatch(0, 12, 4) == 4
  assert feeding.resolve_steps_per_dispatch(WHOLE_EPOCH, 12, 4) == 12
