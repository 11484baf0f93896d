"""Weight averaging: an exponential moving average (EMA) of a run's weights, which evaluations use
in place of the live weights when `config.optim.ema_decay` > 0 (docs/results.md, "TTA, EMA,
ensembles").

After each train step the average moves towards the new weights,
`ema <- decay_t * ema + (1 - decay_t) * weights` (`optax.incremental_update`), starting from the
initial weights, with TensorFlow's ExponentialMovingAverage warm-up
`decay_t = min(decay, (1 + t) / (10 + t))` (t = updates before this one): without it, a short run
(the built-in quick runs take ~100 steps; 0.999 averages over ~1,000) would evaluate mostly its
random initial weights.

The average covers the BatchNorm statistics as well as the parameters, as timm's ModelEmaV2
averages every entry of a model's state: the live running statistics belong to the live weights,
not to the averaged ones. Recomputing the statistics for the averaged weights (SWA's bn_update) is
exact but costs a forward pass over the train split before every evaluation; the averaged
statistics cost nothing, and with BN's own momentum window (~10-100 steps) much shorter than the
average's (~1 / (1 - decay) steps) they describe the averaged weights' activations closely.

The average lives in the train state (`TrainState.ema`: {"params", "batch_stats"}, None when off),
not in the optimiser state: optax transformations see the parameters but not the BatchNorm
statistics, and a fixed place in the checkpoint lets a scorer restore only the averaged weights
(`checkpoint.restore_best_variables`). So it is checkpointed, resumed, stacked over vectorized
members and sharded with the rest of the state.
"""

import jax
import jax.numpy as jnp
import optax

WARMUP = 10.0  # TF's ExponentialMovingAverage(num_updates=step)


def init(variables, decay):
  """The average's start, the initial weights; None when EMA is off (decay 0), so a run without it
  saves the state it always did."""
  if not decay:
    return None
  # copies: the train step donates its state, and one buffer cannot be donated twice
  start = {"params": variables["params"], "batch_stats": variables.get("batch_stats", {})}
  return jax.tree.map(jnp.copy, start)


def decay_at(decay, step):
  """The decay of the update after `step` updates."""
  step = jnp.asarray(step, jnp.float32)
  return jnp.minimum(decay, (1.0 + step) / (WARMUP + step))


def update(average, variables, step, decay):
  """The average after the update that follows `step` updates, of the new `variables`
  ({"params", "batch_stats"}); None stays None (EMA off)."""
  if average is None:
    return None
  return optax.incremental_update(variables, average, 1.0 - decay_at(decay, step))
