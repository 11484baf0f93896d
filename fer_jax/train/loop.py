"""One run: data -> model -> optimiser -> epochs with callbacks and checkpoints -> test report.

`train_and_evaluate(config, workdir)` is the whole of it, in three steps: `restore_or_start`
(data, model, optimiser, steps; the latest checkpoint if there is one), `fit` (the epochs, with
callbacks and a checkpoint after each) and `finish` (the best epoch on test, summary, report).
Running it again on the same workdir with the same settings resumes an unfinished run, or reports a
finished one; other settings, or a second process while one trains there, are refused (workdir_guard).
"""

import contextlib
import dataclasses
import functools
import json
import math
import os
import platform
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from fer_jax import config_loading, data, losses, models
from fer_jax.data import batching
from fer_jax.evals import calibration, metrics
from fer_jax.platform import sharding
from fer_jax.report import render, run_report
from fer_jax.train import checkpoint, history, optim, steps, workdir_guard


def log(msg):
  if jax.process_index() == 0:
    print(msg, flush=True)


def system_info():
  return {
    "jax": jax.__version__,
    "backend": jax.default_backend(),
    "device_kind": jax.devices()[0].device_kind,
    "devices": jax.device_count(),
    "processes": jax.process_count(),
    "cpu_count": os.cpu_count(),
    "platform": platform.platform(),
    "python": sys.version.split()[0],
  }


def check_dataset(ds, config):
  for split in data.SPLITS:
    if split not in ds.splits or len(ds.splits[split]) == 0:
      raise ValueError(
        f"dataset {ds.name}: split {split!r} is empty (config.data.root={config.data.root!r})"
      )
  shape = ds.splits["train"].images.shape[1:]
  want = (config.data.image_size, config.data.image_size, config.data.channels)
  if tuple(shape) != want:
    raise ValueError(f"dataset {ds.name}: images are {shape}, config.data asks for {want}")


@dataclasses.dataclass
class ResumeState:
  """Host-side loop state (epoch, callbacks), saved as JSON with every checkpoint."""

  epoch: int = 0
  elapsed_s: float = 0.0
  plateau: dict = None
  early: dict = None


class Evaluator:
  """Mean loss / accuracy and logits over a whole split, padding the last batch."""

  def __init__(self, config, model, mesh, num_classes):
    self.batch = config.eval.batch_size + (-config.eval.batch_size) % jax.device_count()
    self.mesh = mesh
    self.steps = functools.cache(
      lambda members: (
        steps.make_eval_step(config, model, num_classes, members),
        steps.make_l2_fn(config, members),
      )
    )

  def __call__(self, state, split):
    return self.members(stack([state]), split)[0]

  def members(self, stacked_state, split):
    """[(metrics, logits)] of each member of a state stacked over members."""
    n = len(jax.tree.leaves(stacked_state)[0])
    eval_step, l2 = self.steps(n)
    sums, logits = {"loss": 0.0, "correct": 0.0, "count": 0.0}, []
    for idx, mask in batching.padded_batches(len(split), self.batch):
      x, y, m = sharding.shard_batch(self.mesh, split.images[idx], split.labels[idx], mask)
      batch_sums, batch_logits = sharding.to_host(eval_step(stacked_state, x, y, m))
      sums = {k: sums[k] + v for k, v in batch_sums.items()}
      logits.append(batch_logits[:, mask > 0])
    loss = sums["loss"] / sums["count"] + sharding.to_host(l2(stacked_state.params))
    logits = np.concatenate(logits, axis=1)
    return [
      (
        {"loss": float(loss[i]), "accuracy": float(sums["correct"][i] / sums["count"][i])},
        logits[i],
      )
      for i in range(n)
    ]


def stack(states):
  """Member states -> one state with a leading member axis."""
  return jax.tree.map(lambda *leaves: jnp.stack(leaves), *states)


def member(stacked_state, i):
  return jax.tree.map(lambda leaf: leaf[i], stacked_state)


