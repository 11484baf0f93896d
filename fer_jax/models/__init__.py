"""Models by name: `config.model.name` selects a module of this package.

A model module provides `build(model_config, num_classes) -> flax.linen.Module`, and may provide
`param_labels(model_config, params)` (a pytree of 'train' | 'finetune' | 'frozen' per parameter,
used by fer_jax.train.optim for frozen backbones) and `load_pretrained(model_config, variables)`.
A new model is a new module plus one line in REGISTRY and one among `config.model.name`'s choices
(configs/common.py).

Every model is called as `model(x, train)` on float32 NHWC images in [0, 1] at the data's size
(transfer models resize and preprocess on device themselves) and returns logits. Code outside
this package runs a model only through `apply`, which owns Linen's collections (`params`,
`batch_stats`), the dropout rng and `mutable`.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from fer_jax.config_loading import format_value
from fer_jax.configs import common
from fer_jax.models import cnn, efficientnet, mini_xception, resnet_v2, vgg16

REGISTRY = {
  "cnn": cnn,
  "vgg16": vgg16,
  "resnet50v2": resnet_v2,
  "efficientnet_b0": efficientnet,
  "mini_xception": mini_xception,
}


def _module(model_cfg):
  if model_cfg.name not in REGISTRY:
    raise ValueError(
      f"config.model.name: unknown model {model_cfg.name!r}; known: {', '.join(sorted(REGISTRY))}"
    )
  if model_cfg.name != "cnn":
    # every config holds the CNN's fields (configs/common.py, CNN): any other model would
    # ignore them, so a value set there is refused rather than trained without
    for field, decl in common.CNN.items():
      value = model_cfg.get(field, decl.default)
      if value != decl.default:
        raise ValueError(
          f"config.model.{field}={format_value(value)}: only model 'cnn' reads it, this "
          f"config's model is {model_cfg.name!r}"
        )
  return REGISTRY[model_cfg.name]


def build(model_cfg, num_classes) -> nn.Module:
  return _module(model_cfg).build(model_cfg, num_classes)


def param_labels(model_cfg, params):
  """'train' | 'finetune' | 'frozen' for every parameter; all 'train' unless the model says
  otherwise."""
  fn = getattr(_module(model_cfg), "param_labels", None)
  return fn(model_cfg, params) if fn else jax.tree.map(lambda _: "train", params)


def load_pretrained(model_cfg, variables):
  """`variables` with `model_cfg.init_from` loaded, for models that support it; else unchanged."""
  fn = getattr(_module(model_cfg), "load_pretrained", None)
  if model_cfg.init_from and fn is None:
    raise ValueError(
      f"config.model.init_from: model {model_cfg.name!r} cannot load pretrained weights"
    )
  return fn(model_cfg, variables) if fn else variables


def to_float(images_u8):
  """uint8 images as the float32 [0, 1] input every model takes, in training and inference alike."""
  return images_u8.astype(jnp.float32) / 255.0


def apply(model, variables, x, *, train, rng=None):
  """Logits of `model` on float images `x`.

  `variables`: {'params', 'batch_stats'} (batch_stats may be empty). With `train=False` returns the
  logits (batch statistics are read, dropout is off). With `train=True` returns
  (logits, batch_stats): dropout draws from `rng` and batch normalisation uses the batch's own
  statistics, returning the updated moving averages.
  """
  variables = {"params": variables["params"], "batch_stats": variables.get("batch_stats", {})}
  if not train:
    return model.apply(variables, x, train=False)
  logits, updates = model.apply(
    variables, x, train=True, rngs={"dropout": rng}, mutable=["batch_stats"]
  )
  return logits, updates.get("batch_stats", variables["batch_stats"])


def init_variables(model, input_shape, seed=0) -> dict:
  """Initial {'params', 'batch_stats'} for a batch of `input_shape` = (H, W, C), jit-compiled."""
  x = jnp.zeros((1, *input_shape), jnp.float32)
  return jax.jit(lambda k: model.init({"params": k, "dropout": k}, x, train=False))(
    jax.random.key(seed)
  )


def count_params(variables, labels=None) -> dict[str, int]:
  """Keras-style counts: total = params + batch_stats; non-trainable = batch_stats + frozen
  params."""

  def size(tree):
    return int(sum(np.prod(a.shape) for a in jax.tree.leaves(tree)))

  params = variables.get("params", {})
  frozen = 0
  if labels is not None:
    frozen = int(
      sum(
        np.prod(p.shape)
        for p, label in zip(jax.tree.leaves(params), jax.tree.leaves(labels))
        if label == "frozen"
      )
    )
  total = size(variables)
  non_trainable = size({k: v for k, v in variables.items() if k != "params"}) + frozen
  return {"total": total, "trainable": total - non_trainable, "non_trainable": non_trainable}
