"""Orbax checkpoints of a run: `latest` (resume after pre-emption) and `best` (final evaluation).

Two managers keep one step each, so the best checkpoint survives however many epochs follow
it. Each save holds the train state and a JSON `meta` with the host-side loop state (callbacks,
epoch), so a resumed run continues exactly where the last save left it.
"""
import os

import jax
import orbax.checkpoint as ocp


class RunCheckpoints:

  def __init__(self, directory):
    directory = os.path.abspath(directory)
    options = ocp.CheckpointManagerOptions(max_to_keep=1, create=True)
    self.latest = ocp.CheckpointManager(os.path.join(directory, "latest"), options=options)
    self.best = ocp.CheckpointManager(os.path.join(directory, "best"), options=options)

  @staticmethod
  def _save(manager, epoch, state, meta):
    if epoch in manager.all_steps():  # a rerun of an epoch whose save survived a crash: same content
      return
    manager.save(epoch, args=ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)))

  def save(self, epoch, state, meta, is_best):
    if is_best:
      self._save(self.best, epoch, state, meta)
      # `latest` decides where a resumed run starts, so it must never be committed ahead of
      # `best`: a best save still in flight when the process is killed would be lost for good,
      # since the resumed run does not redo that epoch. Costs one synchronous write per
      # improving epoch; the latest save stays asynchronous.
      self.best.wait_until_finished()
    self._save(self.latest, epoch, state, meta)

  @staticmethod
  def _restore(manager, like_state):
    step = manager.latest_step()
    if step is None:
      return None
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, like_state)
    restored = manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract),
                                                             meta=ocp.args.JsonRestore()))
    return restored.state, restored.meta

  def restore_latest(self, like_state):
    """(state, meta) of the last completed epoch, or None for a fresh run."""
    return self._restore(self.latest, like_state)

  def restore_best(self, like_state, epoch=None):
    """(state, meta) of the best epoch; `epoch`, when given, must be the one saved there."""
    restored = self._restore(self.best, like_state)
    found = None if restored is None else restored[1]["epoch"]
    if epoch is not None and found != epoch:
      raise RuntimeError(f"{self.best.directory}: expected the checkpoint of best epoch {epoch}, found "
                         f"{'none' if found is None else f'epoch {found}'}")
    return restored

  def close(self):
    """Waits for pending asynchronous saves, then releases the managers."""
    for manager in (self.latest, self.best):
      manager.wait_until_finished()
      manager.close()
