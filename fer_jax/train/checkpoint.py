"""Orbax checkpoints of a run: the latest epoch (resume after pre-emption) and the best one (final
evaluation), kept by one `CheckpointManager` under `<workdir>/checkpoints/<epoch>/`.

Each epoch is one save, holding the train state and a JSON `meta` with the host-side loop state
(callbacks, epoch), so a resumed run continues exactly where the last save left it. The
preservation policy keeps the latest save plus the best by val accuracy (the first epoch that
reached it, as EarlyStopping counts it), so the best survives however many epochs follow it.
A save is committed atomically; a process killed during one resumes from the previous save and
redoes the epoch, so the best epoch can never be skipped.
"""

import contextlib
import errno
import logging
import os
import shutil
import sys

import flax
import jax
import orbax.checkpoint as ocp


def _rank(metrics):
  """Higher is better: val accuracy, then the earlier epoch (EarlyStopping keeps the first best)."""
  return (metrics["val_accuracy"], -metrics["epoch"])


SAVE_OVERHEAD_BYTES = 1 << 20  # orbax's metadata files beside the arrays, with room to spare


class CheckpointError(ValueError):
  """A saved checkpoint that cannot be restored; the message names it and how to recover."""


def last_saved_epoch(directory):
  """The newest committed epoch under a run's `checkpoints` directory, or None."""
  steps = [int(n) for n in os.listdir(directory) if n.isdigit()] if os.path.isdir(directory) else []
  return max(steps, default=None)


@contextlib.contextmanager
def _disk_full_as_os_error(directory):
  """orbax reports a failed asynchronous write as a ValueError carrying the OS message; a full
  disk becomes the OSError(ENOSPC) it is, so that the caller can say so in one line."""
  try:
    yield
  except ValueError as e:
    if "No space left on device" not in str(e):
      raise
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), directory) from None


def _keep_unless_abandoned_read(record):
  """asyncio's log filter: False for a failed orbax read task nobody awaited."""
  message = record.getMessage()
  return not ("exception was never retrieved" in message and f"{os.sep}orbax{os.sep}" in message)


def _quiet_abandoned_reads():
  """Keeps a failed restore's one error the only report of it.

  orbax reads the arrays of a checkpoint concurrently on an asyncio loop; when one read fails
  (a truncated file), the restore raises and closes that loop while tensorstore finishes the
  others on its own threads. Each of those then reports a callback to the closed loop as an
  unraisable 'Event loop is closed', and asyncio logs each failed read task as 'Task exception
  was never retrieved', whenever the timing lets them: before or after the caller printed its
  one line. Both are dropped here; every other unraisable exception and log record still is
  reported. Idempotent.
  """
  # logging does not add a filter it already holds
  logging.getLogger("asyncio").addFilter(_keep_unless_abandoned_read)
  if getattr(sys.unraisablehook, "quiets_abandoned_reads", False):
    return
  report = sys.unraisablehook

  def hook(unraisable):
    closed_loop = isinstance(unraisable.exc_value, RuntimeError) and (
      str(unraisable.exc_value) == "Event loop is closed"
    )
    if not closed_loop:
      report(unraisable)

  hook.quiets_abandoned_reads = True
  sys.unraisablehook = hook


