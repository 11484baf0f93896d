"""The .npz cache's temp files: a writer killed mid-write leaves one; the next load removes it."""

import os
import signal
import socket
import subprocess
import sys
import textwrap
import time

import numpy as np

from fer_jax import data
from fer_jax.data import cache
from tests.conftest import ROOT, wait_until


def tiny_dataset():
  images = np.zeros((2, 4, 4, 1), np.uint8)
  return data.Dataset("tiny", ("a", "b"), {"train": data.Split(images, np.array([0, 1], np.int32))})


def temps(cache_dir):
  return sorted(n for n in os.listdir(cache_dir) if n.startswith(cache.TMP_PREFIX))


def test_a_cache_write_killed_mid_way_leaves_a_temp_file_the_next_load_removes(tmp_path, capsys):
  cache_dir, started = tmp_path / "cache", tmp_path / "writing"
  child = textwrap.dedent(
    f"""
    import os, signal
    import numpy as np
    from fer_jax import data
    from fer_jax.data import cache

    def savez_then_hang(f, **arrays):
      f.write(b"PK half a zip")
      f.flush()
      open({str(started)!r}, "w").close()
      signal.pause()  # killed here, mid-write

    np.savez = savez_then_hang
    images = np.zeros((2, 4, 4, 1), np.uint8)
    split = data.Split(images, np.array([0, 1], np.int32))
    dataset = data.Dataset("tiny", ("a", "b"), {{"train": split}})
    cache.write({str(cache_dir / "key-fp.npz")!r}, dataset)
    """
  )
  process = subprocess.Popen(
    [sys.executable, "-c", child], cwd=ROOT, env=dict(os.environ, PYTHONPATH=ROOT)
  )
  try:
    wait_until(lambda: os.path.exists(started), process, f"{started}")  # the child's signal
  finally:
    process.send_signal(signal.SIGKILL)
    process.wait()  # reaped: its PID is gone, not a zombie
  (left,) = temps(cache_dir)
  assert left.startswith(f".tmp-{socket.gethostname()}-{process.pid}-")
  dataset = cache.load_or_build(str(cache_dir), "key", "fp", tiny_dataset)
  assert temps(cache_dir) == [] and dataset.report["cache"]["path"].endswith("key-fp.npz")
  assert "removed 1 temp file(s) of killed cache writes" in capsys.readouterr().out


def test_temp_files_of_running_or_unknown_writers_are_kept(tmp_path):
  host = socket.gethostname()
  mine = tmp_path / f".tmp-{host}-{os.getpid()}-abc.npz"  # this process: running
  other_host = tmp_path / ".tmp-elsewhere-1-abc.npz"  # cannot be asked: kept while fresh
  old_other_host = tmp_path / ".tmp-elsewhere-2-abc.npz"
  old_form = tmp_path / ".tmp-k2j4h5.npz"  # written before temp names said who wrote them
  for path in (mine, other_host, old_other_host, old_form):
    path.write_bytes(b"")
  day_ago = time.time() - cache.STALE_SECONDS - 60
  for path in (old_other_host, old_form):
    os.utime(path, (day_ago, day_ago))
  assert cache.remove_stale_temps(str(tmp_path)) == 2
  assert temps(tmp_path) == sorted([mine.name, other_host.name])
