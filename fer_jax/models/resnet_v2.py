"""ResNet50V2 transfer: Keras Applications' ResNet50V2 (include_top=False) in Flax, layer for layer,
with the study's head (GAP -> Dense 256 ReLU -> BN -> dropout 0.5 -> Dense).

Pre-activation bottleneck blocks as `keras.applications.resnet.residual_block_v2`: BatchNorm
epsilon 1.001e-5, the stride on the *last* block of each stack, explicit zero padding before
the strided convs and the stem's max-pool. Layer names are Keras's (`conv2_block1_preact_bn`,
...), grouped by residual block, so `resnet50v2_weights_tf_dim_ordering_tf_kernels_notop.h5`
ports by name.
"""

import flax.linen as nn
import jax.numpy as jnp

from fer_jax.models import transfer
from fer_jax.models.layers import batch_norm, conv, glorot, zero_pad

WEIGHTS_FILE = "resnet50v2_weights_tf_dim_ordering_tf_kernels_notop.h5"
WEIGHTS_URL = f"https://storage.googleapis.com/tensorflow/keras-applications/resnet/{WEIGHTS_FILE}"
# (name, bottleneck filters, blocks, stride of the last block) per stack
STACKS = (("conv2", 64, 3, 2), ("conv3", 128, 4, 2), ("conv4", 256, 6, 2), ("conv5", 512, 3, 1))
BLOCKS = tuple(f"{name}_block{i}" for name, _, blocks, _ in STACKS for i in range(1, blocks + 1))
TOP = ("post_bn",)
PREPROCESSING = {"native": "tf", "study": "none"}
EPSILON = 1.001e-5


class PreactBlock(nn.Module):
  """Keras residual_block_v2: BN-ReLU pre-activation, 1x1 -> 3x3 (stride) -> 1x1 (4x filters)."""

  filters: int
  stride: int = 1
  conv_shortcut: bool = False
  kernel_init: nn.initializers.Initializer = glorot
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x, train=False):
    n, d, init = self.name, self.dtype, self.kernel_init
    preact = nn.relu(batch_norm(f"{n}_preact_bn", train, EPSILON, d)(x))
    if self.conv_shortcut:
      shortcut = conv(
        4 * self.filters,
        1,
        f"{n}_0_conv",
        strides=self.stride,
        padding="VALID",
        kernel_init=init,
        dtype=d,
      )(preact)
    else:
      # MaxPooling2D(1, strides)
      shortcut = x[:, :: self.stride, :: self.stride] if self.stride > 1 else x
    y = conv(
      self.filters, 1, f"{n}_1_conv", padding="VALID", use_bias=False, kernel_init=init, dtype=d
    )(preact)
    y = nn.relu(batch_norm(f"{n}_1_bn", train, EPSILON, d)(y))
    y = conv(
      self.filters,
      3,
      f"{n}_2_conv",
      strides=self.stride,
      padding=((1, 1), (1, 1)),
      use_bias=False,
      kernel_init=init,
      dtype=d,
    )(y)
    y = nn.relu(batch_norm(f"{n}_2_bn", train, EPSILON, d)(y))
    y = conv(4 * self.filters, 1, f"{n}_3_conv", padding="VALID", kernel_init=init, dtype=d)(y)
    return shortcut + y


class ResNet50V2(nn.Module):
  kernel_init: nn.initializers.Initializer = glorot
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x, train=False):
    d = self.dtype
    x = conv(
      64,
      7,
      "conv1_conv",
      strides=2,
      padding=((3, 3), (3, 3)),
      kernel_init=self.kernel_init,
      dtype=d,
    )(x)
    # window_shape by name: jax2onnx's stand-in for nn.max_pool (fer_jax.export) takes no other.
    x = nn.max_pool(
      zero_pad(x, ((1, 1), (1, 1))), window_shape=(3, 3), strides=(2, 2), padding="VALID"
    )
    for name, filters, blocks, stride in STACKS:
      for i in range(1, blocks + 1):
        x = PreactBlock(
          filters,
          stride=stride if i == blocks else 1,
          conv_shortcut=i == 1,
          kernel_init=self.kernel_init,
          dtype=d,
          name=f"{name}_block{i}",
        )(x, train)
    return nn.relu(batch_norm("post_bn", train, EPSILON, d)(x))


def build(cfg, num_classes) -> nn.Module:
  backbone = ResNet50V2(transfer.backbone_kernel_init(cfg, glorot), jnp.dtype(cfg.dtype))
  return transfer.build(cfg, num_classes, backbone, PREPROCESSING, len(BLOCKS))


def param_labels(cfg, params):
  return transfer.param_labels(cfg, params, BLOCKS, TOP)


def load_pretrained(cfg, variables):
  return transfer.load_backbone(cfg, variables, transfer.keras_download(WEIGHTS_FILE, WEIGHTS_URL))