def check_finite(runs, losses_so_far, first_step):
  values = np.asarray(sharding.to_host(losses_so_far))  # [steps, members]
  for run, member_values in zip(runs, values.T):
    bad = np.flatnonzero(~np.isfinite(member_values))
    if bad.size and not run.done:
      where = f" ({run.workdir})" if len(runs) > 1 else ""
      raise FloatingPointError(
        f"loss became {member_values[bad[0]]} at epoch {run.resume.epoch + 1}, step "
        f"{first_step + int(bad[0])}{where}: lower config.optim.lr or check the data"
      )


@dataclasses.dataclass
class EpochContext:
  """What every epoch of a run needs besides the state: built once by `restore_or_start`."""

  config: object
  make_train_step: object  # members -> the jitted step over that many stacked runs
  mesh: object
  split: object
  steps_per_epoch: int
  rng: jax.Array


def train_epoch(state, runs, train_step):
  """One pass of each run over its own shuffled train split (the runs' state stacked, each at its
  own next epoch); returns (state, [{loss, accuracy, seconds, images}] per run)."""
  ctx = runs[0].ctx
  batch, steps_per_epoch, split = ctx.config.train.batch_size, ctx.steps_per_epoch, ctx.split
  orders = [batching.epoch_order(len(split), r.config.train.seed, r.resume.epoch + 1) for r in runs]
  rngs = jax.random.wrap_key_data(
    sharding.put_members(np.stack([jax.random.key_data(r.ctx.rng) for r in runs]), ctx.mesh)
  )
  losses_pending, loss_sum, correct_sum, checked = [], 0.0, 0.0, 0
  start = time.perf_counter()
  for s in range(steps_per_epoch):
    # sorted rows read faster; order inside a batch is irrelevant
    idx = [np.sort(order[s * batch : (s + 1) * batch]) for order in orders]
    x, y = sharding.shard_batch(
      ctx.mesh,
      np.stack([split.images[i] for i in idx]),
      np.stack([split.labels[i] for i in idx]),
      stacked=True,
    )
    state, step_metrics = train_step(state, x, y, rngs)
    losses_pending.append(step_metrics["loss"])
    correct_sum = correct_sum + step_metrics["correct"]
    if (s + 1) % ctx.config.train.log_every_steps == 0 or s + 1 == steps_per_epoch:
      check_finite(runs, losses_pending, checked + 1)
      loss_sum = loss_sum + np.sum(sharding.to_host(losses_pending), axis=0)
      checked += len(losses_pending)
      losses_pending = []
      if s + 1 < steps_per_epoch and len(runs) == 1:
        log(
          f"  epoch {runs[0].resume.epoch + 1} step {s + 1}/{steps_per_epoch}  loss {loss_sum[0] / checked:.4f}  "
          f"acc {float(sharding.to_host(correct_sum)[0]) / (checked * batch):.2%}"
        )
  seconds = time.perf_counter() - start
  images = steps_per_epoch * batch
  correct = sharding.to_host(correct_sum)
  return state, [
    {
      "loss": float(loss_sum[i]) / steps_per_epoch,
      "accuracy": float(correct[i]) / images,
      "seconds": seconds,
      "images": images,
    }
    for i in range(len(runs))
  ]


def format_summary(summary):
  """The few lines a person reads at the end of a run."""
  best, test, p = summary["best"], summary["test"], summary["params"]
  return "\n".join(
    [
      f"== {render.run_title(summary['name'], summary['variant'])} "
      f"(seed {summary['seed']}) on {summary['dataset']['name']}",
      f"best val accuracy {best['val_accuracy']:.2%} at epoch {best['epoch']} of {summary['epochs_run']}"
      f"{' (early stop)' if summary['stopped_early'] else ''}; train accuracy then {best['train_accuracy']:.2%}",
      f"train-val gap {best['gap']:+.1f} points: {summary['gap_diagnosis']}"
      + (
        f" (eval mode: train {best['train_accuracy_eval']:.2%}, gap {best['gap_eval']:+.1f})"
        if "gap_eval" in best
        else ""
      ),
      f"test accuracy {test['accuracy']:.2%}  loss {test['loss']:.4f}  macro F1 {test['macro_f1']:.3f}",
      *calibration_lines(summary),
      f"params {p['total']:,} ({p['trainable']:,} trainable)  time {summary['wall_time_s'] / 60:.1f} min "
      f"({summary['time_per_epoch_s']:.1f} s/epoch, {summary['images_per_s']:.0f} img/s)",
    ]
  )


