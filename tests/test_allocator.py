"""fer_jax.platform.allocator: entry points re-run themselves with tcmalloc, and that removes
XLA:CPU's per-step page faults (the reason for it)."""

import os
import subprocess
import sys

import pytest

from fer_jax.platform import allocator

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
needs_tcmalloc = pytest.mark.skipif(
  allocator.find_tcmalloc() is None,
  reason="tcmalloc not installed (make test installs libtcmalloc-minimal4)",
)


def test_preload_env_adds_tcmalloc_once_and_obeys_the_switch(monkeypatch):
  monkeypatch.setattr(allocator, "find_tcmalloc", lambda: "libtcmalloc_minimal.so.4")
  env = allocator.preload_env({"LD_PRELOAD": "libother.so"})
  assert env["LD_PRELOAD"] == "libtcmalloc_minimal.so.4 libother.so"
  assert allocator.preload_env(env) == env  # already there: not added twice
  assert "LD_PRELOAD" not in allocator.preload_env({allocator.ENV_SWITCH: "system"})
  monkeypatch.setattr(allocator, "find_tcmalloc", lambda: None)
  assert "LD_PRELOAD" not in allocator.preload_env({})  # not installed: nothing to preload


def _python(code, **env):
  out = subprocess.run(
    [sys.executable, "-c", code],
    capture_output=True,
    text=True,
    cwd=REPO,
    timeout=300,
    env={
      **{k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", allocator.ENV_SWITCH)},
      **env,
    },
  )
  assert out.returncode == 0, out.stderr[-2000:]
  return out.stdout.split()


@needs_tcmalloc
def test_use_tcmalloc_reexecutes_the_command_with_it():
  code = (
    "import sys; from fer_jax.platform import allocator; allocator.use_tcmalloc(); "
    "print(allocator.loaded(), *sys.argv[1:])"
  )
  assert _python(code) == ["True"]
  assert _python(code, **{allocator.ENV_SWITCH: "system"}) == ["False"]


# The median of 9 calls after warm-up: tcmalloc too maps fresh memory now and then (its heap
# grows, or it returns free pages to the system): 1-3 of 12 calls with two such processes at once.
PAGE_FAULTS = """
import resource, statistics, jax, jax.numpy as jnp
from fer_jax.platform import allocator
allocator.use_tcmalloc()
# a 64 MB temporary: above glibc's largest mmap threshold (32 MB), so mapped afresh each call
step = jax.jit(lambda x: jnp.sin(x[:, None] * x[None, :2048]) @ x[:2048, None])
x = jnp.ones((8192,), jnp.float32)
for _ in range(3):
  step(x).block_until_ready()
faults = []
for _ in range(9):
  before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
  step(x).block_until_ready()
  faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(int(statistics.median(faults)))
"""


@needs_tcmalloc
def test_tcmalloc_spares_the_page_faults_of_each_execution():
  with_glibc = int(_python(PAGE_FAULTS, **{allocator.ENV_SWITCH: "system"})[-1])
  with_tcmalloc = int(_python(PAGE_FAULTS)[-1])
  # glibc maps the temporary afresh each call: one fault per 4 KiB page (16,384 for 64 MB)
  assert with_glibc > 8_000
  assert with_tcmalloc < with_glibc / 20
