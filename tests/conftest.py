"""Shared test set-up: XLA settings for fast compiles, and helpers to run launch.py in a
subprocess on tiny built-in data. (The repo root is on sys.path through setup.cfg's pytest pythonpath.)"""
import json
import os
import subprocess
import sys
import tempfile

import pytest

# XLA:CPU's optimising passes dominate test time (10x on tiny models); numerics are unaffected.
# Set before any test imports jax; subprocesses inherit it.
os.environ.setdefault("JAX_DISABLE_MOST_OPTIMIZATIONS", "true")
# What fer_jax.sharding.configure_backend sets on CPU, for tests that trace models outside a run.
os.environ.setdefault("JAX_THREEFRY_PARTITIONABLE", "false")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# A CNN of the study's shape but a few channels wide, on 16 faces per class: seconds per run.
TINY = [
    "--config.model.widths=(4,8,8)", "--config.model.dense_widths=(16,)",
    "--config.data.builtin_per_class=16", "--config.train.batch_size=8", "--config.eval.batch_size=8",
    "--config.train.log_every_steps=4",
]


def launch(args, env=None, timeout=300, check=True):
  """Runs launch.py with `args`; returns the CompletedProcess (stdout + stderr as text)."""
  full_env = dict(os.environ, PYTHONPATH=ROOT, **(env or {}))
  cache = f"--config.data.cache_dir={os.path.join(tempfile.gettempdir(), 'fer_jax_test_cache')}"  # not in the repo
  proc = subprocess.run([sys.executable, os.path.join(ROOT, "launch.py"), *args, cache], cwd=ROOT, env=full_env,
                        capture_output=True, text=True, timeout=timeout)
  if check and proc.returncode != 0:
    raise AssertionError(f"launch.py {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
  return proc


def read_summary(workdir):
  with open(os.path.join(workdir, "metrics.json")) as f:
    return json.load(f)


@pytest.fixture
def tiny_args():
  return list(TINY)
