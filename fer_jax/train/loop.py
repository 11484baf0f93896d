"""One run: data -> model -> optimiser -> epochs with callbacks and checkpoints -> evaluators.

`train_and_evaluate(config, workdir)` is the whole of it, in three steps: `restore_or_start`
(data, model, optimiser, steps, evaluators; the latest checkpoint if there is one), `fit` (the
epochs, with callbacks and a checkpoint after each) and `finish` (the best epoch's weights
through the evaluators of `config.evals`, then metrics.json and the report). Running it again
on the same workdir with the same settings resumes an unfinished run, or reports a finished
one; other settings, or a second process while one trains there, are refused (workdir_guard).

Seeds trained together as members of one step (train/members.py) are runs of this module too:
they share `restore_or_start`, the bookkeeping of an epoch (`end_epoch`, `save_epoch`) and
`finish`, and replace only `fit`.
"""

import contextlib
import dataclasses
import functools
import math
import os
import time

import jax
import numpy as np

from fer_jax import config_loading, data, losses, models
from fer_jax.data import batching
from fer_jax.evals import common as evals_common
from fer_jax.platform import run_errors, sharding
from fer_jax.report import render
from fer_jax.report import summary as report_summary
from fer_jax.train import checkpoint, feeding, history, optim, steps, workdir_guard


def log(msg):
  if jax.process_index() == 0:
    print(msg, flush=True)


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
  elapsed_s: float = 0.0  # training time of every epoch so far, over all processes
  # wall time of every process up to this checkpoint (a stopped one's time after its last
  # checkpoint is lost with its work)
  wall_s: float = 0.0
  plateau: dict = None
  early: dict = None
  data: str = None  # workdir_guard.data_fingerprint of what the run trains on


@dataclasses.dataclass
class EpochContext:
  """What every epoch of a run needs besides the state: built once by `restore_or_start`."""

  config: object
  # (batch_sharding=) -> the run's jitted train steps; (members=S, ...) -> the same over S runs
  make_train_steps: object
  mesh: object
  feed: feeding.Feed
  split: object
  steps_per_epoch: int
  rng: jax.Array


@dataclasses.dataclass
class Run:
  """Everything one run holds between `restore_or_start`, `fit` and `finish`."""

  config: object
  workdir: str
  dataset: object
  model: object
  state: object
  ctx: EpochContext
  evaluator: feeding.EvalPass
  evaluators: list  # [(name, evaluator)] of config.evals, in the order they run
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
  """Builds data, model, optimiser, steps and evaluators, then restores the latest checkpoint if
  there is one.

  `mesh`: default `sharding.make_mesh()` (one member group over every device).
  """
  wall_start = time.perf_counter()
  sharding.configure_backend()

  # Everything that can fail on bad input fails here, before the workdir is touched.
  evaluators = evals_common.from_config(config)
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
  feed = feeding.Feed.for_run(config, mesh, ds, steps_per_epoch)
  ctx = EpochContext(
    config,
    functools.partial(
      steps.make_train_steps, config, model, tx, num_classes, class_weights, param_labels=labels
    ),
    mesh,
    feed,
    train_split,
    steps_per_epoch,
    jax.random.key(config.train.seed),
  )

  os.makedirs(workdir, exist_ok=True)
  # before any checkpoint: a workdir's checkpoints have their config
  workdir_guard.record_config(config, workdir, writes=jax.process_index() == 0)
  ckpts = checkpoint.RunCheckpoints(os.path.join(workdir, "checkpoints"))
  plateau = optim.Plateau(
    config.optim.plateau_factor, config.optim.plateau_patience, config.optim.plateau_min_lr
  )
  early = optim.EarlyStopping(
    config.train.early_stopping_patience if config.train.early_stopping else math.inf
  )
  resume = ResumeState(data=workdir_guard.data_fingerprint(ds))
  restored = ckpts.restore_latest(state)
  if restored is not None:
    state, meta = restored
    workdir_guard.check_same_data(meta, resume.data, ckpts.directory)
    resume = ResumeState(**{**meta, "data": resume.data})
    plateau = dataclasses.replace(plateau, **resume.plateau)
    early = dataclasses.replace(early, **resume.early)
    log(f"Resuming {workdir} after epoch {resume.epoch}.")
    wall_start -= resume.wall_s  # a resumed run's wall time counts its earlier processes
  rows = history.truncate_history(os.path.join(workdir, "metrics.jsonl"), resume.epoch)
  log(
    f"{render.run_title(config.name, config.variant)} on {ds.name} {ds.sizes()}  "
    f"{param_counts['total']:,} params  {jax.device_count()} x {jax.devices()[0].device_kind}  "
    f"{steps_per_epoch} steps/epoch  {feed.describe()}"
  )
  stopped_early = early.wait >= early.patience
  return Run(
    config=config,
    workdir=workdir,
    dataset=ds,
    model=model,
    state=state,
    ctx=ctx,
    evaluator=feeding.EvalPass(config, model, feed, num_classes),
    evaluators=evaluators,
    checkpoints=ckpts,
    plateau=plateau,
    early=early,
    resume=resume,
    history=rows,
    param_counts=param_counts,
    wall_start=wall_start,
    stopped_early=stopped_early,
    done=stopped_early or resume.epoch >= config.train.epochs,
  )


