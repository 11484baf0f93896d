"""One checkpoint manager keeps the latest epoch and the best by val accuracy, across restarts."""

import os

import jax.numpy as jnp
import numpy as np
import pytest

from fer_jax.train import checkpoint


def _state(value):
  return {"w": jnp.full((3,), value, jnp.float32)}


def _save_epochs(directory, val_accuracies):
  ckpts = checkpoint.RunCheckpoints(directory)
  for epoch, acc in enumerate(val_accuracies, start=1):
    ckpts.save(epoch, _state(float(epoch)), {"epoch": epoch}, val_accuracy=acc)
  ckpts.close()


def test_latest_and_best_survive_a_restart_and_nothing_else_is_kept(tmp_path):
  _save_epochs(str(tmp_path), [0.5, 0.7, 0.6, 0.65])
  assert sorted(os.listdir(tmp_path)) == ["2", "4"]  # best and latest; epochs 1 and 3 were deleted
  ckpts = checkpoint.RunCheckpoints(str(tmp_path))  # what a restarted process finds
  state, meta = ckpts.restore_latest(_state(0.0))
  np.testing.assert_array_equal(state["w"], 4.0)
  assert meta == {"epoch": 4}
  state, meta = ckpts.restore_best(_state(0.0), epoch=2)
  np.testing.assert_array_equal(state["w"], 2.0)
  assert meta == {"epoch": 2}
  with pytest.raises(RuntimeError, match=r"best epoch 3, found epoch 2"):
    ckpts.restore_best(_state(0.0), epoch=3)
  ckpts.close()


def test_a_tie_keeps_the_first_best_as_early_stopping_does(tmp_path):
  _save_epochs(str(tmp_path), [0.6, 0.6, 0.5])
  ckpts = checkpoint.RunCheckpoints(str(tmp_path))
  state, _ = ckpts.restore_best(_state(0.0), epoch=1)
  np.testing.assert_array_equal(state["w"], 1.0)
  ckpts.close()


def test_rerunning_a_saved_epoch_keeps_its_checkpoint_and_no_save_is_none(tmp_path):
  _save_epochs(str(tmp_path), [0.5, 0.7])
  _save_epochs(str(tmp_path), [0.5, 0.7])  # a resumed run that redoes epochs already on disk
  ckpts = checkpoint.RunCheckpoints(str(tmp_path))
  state, _ = ckpts.restore_latest(_state(0.0))
  np.testing.assert_array_equal(state["w"], 2.0)
  ckpts.close()
  empty = checkpoint.RunCheckpoints(str(tmp_path / "empty"))
  assert empty.restore_latest(_state(0.0)) is None and empty.restore_best(_state(0.0)) is None
  with pytest.raises(RuntimeError, match="found none"):
    empty.restore_best(_state(0.0), epoch=1)
  empty.close()
