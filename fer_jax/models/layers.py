"""Flax layers whose variables are named, shaped and initialised as Keras's, so that a Keras
layer's weights copy onto them one to one (see `keras_h5.port`).

Names: a Keras layer's Flax module carries the Keras layer name. Variable order: Keras stores
a layer's weights as kernel, (pointwise kernel,) bias, or BatchNormalization's gamma, beta,
moving mean, moving variance, or Normalization's mean, variance, count (the porter sorts a
Flax layer's variables the same way). Depthwise kernels keep Keras's (k, k, C, 1) shape.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from fer_jax.models.kernels import cpu_conv

glorot = nn.initializers.glorot_uniform()  # Keras's default kernel initialiser


def conv(
  features,
  kernel_size,
  name,
  strides=1,
  padding="SAME",
  use_bias=True,
  kernel_init=glorot,
  dtype=jnp.float32,
):
  """Keras Conv2D; `padding` is 'SAME', 'VALID' or explicit ((top, bottom), (left, right)) zeros."""
  return nn.Conv(
    features,
    (kernel_size, kernel_size),
    strides=(strides, strides),
    padding=padding,
    use_bias=use_bias,
    kernel_init=kernel_init,
    dtype=dtype,
    name=name,
  )


def batch_norm(name, train, epsilon=1e-3, dtype=jnp.float32):
  """Keras BatchNormalization (momentum 0.99); `train` False uses the moving statistics."""
  return nn.BatchNorm(
    use_running_average=not train, momentum=0.99, epsilon=epsilon, dtype=dtype, name=name
  )


def correct_pad(x, kernel_size):
  """keras.applications.imagenet_utils.correct_pad: zero padding before a stride-2 'valid' conv."""
  pads = []
  for size in x.shape[1:3]:
    adjust = 1 - size % 2
    pads.append((kernel_size // 2 - adjust, kernel_size // 2))
  return tuple(pads)


def zero_pad(x, pads):
  return jnp.pad(x, ((0, 0), *pads, (0, 0)))


def _depthwise(x, kernel, strides, padding, dtype):
  k, _, c, _ = kernel.shape
  x, kernel = x.astype(dtype), kernel.astype(dtype)
  if jax.default_backend() == "cpu":
    return _depthwise_shift_add(x, kernel[:, :, :, 0], strides, padding)
  return lax.conv_general_dilated(
    x,
    kernel.reshape(k, k, 1, c),
    (strides, strides),
    padding,
    dimension_numbers=cpu_conv.NHWC_HWIO,
    feature_group_count=c,
  )


def _depthwise_shift_add(x, kernel, strides, padding):
  """The depthwise conv as k*k shifted multiply-adds, which XLA fuses into one loop.

  XLA:CPU lowers a grouped convolution (feature_group_count=C) to a slow generic kernel: on a
  256x31x31x16 input this is 10 ms against 232 ms (mini-XCEPTION's blocks are mostly this).
  """
  k = kernel.shape[0]
  if isinstance(padding, str):
    padding = lax.padtype_to_pads(x.shape[1:3], (k, k), (strides, strides), padding)
  x = jnp.pad(x, ((0, 0), *padding, (0, 0)))
  out_h = (x.shape[1] - k) // strides + 1
  out_w = (x.shape[2] - k) // strides + 1
  n, _, _, c = x.shape
  y = 0
  for i in range(k):
    for j in range(k):
      # lax.slice rather than indexing: with a symbolic batch (fer_jax.export) indexing becomes a
      # gather that converters reject.
      end = (n, i + strides * (out_h - 1) + 1, j + strides * (out_w - 1) + 1, c)
      y = y + lax.slice(x, (0, i, j, 0), end, (1, strides, strides, 1)) * kernel[i, j]
  return y


class DepthwiseConv2D(nn.Module):
  """Keras DepthwiseConv2D with depth multiplier 1, no bias."""

  kernel_size: int
  strides: int = 1
  padding: str = "SAME"
  kernel_init: nn.initializers.Initializer = glorot
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    kernel = self.param(
      "depthwise_kernel", self.kernel_init, (self.kernel_size, self.kernel_size, x.shape[-1], 1)
    )
    return _depthwise(x, kernel, self.strides, self.padding, self.dtype)


class SeparableConv2D(nn.Module):
  """Keras SeparableConv2D ('same', stride 1, depth multiplier 1): depthwise then pointwise conv."""

  features: int
  kernel_size: int
  use_bias: bool = True
  kernel_init: nn.initializers.Initializer = glorot
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    k, c = self.kernel_size, x.shape[-1]
    depthwise = self.param("depthwise_kernel", self.kernel_init, (k, k, c, 1))
    pointwise = self.param("pointwise_kernel", self.kernel_init, (1, 1, c, self.features))
    y = _depthwise(x, depthwise, 1, "SAME", self.dtype)
    y = lax.conv_general_dilated(
      y, pointwise.astype(self.dtype), (1, 1), "VALID", dimension_numbers=cpu_conv.NHWC_HWIO
    )
    if self.use_bias:
      y = y + self.param("bias", nn.initializers.zeros, (self.features,)).astype(self.dtype)
    return y


class Normalization(nn.Module):
  """Keras Normalization (per channel): (x - mean) / max(sqrt(variance), 1e-7).

  Its statistics are constants of the model, so they live in 'batch_stats' (non-trainable, as in
  Keras); `count` is kept only so that parameter counts equal Keras's.
  """

  @nn.compact
  def __call__(self, x):
    c = x.shape[-1]
    mean = self.variable("batch_stats", "mean", jnp.zeros, (c,), jnp.float32).value
    variance = self.variable("batch_stats", "variance", jnp.ones, (c,), jnp.float32).value
    self.variable("batch_stats", "count", jnp.zeros, (), jnp.float32)
    # in float32 (as BatchNorm), returned in the compute dtype
    y = (x.astype(jnp.float32) - mean) / jnp.maximum(jnp.sqrt(variance), 1e-7)
    return y.astype(x.dtype)