def check_finite(run, losses_so_far, first_step, where=""):
  """Stops a run whose loss became NaN or inf; `losses_so_far` are those of the steps from
  `first_step` on."""
  bad = np.flatnonzero(~np.isfinite(losses_so_far))
  if bad.size:
    raise FloatingPointError(
      f"loss became {losses_so_far[bad[0]]} at epoch {run.resume.epoch + 1}, step "
      f"{first_step + int(bad[0])}{where}: lower config.optim.lr or check the data, then "
      f"start afresh: pass a new --workdir (or delete {run.workdir})"
    )


def train_epoch(run, state, train_steps, rng):
  """One pass over the run's shuffled train split; returns (state, {loss, accuracy, seconds,
  images})."""
  ctx, batch, epoch = run.ctx, run.config.train.batch_size, run.resume.epoch + 1
  order = batching.epoch_order(len(ctx.split), run.config.train.seed, epoch)

  def progress(step, loss, accuracy):
    log(f"  epoch {epoch} step {step}/{ctx.steps_per_epoch}  loss {loss:.4f}  acc {accuracy:.2%}")

  check = functools.partial(check_finite, run)
  state, loss_sum, correct, seconds = feeding.run_epoch(
    ctx.feed, state, train_steps, rng, ctx.split, [order], ctx.steps_per_epoch, check, progress
  )
  images = ctx.steps_per_epoch * batch
  return state, {
    "loss": float(loss_sum) / ctx.steps_per_epoch,
    "accuracy": float(correct) / images,
    "seconds": seconds,
    "images": images,
  }


def fit(run):
  """Trains the remaining epochs with callbacks, saving a checkpoint after each."""
  ctx, val_split = run.ctx, run.dataset.splits["val"]
  train_steps = ctx.make_train_steps(batch_sharding=sharding.data_sharded(ctx.mesh))
  rng = jax.random.wrap_key_data(sharding.replicate(jax.random.key_data(ctx.rng), ctx.mesh))
  state = run.state
  while not run.done:
    epoch_start = time.perf_counter()
    state, train_m = train_epoch(run, state, train_steps, rng)
    val_m, _ = run.evaluator(state, val_split)
    factor = float(sharding.to_host(optim.lr_factor(state.opt_state)))
    step_count = int(sharding.to_host(state.step))
    end = end_epoch(run, train_m, val_m, step_count, factor, epoch_start)
    if end["new_lr"] != end["lr"]:
      opt_state = optim.with_lr_factor(state.opt_state, end["factor"])
      state = sharding.replicate(state.replace(opt_state=opt_state), ctx.mesh)
    save_epoch(run, state, end)
  end_fit(run)


def end_epoch(run, train_m, val_m, step_count, factor, epoch_start):
  """A run's history row and callbacks after an epoch; returns what `save_epoch` reports, with the
  new lr factor."""
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
    wall_s=time.perf_counter() - run.wall_start,
    plateau=dataclasses.asdict(run.plateau),
    early=dataclasses.asdict(run.early),
    data=run.resume.data,
  )
  run.done = run.stopped_early or epoch >= config.train.epochs
  return {
    "record": record,
    "improved": improved,
    "lr": lr,
    "new_lr": new_lr,
    "factor": factor * new_lr / lr,
  }


