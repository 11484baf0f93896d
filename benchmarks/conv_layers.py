"""Per conv layer: forward + input and kernel gradients of each fer_jax.models.kernels.cpu_conv
implementation (with --forward_only the forward pass alone), at batch 64 on the layer shapes of B++
and Model 0, interleaved on the same data (what conv_impl='auto' measures per layer of a training
step, and of an evaluation, fer_jax/models/kernels/conv_choice.py).

  python benchmarks/conv_layers.py [--repeats=5] [--dtype=float32] [--batch=64] [--forward_only]

Prints milliseconds per layer (the fastest of --repeats interleaved calls, and their median)
and the CPU it ran on. Runs with tcmalloc where installed, as training does
(fer_jax/platform/allocator.py).
Try XLA options by setting XLA_FLAGS for the whole command.
"""

import os

import jax
import numpy as np
from absl import app, flags

from fer_jax.models.kernels import conv_choice
from fer_jax.platform import allocator, cpu_info

# (model, H = W, input channels, output channels) of every 3x3 conv, in order
LAYERS = (
  ("b_pp", 48, 1, 64),
  ("b_pp", 48, 64, 64),
  ("b_pp", 24, 64, 128),
  ("b_pp", 24, 128, 128),
  ("b_pp", 12, 128, 256),
  ("b_pp", 12, 256, 256),
  ("model_0", 48, 1, 32),
  ("model_0", 24, 32, 64),
  ("model_0", 12, 64, 128),
)

_REPEATS = flags.DEFINE_integer("repeats", 5, "timed calls per implementation and layer")
_DTYPE = flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16"], "compute dtype")
_BATCH = flags.DEFINE_integer("batch", 64, "batch size")
_FORWARD_ONLY = flags.DEFINE_bool("forward_only", False, "time the forward pass without gradients")


def main(argv):
  del argv
  print(
    f"CPU: {cpu_info.current().describe()}\n"
    f"jax {jax.__version__}, XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}, "
    f"{allocator.describe()}\n"
    f"batch {_BATCH.value}, {_DTYPE.value}{', forward only' if _FORWARD_ONLY.value else ''}; "
    f"ms per layer: fastest / median of {_REPEATS.value}"
  )
  gradients = not _FORWARD_ONLY.value
  # in 16-bit floats winograd would be im2col; forward only, im2col is xla
  impls = conv_choice.candidates(_DTYPE.value, gradients)
  print(f"{'model':8s} {'layer':18s}" + "".join(f"{impl:>18s}" for impl in impls))
  totals = {}
  for model, size, c, o in LAYERS:
    runners = conv_choice.layer_runners(
      (_BATCH.value, size, size, c), (3, 3, c, o), _DTYPE.value, gradients
    )
    times = {name: [] for name in runners}
    # one fastest_seconds call per round: interleaved, and all samples kept
    for _ in range(_REPEATS.value):
      for name, seconds in conv_choice.fastest_seconds(runners, repeats=1).items():
        times[name].append(seconds)
    for name, t in times.items():  # no sample: it ran out of memory, and its sum is nan
      totals[(model, name)] = totals.get((model, name), 0) + (min(t) if t else float("nan"))
    print(
      f"{model:8s} {f'{size}x{size}, {c} -> {o}':18s}"
      + "".join(
        f"{1000 * min(t):9.1f} /{1000 * np.median(t):7.1f}" if t else f"{'out of memory':>18s}"
        for t in times.values()
      ),
      flush=True,
    )
  for model in dict.fromkeys(m for m, *_ in LAYERS):
    print(
      f"{model:8s} {'sum of fastest':18s}"
      + "".join(f"{1000 * totals[(model, n)]:9.1f}{'':8s}" for n in impls)
    )


if __name__ == "__main__":
  allocator.use_tcmalloc()
  app.run(main)