def calibration_lines(summary):
  """Raw -> calibrated test ECE, NLL and coverage of the rule (none for runs from before calibration)."""
  if "calibration" not in summary:
    return []
  cal, raw, test = summary["calibration"], summary["test_raw"], summary["test"]
  target = cal["threshold_target_accuracy"]
  source = f" (lowest reaching {target:.0%} on val)" if target else ""
  return [
    f"temperature {cal['temperature']:.3f}: test ECE {raw['calibration']['ece']:.4f} -> "
    f"{test['calibration']['ece']:.4f}, NLL {raw['calibration']['nll']:.4f} -> {test['calibration']['nll']:.4f}",
    f"answered at confidence >= {cal['threshold']:.2f}{source}: {raw['confidence_rule']['coverage']:.1%} raw -> "
    f"{test['confidence_rule']['coverage']:.1%} calibrated (accuracy of those "
    f"{render.pct(test['confidence_rule']['accuracy'], 1)})",
  ]


def finished_summary(workdir):
  with open(os.path.join(workdir, "metrics.json")) as f:
    summary = json.load(f)
  log(format_summary(summary))
  log(f"This run is finished ({workdir}). To train again, pass a new --workdir or delete this one.")
  return summary


@dataclasses.dataclass
class Run:
  """Everything one run holds between `restore_or_start`, `fit` and `finish`."""

  config: object
  workdir: str
  dataset: object
  model: object
  state: object
  ctx: EpochContext
  evaluator: Evaluator
  checkpoints: checkpoint.RunCheckpoints
  plateau: optim.Plateau
  early: optim.EarlyStopping
  resume: ResumeState
  history: list
  param_counts: dict
  wall_start: float
  stopped_early: bool = False
  done: bool = False  # no epochs left to train (all run, or stopped early)

  @property
  def history_path(self):
    return os.path.join(self.workdir, "metrics.jsonl")


def restore_or_start(config, workdir, dataset=None, mesh=None):
  """Builds data, model, optimiser and steps, then restores the latest checkpoint if there is one.

  `mesh`: default `sharding.make_mesh()` (one member group over every device).
  """
  wall_start = time.perf_counter()
  sharding.configure_backend()

  # Everything that can fail on bad input fails here, before the workdir is touched.
  ds = dataset if dataset is not None else data.load(config.data)
  check_dataset(ds, config)
  num_classes = len(ds.classes)
  train_split = ds.splits["train"]
  model = models.build(config.model, num_classes)
  sharding.check_batch_size(config.train.batch_size, "config.train.batch_size")
  steps_per_epoch = len(train_split) // config.train.batch_size
  if steps_per_epoch == 0:
    raise ValueError(
      f"config.train.batch_size={config.train.batch_size} exceeds the {len(train_split)} "
      "training images"
    )
  if config.train.max_steps_per_epoch:
    steps_per_epoch = min(steps_per_epoch, config.train.max_steps_per_epoch)
  state, tx, labels = steps.create_state(
    config, model, train_split.images.shape[1:], steps_per_epoch
  )
  param_counts = models.count_params(state.variables(), labels)
  class_weights = losses.class_weights(config.loss, ds.class_counts("train"))

  mesh = mesh or sharding.make_mesh()
  state = sharding.replicate(state, mesh)
  make_train_step = functools.partial(
    steps.make_train_step, config, model, tx, num_classes, class_weights, param_labels=labels
  )
  ctx = EpochContext(
    config,
    lambda members: make_train_step(members=members),
    mesh,
    train_split,
    steps_per_epoch,
    jax.random.key(config.train.seed),
  )

  os.makedirs(workdir, exist_ok=True)
  if (
    jax.process_index() == 0
  ):  # before any checkpoint: a workdir's checkpoints always have their config
    history.write_json(os.path.join(workdir, "config.json"), config.to_dict())
  ckpts = checkpoint.RunCheckpoints(os.path.join(workdir, "checkpoints"))
  plateau = optim.Plateau(
    config.optim.plateau_factor, config.optim.plateau_patience, config.optim.plateau_min_lr
  )
  early = optim.EarlyStopping(
    config.train.early_stopping_patience if config.train.early_stopping else math.inf
  )
  resume = ResumeState()
  restored = ckpts.restore_latest(state)
  if restored is not None:
    state, meta = restored
    resume = ResumeState(**meta)
    plateau = dataclasses.replace(plateau, **resume.plateau)
    early = dataclasses.replace(early, **resume.early)
    log(f"Resuming {workdir} after epoch {resume.epoch}.")
  rows = history.truncate_history(os.path.join(workdir, "metrics.jsonl"), resume.epoch)
  log(
    f"{render.run_title(config.name, config.variant)} on {ds.name} {ds.sizes()}  "
    f"{param_counts['total']:,} params  {jax.device_count()} x {jax.devices()[0].device_kind}  "
    f"{steps_per_epoch} steps/epoch"
  )
  return Run(
    config=config,
    workdir=workdir,
    dataset=ds,
    model=model,
    state=state,
    ctx=ctx,
    evaluator=Evaluator(config, model, mesh, num_classes),
    checkpoints=ckpts,
    plateau=plateau,
    early=early,
    resume=resume,
    history=rows,
    param_counts=param_counts,
    wall_start=wall_start,
  )


