"""Trains and evaluates one config: `python launch.py --config=configs/b_pp.py:quick`.

  --config=FILE[:VARIANT]   an ml_collections config file; overrides as --config.optim.lr=1e-3
  --workdir=DIR             default runs/<config name>[-<variant>]; an unfinished run there resumes
  --summary                 print the model's layers and parameter counts, then exit (no data, no training)
  --distributed             one process of a multi-process run (docs/scaling.md); JAX detects the
                            cluster on Cloud TPU, SLURM, Open MPI and Kubernetes, elsewhere add
                            --coordinator_address=HOST:PORT --num_processes=N --process_id=I
"""
import errno
import logging as std_logging
import os
import sys

from absl import app, flags, logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file[:variant].", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory (default runs/<name>[-<variant>]).")
_SUMMARY = flags.DEFINE_bool("summary", False, "Print the model summary and exit.")
_DISTRIBUTED = flags.DEFINE_bool(
    "distributed", bool(os.environ.get("JAX_COORDINATOR_ADDRESS")),
    "Call jax.distributed.initialize() (multi-host TPU VM pods / GPU clusters; auto-detected there).")
# Cloud TPU, SLURM, Open MPI and Kubernetes tell JAX these themselves; elsewhere pass them.
_COORDINATOR = flags.DEFINE_string("coordinator_address", None, "--distributed: host:port of process 0.")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "--distributed: how many processes.")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "--distributed: this process's index, 0..n-1.")
_HEARTBEAT = flags.DEFINE_integer("heartbeat_timeout", 100, "--distributed: seconds without a heartbeat "
                                  "from a process before the others stop with an error (JAX's default).")
flags.mark_flags_as_required(["config"])


def fail(e, context):
  """Exits with the last line of an exception's message (config_flags wraps whole tracebacks)."""
  lines = [l.strip(" '\"\\") for l in str(e).replace("\\n", "\n").splitlines() if l.strip()]
  detail = lines[-1] if lines else type(e).__name__
  if "has no attribute 'get_config" in detail:  # config_flags imports the file and calls get_config()
    detail = "the config file defines no get_config(arg)"
  elif isinstance(e, (AttributeError, KeyError)):  # ConfigDict's unknown field: "Did you mean ..."
    detail = f"unknown field {lines[0]}. {detail}"
  sys.exit(f"error: {detail} ({context})")


def error_lines(e):
  """`error: ...` for each line of an error message (a bad config lists one field per line)."""
  return "\n".join(f"error: {line}" for line in str(e).splitlines())


def last_saved_epoch(workdir):
  from fer_jax import checkpoint
  return checkpoint.last_saved_epoch(os.path.join(workdir, "checkpoints"))


def os_error_text(e, workdir):
  """One line for a failed write: disk full, read-only or permission denied; None for others."""
  where = e.filename or workdir
  if e.errno == errno.ENOSPC:
    epoch = last_saved_epoch(workdir)
    saved = (f"the last good checkpoint is epoch {epoch} ({os.path.join(workdir, 'checkpoints', str(epoch))})"
             if epoch is not None else "no checkpoint was saved yet")
    sizes = (e.strerror or "").partition(": ")[2]  # what a checkpoint needs and what is free, when known
    return (f"error: no space left on device writing {where}{f' ({sizes})' if sizes else ''}; {saved}; "
            "free space and rerun the same command to resume")
  if e.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
    return f"error: cannot write {where}: {e.strerror}; pass a writable --workdir (or config.data.cache_dir)"
  return None


def parse_flags(argv):
  """absl's parser, with a bad --config value (unknown variant or field, wrong type) as one line."""
  try:
    return flags.FLAGS(argv)
  except Exception as e:  # config_flags re-raises whatever the config file or ConfigDict raised
    fail(e, " ".join(a for a in argv[1:] if a.startswith("--config")))


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  if not any(a.startswith(("--verbosity", "-v")) for a in sys.argv):
    logging.set_verbosity(logging.WARNING)  # JAX's backend probing is INFO noise
    # orbax logs a failed background save with its traceback, then raises it here, where it
    # becomes one line (a full disk, say): the logged copy is noise.
    logging.get_absl_logger().addFilter(
        lambda r: not (r.levelno >= std_logging.ERROR and f"{os.sep}orbax{os.sep}" in r.pathname))
  import jax  # after flag parsing, so --help stays fast
  if _DISTRIBUTED.value:
    jax.distributed.initialize(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value,
                               heartbeat_timeout_seconds=_HEARTBEAT.value)
  try:
    config = _CONFIG.value
    config.name  # config_flags loads the file lazily: a missing file fails here
  except OSError as e:
    fail(e, "--config")
  from fer_jax import config_loading
  try:
    config_loading.check_values(config)
  except config_loading.ConfigError as e:
    sys.exit(error_lines(e))
  if _SUMMARY.value:
    from fer_jax.models import summary
    print(summary.model_summary(config))
    return
  from fer_jax import train
  workdir = _WORKDIR.value or os.path.join("runs", config.name + (f"-{config.variant}" if config.variant else ""))
  if jax.process_index() == 0:
    print(f"JAX {jax.__version__}: {jax.process_count()} process(es), devices {jax.devices()}", flush=True)
  try:
    train.train_and_evaluate(config, workdir)
  except KeyboardInterrupt:
    sys.exit(f"interrupted after epoch {last_saved_epoch(workdir) or 0}; rerun the same command to resume")
  except (ValueError, FileNotFoundError, FloatingPointError) as e:
    sys.exit(error_lines(e))
  except OSError as e:
    text = os_error_text(e, workdir)
    if text is None:
      raise
    sys.exit(text)


if __name__ == "__main__":
  app.run(main, flags_parser=parse_flags)
