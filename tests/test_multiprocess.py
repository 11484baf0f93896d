"""Multi-process training as a cluster starts it: 2 local processes x 2 CPU devices, their data
resident on the devices 8 steps a dispatch, against one host-fed process with 4 devices; resume
after both die; processes with different settings refuse to train together; bad flags and a lone
process say so in one line."""

import os
import signal
import socket
import subprocess
import sys

import numpy as np
import pytest

from tests.conftest import (
  CACHE_FLAG,
  ROOT,
  TINY,
  config_flags,
  launch,
  read_history,
  read_summary,
  wait_for_checkpoint,
)

# tests/test_feeding.py's feed settings: the two processes below hold their shards of the data on
# their devices, 8 steps a dispatch (DEVICE_8); the one process is host-fed a step at a time
# (HOST_1): one run covers both.
from tests.test_feeding import DEVICE_8, HOST_1

ARGS = [
  "--config=configs/model_0.py:quick",
  *TINY,
  "--config.train.epochs=3",
  "--config.train.early_stopping=False",
  "--config.optim.plateau_patience=1",  # the plateau changes the lr inside the state between epochs
  CACHE_FLAG,
]


_FATAL = "Terminating process because the JAX distributed service detected fatal errors"


def _free_port():
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def _start_processes(workdir, extra=(), per_process=((), ()), count=2):
  """`count` launch.py processes of one distributed run, 2 CPU devices each, `per_process[i]`
  added to process i's flags; their output (stdout and stderr) is piped."""
  port = _free_port()
  procs = []
  for pid in range(count):
    args = [
      sys.executable,
      os.path.join(ROOT, "launch.py"),
      *ARGS,
      f"--workdir={workdir}",
      "--distributed",
      f"--coordinator_address=localhost:{port}",
      "--num_processes=2",
      f"--process_id={pid}",
      *extra,
      *per_process[pid],
    ]
    env = dict(os.environ, PYTHONPATH=ROOT, JAX_NUM_CPU_DEVICES="2")
    procs.append(
      subprocess.Popen(
        args, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
      )
    )
  return procs


def _wait_for_line(proc, prefix):
  for line in proc.stdout:
    if line.startswith(prefix):
      return line
  raise AssertionError(f"process exited before printing {prefix!r}")


@pytest.fixture(scope="module")
def four_device_run(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("one_process"))
  proc = launch(
    [*ARGS, *config_flags(HOST_1), f"--workdir={workdir}"], env={"JAX_NUM_CPU_DEVICES": "4"}
  )
  assert "4 x cpu" in proc.stdout and "host-fed, 1 step(s)/dispatch" in proc.stdout
  return workdir


