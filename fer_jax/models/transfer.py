"""Transfer learning on ported Keras backbones: input preparation on device, the study's heads,
freezing and pretrained weights. The config fields are declared in configs/transfer_common.py.

A transfer model is `TransferModel(backbone, head)`: it takes the data's [0, 1] NHWC batch
(48x48x1 by default), resizes it on device (bilinear, antialiased) to the backbone's input
size, converts channels, applies the backbone's preprocessing, runs the backbone and the head.
The 224x224 images exist only inside the step, a batch at a time.

`config.model.backbone_mode`:
  freeze    backbone BatchNorm in inference mode, its output behind stop_gradient, its
            parameters labelled 'frozen' (no gradient use, no optimiser state) - the study's setup;
  finetune  the top `finetune_blocks` blocks labelled 'finetune' (Adam at optim.finetune_lr), the
            rest frozen; backbone BatchNorm stays in inference mode (Keras's fine-tuning advice);
  train     the whole backbone trains, BatchNorm in training mode.
"""

import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from fer_jax.models import cnn
from fer_jax.models.porting import port, read_keras_h5

BACKBONE_MODES = ("freeze", "finetune", "train")

# keras.applications.imagenet_utils.preprocess_input modes, on [0, 1] input.
# NumPy, not jnp: a jnp array at import would start the JAX backend before launch.py can call
# jax.distributed.initialize().
_CAFFE_BGR_MEAN = np.array([103.939, 116.779, 123.68], np.float32)
PREPROCESSING = {
  # VGG16: BGR, 0-255, ImageNet mean removed
  "caffe": lambda x: x[..., ::-1] * 255.0 - _CAFFE_BGR_MEAN,
  "tf": lambda x: x * 2.0 - 1.0,  # ResNet50V2, mini-XCEPTION: [-1, 1]
  "scale255": lambda x: x * 255.0,  # EfficientNet normalises 0-255 input itself
  "none": lambda x: x,  # the study's raw [0, 1] feeding
}
# OpenCV's RGB -> gray, as the fer package converts
_LUMA = np.array([0.299, 0.587, 0.114], np.float32)


def prepare(x, size, channels, preprocessing):
  """[0, 1] NHWC images -> the backbone's input: `size` x `size`, `channels`, preprocessed."""
  n, h, w, c = x.shape
  if (h, w) != (size, size):
    x = jax.image.resize(x, (n, size, size, c), "linear", antialias=True)
  if c == 1 and channels == 3:
    x = jnp.broadcast_to(x, (n, size, size, 3))
  elif c == 3 and channels == 1:
    x = (x @ _LUMA)[..., None]
  elif c != channels:
    raise ValueError(
      f"config.data.channels: {c} channels cannot feed a backbone that takes {channels}"
    )
  return PREPROCESSING[preprocessing](x)


class DenseHead(nn.Module):
  """The study's heads: GAP -> [Dense ReLU (-> BN) (-> dropout)]* -> Dense(num_classes)."""

  num_classes: int
  widths: tuple
  batch_norm: tuple
  dropouts: tuple
  bn_momentum: float = 0.99  # Keras's default; `quick` lowers it (configs/common.py apply_quick)
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, features, train=False):
    x = jnp.mean(features.astype(jnp.float32), axis=(1, 2))

    def make_bn(name):
      return nn.BatchNorm(
        use_running_average=not train,
        momentum=self.bn_momentum,
        epsilon=1e-3,
        dtype=self.dtype,
        name=name,
      )

    return cnn.dense_head(
      x, self.num_classes, self.widths, self.batch_norm, self.dropouts, make_bn, self.dtype, train
    )


class TransferModel(nn.Module):
  """prepare -> backbone -> head.

  `backbone(x, train)` returns a feature map, `head(f, train)` logits.
  """

  backbone: nn.Module
  head: nn.Module
  input_size: int
  channels: int
  preprocessing: str
  backbone_mode: str = "freeze"
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x, train=False):
    x = prepare(x.astype(jnp.float32), self.input_size, self.channels, self.preprocessing)
    features = self.backbone(x.astype(self.dtype), train=train and self.backbone_mode == "train")
    if self.backbone_mode == "freeze":
      features = jax.lax.stop_gradient(features)
    return self.head(features, train=train).astype(jnp.float32)


