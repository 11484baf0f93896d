"""benchmarks/accelerator.py runs end to end (on tiny knobs), and its PyTorch peer is B++."""

import os
import re
import subprocess
import sys

import pytest

from tests.conftest import ROOT


def test_quick_benchmark_prints_every_section():
  args = [
    "--quick",
    "--models=model_0",
    "--faces=160",
    "--batches=8",
    "--steps=1",
    "--members=2",
    "--widths=4,4,4",
    "--full_epochs=1",
    "--notorch",
    "--variants=0,4",  # the baseline and all three changes at once
  ]
  proc = subprocess.run(
    [sys.executable, "-m", "benchmarks.accelerator", *args],
    cwd=ROOT,
    env=dict(os.environ, PYTHONPATH=ROOT),
    capture_output=True,
    text=True,
    timeout=600,
  )
  out = proc.stdout
  assert proc.returncode == 0, out + proc.stderr[-3000:]
  assert "device: 1 x cpu (cpu)" in out, out
  rows = [line for line in out.splitlines() if line.startswith("model_0      8  ")]
  assert len(rows) == 2 and rows[0].endswith("1.00x"), out
  assert "bfloat16 + on-device + auto" in rows[1], out
  assert re.findall(r"^ +(\d+) +[\d.]+ +[\d.]+x$", out, re.M) == ["2"], out  # members
  assert "complete model_0 run (" in out and "1 epochs" in out, out


def test_torch_peer_is_b_pp_and_trains():
  pytest.importorskip("torch")
  from benchmarks import torch_peer

  assert torch_peer.count_params(torch_peer.BPlusPlus()) == 3_509_444  # fer_jax's B++ count
  rate, _ = torch_peer.images_per_s(4, steps=1, compile_step=False, widths=(4, 4, 4))
  assert rate > 0
