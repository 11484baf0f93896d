"""What launch.py prints when a run cannot go on: one line each, no traceback.

docs/troubleshooting.md lists the messages.
"""

import errno
import os
import re
import signal
import sys
import threading
from typing import NoReturn

_interrupted = threading.Event()


def config_flag_text(e, context):
  """The last line of a bad --config's exception message (config_flags wraps whole tracebacks)."""
  lines = [
    line.strip(" '\"\\") for line in str(e).replace("\\n", "\n").splitlines() if line.strip()
  ]
  detail = lines[-1] if lines else type(e).__name__
  missing = re.search(r"No such file or directory: '([^']*)'", str(e))
  # config_flags imports the file and calls get_config()
  if "has no attribute 'get_config" in detail:
    detail = "the config file defines no get_config(arg)"
  elif missing:
    detail = f"no config file {missing.group(1)}"
  elif isinstance(e, (AttributeError, KeyError)):  # ConfigDict's unknown field: "Did you mean ..."
    field = lines[0] if lines else "?"
    detail = f"unknown field {field}" + (f". {detail}" if detail != field else "")
  return f"error: {detail} ({context})"


def error_lines(e) -> str:
  """`error: ...` for each line of an error message (a bad config lists one field per line)."""
  return "\n".join(f"error: {line}" for line in str(e).splitlines())


def last_saved_epoch(workdir) -> int | None:
  from fer_jax.train import checkpoint

  return checkpoint.last_saved_epoch(os.path.join(workdir, "checkpoints"))


def os_error_text(e, workdir) -> str | None:
  """One line for a failed write: disk full, read-only or permission denied; None for others."""
  where = e.filename or workdir
  if e.errno == errno.ENOSPC:
    epoch = last_saved_epoch(workdir)
    saved = (
      f"the last good checkpoint is epoch {epoch} "
      f"({os.path.join(workdir, 'checkpoints', str(epoch))})"
      if epoch is not None
      else "no checkpoint was saved yet"
    )
    # what a checkpoint needs and what is free, when known
    sizes = (e.strerror or "").partition(": ")[2]
    return (
      f"error: no space left on device writing {where}{f' ({sizes})' if sizes else ''}; {saved}; "
      "free space and rerun the same command to resume"
    )
  if e.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
    return (
      f"error: cannot write {where}: {e.strerror}; "
      "pass a writable --workdir (or config.data.cache_dir)"
    )
  return None


def exit_with(text) -> NoReturn:
  """Exits with `text` as the last thing printed.

  Background work that the error cut short (orbax reading the same damaged checkpoint on another
  thread, say) would otherwise print 'Exception ignored' tracebacks while the interpreter shuts
  down.
  """
  sys.unraisablehook = lambda _: None
  threading.excepthook = lambda _: None
  sys.exit(text)


def _on_sigint(signum, frame):
  _interrupted.set()
  raise KeyboardInterrupt


def stop_if_interrupted():
  """Raises KeyboardInterrupt after a Ctrl-C whose own KeyboardInterrupt was swallowed (raised in
  a finalizer, or in library code that catches BaseException); a no-op outside
  `interruptible`."""
  if _interrupted.is_set():
    raise KeyboardInterrupt


def interruptible(train_fn):
  """Runs `train_fn` so that Ctrl-C always ends it in KeyboardInterrupt, whatever the timing: the
  interrupt is also recorded, for `stop_if_interrupted` (train.loop calls it after each epoch's
  save) and for the end, so that one swallowed or turned into another error on the way still
  stops the run."""
  signal.signal(signal.SIGINT, _on_sigint)
  try:
    train_fn()
  except Exception:
    if _interrupted.is_set():
      raise KeyboardInterrupt from None
    raise
  stop_if_interrupted()


def one_line_on_failure(train_fn, workdir):
  """Runs `train_fn`; Ctrl-C, bad input, a full disk or a read-only folder end it with one line."""
  try:
    interruptible(train_fn)
  except KeyboardInterrupt:
    exit_with(
      f"interrupted after epoch {last_saved_epoch(workdir) or 0}; rerun the same command to resume"
    )
  except (ValueError, FileNotFoundError, FloatingPointError) as e:
    exit_with(error_lines(e))
  except OSError as e:
    text = os_error_text(e, workdir)
    if text is None:
      raise
    exit_with(text)