def check(cfg, num_blocks, preprocessing):
  """Fails on a bad transfer field with the field's name, before any tracing."""
  mode = cfg.backbone_mode
  if mode not in BACKBONE_MODES:
    raise ValueError(f"config.model.backbone_mode: {mode!r} is not one of {BACKBONE_MODES}")
  if mode == "finetune" and not 1 <= cfg.finetune_blocks <= num_blocks:
    raise ValueError(
      f"config.model.finetune_blocks: {cfg.finetune_blocks} is not in 1..{num_blocks}"
    )
  if cfg.preprocessing not in preprocessing:
    raise ValueError(
      f"config.model.preprocessing: {cfg.preprocessing!r} is not one of {tuple(preprocessing)}"
    )
  if cfg.input_size < 32:
    raise ValueError(
      f"config.model.input_size: {cfg.input_size} is below the backbones' minimum of 32"
    )


def build(
  cfg, num_classes, backbone, preprocessing, num_blocks, channels=3, head=None
) -> TransferModel:
  """A TransferModel from config.model.

  `preprocessing` maps 'native' / 'study' to PREPROCESSING keys.
  """
  check(cfg, num_blocks, preprocessing)
  dtype = jnp.dtype(cfg.dtype)
  if head is None:
    widths, bns, rates = tuple(cfg.head_widths), tuple(cfg.head_bn), tuple(cfg.head_dropouts)
    if not len(widths) == len(bns) == len(rates):
      raise ValueError(
        f"config.model.head_widths / head_bn / head_dropouts: lengths {len(widths)}, "
        f"{len(bns)}, {len(rates)} differ"
      )
    head = DenseHead(num_classes, widths, bns, rates, cfg.bn_momentum, dtype)
  return TransferModel(
    backbone=backbone,
    head=head,
    input_size=cfg.input_size,
    channels=channels,
    preprocessing=preprocessing[cfg.preprocessing],
    backbone_mode=cfg.backbone_mode,
    dtype=dtype,
  )


def backbone_kernel_init(cfg, keras_init):
  """Keras's initialiser for a random backbone; zeros when load_pretrained will overwrite every
  kernel (it fails on any it cannot fill): compiling the random initialisers of a large backbone
  takes XLA:CPU long (docs/performance.md), for values that would be thrown away."""
  return keras_init if cfg.init_from in ("", "random") else nn.initializers.zeros


def param_labels(cfg, params, blocks, top=()):
  """'train' for the head; the backbone's layers by `backbone_mode` (see the module docstring).

  `blocks` are the backbone's block names from input to output; `top` its layers after the last
  block, which fine-tune with it. Other backbone layers (the stem) stay frozen when fine-tuning.
  """
  mode = cfg.backbone_mode
  tuned = set(blocks[len(blocks) - cfg.finetune_blocks :]) | set(top)

  def backbone_label(child):
    if mode == "finetune":
      return "finetune" if child in tuned else "frozen"
    return "train" if mode == "train" else "frozen"

  def fill(tree, label):
    return jax.tree.map(lambda _: label, tree)

  labels = {key: fill(tree, "train") for key, tree in params.items() if key != "backbone"}
  labels["backbone"] = {
    child: fill(tree, backbone_label(child)) for child, tree in params["backbone"].items()
  }
  return labels


def weights_path(init_from, needed) -> str | None:
  """config.model.init_from as a path; None for 'random'.

  `needed` tells what to pass when it is empty.
  """
  if init_from == "random":
    return None
  if not init_from:
    raise ValueError(
      f"config.model.init_from is empty: this model needs {needed}, "
      "or --config.model.init_from=random for a random start"
    )
  if not os.path.isfile(init_from):
    raise FileNotFoundError(f"config.model.init_from: no such file {init_from!r}")
  return init_from


def load_backbone(
  cfg, variables, needed, *, init_from=None, scope=("backbone",), skip=(), allow_unused=True
):
  """`variables` with the layers under `scope` filled from config.model.init_from (or
  `init_from`)."""
  path = weights_path(cfg.init_from if init_from is None else init_from, needed)
  if path is None:
    return variables
  return port(
    variables,
    read_keras_h5(path),
    scope=scope,
    skip=skip,
    allow_unused=allow_unused,
    source=f"config.model.init_from={path}",
  )


def keras_download(file_name, url) -> str:
  """What `weights_path` asks for when init_from is empty: the file, where Keras hosts it."""
  return (
    f"the Keras ImageNet weights {file_name}: download {url} on a machine with internet "
    f"(Keras caches it in ~/.keras/models/) and pass --config.model.init_from=/path/to/{file_name}"
  )
