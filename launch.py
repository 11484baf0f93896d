"""Trains and evaluates one config: `python launch.py --config=configs/b_pp.py:quick`.

  --config=FILE[:VARIANT]   an ml_collections config file; overrides as --config.optim.lr=1e-3
  --workdir=DIR             default runs/<config name>[-<variant>]; an unfinished run there resumes
  --summary                 print the model's layers and parameter counts, then exit (no data, no training)
"""
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
flags.mark_flags_as_required(["config"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  if not any(a.startswith(("--verbosity", "-v")) for a in sys.argv):
    logging.set_verbosity(logging.WARNING)  # JAX's backend probing is INFO noise
  import jax  # after flag parsing, so --help stays fast
  if _DISTRIBUTED.value:
    jax.distributed.initialize()
  config = _CONFIG.value
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
  except (ValueError, FileNotFoundError, FloatingPointError) as e:
    sys.exit(f"error: {e}")


if __name__ == "__main__":
  app.run(main)
