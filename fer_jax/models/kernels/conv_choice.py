"""conv_impl='auto' on CPU: each 3x3 conv layer shape runs the implementation measured fastest for
it.

Which of fer_jax.models.kernels.cpu_conv's implementations wins depends on the CPU (Winograd won
every B++ layer on an AVX2 Zen 1; on AVX-512 CPUs XLA's own kernels win some), so the first time a
layer shape is traced, its forward pass and both gradients (in a training step; the forward pass
alone where the model runs with train=False, in evaluation and inference, where only 'xla' and
'winograd' differ: im2col's forward pass is XLA's) are timed with each implementation on random
data (interleaved, the fastest of a few calls after a warm-up: on a shared machine other
load only ever adds time) and the fastest is used. An implementation whose buffers would not fit in
the memory the host has available (XLA's own estimate of the compiled program), or that runs out of
memory when called, is left out, and the line that prints the choice says so: on Linux a program
larger than the host's memory is ended by the kernel's OOM killer, which no caller can catch.

Choices are kept in a JSON file keyed by the CPU (model, family, all ISA flags, cores), the
jax/jaxlib versions, XLA_FLAGS and the allocator (fer_jax/platform/allocator.py: page faults slow
the big-buffer implementations most), then by layer shape (batch included), dtype and whether
gradients are timed, so later runs on the same kind of machine measure nothing. Each choice is
printed once per process. In bfloat16 (config.model.dtype) 'winograd' would run 'im2col'
(cpu_conv.winograd_dtype), so only 'xla' and 'im2col' are candidates there (and forward only,
'xla' alone: nothing is timed).

The file is `$FER_JAX_CACHE_DIR/conv_choice.json`, default `~/.cache/fer_jax/` (or
`$XDG_CACHE_HOME/fer_jax/`). It is replaced atomically, so concurrent writers never leave a torn
file (one may drop another's new entry, which is then measured again); where it cannot be written
(read-only home) the choices hold for the process only.

Nothing is measured where a measurement would cost more than it can save or mean nothing: layers
under MIN_MEASURED_FLOP forward FLOP (tiny test models, batch-1 inference) and programs compiled
with JAX_DISABLE_MOST_OPTIMIZATIONS (as the test suite does) run DEFAULT.
"""

import concurrent.futures
import functools
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import jaxlib
import numpy as np

from fer_jax.models.kernels import cpu_conv
from fer_jax.platform import allocator, cache_root, cpu_info

CACHE_DIR_ENV = cache_root.ENV
DEFAULT = (
  "winograd"  # the unmeasured choice: fastest on most layers on Zen 1 and on an AVX-512 Xeon
)
MIN_MEASURED_FLOP = (
  1e9  # ~0.1 s of compute per candidate on a 2-core CPU; below it, timing is mostly compile time
)
REPEATS = 3

_chosen = {}  # layer key -> implementation, this process
_unwritable_reported = []


def cache_path():
  return os.path.join(cache_root.folder(), "conv_choice.json")


def machine_key():
  malloc = "tcmalloc" if allocator.loaded() else "system"
  return (
    f"{cpu_info.current().cache_key()} jax {jax.__version__} jaxlib {jaxlib.__version__} "
    f"XLA_FLAGS={os.environ.get('XLA_FLAGS', '')} malloc={malloc}"
  )


def layer_key(x_shape, kernel_shape, dtype, gradients=True):
  n, h, w, c = x_shape
  kh, kw, _, o = kernel_shape
  key = f"{n}x{h}x{w}x{c} -> {o}, {kh}x{kw}, {jnp.dtype(dtype).name}"
  return key if gradients else f"{key}, forward only"


def candidates(dtype, gradients=True) -> tuple[str, ...]:
  """The implementations that differ in `dtype` (in 16-bit floats 'winograd' is 'im2col'), and
  without `gradients` in their forward pass (im2col's is XLA's)."""
  return tuple(
    i
    for i in cpu_conv.IMPLS
    if (i != "winograd" or cpu_conv.winograd_dtype(dtype)) and (i != "im2col" or gradients)
  )


def chosen() -> dict[str, str]:
  """{layer key: implementation} of every conv traced with 'auto' in this process so far."""
  return dict(_chosen)


def worth_measuring(x_shape, kernel_shape):
  n, h, w, c = x_shape
  flop = 2 * n * h * w * c * int(np.prod(kernel_shape[:2])) * kernel_shape[-1]
  return flop >= MIN_MEASURED_FLOP and not jax.config.read("jax_disable_most_optimizations")