def fit(*runs):
  """Trains the remaining epochs with callbacks, saving a checkpoint after each.

  Several runs of one config that differ only in seed train together, as members of one
  vectorized step (`steps.make_train_step(members=...)`); each keeps its own callbacks,
  checkpoints and history, and leaves the group when it stops.
  """
  lead = runs[0]
  ctx, val_split = lead.ctx, lead.dataset.splits["val"]
  for run in runs:
    run.stopped_early = run.early.wait >= run.early.patience
    run.done = run.stopped_early or run.resume.epoch >= run.config.train.epochs
  train_step = ctx.make_train_step(len(runs))
  state = sharding.put_members(stack([run.state for run in runs]), ctx.mesh)
  while not all(run.done for run in runs):
    epoch_start = time.perf_counter()
    state, train_ms = train_epoch(state, runs, train_step)
    vals = lead.evaluator.members(state, val_split)
    factors = sharding.to_host(optim.lr_factor(state.opt_state))
    step_counts = sharding.to_host(state.step)
    training = [i for i, run in enumerate(runs) if not run.done]
    new_factors, ends = factors.copy(), {}
    for i in training:
      ends[i] = end_epoch(
        runs[i], train_ms[i], vals[i][0], int(step_counts[i]), float(factors[i]), epoch_start
      )
      new_factors[i] = ends[i]["factor"]
    if np.any(new_factors != factors):
      state = sharding.put_members(
        state.replace(opt_state=optim.with_lr_factor(state.opt_state, new_factors)), ctx.mesh
      )
    for i in training:
      save_epoch(runs[i], member(state, i), ends[i], len(runs) > 1)
  for run in runs:
    if not run.history:  # epochs=0: evaluate the initial (e.g. ported) weights as epoch 0
      train_m, _ = run.evaluator(run.state, run.ctx.split)
      val_m, _ = run.evaluator(run.state, val_split)
      history.append_history(
        run.history, run.history_path, history.epoch_record(0, train_m, val_m, 0.0, 0.0, 0.0)
      )
    run.checkpoints.close()


def end_epoch(run, train_m, val_m, step_count, factor, epoch_start):
  """A run's history row and callbacks after an epoch; returns what `save_epoch` reports, with the new lr factor."""
  config, epoch = run.config, run.resume.epoch + 1
  lr = optim.learning_rate(config.optim, run.ctx.steps_per_epoch, step_count, factor)
  record = history.epoch_record(
    epoch,
    train_m,
    val_m,
    lr,
    time.perf_counter() - epoch_start,
    train_m["images"] / train_m["seconds"],
  )
  history.append_history(run.history, run.history_path, record)
  improved, run.stopped_early = run.early.update(val_m["accuracy"], epoch)
  new_lr = run.plateau.update(val_m["loss"], lr) if config.optim.plateau else lr
  run.resume = ResumeState(
    epoch=epoch,
    elapsed_s=run.resume.elapsed_s + time.perf_counter() - epoch_start,
    plateau=dataclasses.asdict(run.plateau),
    early=dataclasses.asdict(run.early),
  )
  run.done = run.stopped_early or epoch >= config.train.epochs
  return {
    "record": record,
    "improved": improved,
    "lr": lr,
    "new_lr": new_lr,
    "factor": factor * new_lr / lr,
  }


