"""predict's fast start: the scorer kept as an ONNX model and run with onnxruntime, so that a second
`python -m fer_jax.predict photo.jpg` never imports JAX (`import jax` alone is 1.2-1.8 s of the
1.8-2.6 s a JAX start takes on a 2-core Zen 1 with the scorer cache, against 0.8 s in all for
this one; docs/inference.md).

predict's --runtime=auto chooses it where onnxruntime and jax2onnx are installed (the `onnx` extra,
which `make run`'s set-up installs) and the compilation cache is on (compile_cache: the same
FER_JAX_COMPILE_CACHE=off turns it off). An entry is the folder `scorers/onnx-<key>` beside
scorer_cache's entries:

  scorer.json  the Scorer's fields (scorer_cache's)
  logits.onnx  float32 raw pixels [batch, S, S, C] -> logits [batch, classes], any batch size

Its key is what the answers depend on, found without importing JAX: the model's source and
fer_jax's source files (as scorer_cache keys them) and the versions of the converter (jax,
jaxlib, jax2onnx, onnx) and of onnxruntime. A missing or unreadable entry builds the live scorer
(JAX, with XLA's own convolutions, as export does), converts it with jax2onnx and keeps it only
where onnxruntime's probabilities match the live model's within export.TOLERANCE on random probe
batches; that first run scores with onnxruntime too, so every run of one model answers alike.
A conversion that fails or does not match is warned about and the run scores with JAX; the entry
then holds `unconverted.txt` (why), and later runs go straight to JAX with its own caches until the
key changes (fer_jax's sources, the model, a converter's version).
"""

import hashlib
import importlib.util
import json
import os
import sys
import tempfile

import numpy as np

from fer_jax.inference import scorer_cache

LAYOUT = 1  # of an entry's files: a new layout is a new key
MODEL = "logits.onnx"
UNCONVERTED = "unconverted.txt"
VERSIONS = ("jax", "jaxlib", "jax2onnx", "onnx", "onnxruntime")


def available():
  """Whether onnxruntime and jax2onnx are installed (found, not imported: that costs time)."""
  return all(importlib.util.find_spec(name) is not None for name in ("onnxruntime", "jax2onnx"))


def key(workdir, classes):
  fingerprint = {
    "layout": LAYOUT,
    "source": scorer_cache.source(workdir, classes),
    "fer_jax": scorer_cache.package_files(),
    "versions": {name: scorer_cache.version(name) for name in VERSIONS},
  }
  return hashlib.sha256(json.dumps(fingerprint).encode()).hexdigest()[:32]


def scorer(directory, workdir, classes, build):
  """The Scorer of `workdir` (or of the default model's `classes`) running on onnxruntime, from
  the entry in `directory`, converted where it is missing; `build()` makes the live JAX Scorer.
  None where an earlier run found that the model does not convert: the caller uses JAX."""
  folder = os.path.join(directory, "scorers", f"onnx-{key(workdir, classes)}")
  path = os.path.join(folder, MODEL)
  if os.path.exists(os.path.join(folder, UNCONVERTED)):
    return None
  if os.path.exists(path):
    try:
      kept = scorer_cache.load_scorer(folder, _session(path))
      if kept is not None:
        return kept
    except Exception as e:  # onnxruntime raises its own kinds for a torn or foreign file
      scorer_cache.warn(path, e)
  live = build()
  try:
    with tempfile.TemporaryDirectory() as tmp:
      converted = os.path.join(tmp, MODEL)
      apply = _convert(live, converted)
      with open(converted, "rb") as f:
        scorer_cache.write_file(folder, MODEL, f.read())
  except Exception as e:  # a converter's failure is its own kind; the JAX model still answers
    print(
      f"warning: predict runs on JAX: no ONNX model of {live.name} ({e}); later runs use JAX "
      f"without trying again (remove {folder} to retry)",
      file=sys.stderr,
    )
    scorer_cache.write_file(folder, UNCONVERTED, f"{e}\n".encode())
    return live
  return scorer_cache.save_scorer(folder, live, apply)


def _convert(live, path):
  """Writes `live`'s logits as ONNX to `path`; returns it on onnxruntime once it matches."""
  from fer_jax.evals import calibration
  from fer_jax.inference import export
  from fer_jax.inference.export import onnx_format

  onnx_format.write(live.apply, (live.image_size, live.image_size, live.channels), path, "logits")
  apply = _session(path)
  temperature = live.calibration.temperature
  deviation = export.max_deviation(live, lambda f: calibration.probabilities(apply(f), temperature))
  if not deviation <= export.TOLERANCE:
    raise ValueError(f"its probabilities differ from JAX's by {deviation:.1e}")
  return apply


def _session(path):
  """uint8 crops [B, S, S, C] -> logits, on onnxruntime's CPU provider. Not export's
  onnx_format.load: that module imports jax2onnx and onnx (seconds), which a cached start skips."""
  import onnxruntime

  options = onnxruntime.SessionOptions()
  # Its threads otherwise spin between calls, which slows everything else on a busy machine.
  options.add_session_config_entry("session.intra_op.allow_spinning", "0")
  session = onnxruntime.InferenceSession(path, options, providers=["CPUExecutionProvider"])
  return lambda crops: session.run(["logits"], {"faces": np.asarray(crops, np.float32)})[0]
