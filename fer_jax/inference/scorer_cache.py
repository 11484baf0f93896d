"""Scorers kept on disk, so that a second `python -m fer_jax.predict photo.jpg` starts without
importing Flax, porting the fer package's weights or tracing the model.

Scorer.for_command_line uses it wherever the compilation cache is on (compile_cache; the same
FER_JAX_COMPILE_CACHE=off turns both off), except where a conv_impl is asked for (export traces
the model itself). An entry is the folder `scorers/<key>` inside the compilation cache's folder:

  scorer.json   the Scorer's fields (name, classes, crop size, calibration, warning, TTA views)
  weights.npz   the model's variables as their flat leaves (read with allow_pickle=False)
  logits_<B>.jax  jax.export of (leaves, uint8 crops [B, S, S, C]) -> logits, one per padded
                batch size (Scorer.logits pads to powers of two) that was ever scored, exported at
                that concrete shape so that conv_impl='auto' chooses per batch size as the live
                model does

The key is the sha256 of what the answers depend on: the model's source (the default model's
classes and the fer package's version, or a run's workdir with the size and mtime of its
config.json and of every file under its checkpoints/, calibration included), fer_jax's version
and its source files' sizes and mtimes, jax/jaxlib, the backend, the CPU and the JAX_*/XLA_*
environment (conv_impl='auto''s choices depend on them). A changed run is a new key: no stale
answers. A batch size not yet in the entry builds the live model once, exports it and writes it
(each file to a temporary name first, then renamed, so a reader never sees a torn file); an
unreadable or corrupt file is warned about, ignored and rewritten. The compiled programs
themselves come from JAX's compilation cache.
"""

import dataclasses
import hashlib
import importlib.metadata
import io
import json
import os
import sys
import tempfile
import zipfile

import numpy as np

from fer_jax.evals import calibration
from fer_jax.inference import scoring

LAYOUT = 2  # of an entry's files: a new layout is a new key
FIELDS = "scorer.json"


def fingerprint(workdir, classes):
  """What a scorer's answers depend on, as JSON-able values (see the module's docstring)."""
  import jax
  import jaxlib

  from fer_jax.platform import allocator, cpu_info

  return {
    "layout": LAYOUT,
    "source": source(workdir, classes),
    "fer_jax": package_files(),
    "jax": [jax.__version__, jaxlib.__version__, jax.default_backend()],
    "machine": [cpu_info.current().cache_key(), allocator.loaded()],
    "env": {k: v for k, v in sorted(os.environ.items()) if k.startswith(("JAX_", "XLA_"))},
  }


def source(workdir, classes):
  """The model a scorer holds: a run's files, or the default model's classes and fer version."""
  if workdir:
    return {"workdir": os.path.realpath(workdir), "files": _run_files(workdir)}
  return {"default": list(classes) if classes else None, "fer": version("fer")}


def package_files():
  """fer_jax's version and its source files' sizes and mtimes (an editable install's version
  never changes when its code does)."""
  package = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  return [version("fer_jax"), _files(package, lambda name: name.endswith(".py"))]


def key(workdir, classes):
  return hashlib.sha256(json.dumps(fingerprint(workdir, classes)).encode()).hexdigest()[:32]


def version(dist):
  try:
    return importlib.metadata.version(dist)
  except importlib.metadata.PackageNotFoundError:
    return None


def _files(root, wanted=lambda name: True):
  """[relative path, size, mtime_ns] of every wanted file under `root`, sorted."""
  out = []
  for folder, dirs, names in os.walk(root):
    dirs.sort()
    for name in sorted(filter(wanted, names)):
      path = os.path.join(folder, name)
      try:
        st = os.stat(path)
      except OSError:
        continue  # removed meanwhile: the run is changing, and the live scorer will say so
      out.append([os.path.relpath(path, root), st.st_size, st.st_mtime_ns])
  return out


def _run_files(workdir):
  """A run's checkpoints (calibration.json among them) and config.json, and the config file that
  config.json names where it is a checkout's configs/<name>.py (fer_jax's own are in the key)."""
  files = _files(os.path.join(workdir, "checkpoints"))
  named = [os.path.join(workdir, "config.json")]
  try:
    with open(named[0]) as f:
      named.append(os.path.join("configs", f"{json.load(f)['name']}.py"))
  except (OSError, ValueError, KeyError, TypeError):
    pass  # the live scorer says what is wrong with it
  for path in named:
    if os.path.isfile(path):
      st = os.stat(path)
      files.append([os.path.realpath(path), st.st_size, st.st_mtime_ns])
  return files


def scorer(directory, workdir, classes, build):
  """The Scorer of `workdir` (or of the default model's `classes`) from the entry in `directory`,
  filling it where it is missing; `build()` makes the live Scorer (Scorer.from_workdir or
  Scorer.default), called at most once and only where a file is missing."""
  # JAX names its files *-cache and never looks into folders: the two caches share one folder.
  entry = Entry(os.path.join(directory, "scorers", key(workdir, classes)), build)
  return load_scorer(entry.folder, entry) or save_scorer(entry.folder, entry.live(), entry)


