"""Shared test set-up: XLA settings for fast compiles, and helpers to run launch.py in a
subprocess on tiny built-in data. (The repo root is on sys.path through setup.cfg's pytest
pythonpath.)"""

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np
import pytest

from fer_jax import config_loading

# XLA:CPU's optimising passes dominate test time (10x on tiny models); numerics are unaffected.
# The price is slow unoptimised code for convolutions inside loops (optimised_xla_env below).
# It also keeps conv_impl='auto' from timing layers (fer_jax/models/kernels/conv_choice.py), so no
# test measures.
# Set before any test imports jax; subprocesses inherit it.
os.environ.setdefault("JAX_DISABLE_MOST_OPTIMIZATIONS", "true")
# One thread per XLA:CPU convolution or matmul: two workers share two cores, and splitting a tiny
# model's ops across threads the other worker wants costs more than it gains (test_bad_input and
# test_train: 5 % faster).
if "xla_cpu_multi_thread_eigen" not in os.environ.get("XLA_FLAGS", ""):
  os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_cpu_multi_thread_eigen=false"
  ).strip()
# What fer_jax.platform.sharding.configure_backend sets on CPU, for tests that trace models outside
# a run.
os.environ.setdefault("JAX_THREEFRY_PARTITIONABLE", "false")
# predict's and serve's persistent compilation cache (fer_jax/inference/compile_cache.py) stays
# off, so no test reads or fills the user's ~/.cache/fer_jax; the test of the cache turns it on.
os.environ.setdefault("FER_JAX_COMPILE_CACHE", "off")
# One persistent XLA compilation cache for the whole session, made by the first process that loads
# this file (pytest-xdist's controller: its workers and every launch.py they start inherit it): the
# many tiny runs compile the same programs, which later runs load from disk (about a fifth of the
# suite's time). Programs that compile faster than a cache write (single ops run eagerly) are not
# kept: keeping every program saves 0.3 s of a tiny run and costs more than that in the tests
# that run ops eagerly (test_augment's time doubled). A size limit makes JAX lock the folder, so
# no worker reads a half-written entry. Removed when the session ends.
_OWN_JAX_CACHE = "JAX_COMPILATION_CACHE_DIR" not in os.environ
if _OWN_JAX_CACHE:
  os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="fer_jax_test_jax_cache_")
  os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0.3"
  os.environ["JAX_COMPILATION_CACHE_MAX_SIZE"] = str(4 << 30)


def pytest_sessionfinish(session):
  if _OWN_JAX_CACHE:
    shutil.rmtree(os.environ["JAX_COMPILATION_CACHE_DIR"], ignore_errors=True)


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def optimised_xla_env(env=None):
  """`env` (default os.environ) for a subprocess that trains many steps and compares no bits
  with another program: unoptimised XLA:CPU code runs the convolutions inside the train loop's
  fori_loop about 13x slower (two tiny-B++ steps: 10.6 s vs 0.8 s), which outweighs its cheaper
  compiles there; LLVM at -O1 compiles nearly as fast as -O0 (6.9 s vs 4.3 s, full: 14.9 s).
  Not for tests of bit-equal results: -O1 vectorises, so reductions of other shapes round
  differently."""
  env = dict(os.environ if env is None else env)
  env["JAX_DISABLE_MOST_OPTIMIZATIONS"] = "false"
  env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + " --xla_backend_optimization_level=1").strip()
  return env


# A CNN of the study's shape but a few channels wide, on 16 faces per class: seconds per run.
TINY = [
  "--config.model.widths=(4,8,8)",
  "--config.model.dense_widths=(16,)",
  "--config.data.builtin_per_class=16",
  "--config.train.batch_size=8",
  "--config.eval.batch_size=8",
  "--config.train.log_every_steps=4",
  # report.md and its plots are seconds a run on a small CPU; tests of the report turn it on
  "--config.eval.report=false",
]


# the data cache of every test's runs: shared between them, outside the repo
TEST_CACHE_DIR = os.path.join(tempfile.gettempdir(), "fer_jax_test_cache")
CACHE_FLAG = f"--config.data.cache_dir={TEST_CACHE_DIR}"