def save_epoch(run, state, end, name_the_run):
  """Checkpoints a run's state after the epoch `end_epoch` recorded, and prints its line."""
  config, record, lr = run.config, end["record"], end["lr"]
  run.checkpoints.save(
    run.resume.epoch, state, dataclasses.asdict(run.resume), val_accuracy=record["val_accuracy"]
  )
  prefix = f"[seed {config.train.seed}] " if name_the_run else ""
  log(
    f"{prefix}epoch {run.resume.epoch}/{config.train.epochs}  train loss {record['train_loss']:.4f} "
    f"acc {record['train_accuracy']:.2%}  val loss {record['val_loss']:.4f} acc {record['val_accuracy']:.2%}  "
    f"gap {record['gap']:+.1f}  lr {lr:.3g}  {record['epoch_time_s']:.1f}s ({record['images_per_s']:.0f} img/s)"
    + ("  *best*" if end["improved"] else "")
  )
  if end["new_lr"] != lr:
    log(f"  {prefix}ReduceLROnPlateau: lr {lr:.3g} -> {end['new_lr']:.3g}")
  if run.stopped_early:
    log(
      f"{prefix}Early stopping: no val_accuracy gain for {run.early.patience} epochs "
      f"(best epoch {run.early.best_epoch})."
    )
  if run.done:
    run.state = state


def train_subset(split, size, seed=0):
  """A fixed random subset of `size` train images (the same on every rerun and process)."""
  idx = np.sort(np.random.default_rng(seed).permutation(len(split))[:size])
  return data.Split(split.images[idx], split.labels[idx])


def finish(run):
  """Calibrates the best epoch's weights on val, evaluates them on test, writes summary, predictions, report."""
  config, ds, workdir = run.config, run.dataset, run.workdir
  state = run.state
  if config.train.restore_best and run.early.best_epoch:
    state, _ = run.checkpoints.restore_best(state, run.early.best_epoch)
  _, val_logits = run.evaluator(state, ds.splits["val"])
  cal, cal_record = calibration.calibrate(val_logits, ds.splits["val"].labels, config.eval)
  train_eval_m, _ = run.evaluator(state, train_subset(ds.splits["train"], len(ds.splits["val"])))
  test_split = ds.splits["test"]
  test_m, test_logits = run.evaluator(state, test_split)
  raw_probs, test_probs = (
    calibration.probabilities(test_logits),
    calibration.probabilities(test_logits, cal.temperature),
  )
  summary = build_summary(
    config,
    ds,
    run.history,
    run.early,
    run.stopped_early,
    test_m,
    test_probs,
    raw_probs,
    cal_record,
    train_eval_m,
    run.param_counts,
    run.resume.elapsed_s,
    time.perf_counter() - run.wall_start,
  )
  if jax.process_index() == 0:
    calibration.save(workdir, cal)
    np.savez(
      os.path.join(workdir, "test_predictions.npz"),
      labels=test_split.labels.astype(np.int32),
      probs=test_probs.astype(np.float32),
      raw_probs=raw_probs.astype(np.float32),
      temperature=np.float32(cal.temperature),
    )
    run_report.write_run_report(workdir, summary, run.history)
    history.write_json(
      os.path.join(workdir, "metrics.json"), summary
    )  # last: its presence marks the run finished
  log(format_summary(summary))
  return summary


def train_and_evaluate(config, workdir, dataset=None):
  """Trains `config` in `workdir` (resuming if it holds an unfinished run); returns the summary."""
  return train_together([config], [workdir], dataset)[0]


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


