"""Guards of a run's workdir: one config and one data set per workdir, one writer at a time.

`check_same_config` compares a config with the `config.json` a workdir already holds, and with
the copy in its `checkpoints/` (which travels with a copied checkpoints folder), so that a
resumed (or finished) run is never continued with other settings; `check_same_data` compares the
data with the fingerprint every checkpoint carries; `lock` keeps a second process from writing
into a workdir that another one is training in.
"""

import contextlib
import fcntl
import hashlib
import json
import os
import socket

import numpy as np

from fer_jax.config_loading import ABSENT, declared_fields, field_differences
from fer_jax.train import history

# Fields that may differ between the saved config and a resumed one: where data is cached, how
# it is read, how often progress is printed, how seeds share a program (train.vectorize: the
# same values) and whether report.md is drawn change nothing that is trained or measured.
RESUME_SAFE_FIELDS = (
  "data.cache_dir",
  "data.num_workers",
  "train.log_every_steps",
  "eval.batch_size",
  "train.vectorize",
  "eval.report",
)

LOCK_FILE = ".lock"
# Where a run's config is recorded: the workdir's own, and the copy that goes with its checkpoints.
CONFIG_FILES = ("config.json", os.path.join("checkpoints", "config.json"))


def is_finished(workdir):
  """Whether the run in `workdir` ended: its summary, metrics.json, is the last file it writes."""
  return os.path.exists(os.path.join(workdir, "metrics.json"))


class WorkdirError(ValueError):
  """A workdir that cannot be used for this run; the message names it and says what to do."""


def flat_fields(tree, prefix=""):
  """{'section.field': value} of a nested config dict, at any depth."""
  out = {}
  for key, value in tree.items():
    if isinstance(value, dict):
      out.update(flat_fields(value, f"{prefix}{key}."))
    else:
      out[f"{prefix}{key}"] = value
  return out


def config_differences(saved, config):
  """['field: saved -> now', ...] for the fields of two config dicts that differ (safe fields left
  out)."""
  now = flat_fields(json.loads(json.dumps(config)))  # tuples as the saved JSON holds them: lists
  # A workdir written before a field existed ran as the field's default does (a new field's
  # default keeps what fer_jax did before it), so that is no difference.
  defaults = {k: json.loads(json.dumps(f.default)) for k, f in declared_fields().items()}

  def same(field, before, after):
    new_at_default = before is ABSENT and field in defaults and after == defaults[field]
    return field in RESUME_SAFE_FIELDS or new_at_default

  return field_differences(flat_fields(saved), now, same)


def check_usable(workdir):
  """Refuses a workdir path that is not a folder (before any data is loaded)."""
  if os.path.exists(workdir) and not os.path.isdir(workdir):
    raise WorkdirError(f"--workdir {workdir}: is a file, not a folder; pass a folder for the run")


def record_config(config, workdir, writes=True):
  """Writes `config` as the workdir's config.json and as checkpoints/config.json (when `writes`:
  on the process that writes the run's files)."""
  if writes:
    os.makedirs(os.path.join(workdir, "checkpoints"), exist_ok=True)
    for name in CONFIG_FILES:
      history.write_json(os.path.join(workdir, name), config.to_dict())


def check_same_config(config, workdir):
  """Refuses to continue a workdir whose config.json, or the config its checkpoints were trained
  with, differs from `config` in a trained field (checkpoints saved before they carried a config
  are checked against config.json only)."""
  check_usable(workdir)
  for name in CONFIG_FILES:
    _check_saved_config(config, workdir, os.path.join(workdir, name))


def _check_saved_config(config, workdir, path):
  if not os.path.exists(path):
    return
  try:
    with open(path) as f:
      saved = json.load(f)
  except (OSError, ValueError) as e:
    raise WorkdirError(
      f"{path}: unreadable ({e}); this workdir holds a damaged run: "
      "pass a new --workdir or delete this one"
    ) from None
  diffs = config_differences(saved, config.to_dict())
  if diffs:
    raise WorkdirError(
      f"{workdir} holds a run of other settings ({'; '.join(diffs)}): rerun with the "
      f"settings in {path}, or pass a new --workdir"
    )


def data_fingerprint(dataset) -> str:
  """A digest of a data set's classes, images and labels: a resumed run must train on the same."""
  h = hashlib.blake2b(json.dumps(list(dataset.classes)).encode(), digest_size=8)
  for name in sorted(dataset.splits):
    split = dataset.splits[name]
    h.update(name.encode())
    for array in (split.labels, split.images):
      h.update(memoryview(np.ascontiguousarray(array)).cast("B"))
  return h.hexdigest()


def check_same_data(meta, fingerprint, checkpoints_dir):
  """Refuses to resume from a checkpoint (its `meta`) that was trained on other data (images moved
  between class folders, added or removed since); a checkpoint saved before checkpoints carried a
  fingerprint resumes unchecked."""
  saved = meta.get("data")
  if saved is not None and saved != fingerprint:
    raise WorkdirError(
      f"the data changed since {checkpoints_dir}/{meta['epoch']} was saved (images or labels "
      f"differ; fingerprint {saved} -> {fingerprint}): resuming would train one run on two data "
      "sets; restore the data it started with and rerun, or pass a new --workdir to train afresh"
    )


def lock_holder(fd) -> str:
  """Who holds the lock file `fd` ("PID 1234 on host node7"), as its holder wrote it."""
  return os.pread(fd, 200, 0).decode(errors="replace").strip() or "another process"


def name_holder(fd):
  """Writes this process into the lock file `fd` it has just locked, for `lock_holder`."""
  os.ftruncate(fd, 0)
  os.pwrite(fd, f"PID {os.getpid()} on host {socket.gethostname()}\n".encode(), 0)


@contextlib.contextmanager
def lock(workdir):
  """Holds an exclusive lock on `workdir` (created if needed) while the block runs.

  The kernel releases the lock when the process ends, however it ends, so a crashed run leaves
  no stale lock; the PID and host written into the lock file name the holder for the refusal.
  A run that fails before writing anything (bad data, say) leaves no workdir it created behind.
  """
  created = not os.path.exists(workdir)
  os.makedirs(workdir, exist_ok=True)
  path = os.path.join(workdir, LOCK_FILE)
  try:
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
  except IsADirectoryError:
    raise WorkdirError(
      f"{path} is a folder, not the lock file a run keeps there: move it out of the workdir "
      "(or delete it) and rerun"
    ) from None
  try:
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      raise WorkdirError(
        f"{workdir} is in use by {lock_holder(fd)}; wait for that run to end, or pass another "
        "--workdir"
      ) from None
    name_holder(fd)
    try:
      yield
    except BaseException:
      if created and os.listdir(workdir) == [LOCK_FILE]:
        os.remove(path)
        os.rmdir(workdir)
      raise
  finally:
    os.close(fd)