def launch(args, env=None, timeout=300, check=True):
  """Runs launch.py with `args`; returns the CompletedProcess (stdout + stderr as text)."""
  full_env = dict(os.environ, PYTHONPATH=ROOT, **(env or {}))
  proc = subprocess.run(
    [sys.executable, os.path.join(ROOT, "launch.py"), *args, CACHE_FLAG],
    cwd=ROOT,
    env=full_env,
    capture_output=True,
    text=True,
    timeout=timeout,
  )
  if check and proc.returncode != 0:
    raise AssertionError(
      f"launch.py {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
    )
  return proc


def two_step_run(workdir, *flags):
  """Trains a finished run of Model 0 on the tiny built-in faces in `workdir`: one epoch of two
  steps, then its evaluators (for tests of what reads a run); returns `workdir`."""
  launch(
    [
      "--config=configs/model_0.py:quick",
      f"--workdir={workdir}",
      *TINY,
      "--config.train.epochs=1",
      "--config.train.max_steps_per_epoch=2",
      *flags,
    ]
  )
  return workdir


def launch_until(args, line_start, sig, stderr=subprocess.STDOUT, checkpointed=None):
  """Starts launch.py with `args` and sends it `sig` once a line of its output starts with
  `line_start` (or at its end), and with `checkpointed` (its workdir) once it has also committed a
  checkpoint there; returns the process, its stdout read up to that line."""
  proc = subprocess.Popen(
    [sys.executable, os.path.join(ROOT, "launch.py"), *args, CACHE_FLAG],
    cwd=ROOT,
    env=dict(os.environ, PYTHONPATH=ROOT),
    stdout=subprocess.PIPE,
    stderr=stderr,
    text=True,
  )
  for line in proc.stdout:
    if line.startswith(line_start):
      break
  if checkpointed:
    wait_for_checkpoint(proc, checkpointed)
  proc.send_signal(sig)
  return proc


def wait_until(done, proc, what, deadline_s=300):
  """Waits until `done()` (an event of the child process `proc`, `what` names it), failing if the
  child ends first or the deadline passes."""
  end = time.monotonic() + deadline_s
  while not done():
    assert proc.poll() is None, f"the process ended before {what}: {proc.communicate()}"
    assert time.monotonic() < end, f"no {what} in {deadline_s} s"
    time.sleep(0.01)


def wait_for_checkpoint(proc, workdir):
  """Waits until the run of `proc` has committed a checkpoint in `workdir`. orbax writes them in
  the background: on a busy machine a run is well into its next epoch before the last one's
  checkpoint is committed, and a run killed before that has nothing to resume from."""
  from fer_jax.train import checkpoint

  ckpts = os.path.join(workdir, "checkpoints")
  wait_until(
    lambda: checkpoint.last_saved_epoch(ckpts) is not None, proc, f"checkpoint committed in {ckpts}"
  )


def gaussian_logits(rng, labels, separation, num_classes=4, sharpness=1.0):
  """Logits whose calibrated version is known, times `sharpness`.

  Scores s = separation * onehot(label) + N(0, 1) noise give the true class posterior
  softmax(separation * s), so `sharpness` * separation * s is overconfident for sharpness > 1
  (the fitted T should be close to it) and underconfident below 1.
  """
  scores = separation * np.eye(num_classes)[labels] + rng.normal(size=(len(labels), num_classes))
  return sharpness * separation * scores


def read_summary(workdir):
  with open(os.path.join(workdir, "metrics.json")) as f:
    return json.load(f)


def read_history(workdir):
  """A run's metrics.jsonl, one dict an epoch, read as the reports read it; a missing file fails
  the test instead of reading as no epochs (two empty histories would compare equal)."""
  from fer_jax.train import history  # imports jax: not before the settings at the top of this file

  path = os.path.join(workdir, "metrics.jsonl")
  assert os.path.exists(path), f"{path} was not written"
  return history.read_history(path)


def config_flags(overrides):
  """{field: value} as launch.py's --config.<field>=<value> flags, spelled as the sweep's
  commands spell them."""
  return [f"--config.{k}={config_loading.format_value(v)}" for k, v in overrides.items()]


@pytest.fixture
def tiny_args():
  return list(TINY)
