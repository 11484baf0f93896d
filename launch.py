"""Trains and evaluates one config: `python launch.py --config=configs/b_pp.py:quick`.

--config=FILE[:VARIANT]   an ml_collections config file; overrides as --config.optim.lr=1e-3
--workdir=DIR             default runs/<config name>[-<variant>]; an unfinished run there resumes
--summary                 print the model's layers and parameter counts, then exit (no data, no
                          training)
--distributed             one process of a multi-process run (docs/scaling.md); JAX detects the
                          cluster on Cloud TPU, SLURM, Open MPI and Kubernetes, elsewhere add
                          --coordinator_address=HOST:PORT --num_processes=N --process_id=I;
                          every process checks that the others hold the same settings
"""

import logging as std_logging
import os
import sys

from absl import app, flags, logging
from ml_collections import config_flags

from fer_jax.platform import allocator, run_errors

_CONFIG = config_flags.DEFINE_config_file(
  "config", None, "Config file[:variant].", lock_config=True
)
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory (default runs/<name>[-<variant>]).")
_SUMMARY = flags.DEFINE_bool("summary", False, "Print the model summary and exit.")
_DISTRIBUTED = flags.DEFINE_bool(
  "distributed",
  bool(os.environ.get("JAX_COORDINATOR_ADDRESS")),
  "Call jax.distributed.initialize() (multi-host TPU VM pods / GPU clusters; auto-detected there).",
)
# Cloud TPU, SLURM, Open MPI and Kubernetes tell JAX these themselves; elsewhere pass them.
_COORDINATOR = flags.DEFINE_string(
  "coordinator_address", None, "--distributed: host:port of process 0."
)
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "--distributed: how many processes.")
_PROCESS_ID = flags.DEFINE_integer(
  "process_id", None, "--distributed: this process's index, 0..n-1."
)
_HEARTBEAT = flags.DEFINE_integer(
  "heartbeat_timeout",
  100,
  "--distributed: seconds without a heartbeat "
  "from a process before the others stop with an error (JAX's default).",
)
_INIT_TIMEOUT = flags.DEFINE_integer(
  "initialization_timeout",
  300,
  "--distributed: seconds to wait for every process to connect to the coordinator (JAX's default).",
)
flags.mark_flags_as_required(["config"])


def parse_flags(argv):
  """absl's parser, with a bad --config value (unknown variant or field, wrong type) as one line."""
  try:
    return flags.FLAGS(argv)
  except Exception as e:  # config_flags re-raises whatever the config file or ConfigDict raised
    run_errors.exit_with(
      run_errors.config_flag_text(e, " ".join(a for a in argv[1:] if a.startswith("--config")))
    )


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  if not any(a.startswith(("--verbosity", "-v")) for a in sys.argv):
    logging.set_verbosity(logging.WARNING)  # JAX's backend probing is INFO noise
    # orbax logs a failed background save with its traceback, then raises it here, where it
    # becomes one line (a full disk, say): the logged copy is noise.
    logging.get_absl_logger().addFilter(
      lambda r: not (r.levelno >= std_logging.ERROR and f"{os.sep}orbax{os.sep}" in r.pathname)
    )
  # The config is loaded and checked before connecting: a bad one is refused at once, not after
  # waiting for the other processes.
  try:
    config = _CONFIG.value
    name = config.name  # config_flags loads the file lazily: a missing file fails here
  except OSError as e:
    run_errors.exit_with(run_errors.config_flag_text(e, "--config"))
  from fer_jax import config_loading

  try:
    config_loading.check_values(config)
  except config_loading.ConfigError as e:
    run_errors.exit_with(run_errors.error_lines(e))
  if _SUMMARY.value:
    from fer_jax.models import summary

    print(summary.model_summary(config))
    return
  workdir = _WORKDIR.value or os.path.join(
    "runs", name + (f"-{config.variant}" if config.variant else "")
  )
  if _DISTRIBUTED.value:
    from fer_jax.platform import multiprocess

    try:
      multiprocess.initialize(
        _COORDINATOR.value,
        _NUM_PROCESSES.value,
        _PROCESS_ID.value,
        _INIT_TIMEOUT.value,
        _HEARTBEAT.value,
        workdir,
      )
      multiprocess.check_same_settings(config, workdir, _INIT_TIMEOUT.value)
    except multiprocess.DistributedError as e:
      run_errors.exit_with(f"error: {e}")
  import jax  # after flag parsing, so --help stays fast

  from fer_jax.train import loop

  if jax.process_index() == 0:
    on_cpu = f"; {allocator.describe()}" if jax.default_backend() == "cpu" else ""
    print(
      f"JAX {jax.__version__}: {jax.process_count()} process(es), devices {jax.devices()}{on_cpu}",
      flush=True,
    )
  run_errors.one_line_on_failure(lambda: loop.train_and_evaluate(config, workdir), workdir)


if __name__ == "__main__":
  allocator.use_tcmalloc()  # re-executes this command once with tcmalloc preloaded, where installed
  app.run(main, flags_parser=parse_flags)
