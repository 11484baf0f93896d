"""Optimiser and callbacks: schedules, frozen groups, plateau and early stopping on scripted
metrics."""

import jax.numpy as jnp
import numpy as np
import pytest

from fer_jax.configs import b, b_p
from fer_jax.train import optim


def test_cosine_schedule_decays_to_alpha_over_epochs():
  config = b_p.get_config()  # lr 5e-4, cosine to 2 % over 75 epochs
  sched = optim.schedule(config.optim, steps_per_epoch=10)
  assert float(sched(0)) == pytest.approx(5e-4)
  assert float(sched(375)) == pytest.approx(5e-4 * (0.02 + 0.98 * 0.5), rel=1e-5)  # half way
  assert float(sched(750)) == pytest.approx(5e-4 * 0.02, rel=1e-5)
  assert float(sched(2000)) == pytest.approx(5e-4 * 0.02, rel=1e-5)


def test_adam_update_and_frozen_group_has_no_state():
  config = b.get_config()
  params = {"head": jnp.ones(3), "backbone": jnp.ones(5)}
  tx = optim.build(config.optim, 10, {"head": "train", "backbone": "frozen"})
  state = tx.init(params)
  leaves = [x for x in __import__("jax").tree.leaves(state) if getattr(x, "shape", None) == (5,)]
  assert not leaves  # no Adam moments for the frozen backbone
  updates, _ = tx.update({"head": jnp.full(3, 2.0), "backbone": jnp.full(5, 2.0)}, state, params)
  np.testing.assert_allclose(
    updates["head"], -5e-4, rtol=1e-3
  )  # Adam's first step is -lr * sign(g)
  np.testing.assert_array_equal(updates["backbone"], 0.0)


def test_lr_factor_scales_updates_without_recompiling():
  config = b.get_config()
  params = {"w": jnp.ones(2)}
  tx = optim.build(config.optim, 10, {"w": "train"})
  state = optim.with_lr_factor(tx.init(params), 0.25)
  assert float(optim.lr_factor(state)) == 0.25
  updates, state = tx.update({"w": jnp.ones(2)}, state, params)
  np.testing.assert_allclose(updates["w"], -5e-4 * 0.25, rtol=1e-3)
  assert float(optim.lr_factor(state)) == 0.25  # the factor persists in the state
  assert optim.learning_rate(config.optim, 10, 3, 0.25) == pytest.approx(1.25e-4)


def test_plateau_like_keras():
  """ReduceLROnPlateau(factor 0.5, patience 2, min_lr 1e-4, min_delta 1e-4), scripted val_loss."""
  p = optim.Plateau(factor=0.5, patience=2, min_lr=1e-4)
  val_loss = [1.0, 0.9, 0.89995, 0.95, 0.8, 0.81, 0.82, 0.83, 0.84, 0.85, 0.86, 0.87, 0.88]
  lr, lrs = 1e-3, []
  for v in val_loss:
    lr = p.update(v, lr)
    lrs.append(lr)
  # 0.89995 is not an improvement (min_delta); after 2 flat epochs the lr halves, then waits again.
  assert lrs == pytest.approx(
    [1e-3, 1e-3, 1e-3, 5e-4, 5e-4, 5e-4, 2.5e-4, 2.5e-4, 1.25e-4, 1.25e-4, 1e-4, 1e-4, 1e-4]
  )


def test_early_stopping_like_keras():
  es = optim.EarlyStopping(patience=3)
  val_acc = [0.5, 0.6, 0.6, 0.59, 0.61, 0.6, 0.6, 0.6, 0.7]
  events = []
  for epoch, v in enumerate(val_acc, start=1):
    events.append(es.update(v, epoch))
    if events[-1][1]:
      break
  assert [imp for imp, _ in events][:5] == [True, True, False, False, True]  # equal is not better
  assert len(events) == 8 and events[-1] == (
    False,
    True,
  )  # epoch 8: three epochs after the best (5)
  assert es.best == 0.61 and es.best_epoch == 5


def test_unknown_schedule_names_the_field():
  config = b.get_config()
  with config.unlocked():
    config.optim.schedule = "linear"
  with pytest.raises(ValueError, match="config.optim.schedule"):
    optim.schedule(config.optim, 10)
