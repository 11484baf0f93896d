"""Optimisation on optax: Adam with a constant or cosine schedule, per-group learning rates for
frozen / fine-tuned parameters, and the study's host-side callbacks (ReduceLROnPlateau,
EarlyStopping) that act between epochs.

The plateau factor is an injected hyperparameter `lr_factor` of the optimiser state, read and
set by name (`optax.tree.get/set`), so the jitted step never recompiles when it changes and a
checkpoint of the state carries it.
"""

import dataclasses
import math

import jax.numpy as jnp
import optax


def schedule(optim_cfg, steps_per_epoch):
  if optim_cfg.schedule == "constant":
    return optax.constant_schedule(optim_cfg.lr)
  if optim_cfg.schedule == "cosine":
    return optax.cosine_decay_schedule(
      optim_cfg.lr,
      decay_steps=steps_per_epoch * optim_cfg.cosine_epochs,
      alpha=optim_cfg.cosine_alpha,
    )
  raise ValueError(f"config.optim.schedule: {optim_cfg.schedule!r}; use constant | cosine")


def _adam(optim_cfg, learning_rate):
  return optax.chain(
    optax.scale_by_adam(b1=optim_cfg.b1, b2=optim_cfg.b2, eps=optim_cfg.eps),
    optax.scale_by_learning_rate(learning_rate),
  )


def build(optim_cfg, steps_per_epoch, param_labels):
  """Adam for 'train' params, Adam at finetune_lr for 'finetune', nothing (no state) for
  'frozen'."""
  groups = {
    "train": _adam(optim_cfg, schedule(optim_cfg, steps_per_epoch)),
    "finetune": _adam(optim_cfg, optim_cfg.finetune_lr),
    "frozen": optax.set_to_zero(),
  }
  return optax.chain(
    optax.multi_transform(groups, param_labels),
    optax.inject_hyperparams(_plateau_scale)(lr_factor=1.0),
  )


def _plateau_scale(lr_factor):
  return optax.scale(lr_factor)


def lr_factor(opt_state):
  return optax.tree.get(opt_state, "lr_factor")


def with_lr_factor(opt_state, factor):
  """The optimiser state with the plateau factor replaced (host-side, between epochs)."""
  return optax.tree.set(opt_state, lr_factor=jnp.asarray(factor, lr_factor(opt_state).dtype))


def learning_rate(optim_cfg, steps_per_epoch, step, factor):
  return float(schedule(optim_cfg, steps_per_epoch)(step)) * float(factor)


@dataclasses.dataclass
class Plateau:
  """Keras ReduceLROnPlateau (mode 'min', min_delta 1e-4, no cooldown) acting on a lr factor."""

  factor: float
  patience: int
  min_lr: float
  min_delta: float = 1e-4
  best: float = math.inf
  wait: int = 0

  def update(self, value, lr):
    """Returns the new learning rate after an epoch whose monitored value was `value`."""
    if value < self.best - self.min_delta:
      self.best, self.wait = value, 0
      return lr
    self.wait += 1
    if self.wait >= self.patience and lr > self.min_lr:
      self.wait = 0
      return max(lr * self.factor, self.min_lr)
    return lr


@dataclasses.dataclass
class EarlyStopping:
  """Keras EarlyStopping (mode 'max', min_delta 0): stop after `patience` epochs without a new
  best."""

  patience: int
  best: float = -math.inf
  best_epoch: int = 0
  wait: int = 0

  def update(self, value, epoch):
    """Records an epoch; returns (improved, stop)."""
    if value > self.best:
      self.best, self.best_epoch, self.wait = value, epoch, 0
      return True, False
    self.wait += 1
    return False, self.wait >= self.patience