class RunCheckpoints:
  def __init__(self, directory):
    _quiet_abandoned_reads()
    self.directory = os.path.abspath(directory)
    keep = ocp.checkpoint_managers.AnyPreservationPolicy(
      [
        ocp.checkpoint_managers.LatestN(n=1),
        ocp.checkpoint_managers.BestN(get_metric_fn=_rank, reverse=False, n=1),
      ]
    )
    options = ocp.CheckpointManagerOptions(
      preservation_policy=keep, best_fn=_rank, best_mode="max", create=True
    )
    handlers = {"state": ocp.StandardCheckpointHandler(), "meta": ocp.JsonCheckpointHandler()}
    self.manager = ocp.CheckpointManager(self.directory, options=options, item_handlers=handlers)

  def save(self, epoch, state, meta, val_accuracy):
    """Saves epoch `epoch` asynchronously; the manager keeps it while it is the latest or best."""
    if (
      epoch in self.manager.all_steps()
    ):  # a rerun of an epoch whose save survived a crash: same content
      return
    self._check_space(state)
    with _disk_full_as_os_error(self.directory):
      self.manager.save(
        epoch,
        args=ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)),
        metrics={"val_accuracy": float(val_accuracy), "epoch": epoch},
      )

  def _check_space(self, state):
    """Fails before a save that cannot fit: orbax would fail it in the background, where
    tensorstore's pending writes then print tracebacks, before the error reaches this thread."""
    need = sum(leaf.nbytes for leaf in jax.tree.leaves(state)) + SAVE_OVERHEAD_BYTES
    free = shutil.disk_usage(self.directory).free
    if free < need:
      raise OSError(
        errno.ENOSPC,
        f"{os.strerror(errno.ENOSPC)}: a checkpoint needs about {need / 2**20:.1f} MB, "
        f"{free / 2**20:.1f} MB are free",
        self.directory,
      )

  def _restore(self, step, like_state, recovery=None):
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, like_state)
    try:
      # A checkpoint from before weight averaging (train/ema.py) has no `ema`: a run without it
      # restores the rest.
      legacy = getattr(like_state, "ema", False) is None and "ema" not in self._saved_keys(step)
      if legacy:
        abstract = flax.serialization.to_state_dict(abstract)
        del abstract["ema"]
      restored = self.manager.restore(
        step,
        args=ocp.args.Composite(
          state=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore()
        ),
      )
    except Exception as e:  # noqa: BLE001 -- orbax raises many kinds for a truncated or foreign checkpoint
      detail = (str(e).strip().splitlines() or [""])[0][:200]
      recovery = recovery or (
        f"delete {self.directory} and rerun the same command to train this run again from epoch 1"
      )
      # now: orbax's background threads, left to the interpreter's exit, would print tracebacks
      with contextlib.suppress(Exception):
        self.manager.close()
      raise CheckpointError(
        f"checkpoint {self.directory}/{step} (epoch {step}) is unreadable "
        f"({type(e).__name__}: {detail}); {recovery}"
      ) from None
    state = restored.state
    if legacy:
      state = flax.serialization.from_state_dict(like_state, {**state, "ema": None})
    return state, restored.meta

  def _saved_keys(self, step):
    return set(self.manager.item_metadata(step)["state"].tree)

  def restore_latest(self, like_state):
    """(state, meta) of the last completed epoch, or None for a fresh run."""
    step = self.manager.latest_step()
    if step is None:
      return None
    older = [
      s for s in self.manager.all_steps() if s < step
    ]  # the best epoch, kept apart from the latest
    recovery = (
      f"delete {self.directory}/{step} and rerun the same command to resume from epoch {max(older)}"
      if older
      else None
    )
    return self._restore(step, like_state, recovery)

  def restore_best(self, like_state, epoch=None):
    """(state, meta) of the best epoch, or None before the first save; `epoch`, when given, must
    be it."""
    found = self.manager.best_step()
    if epoch is not None and found != epoch:
      raise RuntimeError(
        f"{self.directory}: expected the checkpoint of best epoch {epoch}, found "
        f"{'none' if found is None else f'epoch {found}'}"
      )
    return None if found is None else self._restore(found, like_state)

  def close(self):
    """Waits for the pending asynchronous save, then releases the manager."""
    with _disk_full_as_os_error(self.directory):
      self.manager.wait_until_finished()
    self.manager.close()


def restore_best_variables(directory, like_variables):
  """The model variables {'params', 'batch_stats'} of a run's best epoch, or None before its first
  save: only those leaves of the saved train state are read (orbax's partial restore), so a
  scorer needs neither an optimiser nor the optimiser state's bytes. A run that kept an average
  of its weights (config.optim.ema_decay, train/ema.py) was evaluated and calibrated with it:
  then the average is what is read.

  `like_variables` gives their structure, shapes and dtypes (arrays or jax.ShapeDtypeStruct, e.g.
  `jax.eval_shape` of the model's init); they are restored onto the first local device. A
  checkpoint that does not hold them raises CheckpointError naming it.
  """
  if not os.path.isdir(directory):
    return None
  _quiet_abandoned_reads()
  device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  abstract = jax.tree.map(
    lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=device), like_variables
  )
  options = ocp.CheckpointManagerOptions(best_fn=_rank, best_mode="max", create=False)
  handlers = {"state": ocp.PyTreeCheckpointHandler(), "meta": ocp.JsonCheckpointHandler()}
  manager = ocp.CheckpointManager(
    os.path.abspath(directory), options=options, item_handlers=handlers
  )
  try:
    step = manager.best_step()
    if step is None:
      return None
    averaged = manager.item_metadata(step)["state"].tree.get("ema") is not None
    if averaged:
      abstract = {"ema": abstract}
    try:
      restored = manager.restore(
        step,
        args=ocp.args.Composite(
          state=ocp.args.PyTreeRestore(
            abstract,
            restore_args=ocp.checkpoint_utils.construct_restore_args(abstract),
            partial_restore=True,
          )
        ),
      )
    except Exception as e:  # noqa: BLE001 -- as in RunCheckpoints._restore: orbax raises many kinds
      detail = (str(e).strip().splitlines() or [""])[0][:200]
      raise CheckpointError(
        f"checkpoint {os.path.abspath(directory)}/{step} (best epoch {step}) does not hold the "
        f"model its run's config.json describes ({type(e).__name__}: {detail}); delete the "
        "run's checkpoints folder and rerun its training command to train it again"
      ) from None
  finally:
    manager.close()
  return restored.state["ema"] if averaged else restored.state