def choose(x_shape, kernel_shape, dtype, gradients=True) -> str:
  """The implementation for a 'same' conv of these shapes: cached, measured now, or DEFAULT.
  `gradients`: whether the layer is differentiated (a training step) or runs forward only."""
  key = layer_key(x_shape, kernel_shape, dtype, gradients)
  if key in _chosen:
    return _chosen[key]
  if not worth_measuring(x_shape, kernel_shape):
    return DEFAULT
  options = candidates(dtype, gradients)
  if len(options) == 1:  # nothing to compare: bfloat16 forward passes are XLA's
    return options[0]
  entries = _read_cache().get(machine_key())
  entry = entries.get(key) if isinstance(entries, dict) else None
  if isinstance(entry, dict) and entry.get("impl") in options:
    impl, source = entry["impl"], f"cached in {cache_path()}"
  else:
    # The caller is usually tracing a jitted step; the measurement runs its own programs in a
    # thread, outside that trace.
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
      seconds = pool.submit(measure, x_shape, kernel_shape, dtype, gradients).result()
    impl = min(seconds, key=seconds.get) if seconds else DEFAULT
    ms = {name: round(1000 * s, 2) for name, s in seconds.items()}
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
    _write_cache(key, {"impl": impl, "ms": ms, "load_avg": round(load, 1)})
    source = "measured, ms: " + (", ".join(f"{name} {t:.1f}" for name, t in ms.items()) or "none")
    out_of_memory = [c for c in options if c not in seconds]
    if out_of_memory:
      source += f"; out of memory: {', '.join(out_of_memory)}"
    if load > cpu_info.current().cores:
      source += (
        f"; load average {load:.1f} on {cpu_info.current().cores} cores: on a quieter machine the "
        f"choice may differ, delete {cache_path()} to measure again"
      )
  _chosen[key] = impl
  print(f"conv_impl auto: {key}: {impl} ({source})", file=sys.stderr, flush=True)
  return impl


def measure(x_shape, kernel_shape, dtype, gradients=True) -> dict[str, float]:
  """{implementation: seconds} of the forward pass (+ input and kernel gradients) on random data."""
  return fastest_seconds(layer_runners(x_shape, kernel_shape, dtype, gradients))


def layer_runners(x_shape, kernel_shape, dtype, gradients=True) -> dict[str, Callable[[], object]]:
  """{implementation: a call that runs the layer's forward pass (and both gradients) and waits},
  for the candidates whose compiled program fits in the host's available memory (im2col's patches
  are 9 times a 3x3 layer's input: at 2,560 faces of 48x48x64 XLA's estimate is 27 GB)."""
  kx, kk, kd = jax.random.split(jax.random.key(0), 3)
  x = jax.random.normal(kx, x_shape, dtype)
  kernel = (jax.random.normal(kk, kernel_shape) / np.sqrt(np.prod(kernel_shape[:3]))).astype(dtype)
  # the output's gradient, made only where gradients are timed: at large batches it is large
  dy = jax.random.normal(kd, x_shape[:3] + kernel_shape[-1:], dtype) if gradients else None
  available = available_memory_bytes()
  runners = {}
  for impl in candidates(dtype, gradients):
    conv = functools.partial(cpu_conv.conv2d_same, impl=impl)
    if gradients:
      args = (x, kernel, dy)
      jitted = jax.jit(lambda x, k, dy, conv=conv: jax.vjp(conv, x, k)[1](dy))
    else:
      args = (x, kernel)
      jitted = jax.jit(conv)
    program = jitted.lower(*args).compile()
    if _program_bytes(program) <= available:
      runners[impl] = lambda program=program, args=args: jax.block_until_ready(program(*args))
  return runners


def available_memory_bytes() -> float:
  """What the host can still give this process: /proc/meminfo's MemAvailable (free memory plus
  caches the kernel can drop) where there is one; elsewhere, no limit (the runtime check stays)."""
  try:
    with open("/proc/meminfo") as f:
      for line in f:
        if line.startswith("MemAvailable:"):
          return 1024 * int(line.split()[1])
  except OSError:
    pass
  return float("inf")


def _program_bytes(compiled) -> int:
  """XLA's estimate of what a call allocates: its temporaries and outputs (0 where unknown)."""
  analysis = compiled.memory_analysis()
  if analysis is None:
    return 0
  return analysis.temp_size_in_bytes + analysis.output_size_in_bytes


def fastest_seconds(runners, repeats=REPEATS, clock=time.perf_counter) -> dict[str, float]:
  """{name: the fastest of `repeats` calls in seconds}, after one untimed call each (a warm-up);
  the calls are interleaved so that a change in the machine's other load hits all alike. A runner
  whose first call runs out of memory (XLA's estimate can be low, other processes can grow) is left
  out: it is no choice on this machine, and the layer may still run with another."""
  fits = {name: run for name, run in runners.items() if _runs_in_memory(run)}
  times = {name: [] for name in fits}
  for _ in range(repeats):
    for name, run in fits.items():
      start = clock()
      run()
      times[name].append(clock() - start)
  return {name: min(t) for name, t in times.items()}


def _runs_in_memory(run):
  try:
    run()
  except MemoryError:
    return False
  except jax.errors.JaxRuntimeError as e:
    if "RESOURCE_EXHAUSTED" not in str(e):
      raise
    return False
  return True


def _read_cache():
  try:
    with open(cache_path()) as f:
      cache = json.load(f)
    return cache if isinstance(cache, dict) else {}
  except FileNotFoundError:
    return {}
  except (OSError, ValueError) as e:
    print(f"conv_impl auto: ignoring unreadable {cache_path()} ({e})", file=sys.stderr, flush=True)
    return {}


def _write_cache(key, entry):
  path = cache_path()
  try:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    cache = _read_cache()
    if not isinstance(cache.get(machine_key()), dict):
      cache[machine_key()] = {}
    cache[machine_key()][key] = entry
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix=".conv_choice.", suffix=".tmp")
    try:
      with os.fdopen(fd, "w") as f:
        json.dump(cache, f, indent=1, sort_keys=True)
      os.replace(tmp, path)
    except BaseException:
      os.unlink(tmp)
      raise
  except OSError as e:
    if not _unwritable_reported:
      _unwritable_reported.append(path)
      print(
        f"conv_impl auto: cannot write {path} ({e}); choices hold for this process only",
        file=sys.stderr,
        flush=True,
      )
