"""A scorer's model as one file for other runtimes: ONNX, TFLite or StableHLO, with model.json.

  python -m fer_jax.export --format=onnx --out=exported/               # the default model
  python -m fer_jax.export --workdir=runs/b_pp --format=tflite --out=exported/
  python -m fer_jax.export --workdir=runs/real --tta --format=onnx --out=exported/  # its TTA views

The contract every format keeps (docs/inference.md; the demo page's in-browser mode relies on it):
one input `faces`, float32 [batch, S, S, C] (S, C: the model's input size and channels), the raw
0..255 pixel values of face crops cut as predict cuts them (fer_jax.inference.detectors.crops);
whatever fer_jax does to pixels after that (x / 255, the model's own resizing and scaling) happens
inside the exported model. One output `probabilities`, float32 [batch, classes]: softmax(logits /
T), the run's temperature baked in; with --tta, the mean over the run's config.eval.tta views of
each face (made inside the model), calibrated as predict --tta calibrates it. The batch size is
free. model.json beside the model file says what a caller must know: class names, temperature,
threshold, TTA views, input size and crop.

Each format is a module here with `write(fn, face_shape, path)` (the converter) and `load(path)`
(a float32 faces -> probabilities callable on that format's own runtime). Every export is loaded
back with it and compared with the scorer on probe batches of 1 and 3 before it is kept.
"""

import importlib
import importlib.metadata
import json
import os

import numpy as np

from fer_jax.inference import detectors

FORMATS = ("onnx", "tflite", "stablehlo")
METADATA = "model.json"
TOLERANCE = 1e-4  # max |probability - the scorer's| an export may differ by
PROBE_BATCHES = (1, 3)


class ExportError(Exception):
  """An export that cannot be written or does not match the scorer (one line)."""


def module(fmt):
  if fmt not in FORMATS:
    raise ExportError(f"--format: unknown {fmt!r}; use {' | '.join(FORMATS)}")
  try:
    return importlib.import_module(f"fer_jax.inference.export.{fmt}_format")
  except ImportError as e:
    raise ExportError(
      f"--format={fmt} needs {e.name} (pip install -e '.[export]' in the repo)"
    ) from None


def model_path(out_dir, fmt):
  return os.path.join(out_dir, f"model.{fmt}")


def probabilities_fn(scorer):
  """float32 raw pixels [B, S, S, C] -> calibrated probabilities [B, classes], as a JAX function:
  the scorer's own jitted model call (it scales pixels as training does) and its temperature; for
  a scorer with TTA (Scorer.with_tta), the mean over its views, made inside the graph."""
  import jax
  import jax.numpy as jnp

  temperature = scorer.calibration.temperature
  return lambda faces: jax.nn.softmax(scorer.batch_logits(faces, xp=jnp) / temperature, axis=-1)


def check_out_dir(out_dir, fmt):
  """Refuses an --out that is not a directory, or one holding another format's export (its
  model.json would be replaced)."""
  if os.path.exists(out_dir) and not os.path.isdir(out_dir):
    raise ExportError(f"--out: {out_dir} is a file, not a directory")
  try:
    with open(os.path.join(out_dir, METADATA)) as f:
      held = json.load(f).get("format")
  except (OSError, ValueError, AttributeError):
    return
  if held != fmt:
    raise ExportError(
      f"--out: {out_dir} holds a {held!r} export ({METADATA}); use one directory per format"
    )


def export(scorer, fmt, out_dir, source):
  """Writes out_dir/model.<fmt> and out_dir/model.json for `scorer`; returns model.json's dict.

  `source`: what the model is, for model.json ({"workdir": path} or {"default_model": name})."""
  fmt_module = module(fmt)
  check_out_dir(out_dir, fmt)
  os.makedirs(out_dir, exist_ok=True)
  face_shape = (scorer.image_size, scorer.image_size, scorer.channels)
  path = model_path(out_dir, fmt)
  fmt_module.write(probabilities_fn(scorer), face_shape, path)
  deviation = max_deviation(scorer, fmt_module.load(path))
  if not deviation <= TOLERANCE:
    os.remove(path)
    raise ExportError(
      f"{path}: its probabilities differ from fer_jax's by {deviation:.1e} (> {TOLERANCE:g}) on "
      f"{fmt_module.RUNTIME}; not kept"
    )
  meta = metadata(scorer, fmt, source)
  meta["check"] = {
    "runtime": fmt_module.RUNTIME,
    "batch_sizes": list(PROBE_BATCHES),
    "max_abs_difference": float(deviation),
  }
  meta["converter"] = fmt_module.CONVERTER
  with open(os.path.join(out_dir, METADATA), "w") as f:
    json.dump(meta, f, indent=1)
  return meta


def max_deviation(scorer, run):
  """max |run(faces) - scorer.probabilities(faces)| over random-pixel probe batches."""
  rng = np.random.default_rng(0)
  worst = 0.0
  for n in PROBE_BATCHES:
    faces = rng.integers(0, 256, (n, scorer.image_size, scorer.image_size, scorer.channels))
    faces = faces.astype(np.uint8)
    got = np.asarray(run(faces.astype(np.float32)))
    worst = max(worst, float(np.abs(got - scorer.probabilities(faces)).max()))
  return worst


def metadata(scorer, fmt, source):
  size, channels = scorer.image_size, scorer.channels
  return {
    "format": fmt,
    "file": f"model.{fmt}",
    "fer_jax_version": importlib.metadata.version("fer_jax"),
    "source": source,
    "model": scorer.name,
    "class_names": list(scorer.classes),
    "temperature": scorer.calibration.temperature,
    "threshold": scorer.calibration.threshold,
    "tta": {
      "mode": scorer.tta if scorer.views else "none",
      "views": len(scorer.views) or 1,
      "how": "inside the model: each face's probabilities are the mean over these views of it "
      "(fer_jax.evals.tta), temperature and threshold fitted on those means",
    },
    "input_size": size,
    "input": {
      "name": "faces",
      "dtype": "float32",
      "shape": ["batch", size, size, channels],
      "layout": "NHWC",
      "range": [0, 255],
      "color": "grayscale" if channels == 1 else "RGB",
      "crop": {
        "margin": detectors.FER_MARGIN,
        "resize_filter": scorer.resize_filter,
        "how": _crop_description(scorer),
      },
      "preprocessing": "inside the model: pixels / 255, then the model's own resizing and "
      "scaling, as in training; feed raw pixel values",
    },
    "output": {
      "name": "probabilities",
      "dtype": "float32",
      "shape": ["batch", len(scorer.classes)],
      "meaning": "softmax(logits / temperature), in class_names order; below threshold, "
      "fer_jax answers 'uncertain'",
    },
  }


def _crop_description(scorer):
  gray = "converted to grayscale as Pillow's 'L' (0.299 R + 0.587 G + 0.114 B), "
  return (
    "the square around the detector's box, its side the box's longer side plus margin x that "
    "side on each side, centred on the box, edge pixels repeated past the image's border; "
    f"{gray if scorer.channels == 1 else ''}resized to {scorer.image_size}x{scorer.image_size} "
    f"with Pillow's {scorer.resize_filter} filter (fer_jax.inference.detectors.crop)"
  )
