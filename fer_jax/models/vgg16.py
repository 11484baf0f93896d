"""VGG16 transfer: Keras Applications' VGG16 (include_top=False) in Flax, layer for layer, with the
study's head (GAP -> Dense 512 ReLU -> BN -> dropout 0.5 -> Dense 256 ReLU -> dropout 0.3 -> Dense).

Layer names are Keras's (`block1_conv1`, ...), grouped by block, so the ImageNet file
`vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5` ports by name. 14,714,688 backbone parameters.
"""

import flax.linen as nn
import jax.numpy as jnp

from fer_jax.models import transfer
from fer_jax.models.layers import conv, glorot

WEIGHTS_FILE = "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5"
WEIGHTS_URL = f"https://storage.googleapis.com/tensorflow/keras-applications/vgg16/{WEIGHTS_FILE}"
STAGES = ((64, 2), (128, 2), (256, 3), (512, 3), (512, 3))  # (filters, 3x3 convs) per block
BLOCKS = tuple(f"block{b}" for b in range(1, len(STAGES) + 1))
PREPROCESSING = {"native": "caffe", "study": "none"}


class VGGBlock(nn.Module):
  """`convs` 3x3 'same' ReLU convs, then a 2x2 max-pool."""

  features: int
  convs: int
  kernel_init: nn.initializers.Initializer = glorot
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    for i in range(1, self.convs + 1):
      x = nn.relu(
        conv(
          self.features, 3, f"{self.name}_conv{i}", kernel_init=self.kernel_init, dtype=self.dtype
        )(x)
      )
    # window_shape by name: jax2onnx's stand-in for nn.max_pool (fer_jax.export) takes no other.
    return nn.max_pool(x, window_shape=(2, 2), strides=(2, 2), padding="VALID")


class VGG16(nn.Module):
  kernel_init: nn.initializers.Initializer = glorot
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x, train=False):
    del train  # no BatchNorm, no dropout
    for name, (features, convs) in zip(BLOCKS, STAGES):
      x = VGGBlock(features, convs, self.kernel_init, self.dtype, name=name)(x)
    return x


def build(cfg, num_classes) -> nn.Module:
  backbone = VGG16(transfer.backbone_kernel_init(cfg, glorot), jnp.dtype(cfg.dtype))
  return transfer.build(cfg, num_classes, backbone, PREPROCESSING, len(BLOCKS))


def param_labels(cfg, params):
  return transfer.param_labels(cfg, params, BLOCKS)


def load_pretrained(cfg, variables):
  return transfer.load_backbone(cfg, variables, transfer.keras_download(WEIGHTS_FILE, WEIGHTS_URL))