def train_together(configs, workdirs, dataset=None):
  """Trains runs that differ only in config.train.seed together, as members of one vectorized step
  (one run: a plain run); returns their summaries. Finished runs are reported, unfinished ones resume
  (each from its own epoch)."""
  check_seeds_only(configs)
  workdirs = [os.path.abspath(w) for w in workdirs]
  for config, workdir in zip(configs, workdirs):
    config_loading.check_values(
      config
    )  # launch.py and load_config have; a config built in code may not
    workdir_guard.check_same_config(config, workdir)  # on every process, before anything is written
  todo = [i for i, w in enumerate(workdirs) if not os.path.exists(os.path.join(w, "metrics.json"))]
  summaries = {}
  with contextlib.ExitStack() as locks:
    if jax.process_index() == 0:  # only process 0 writes, so only it keeps a second launch out
      for i in todo:
        locks.enter_context(workdir_guard.lock(workdirs[i]))
    if todo:
      ds = dataset if dataset is not None else data.load(configs[0].data)
      # As many device groups as divide both the devices and the members: a few runs side by side
      # keep more devices busy than one batch of 64 cut into slivers.
      groups = math.gcd(jax.device_count(), len(todo))
      if len(todo) > 1:
        log(
          f"{len(todo)} runs as members of one vectorized step, on {groups} group(s) of "
          f"{jax.device_count() // groups} device(s)"
        )
      mesh = sharding.make_mesh(groups)
      runs = [restore_or_start(configs[i], workdirs[i], ds, mesh) for i in todo]
      for run in runs[1:]:
        run.evaluator = runs[0].evaluator  # one compiled eval step for every member
      try:
        fit(*runs)
      except BaseException:
        # Ctrl-C: commit the saves in flight, so a rerun resumes after the last finished epoch. A failed
        # save (a full disk): wait out orbax's other writes, whose threads would print tracebacks at exit;
        # their errors repeat the one being raised.
        for run in runs:
          with contextlib.suppress(Exception):
            run.checkpoints.close()
        raise
      summaries = dict(zip(todo, (finish(run) for run in runs)))
  return [summaries[i] if i in summaries else finished_summary(w) for i, w in enumerate(workdirs)]


def build_summary(
  config,
  ds,
  history,
  early,
  stopped_early,
  test_m,
  test_probs,
  raw_probs,
  cal_record,
  train_eval_m,
  param_counts,
  train_s,
  wall_s,
):
  """metrics.json: test figures from the calibrated probabilities, the raw ones' beside them."""
  best_row = next((r for r in history if r["epoch"] == early.best_epoch), history[-1])
  labels, threshold = ds.splits["test"].labels, cal_record["threshold"]
  test = metrics.classification_metrics(labels, test_probs, list(ds.classes), threshold)
  test["loss"] = test_m["loss"]  # the training loss (e.g. focal) of the raw logits
  eval_gap = (train_eval_m["accuracy"] - best_row["val_accuracy"]) * 100
  steady = [r["images_per_s"] for r in history[1:]] or [
    r["images_per_s"] for r in history
  ]  # epoch 1 compiles
  return {
    "name": config.name,
    "variant": config.variant,
    "seed": config.train.seed,
    "classes": list(ds.classes),
    "model": config.model.name,
    "dataset": {"name": ds.name, "sizes": ds.sizes()},
    "params": param_counts,
    "best": {
      "epoch": best_row["epoch"],
      "val_accuracy": best_row["val_accuracy"],
      "val_loss": best_row["val_loss"],
      "train_accuracy": best_row["train_accuracy"],
      "train_loss": best_row["train_loss"],
      "gap": best_row["gap"],
      # The same weights in eval mode (no dropout, no augmentation) on as many train images as val.
      "train_accuracy_eval": train_eval_m["accuracy"],
      "gap_eval": eval_gap,
      "train_eval_images": len(ds.splits["val"]),
    },
    "gap_diagnosis": metrics.gap_diagnosis(best_row["gap"], eval_gap),
    "calibration": cal_record,
    "test": test,
    "test_raw": metrics.confidence_metrics(labels, raw_probs, threshold),
    "epochs_run": sum(r["epoch"] > 0 for r in history),
    "stopped_early": bool(stopped_early),
    "wall_time_s": wall_s,
    "train_time_s": train_s,
    "time_per_epoch_s": train_s / max(len(history), 1),
    "images_per_s": float(np.median(steady)),
    "system": system_info(),
  }
