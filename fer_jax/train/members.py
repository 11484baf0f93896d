"""Vectorized seeds: runs of one config that differ only in config.train.seed, trained together as
the members of one step (`python -m fer_jax.sweep --vectorize`; docs/scaling.md).

Each member is a run of loop.py: built by `loop.restore_or_start`, with its own callbacks,
checkpoints and history (`loop.end_epoch`, `loop.save_epoch`), finished by `loop.finish`. Only
`fit` differs: the members' states are stacked on a leading axis, one step
(`steps.make_train_step(members=S)`) trains each on its own batches and random key, and one eval
step measures them all. A member that stops early keeps its slot in the step until the last one
stops, but nothing more of it is recorded or saved.
"""

import contextlib
import math
import os
import time

import jax
import jax.numpy as jnp
import numpy as np

from fer_jax import data
from fer_jax.data import batching
from fer_jax.platform import sharding
from fer_jax.train import feeding, loop, optim, workdir_guard


def stack(states):
  """Member states -> one state with a leading member axis."""
  return jax.tree.map(lambda *leaves: jnp.stack(leaves), *states)


def member(stacked_state, i):
  return jax.tree.map(lambda leaf: leaf[i], stacked_state)


def check_seeds_only(configs):
  """Vectorized members must be the same run but for train.seed: one step, one data pipeline."""
  first, *others = [workdir_guard.flat_fields(config.to_dict()) for config in configs]
  differ = sorted(
    {
      k
      for fields in others
      for k in set(first) | set(fields)
      if k != "train.seed" and first.get(k) != fields.get(k)
    }
  )
  if differ:
    raise ValueError(
      f"vectorized runs may differ only in config.train.seed; these differ too: {', '.join(differ)}"
    )


def train_epoch(state, runs, train_steps, rngs):
  """One pass of each run over its own shuffled train split (the runs' state stacked, each at its
  own next epoch); returns (state, [{loss, accuracy, seconds, images}] per run)."""
  ctx = runs[0].ctx
  orders = [
    batching.epoch_order(len(ctx.split), r.config.train.seed, r.resume.epoch + 1) for r in runs
  ]

  def check(values, first_step):  # values [steps, members]
    for run, run_values in zip(runs, values.T):
      if not run.done:
        loop.check_finite(run, run_values, first_step, f" ({run.workdir})")

  state, loss_sum, correct, seconds = feeding.run_epoch(
    ctx.feed, state, train_steps, rngs, ctx.split, orders, ctx.steps_per_epoch, check, stacked=True
  )
  images = ctx.steps_per_epoch * ctx.config.train.batch_size
  return state, [
    {
      "loss": float(loss_sum[i]) / ctx.steps_per_epoch,
      "accuracy": float(correct[i]) / images,
      "seconds": seconds,
      "images": images,
    }
    for i in range(len(runs))
  ]


def fit(runs):
  """Trains the members' remaining epochs together; each keeps its own callbacks, checkpoints and
  history, and its record ends when it stops."""
  lead = runs[0]
  ctx, val_split = lead.ctx, lead.dataset.splits["val"]
  train_steps = ctx.make_train_steps(
    members=len(runs), batch_sharding=sharding.data_sharded(ctx.mesh, stacked=True)
  )
  evaluator = feeding.EvalPass(
    lead.config, lead.model, ctx.feed, len(lead.dataset.classes), members=len(runs)
  )
  rngs = jax.random.wrap_key_data(
    sharding.put_members(np.stack([jax.random.key_data(r.ctx.rng) for r in runs]), ctx.mesh)
  )
  state = sharding.put_members(stack([run.state for run in runs]), ctx.mesh)
  while not all(run.done for run in runs):
    epoch_start = time.perf_counter()
    state, train_ms = train_epoch(state, runs, train_steps, rngs)
    val_loss, val_accuracy, _ = evaluator.run(state, val_split)
    factors = sharding.to_host(optim.lr_factor(state.opt_state))
    step_counts = sharding.to_host(state.step)
    training = [i for i, run in enumerate(runs) if not run.done]
    new_factors, ends = factors.copy(), {}
    for i in training:
      val_m = {"loss": float(val_loss[i]), "accuracy": float(val_accuracy[i])}
      ends[i] = loop.end_epoch(
        runs[i], train_ms[i], val_m, int(step_counts[i]), float(factors[i]), epoch_start
      )
      new_factors[i] = ends[i]["factor"]
    if np.any(new_factors != factors):
      state = sharding.put_members(
        state.replace(opt_state=optim.with_lr_factor(state.opt_state, new_factors)), ctx.mesh
      )
    for i in training:
      seed = runs[i].config.train.seed
      loop.save_epoch(runs[i], member(state, i), ends[i], prefix=f"[seed {seed}] ")
  for run in runs:
    loop.end_fit(run)


def train_together(configs, workdirs, dataset=None):
  """Trains runs that differ only in config.train.seed together, as members of one vectorized
  step; returns their summaries. Finished runs are reported, unfinished ones resume (each from its
  own epoch); a single unfinished one trains as a plain run."""
  check_seeds_only(configs)
  workdirs = [os.path.abspath(w) for w in workdirs]
  for config, workdir in zip(configs, workdirs):
    loop.check_run(config, workdir)
  todo = [i for i, w in enumerate(workdirs) if not workdir_guard.is_finished(w)]
  summaries = {}
  if len(todo) == 1:
    summaries[todo[0]] = loop.train_and_evaluate(configs[todo[0]], workdirs[todo[0]], dataset)
  elif todo:
    with contextlib.ExitStack() as locks:
      for i in todo:
        locks.enter_context(loop.writer_lock(workdirs[i]))
      ds = dataset if dataset is not None else data.load(configs[0].data)
      # As many device groups as divide both the devices and the members: a few runs side by side
      # keep more devices busy than one batch of 64 cut into slivers.
      groups = math.gcd(jax.device_count(), len(todo))
      loop.log(
        f"{len(todo)} runs as members of one vectorized step, on {groups} group(s) of "
        f"{jax.device_count() // groups} device(s)"
      )
      mesh = sharding.make_mesh(groups)
      runs = [loop.restore_or_start(configs[i], workdirs[i], ds, mesh) for i in todo]
      for run in runs[1:]:
        run.evaluator = runs[0].evaluator  # one compiled eval step for every member's own figures
        run.ctx.feed = runs[0].ctx.feed  # and one copy of the data on the devices
      with loop.closed_on_failure(runs):
        fit(runs)
      summaries = dict(zip(todo, (loop.finish(run) for run in runs)))
  return [
    summaries[i] if i in summaries else loop.report_finished(w) for i, w in enumerate(workdirs)
  ]
