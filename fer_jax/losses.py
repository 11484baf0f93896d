"""The study's losses: label-smoothed cross-entropy or focal loss, per-sample class weights,
and Keras-style L2 (lambda * sum w^2 added to the loss) on selected kernels.
"""

import re
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

FOCAL_CLIP = 1e-7  # Keras clips probabilities to [eps, 1 - eps] before the log


def smoothed_targets(labels, num_classes, epsilon):
  return optax.smooth_labels(jax.nn.one_hot(labels, num_classes), epsilon)


def cross_entropy(logits, targets):
  return optax.softmax_cross_entropy(logits, targets)


def focal(logits, targets, gamma, alpha):
  """sum_c y_c * alpha * (1 - p_c)^gamma * (-log p_c), p clipped as Keras does (docs/study.md)."""
  p = jnp.clip(jax.nn.softmax(logits), FOCAL_CLIP, 1.0 - FOCAL_CLIP)
  return jnp.sum(targets * alpha * (1.0 - p) ** gamma * -jnp.log(p), axis=-1)


def per_sample_loss_fn(loss_cfg, num_classes) -> Callable[[jax.Array, jax.Array], jax.Array]:
  """(logits, int labels) -> per-sample loss, unweighted."""
  if loss_cfg.name not in ("cross_entropy", "focal"):
    raise ValueError(f"config.loss.name: unknown loss {loss_cfg.name!r}; use cross_entropy | focal")

  def loss(logits, labels):
    targets = smoothed_targets(labels, num_classes, loss_cfg.label_smoothing)
    if loss_cfg.name == "focal":
      return focal(logits, targets, loss_cfg.focal_gamma, loss_cfg.focal_alpha)
    return cross_entropy(logits, targets)

  return loss


def balanced_class_weights(counts) -> np.ndarray:
  """sklearn's 'balanced': n_samples / (n_classes * count_c); classes absent from train get 0."""
  counts = np.asarray(counts, np.float64)
  present = counts > 0
  weights = np.zeros_like(counts)
  weights[present] = counts.sum() / (present.sum() * counts[present])
  return weights.astype(np.float32)


def class_weights(loss_cfg, counts) -> np.ndarray:
  if loss_cfg.class_weights == "balanced":
    return balanced_class_weights(counts)
  if loss_cfg.class_weights == "none":
    return np.ones(len(counts), np.float32)
  raise ValueError(f"config.loss.class_weights: {loss_cfg.class_weights!r}; use balanced | none")


# Which kernels each L2 field covers, by the owning layer's name (see fer_jax/models/cnn.py).
_L2_LAYERS = (
  ("l2_conv", re.compile(r"^conv\d+_\d+$")),  # not the backbones' Keras names
  ("l2_hidden_dense", re.compile(r"^dense\d+$")),
  ("l2_output_dense", re.compile(r"^logits$")),
)


def l2_coefficients(params, loss_cfg):
  """Pytree of per-parameter lambda: nonzero only on the kernels the config regularises."""

  def coeff(path, _):
    names = [p.key for p in path if hasattr(p, "key")]
    if names[-1] != "kernel":
      return 0.0
    for field, pattern in _L2_LAYERS:
      if pattern.match(names[-2]):
        return float(loss_cfg[field])
    return 0.0

  return jax.tree_util.tree_map_with_path(coeff, params)


def l2_penalty(params, coefficients) -> jax.Array:
  terms = [
    lam * jnp.sum(jnp.square(w))
    for w, lam in zip(jax.tree.leaves(params), jax.tree.leaves(coefficients))
    if lam
  ]
  return sum(terms) if terms else jnp.zeros((), jnp.float32)
