"""Keras HDF5 weights -> Flax variables, matched by layer name and shape.

Files read (h5py only; neither Keras nor TensorFlow is imported):
  - a whole model saved as `.h5` / `.hdf5` (Keras 2 or 3; weights under `model_weights/`);
  - a weights-only legacy file, e.g. the `*_notop.h5` ImageNet files Keras Applications download;
  - a Keras 3 `.weights.h5` (`layers/<attr>/vars/<i>`, the layer's name in the `vars` attributes).
Layers of nested models (a base model inside a transfer model) are read under their own names.
Within a layer, weights are taken in the order Keras stores them, as Keras itself loads these
files; each is checked against the shape of the Flax variable it fills.
"""

import re

import h5py
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

# Keras stores a layer's weights in this order (fer_jax.models.layers names them alike).
KERAS_ORDER = (
  "kernel",
  "depthwise_kernel",
  "pointwise_kernel",
  "scale",
  "bias",
  "mean",
  "var",
  "variance",
  "count",
)
_AMBIGUOUS = None  # a layer name that occurs more than once in the file


def _text(value):
  return value.decode("utf8") if isinstance(value, bytes) else str(value)


def _add(layers, name, weights):
  layers[name] = _AMBIGUOUS if name in layers else weights


def _read_legacy(root, layers):
  """Keras 2 / Keras 3 legacy HDF5: a group per layer, `weight_names` giving order and names."""
  for layer_name in (_text(n) for n in root.attrs["layer_names"]):
    group = root[layer_name]
    names = [_text(n) for n in group.attrs.get("weight_names", [])]
    # A nested model's group holds several layers' weights: 'vgg16/block1_conv1/kernel' (Keras 3)
    # or 'block1_conv1/kernel:0' (Keras 2). A plain layer's names share one prefix (or have none).
    owners = [n.rsplit("/", 2)[-2] if "/" in n else layer_name for n in names]
    if len(set(owners)) > 1 or any(n.count("/") > 1 for n in names):
      per_owner = {}
      for owner, name in zip(owners, names):
        per_owner.setdefault(owner, []).append((name, np.asarray(group[name])))
      for owner, weights in per_owner.items():
        _add(layers, owner, weights)
    elif names:
      _add(layers, layer_name, [(name, np.asarray(group[name])) for name in names])


def _read_keras3(group, layers):
  """Keras 3 `.weights.h5`: `layers/<attr>/vars/0..n`; nested models in `layers/<attr>/layers/`."""
  for sub in group.get("layers", {}).values():
    variables = sub.get("vars")
    if variables is not None and len(variables):
      name = _text(variables.attrs.get("name", sub.name.rsplit("/", 1)[-1]))
      _add(
        layers,
        name,
        [(f"{name}/{i}", np.asarray(variables[str(i)])) for i in range(len(variables))],
      )
    _read_keras3(sub, layers)


def read_keras_h5(path) -> dict[str, list[tuple[str, np.ndarray]]]:
  """{layer name: [(weight name, array), ...] in Keras's order} for every layer with weights."""
  layers = {}
  try:
    with h5py.File(path, "r") as f:
      if "layers" in f and "layer_names" not in f.attrs:
        _read_keras3(f, layers)
      else:
        root = f["model_weights"] if "model_weights" in f else f
        if "layer_names" not in root.attrs:
          raise ValueError(f"{path}: not a Keras weights file (no layer_names, no layers/ group)")
        _read_legacy(root, layers)
  except OSError as e:
    raise ValueError(f"{path}: cannot read as HDF5 ({e})") from e
  return layers


def _lookup(layers, name):
  """The file's layer `name`, or its one auto-numbered twin (`normalization`: `normalization_1`)."""
  if name in layers:
    return name
  twins = [k for k in layers if re.fullmatch(re.escape(name) + r"_\d+", k)]
  return twins[0] if len(twins) == 1 else None


def _flax_layers(variables, scope):
  """{layer path: [(collection, path + (var,)), ...] in Keras order} under `scope`."""
  by_layer = {}
  for collection, tree in variables.items():
    for path, _ in traverse_util.flatten_dict(dict(tree)).items():
      if path[: len(scope)] == tuple(scope):
        by_layer.setdefault(path[:-1], []).append((collection, path))
  for path, entries in by_layer.items():
    unknown = [e[1][-1] for e in entries if e[1][-1] not in KERAS_ORDER]
    if unknown:
      raise ValueError(f"{'/'.join(path)}: variables {unknown} have no Keras counterpart")
    entries.sort(key=lambda e: KERAS_ORDER.index(e[1][-1]))
  return by_layer


def port(variables, layers, *, scope=(), skip=(), allow_unused=True, source="Keras file"):
  """`variables` with every Flax layer under `scope` (except names in `skip`) filled from `layers`.

  `layers` is `read_keras_h5`'s output. A layer missing from the file, a different number of
  weights, or a different shape is a ValueError naming the layer and tensor. With
  `allow_unused=False`, file layers left unused are an error too.
  """
  flat = {c: traverse_util.flatten_dict(dict(t)) for c, t in variables.items()}
  errors, used = [], set()
  for layer_path, entries in _flax_layers(variables, scope).items():
    name = layer_path[-1]
    if name in skip:
      continue
    key = _lookup(layers, name)
    where = "/".join(layer_path)
    if key is None:
      errors.append(f"no layer {name!r} (for {where})")
      continue
    if layers[key] is _AMBIGUOUS:
      errors.append(f"layer {key!r} occurs more than once")
      continue
    weights = layers[key]
    used.add(key)
    if len(weights) != len(entries):
      errors.append(
        f"layer {key!r} has {len(weights)} weights, {where} needs {len(entries)} "
        f"({', '.join(e[1][-1] for e in entries)})"
      )
      continue
    for (weight_name, value), (collection, path) in zip(weights, entries):
      target = flat[collection][path]
      if tuple(value.shape) != tuple(target.shape):
        errors.append(
          f"{weight_name} has shape {tuple(value.shape)}, {collection}/{'/'.join(path)} "
          f"needs {tuple(target.shape)}"
        )
        continue
      flat[collection][path] = jnp.asarray(value, dtype=target.dtype)
  if not allow_unused:
    unused = sorted(k for k, v in layers.items() if v and k not in used and k not in skip)
    if unused:
      errors.append(f"layers without a Flax counterpart: {', '.join(unused)}")
  if errors:
    more = f" (and {len(errors) - 3} more)" if len(errors) > 3 else ""
    raise ValueError(f"{source}: {'; '.join(errors[:3])}{more}")
  return {c: traverse_util.unflatten_dict(t) for c, t in flat.items()}