def save_epoch(run, state, end, prefix=""):
  """Checkpoints a run's state after the epoch `end_epoch` recorded, and prints its line
  (after `prefix`, which names the run among others)."""
  config, record, lr = run.config, end["record"], end["lr"]
  run.checkpoints.save(
    run.resume.epoch, state, dataclasses.asdict(run.resume), val_accuracy=record["val_accuracy"]
  )
  log(
    f"{prefix}epoch {run.resume.epoch}/{config.train.epochs}  "
    f"train loss {record['train_loss']:.4f} acc {record['train_accuracy']:.2%}  "
    f"val loss {record['val_loss']:.4f} acc {record['val_accuracy']:.2%}  "
    f"gap {record['gap']:+.1f}  lr {lr:.3g}  "
    f"{record['epoch_time_s']:.1f}s ({record['images_per_s']:.0f} img/s)"
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
  run_errors.stop_if_interrupted()


def end_fit(run):
  """After the last epoch: commits the run's checkpoints; a run of no epochs (epochs=0) gets its
  initial (e.g. ported) weights evaluated as epoch 0."""
  if not run.history:
    train_m, _ = run.evaluator(run.state, run.ctx.split)
    val_m, _ = run.evaluator(run.state, run.dataset.splits["val"])
    history.append_history(
      run.history, run.history_path, history.epoch_record(0, train_m, val_m, 0.0, 0.0, 0.0)
    )
  run.checkpoints.close()


def finish(run):
  """Runs the config's evaluators on the best epoch's weights, then writes metrics.json and the
  report; returns metrics.json's summary."""
  config, workdir, state = run.config, run.workdir, run.state
  if config.train.restore_best and run.early.best_epoch:
    state, _ = run.checkpoints.restore_best(state, run.early.best_epoch)
  summary = report_summary.run_fields(
    config, run.dataset, run.history, run.early.best_epoch, run.param_counts
  )
  writes = jax.process_index() == 0
  evaluate = functools.partial(run.evaluator, state)
  ctx = evals_common.Context(config, run.dataset, evaluate, run.history, workdir, writes, summary)
  evals_common.run_all(run.evaluators, ctx)
  wall_s = time.perf_counter() - run.wall_start
  summary.update(
    report_summary.closing_fields(run.history, run.stopped_early, run.resume.elapsed_s, wall_s)
  )
  if writes:
    if config.eval.report:
      # Imported here: matplotlib is ~1 s of every run's start (a third of fer_jax's imports on
      # a small CPU), and runs with eval.report off never plot.
      from fer_jax.report import run_report

      run_report.write_run_report(workdir, summary, run.history)
    # last: its presence marks the run finished
    history.write_json(os.path.join(workdir, "metrics.json"), summary)
  log(report_summary.format_summary(summary))
  return summary


def check_run(config, workdir):
  """Refuses bad values and a workdir of other settings, on every process, before anything is
  written."""
  # launch.py and load_config have checked the values; a config built in code may not be
  config_loading.check_values(config)
  workdir_guard.check_same_config(config, workdir)


def report_finished(workdir):
  """A finished run's summary, printed with how to train again."""
  summary, text = report_summary.finished_summary(workdir)
  log(text)
  return summary


def writer_lock(workdir):
  """Keeps a second launch out of `workdir`; only process 0 writes, so only it holds the lock."""
  return workdir_guard.lock(workdir) if jax.process_index() == 0 else contextlib.nullcontext()


@contextlib.contextmanager
def closed_on_failure(runs):
  """Ctrl-C while training: commit the saves in flight, so a rerun resumes after the last
  finished epoch. A failed save (a full disk): wait out orbax's other writes, whose threads would
  print tracebacks at exit; their errors repeat the one being raised."""
  try:
    yield
  except BaseException:
    for run in runs:
      with contextlib.suppress(Exception):
        run.checkpoints.close()
    raise


def train_and_evaluate(config, workdir, dataset=None):
  """Trains `config` in `workdir` (resuming if it holds an unfinished run); returns the summary."""
  workdir = os.path.abspath(workdir)
  check_run(config, workdir)
  if workdir_guard.is_finished(workdir):
    return report_finished(workdir)
  with writer_lock(workdir):
    run = restore_or_start(config, workdir, dataset)
    with closed_on_failure([run]):
      fit(run)
    return finish(run)