def load_scorer(folder, apply):
  """The Scorer whose fields are kept in `folder`, scoring with `apply`; None where there are none
  or they are unreadable (warned about: the caller rewrites them with save_scorer)."""
  path = os.path.join(folder, FIELDS)
  try:
    with open(path) as f:
      return _from_fields(json.load(f), apply)
  except FileNotFoundError:
    return None
  except (OSError, ValueError, KeyError, TypeError) as e:
    warn(path, e)
    return None


def save_scorer(folder, live, apply):
  """Keeps the fields of the `live` Scorer in `folder`; returns a Scorer of them scoring with
  `apply`."""
  fields = {
    "name": live.name,
    "classes": list(live.classes),
    "image_size": live.image_size,
    "channels": live.channels,
    "resize_filter": live.resize_filter,
    "calibration": dataclasses.asdict(live.calibration),
    "warning": live.warning,
    "tta": live.tta,
  }
  write_file(folder, FIELDS, json.dumps(fields, indent=1).encode())
  return _from_fields(fields, apply)


def _from_fields(fields, apply):
  return scoring.Scorer(
    fields["name"],
    tuple(fields["classes"]),
    int(fields["image_size"]),
    int(fields["channels"]),
    fields["resize_filter"],
    calibration.from_dict(fields["calibration"]),
    apply,
    fields["warning"],
    tta=fields["tta"],
  )


class Entry:
  """One scorer's folder; called with uint8 crops [B, S, S, C], it is the Scorer's `apply`."""

  def __init__(self, folder, build):
    self.folder, self._build, self._live = folder, build, None
    self._leaves = None  # the variables' flat leaves, on device
    self._programs = {}  # crops shape -> jitted exported logits

  def __call__(self, crops):
    program = self._programs.get(crops.shape)
    if program is None:
      program = self._programs[crops.shape] = self._program(crops.shape)
    return program(self._weights(), crops)

  def live(self):
    if self._live is None:
      self._live = self._build()
    return self._live

  def _variables(self):
    import jax

    return jax.tree.flatten(self.live().model[1])

  def _weights(self):
    if self._leaves is None:
      import jax

      path = os.path.join(self.folder, "weights.npz")
      leaves = None
      if self._live is None and os.path.exists(path):
        try:
          with np.load(path, allow_pickle=False) as npz:
            leaves = [npz[f"arr_{i}"] for i in range(len(npz.files))]
        except (OSError, ValueError, KeyError, zipfile.BadZipFile) as e:
          warn(path, e)
      if leaves is None:
        leaves = [np.asarray(x) for x in self._variables()[0]]
        buffer = io.BytesIO()
        np.savez(buffer, *leaves)
        self.write("weights.npz", buffer.getvalue())
      self._leaves = jax.device_put(leaves)
    return self._leaves

  def _program(self, shape):
    import jax

    path = os.path.join(self.folder, f"logits_{shape[0]}.jax")
    leaves = self._weights()
    wanted = [(tuple(x.shape), np.dtype(x.dtype)) for x in leaves]
    wanted.append((tuple(shape), np.dtype(np.uint8)))
    if os.path.exists(path):
      try:
        with open(path, "rb") as f:
          exported = jax.export.deserialize(bytearray(f.read()))
        if [(tuple(a.shape), np.dtype(a.dtype)) for a in exported.in_avals] == wanted:
          return jax.jit(exported.call)
        warn(path, "its shapes are not the scorer's")
      except Exception as e:  # a torn or foreign file fails in flatbuffers or MLIR, not in OSError
        warn(path, e)
    exported = self._export(shape)
    self.write(os.path.basename(path), bytes(exported.serialize()))
    return jax.jit(exported.call)

  def _export(self, shape):
    import jax

    from fer_jax import models

    module, _ = self.live().model
    leaves, treedef = self._variables()

    def logits(leaves, crops):
      variables = jax.tree.unflatten(treedef, leaves)
      return models.apply(module, variables, models.to_float(crops), train=False)

    specs = [jax.ShapeDtypeStruct(x.shape, x.dtype) for x in leaves]
    return jax.export.export(jax.jit(logits))(specs, jax.ShapeDtypeStruct(shape, np.uint8))

  def write(self, name, data):
    write_file(self.folder, name, data)


def write_file(folder, name, data):
  """`data` as the file `folder`/`name`, whole or not at all; an unwritable cache only warns."""
  try:
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{name}.")
    try:
      with os.fdopen(fd, "wb") as f:
        f.write(data)
      os.replace(tmp, os.path.join(folder, name))
    except BaseException:
      os.unlink(tmp)
      raise
  except OSError as e:
    print(f"warning: scorer cache: cannot write {folder}/{name}: {e}", file=sys.stderr)


def warn(path, why):
  print(f"warning: scorer cache: ignoring {path} ({why}); it is rewritten", file=sys.stderr)
