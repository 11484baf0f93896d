"""`python -m fer_jax.export`: flags and main of the export command (see __init__.py)."""

import os
import sys

from absl import app, flags, logging

from fer_jax.inference import export

_WORKDIR = flags.DEFINE_string(
  "workdir",
  None,
  "A training run's workdir (its best checkpoint); default: the fer package's model.",
)
_CLASSES = flags.DEFINE_list(
  "classes",
  None,
  "Default model only: export these of its 7 FER2013 classes (probabilities renormalise).",
)
_TTA = flags.DEFINE_bool(
  "tta",
  False,
  "With --workdir of a run evaluated with config.eval.tta: the model averages each face's views "
  "inside its graph and answers with the run's TTA calibration (as predict --tta).",
)
_FORMAT = flags.DEFINE_string("format", None, f"One of {' | '.join(export.FORMATS)}.")
_OUT = flags.DEFINE_string(
  "out", None, "Directory for model.<format> and model.json (made if missing)."
)


def main(argv):
  if not any(a.startswith(("--verbosity", "-v")) for a in sys.argv):
    logging.set_verbosity(logging.WARNING)  # JAX's backend probing, TF's SavedModel steps
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  from fer_jax.inference import scoring

  try:
    if not _FORMAT.value or not _OUT.value:
      raise export.ExportError(f"--format ({' | '.join(export.FORMATS)}) and --out are needed")
    export.module(_FORMAT.value)  # a bad --format or a missing converter before any model loads
    export.check_out_dir(_OUT.value, _FORMAT.value)
    # XLA's own convolutions: the per-shape choice of conv_impl='auto' needs a concrete batch.
    scorer = scoring.Scorer.for_command_line(
      _WORKDIR.value, _CLASSES.value, conv_impl="xla", tta=_TTA.value
    )
    if _WORKDIR.value:
      source = {"workdir": os.path.abspath(_WORKDIR.value)}
    else:
      source = {"default_model": scorer.name}
    meta = export.export(scorer, _FORMAT.value, _OUT.value, source)
  except export.ExportError as e:
    sys.exit(f"error: {e}")
  path = export.model_path(_OUT.value, _FORMAT.value)
  check = meta["check"]
  tta = meta["tta"]
  views = f", TTA {tta['mode']} ({tta['views']} views)" if tta["views"] > 1 else ""
  print(
    f"wrote {path} ({os.path.getsize(path) / 1e6:.2f} MB) and {export.METADATA}: "
    f"{', '.join(meta['class_names'])}, T = {meta['temperature']:.3g}{views}; max |p - fer_jax's| "
    f"{check['max_abs_difference']:.1e} on batches of {check['batch_sizes']} ({check['runtime']})"
  )
