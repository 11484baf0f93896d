"""One checkpoint manager keeps the latest epoch and the best by val accuracy, across restarts."""

import os
import subprocess
import sys

import jax.numpy as jnp
import numpy as np
import pytest

from fer_jax.train import checkpoint
from tests.conftest import ROOT


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


ABANDONED_READS = """
import asyncio, gc, logging, sys
from fer_jax.train import checkpoint

logging.basicConfig(stream=sys.stderr)
checkpoint.RunCheckpoints(sys.argv[1]).close()
closed = asyncio.new_event_loop()
closed.close()


class LateCallback:  # what tensorstore does when a read ends after orbax closed its loop
  def __del__(self):
    closed.call_soon_threadsafe(print)


class OtherError:
  def __del__(self):
    raise KeyError("other unraisable")


LateCallback()
OtherError()


async def start_and_forget(read):
  asyncio.get_running_loop().create_task(read())
  await asyncio.sleep(0)  # the task runs and fails; nobody awaits it


namespace = {}
for path in ("/site-packages/orbax/checkpoint/serialization.py", "/home/me/mine.py"):
  exec(compile("async def read():\\n  raise OSError('truncated')", path, "exec"), namespace)
  asyncio.run(start_and_forget(namespace["read"]))
  gc.collect()
"""


def test_reads_a_failed_restore_abandons_stay_quiet_and_nothing_else_does(tmp_path):
  """orbax's pending reads, cut short by a failed restore, would print tracebacks after the one
  error line (tests/test_bad_input.py); the same kinds of report from anything else still print."""
  proc = subprocess.run(
    [sys.executable, "-c", ABANDONED_READS, str(tmp_path / "checkpoints")],
    capture_output=True,
    text=True,
    env=dict(os.environ, PYTHONPATH=ROOT),
    timeout=120,
  )
  assert proc.returncode == 0, proc.stderr
  assert "Event loop is closed" not in proc.stderr
  assert "KeyError: 'other unraisable'" in proc.stderr
  assert proc.stderr.count("Task exception was never retrieved") == 1
  assert "/home/me/mine.py" in proc.stderr
  assert "orbax" not in proc.stderr
