"""Guards of a run's workdir: one config per workdir, one writer at a time.

`check_same_config` compares a config with the `config.json` a workdir already holds, so that a
resumed (or finished) run is never continued with other settings; `lock` keeps a second process
from writing into a workdir that another one is training in.
"""

import contextlib
import fcntl
import json
import os
import socket

from fer_jax.config_loading import declared_fields

# Fields that may differ between the saved config and a resumed one: where data is cached, how
# it is read, how often progress is printed and how seeds share a program (train.vectorize: the
# same values) change nothing that is trained or measured.
RESUME_SAFE_FIELDS = (
  "data.cache_dir",
  "data.num_workers",
  "train.log_every_steps",
  "eval.batch_size",
  "train.vectorize",
)

LOCK_FILE = ".lock"


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
  saved = flat_fields(saved)
  missing = object()

  def show(v):
    return "(absent)" if v is missing else json.dumps(v)

  # A workdir written before a field existed ran as the field's default does (a new field's
  # default keeps what fer_jax did before it), so that is no difference.
  defaults = {k: json.loads(json.dumps(f.default)) for k, f in declared_fields().items()}
  diffs = []
  for field in sorted(set(saved) | set(now)):
    before, after = saved.get(field, missing), now.get(field, missing)
    if before is missing and field in defaults and after == defaults[field]:
      continue
    if field not in RESUME_SAFE_FIELDS and before != after:
      diffs.append(f"{field}: {show(before)} -> {show(after)}")
  return diffs


def check_usable(workdir):
  """Refuses a workdir path that is not a folder (before any data is loaded)."""
  if os.path.exists(workdir) and not os.path.isdir(workdir):
    raise WorkdirError(f"--workdir {workdir}: is a file, not a folder; pass a folder for the run")


def check_same_config(config, workdir):
  """Refuses to continue a workdir whose config.json differs from `config` in a trained field."""
  check_usable(workdir)
  path = os.path.join(workdir, "config.json")
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
  fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
  try:
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "another process"
      raise WorkdirError(
        f"{workdir} is in use by {holder}; wait for that run to end, or pass another --workdir"
      ) from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"PID {os.getpid()} on host {socket.gethostname()}\n".encode(), 0)
    try:
      yield
    except BaseException:
      if created and os.listdir(workdir) == [LOCK_FILE]:
        os.remove(path)
        os.rmdir(workdir)
      raise
  finally:
    os.close(fd)
