"""A Keras-style `summary()`: every layer with its output shape and parameter count."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from fer_jax import models


def _size(tree):
  return int(sum(np.prod(a.shape) for a in jax.tree.leaves(tree)))


def _subtree(tree, path):
  for key in path:
    tree = tree.get(key, {}) if isinstance(tree, dict) else {}
  return tree


def layer_rows(model, input_shape) -> tuple[list[tuple[str, tuple, int]], dict]:
  """((layer path, output shape, params) of each leaf layer in call order, the variables' shapes);
  traces shapes only."""
  x = jax.ShapeDtypeStruct((1, *input_shape), jnp.float32)
  key = jax.random.key(0)
  calls = []

  def record(next_fun, args, kwargs, context):
    out = next_fun(*args, **kwargs)
    if context.method_name == "__call__" and context.module.path:
      calls.append((tuple(context.module.path), out.shape))
    return out

  def run(x):
    with nn.intercept_methods(record):
      return model.init({"params": key, "dropout": key}, x, train=False)

  variables = jax.eval_shape(run, x)
  paths = [p for p, _ in calls]
  rows = []
  for path, shape in calls:
    if any(len(q) > len(path) and q[: len(path)] == path for q in paths):
      continue  # a container; its layers have rows of their own
    n = _size(_subtree(variables.get("params", {}), path)) + _size(
      _subtree(variables.get("batch_stats", {}), path)
    )
    rows.append(("/".join(path), tuple(shape), n))
  return rows, variables


def model_summary(config) -> str:
  num_classes = len(config.data.classes)
  model = models.build(config.model, num_classes)
  input_shape = (config.data.image_size, config.data.image_size, config.data.channels)
  rows, variables = layer_rows(model, input_shape)
  labels = models.param_labels(config.model, variables["params"])
  counts = models.count_params(variables, labels)
  width = max([len(r[0]) for r in rows] + [20]) + 2
  lines = [
    f'Model "{config.name}" ({config.model.name}), input {input_shape}, {num_classes} classes',
    f"{'Layer':<{width}}{'Output shape':<24}{'Param #':>12}",
    "-" * (width + 36),
  ]
  lines += [f"{name:<{width}}{str((None,) + shape[1:]):<24}{n:>12,}" for name, shape, n in rows]
  lines += [
    "-" * (width + 36),
    f"Total params: {counts['total']:,}",
    f"Trainable params: {counts['trainable']:,}",
    f"Non-trainable params: {counts['non_trainable']:,}",
  ]
  return "\n".join(lines)
