"""The study's CNN family from one configurable builder: Model 0, A, B, C, B+, B++, D, colour-mode.

Layer names follow the structure (`conv{block}_{i}`, `bn{block}_{i}` / `bn{block}`, `dense{j}`,
`dense{j}_bn`, `logits`) so L2 masks, summaries and weight porting can select layers by name.
Initialisers are Keras's (glorot-uniform kernels, zero biases) so training starts as the study's
did.

`dtype` (config.model.dtype) is the compute dtype of the convolutions and Dense layers and of the
activations between them. With bfloat16 this is mixed precision: parameters stay float32 (cast
where they are used, so their gradients, the optimiser state and the updates are float32),
BatchNorm computes its statistics and normalisation in float32 and keeps float32 moving
averages, and the logits are returned as float32 for the softmax and the loss.
"""

from collections.abc import Sequence

import flax.linen as nn
import jax.numpy as jnp

from fer_jax.models.kernels import conv_choice, cpu_conv
from fer_jax.models.layers import glorot

BN_PLACEMENTS = ("conv_bn_relu", "conv_relu_bn", "block_end", "none")


class Conv3x3(nn.Module):
  """'same' 3x3 convolution with bias, dispatching to fer_jax.models.kernels.cpu_conv for its
  gradient ('auto': the implementation fer_jax.models.kernels.conv_choice picks for this layer's
  shapes, timed with gradients where `train`: only training steps differentiate the model)."""

  features: int
  impl: str = "xla"
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    kernel = self.param("kernel", glorot, (3, 3, x.shape[-1], self.features))
    bias = self.param("bias", nn.initializers.zeros, (self.features,))
    impl = (
      conv_choice.choose(x.shape, kernel.shape, self.dtype, gradients=train)
      if self.impl == "auto"
      else self.impl
    )
    y = cpu_conv.conv2d_same(x.astype(self.dtype), kernel.astype(self.dtype), impl)
    return y + bias.astype(self.dtype)


class CNN(nn.Module):
  """Blocks of 3x3 convs (+BN, pool, dropout), then a Flatten/GAP head with hidden Dense layers."""

  num_classes: int
  widths: Sequence[int]
  convs_per_block: int
  bn_placement: str
  pool_after: Sequence[bool]
  block_dropouts: Sequence[float]
  head_pool: str
  head_pre_dropout: float
  dense_widths: Sequence[int]
  dense_bn: bool
  dense_dropouts: Sequence[float]
  bn_momentum: float = 0.99
  bn_epsilon: float = 1e-3
  conv_impl: str = "xla"
  dtype: jnp.dtype = jnp.float32

  def _bn(self, name, train):
    # dtype is only BatchNorm's output dtype: its statistics and normalisation are float32.
    return nn.BatchNorm(
      use_running_average=not train,
      momentum=self.bn_momentum,
      epsilon=self.bn_epsilon,
      dtype=self.dtype,
      name=name,
    )

  @nn.compact
  def __call__(self, x, train: bool = False):
    x = x.astype(self.dtype)
    for b, width in enumerate(self.widths, start=1):
      for i in range(1, self.convs_per_block + 1):
        x = Conv3x3(width, self.conv_impl, self.dtype, name=f"conv{b}_{i}")(x, train)
        if self.bn_placement == "conv_bn_relu":
          x = nn.relu(self._bn(f"bn{b}_{i}", train)(x))
        elif self.bn_placement == "conv_relu_bn":
          x = self._bn(f"bn{b}_{i}", train)(nn.relu(x))
        else:
          x = nn.relu(x)
      if self.bn_placement == "block_end":
        x = self._bn(f"bn{b}", train)(x)
      if self.pool_after[b - 1]:
        x = cpu_conv.max_pool_2x2(x, self.conv_impl)
      if self.block_dropouts[b - 1]:
        x = nn.Dropout(self.block_dropouts[b - 1], deterministic=not train)(x)
    x = x.reshape(x.shape[0], -1) if self.head_pool == "flatten" else jnp.mean(x, axis=(1, 2))
    if self.head_pre_dropout:
      x = nn.Dropout(self.head_pre_dropout, deterministic=not train)(x)
    x = dense_head(
      x,
      self.num_classes,
      self.dense_widths,
      (self.dense_bn,) * len(self.dense_widths),
      self.dense_dropouts,
      lambda name: self._bn(name, train),
      self.dtype,
      train,
    )
    return x.astype(jnp.float32)


def dense_head(x, num_classes, widths, batch_norm, dropouts, make_bn, dtype, train):
  """[Dense ReLU (-> BN) (-> dropout)]* -> Dense(num_classes), as layers dense{j}, dense{j}_bn and
  logits of the calling module (the CNN family's and the transfer models' heads).

  `batch_norm` and `dropouts` hold one entry per width; `make_bn(name)` returns a BatchNorm.
  """
  for j, (width, bn, rate) in enumerate(zip(widths, batch_norm, dropouts), start=1):
    x = nn.relu(nn.Dense(width, kernel_init=glorot, dtype=dtype, name=f"dense{j}")(x))
    if bn:
      x = make_bn(f"dense{j}_bn")(x)
    if rate:
      x = nn.Dropout(rate, deterministic=not train)(x)
  return nn.Dense(num_classes, kernel_init=glorot, dtype=dtype, name="logits")(x)


def _check(cfg):
  """Fails on inconsistent lengths with the field's name, before any tracing."""
  n = len(cfg.widths)
  if cfg.bn_placement not in BN_PLACEMENTS:
    raise ValueError(
      f"config.model.bn_placement: {cfg.bn_placement!r} is not one of {BN_PLACEMENTS}"
    )
  if cfg.head_pool not in ("flatten", "gap"):
    raise ValueError(f"config.model.head_pool: {cfg.head_pool!r} is not 'flatten' or 'gap'")
  for field, want in (
    ("pool_after", n),
    ("block_dropouts", n),
    ("dense_dropouts", len(cfg.dense_widths)),
  ):
    if len(cfg[field]) != want:
      raise ValueError(f"config.model.{field}: has {len(cfg[field])} entries, needs {want}")


def build(cfg, num_classes) -> nn.Module:
  """The CNN described by config.model (see configs/common.py for each field)."""
  _check(cfg)
  return CNN(
    num_classes=num_classes,
    widths=tuple(cfg.widths),
    convs_per_block=cfg.convs_per_block,
    bn_placement=cfg.bn_placement,
    pool_after=tuple(bool(p) for p in cfg.pool_after),
    block_dropouts=tuple(cfg.block_dropouts),
    head_pool=cfg.head_pool,
    head_pre_dropout=cfg.head_pre_dropout,
    dense_widths=tuple(cfg.dense_widths),
    dense_bn=cfg.dense_bn,
    dense_dropouts=tuple(cfg.dense_dropouts),
    bn_momentum=cfg.bn_momentum,
    bn_epsilon=cfg.bn_epsilon,
    conv_impl=cpu_conv.resolve_impl(cfg.conv_impl),
    dtype=jnp.dtype(cfg.dtype),
  )
