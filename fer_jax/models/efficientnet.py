"""EfficientNetB0 transfer: Keras Applications' EfficientNetB0 (include_top=False) in Flax, layer
for layer, with the study's head (GAP -> Dense 256 ReLU -> BN -> dropout 0.5 -> Dense).

The backbone takes 0-255 RGB and normalises it itself (Rescaling 1/255, then Normalization with
ImageNet mean and variance). Keras's ImageNet model adds a Rescaling by 1/sqrt(stddev) after the
Normalization because the weights file stores the stddevs as "variance" (tensorflow issue 49930);
`config.model.imagenet_rescale` (default True) reproduces it, False matches a Keras model built
with `weights=None`. MBConv blocks: swish, depthwise convs, squeeze-and-excitation, stochastic
depth (drop connect, active only when the backbone trains). Layer names are Keras's, grouped by
block, so `efficientnetb0_notop.h5` ports by name.
"""

import math

import flax.linen as nn
import jax.numpy as jnp

from fer_jax.models import transfer
from fer_jax.models.layers import (
  DepthwiseConv2D,
  Normalization,
  batch_norm,
  conv,
  correct_pad,
  zero_pad,
)

WEIGHTS_FILE = "efficientnetb0_notop.h5"
WEIGHTS_URL = f"https://storage.googleapis.com/keras-applications/{WEIGHTS_FILE}"
IMAGENET_STDDEV_RGB = (0.229, 0.224, 0.225)
# keras.applications.efficientnet.DEFAULT_BLOCKS_ARGS at width and depth 1.0:
# (kernel, repeats, filters_in, filters_out, expand_ratio, strides); SE ratio 0.25 everywhere.
STAGES = (
  (3, 1, 32, 16, 1, 1),
  (3, 2, 16, 24, 6, 2),
  (5, 2, 24, 40, 6, 2),
  (3, 3, 40, 80, 6, 2),
  (5, 3, 80, 112, 6, 1),
  (5, 4, 112, 192, 6, 2),
  (3, 1, 192, 320, 6, 1),
)
BLOCKS = tuple(
  f"block{i}{chr(97 + j)}" for i, stage in enumerate(STAGES, start=1) for j in range(stage[1])
)
TOP = ("top_conv", "top_bn")
PREPROCESSING = {"native": "scale255", "study": "scale255"}
DROP_CONNECT_RATE = 0.2
# VarianceScaling(2.0, fan_out, truncated normal): Keras's EfficientNet conv initialiser.
conv_init = nn.initializers.variance_scaling(2.0, "fan_out", "truncated_normal")


class MBConv(nn.Module):
  """keras.applications.efficientnet.block: expand 1x1 -> depthwise -> SE -> project 1x1 (+skip)."""

  kernel_size: int
  filters_in: int
  filters_out: int
  expand_ratio: int
  strides: int
  drop_rate: float
  kernel_init: nn.initializers.Initializer = conv_init
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, inputs, train=False):
    n, d, init = self.name, self.dtype, self.kernel_init
    filters = self.filters_in * self.expand_ratio
    x = inputs
    if self.expand_ratio != 1:
      x = conv(filters, 1, f"{n}_expand_conv", use_bias=False, kernel_init=init, dtype=d)(x)
      x = nn.swish(batch_norm(f"{n}_expand_bn", train, dtype=d)(x))
    padding = "SAME"
    if self.strides == 2:
      x, padding = zero_pad(x, correct_pad(x, self.kernel_size)), "VALID"
    x = DepthwiseConv2D(self.kernel_size, self.strides, padding, init, d, name=f"{n}_dwconv")(x)
    x = nn.swish(batch_norm(f"{n}_bn", train, dtype=d)(x))
    se = jnp.mean(x, axis=(1, 2), keepdims=True)
    se = nn.swish(
      conv(max(1, int(self.filters_in * 0.25)), 1, f"{n}_se_reduce", kernel_init=init, dtype=d)(se)
    )
    se = nn.sigmoid(conv(filters, 1, f"{n}_se_expand", kernel_init=init, dtype=d)(se))
    x = x * se
    x = conv(self.filters_out, 1, f"{n}_project_conv", use_bias=False, kernel_init=init, dtype=d)(x)
    x = batch_norm(f"{n}_project_bn", train, dtype=d)(x)
    if self.strides == 1 and self.filters_in == self.filters_out:
      x = nn.Dropout(self.drop_rate, broadcast_dims=(1, 2, 3), deterministic=not train)(x)
      x = x + inputs
    return x


class EfficientNetB0(nn.Module):
  imagenet_rescale: bool = True
  kernel_init: nn.initializers.Initializer = conv_init
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x, train=False):
    d = self.dtype
    x = Normalization(name="normalization")(x * (1.0 / 255.0))
    if self.imagenet_rescale:
      x = x * jnp.array([1.0 / math.sqrt(s) for s in IMAGENET_STDDEV_RGB], x.dtype)
    x = zero_pad(x, correct_pad(x, 3))
    x = conv(
      32,
      3,
      "stem_conv",
      strides=2,
      padding="VALID",
      use_bias=False,
      kernel_init=self.kernel_init,
      dtype=d,
    )(x)
    x = nn.swish(batch_norm("stem_bn", train, dtype=d)(x))
    b = 0
    for i, (kernel, repeats, filters_in, filters_out, expand, strides) in enumerate(
      STAGES, start=1
    ):
      for j in range(repeats):
        x = MBConv(
          kernel,
          filters_in if j == 0 else filters_out,
          filters_out,
          expand,
          strides if j == 0 else 1,
          DROP_CONNECT_RATE * b / len(BLOCKS),
          self.kernel_init,
          d,
          name=f"block{i}{chr(97 + j)}",
        )(x, train)
        b += 1
    x = conv(1280, 1, "top_conv", use_bias=False, kernel_init=self.kernel_init, dtype=d)(x)
    return nn.swish(batch_norm("top_bn", train, dtype=d)(x))


def build(cfg, num_classes) -> nn.Module:
  backbone = EfficientNetB0(
    cfg.imagenet_rescale, transfer.backbone_kernel_init(cfg, conv_init), jnp.dtype(cfg.dtype)
  )
  return transfer.build(cfg, num_classes, backbone, PREPROCESSING, len(BLOCKS))


def param_labels(cfg, params):
  return transfer.param_labels(cfg, params, BLOCKS, TOP)


def load_pretrained(cfg, variables):
  return transfer.load_backbone(cfg, variables, transfer.keras_download(WEIGHTS_FILE, WEIGHTS_URL))
