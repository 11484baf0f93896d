"""The checkpoint ordering that makes a SIGKILL at any moment safe to resume from."""
import jax.numpy as jnp
import numpy as np
import pytest

from fer_jax import checkpoint


def _state(value):
  return {"w": jnp.full((3,), value, jnp.float32)}


def test_best_is_committed_before_save_returns(tmp_path):
  # If the process dies right after an epoch, the resumed run starts after that epoch and never
  # saves its best checkpoint again, so the best save must already be on disk.
  ckpts = checkpoint.RunCheckpoints(str(tmp_path))
  ckpts.save(1, _state(1.0), {"epoch": 1}, is_best=True)
  assert not ckpts.best.is_saving_in_progress()
  other = checkpoint.RunCheckpoints(str(tmp_path))  # what a restarted process would find
  state, meta = other.restore_best(_state(0.0), epoch=1)
  np.testing.assert_array_equal(state["w"], 1.0)
  assert meta == {"epoch": 1}
  ckpts.close()
  other.close()


def test_best_survives_later_epochs_and_a_missing_best_is_an_error(tmp_path):
  ckpts = checkpoint.RunCheckpoints(str(tmp_path))
  ckpts.save(1, _state(1.0), {"epoch": 1}, is_best=True)
  ckpts.save(2, _state(2.0), {"epoch": 2}, is_best=False)
  ckpts.close()
  ckpts = checkpoint.RunCheckpoints(str(tmp_path))
  state, _ = ckpts.restore_latest(_state(0.0))
  np.testing.assert_array_equal(state["w"], 2.0)
  state, _ = ckpts.restore_best(_state(0.0), epoch=1)
  np.testing.assert_array_equal(state["w"], 1.0)
  with pytest.raises(RuntimeError, match=r"best.*best epoch 2, found epoch 1"):
    ckpts.restore_best(_state(0.0), epoch=2)
  ckpts.close()
  with pytest.raises(RuntimeError, match="found none"):
    checkpoint.RunCheckpoints(str(tmp_path / "empty")).restore_best(_state(0.0), epoch=1)