def test_two_processes_killed_and_resumed_equal_one_process(four_device_run, tmp_path):
  workdir = str(tmp_path / "two_processes")
  procs = _start_processes(workdir, config_flags(DEVICE_8))
  _wait_for_line(procs[0], "epoch 2/3")
  wait_for_checkpoint(procs[0], workdir)
  # The coordinator dies; JAX aborts the other process, which first says so in our words.
  procs[0].send_signal(signal.SIGKILL)
  procs[0].wait(timeout=60)
  out1 = procs[1].communicate(timeout=120)[0]
  assert procs[1].returncode != 0, out1
  said = (
    "error: process 1: the distributed run lost process 0 (the coordinator) (killed, crashed, "
    "out of memory or unreachable), so JAX stops every process now; start all 2 processes "
    f"again with the same command and training resumes from the last checkpoint in {workdir}\n"
  )
  assert said in out1 and out1.index(said) < out1.index(_FATAL), out1
  assert out1.count("error: process 1:") == 1, out1
  assert not os.path.exists(os.path.join(workdir, "metrics.json"))

  procs = _start_processes(workdir, config_flags(DEVICE_8))
  out0 = procs[0].communicate(timeout=300)[0]
  out1 = procs[1].communicate(timeout=60)[0]
  assert procs[0].returncode == 0 and procs[1].returncode == 0, out0 + out1
  assert "Resuming" in out0 and "2 process(es)" in out0
  assert "data on the devices, 8 step(s)/dispatch" in out0
  assert "test accuracy" not in out1  # only process 0 reports

  got, want = read_history(workdir), read_history(four_device_run)
  assert [r["epoch"] for r in got] == [1, 2, 3]
  # Same maths; the cross-process all-reduce sums in another order, and Adam's normalised
  # steps carry that float32 rounding into the weights, as between 1 and 4 devices (test_train).
  for key in ("train_loss", "val_loss", "train_accuracy", "val_accuracy", "lr"):
    np.testing.assert_allclose(
      [r[key] for r in got], [r[key] for r in want], rtol=2e-3, err_msg=key
    )
  s, ref = read_summary(workdir), read_summary(four_device_run)
  assert s["best"]["epoch"] == ref["best"]["epoch"] and s["system"]["processes"] == 2
  assert s["test"]["accuracy"] == ref["test"]["accuracy"]
  np.testing.assert_allclose(s["test"]["loss"], ref["test"]["loss"], rtol=2e-3)
  np.testing.assert_allclose(
    np.load(os.path.join(workdir, "test_predictions.npz"))["probs"],
    np.load(os.path.join(four_device_run, "test_predictions.npz"))["probs"],
    atol=2e-3,
  )

  # The last and the best epoch, committed once each, nothing half-written beside them; the
  # manager written by two processes restores in this one.
  from fer_jax.train import checkpoint

  ckpts = checkpoint.RunCheckpoints(os.path.join(workdir, "checkpoints"))
  names = sorted(os.listdir(os.path.join(workdir, "checkpoints")))
  files = ("calibration.json", "config.json")
  assert [n for n in names if n not in files] == sorted({"3", str(s["best"]["epoch"])}), names
  assert (
    ckpts.manager.all_steps() == sorted({3, s["best"]["epoch"]})
    and ckpts.manager.best_step() == s["best"]["epoch"]
  )
  ckpts.close()


def test_processes_with_different_settings_refuse_together(tmp_path):
  workdir = str(tmp_path / "mixed")
  # Where each host caches the data may differ; the learning rate and the seed may not.
  procs = _start_processes(
    workdir,
    per_process=(
      (),
      (
        "--config.optim.lr=0.01",
        "--config.train.seed=7",
        "--config.data.cache_dir=" + str(tmp_path / "cache1"),
      ),
    ),
  )
  outs = [p.communicate(timeout=300)[0] for p in procs]
  want = (
    "error: the processes of this run hold different settings (process 1 differs from process 0 "
    "in optim.lr: 0.001 -> 0.01; train.seed: 42 -> 7); start every process with the same "
    "--config, overrides and --workdir"
  )
  for p, out in zip(procs, outs, strict=True):
    assert p.returncode != 0, out
    assert out.strip().splitlines()[-1] == want, out
    assert "Traceback" not in out
  assert not os.path.exists(workdir)  # refused before anything was written


def test_process_id_out_of_range_is_one_line():
  proc = launch(
    [
      *ARGS,
      "--distributed",
      "--coordinator_address=localhost:1",
      "--num_processes=2",
      "--process_id=2",
    ],
    check=False,
  )
  assert proc.returncode != 0
  assert proc.stdout + proc.stderr == (
    "error: --process_id=2 with --num_processes=2: the processes are numbered 0 to 1; "
    "give each process its own number in that range\n"
  )


def test_a_lone_process_says_what_it_waits_for(tmp_path):
  (proc,) = _start_processes(str(tmp_path / "lone"), count=1)
  try:
    line = _wait_for_line(proc, "process 0:")
  finally:
    proc.kill()
    proc.communicate(timeout=60)
  assert "waiting up to 300 s (--initialization_timeout) for all 2 processes" in line
  assert "to connect to the coordinator at localhost:" in line
