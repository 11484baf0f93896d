"""tcmalloc for the training processes: XLA:CPU steps without page faults.

XLA:CPU allocates a program's temporary buffers at every execution and frees them after it. glibc
serves allocations over 32 MB (its largest mmap threshold) straight from mmap and returns them to
the kernel on free, so every train step touches hundreds of MB of fresh pages that the kernel
zero-fills one 4 KiB page at a time: measured on B++ at batch 64, 166,000 page faults and 0.4
CPU-seconds of kernel time per step (a fifth of its CPU time), and elementwise passes over large
arrays at a third of the memory bandwidth numpy gets (docs/performance.md). tcmalloc keeps freed
memory for reuse: 1-48 page faults per step, B++ 1.15-1.3x and Model 0 1.35-1.45x faster.

glibc's own tunables cannot keep such blocks (the threshold is capped at 32 MB), and the allocator
must be in place before Python starts, so the entry points (launch.py, fer_jax.sweep) re-execute
themselves once with LD_PRELOAD naming tcmalloc (`use_tcmalloc`). FER_JAX_MALLOC=system turns
this off. Measured on a 2-core Intel Xeon (AVX-512); the page faults come from glibc and the
kernel, not the CPU, so other CPUs pay them too (how much there is not measured).
"""

import ctypes.util
import os
import sys

ENV_SWITCH = "FER_JAX_MALLOC"  # 'system': keep the C library's malloc
_TRIED = "FER_JAX_MALLOC_TRIED"  # set before the re-exec, so a failed preload never loops
# gperftools' tcmalloc; Debian/Ubuntu package libtcmalloc-minimal4 (the Makefile installs it)
_LIBRARIES = ("tcmalloc_minimal", "tcmalloc")


def find_tcmalloc() -> str | None:
  """The shared-library name of an installed tcmalloc (LD_PRELOAD resolves it), or None."""
  for name in _LIBRARIES:
    found = ctypes.util.find_library(name)
    if found:
      return found
  return None


def loaded():
  """Whether this process runs with tcmalloc."""
  try:
    with open("/proc/self/maps") as maps:
      return "tcmalloc" in maps.read()
  except OSError:  # not Linux: nothing here preloads anything
    return False


def _switched_off(env):
  return env.get(ENV_SWITCH) == "system"


def preload_env(env=None) -> dict[str, str]:
  """A copy of `env` (default os.environ) whose processes start with tcmalloc where it is
  installed and not switched off; unchanged otherwise."""
  env = dict(os.environ if env is None else env)
  library = find_tcmalloc()
  if _switched_off(env) or not library or "tcmalloc" in env.get("LD_PRELOAD", ""):
    return env
  env["LD_PRELOAD"] = " ".join(filter(None, (library, env.get("LD_PRELOAD"))))
  return env


def use_tcmalloc():
  """Re-executes this Python command with tcmalloc preloaded, once, when it is installed and this
  process runs without it; returns otherwise. Call first thing in an entry point, before JAX
  starts threads or allocates anything worth keeping."""
  if loaded() or os.environ.get(_TRIED) or sys.platform != "linux":
    return
  env = preload_env()
  if env.get("LD_PRELOAD") == os.environ.get("LD_PRELOAD"):  # nothing to preload
    return
  env[_TRIED] = "1"
  sys.stdout.flush()
  sys.stderr.flush()
  # orig_argv is the command as typed (`-m fer_jax.sweep` included), argv only the script's part.
  os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], env)


def describe():
  """One line for logs: which allocator this process runs with, and how to change it."""
  if loaded():
    return f"malloc: tcmalloc ({ENV_SWITCH}=system to use the C library's)"
  if _switched_off(os.environ):
    return f"malloc: the C library's ({ENV_SWITCH}=system)"
  return (
    "malloc: the C library's; XLA:CPU steps ran 1.15-1.45x faster with tcmalloc on a Xeon "
    "(Debian/Ubuntu: apt-get install libtcmalloc-minimal4; docs/performance.md)"
  )
