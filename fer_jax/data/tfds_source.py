"""`config.data.source='tfds:<name>'`: a prepared TensorFlow Datasets dataset, as uint8 arrays.

`config.data.root` is the TFDS data_dir (empty = TFDS's default, ~/tensorflow_datasets; a
gs:// path works on TPU VMs). `<name>` may carry a config and version (`my_faces/48px:1.0.0`).
Nothing is downloaded: a dataset that is not prepared is an error. The dataset needs an image
feature and a ClassLabel feature (`config.data.tfds_image_key`, `tfds_label_key`, default
'image' and 'label'); label names map to `config.data.classes` as folder names do (aliases,
case), and examples of other classes are dropped. TFDS split names are normalised like folder
names; `config.data.tfds_splits` ('train=train[:90%],val=train[90%:],test=test') overrides that.

TensorFlow is imported here only, and only when this source is used: reading a prepared
dataset needs it (the `tfds` extra: `pip install 'fer_jax[tfds]'`).
"""

import collections

import numpy as np
from PIL import Image

from fer_jax import data
from fer_jax.data import cache
from fer_jax.data.file_tree import match_class
from fer_jax.data.folders import to_array
from fer_jax.data.splits import normalize_split

INSTALL_HINT = (
  "reading TFDS datasets needs tensorflow-datasets and TensorFlow: "
  "pip install 'fer_jax[tfds]' (or `make test`, which installs them)"
)


def _import_tfds():
  try:
    import tensorflow  # noqa: F401  (tfds reads prepared datasets through tf.data)
    import tensorflow_datasets as tfds
  except ImportError as e:
    raise ImportError(f"config.data.source='tfds:...': {INSTALL_HINT} ({e})") from None
  return tfds


def _split_map(builder, data_cfg):
  """{our split: [tfds split spec, ...]} and the TFDS splits left out, with reasons."""
  explicit = data_cfg.tfds_splits
  out, skipped = collections.defaultdict(list), []
  if explicit:
    for item in explicit.split(","):
      ours, _, spec = item.partition("=")
      if ours.strip() not in data.SPLITS or not spec.strip():
        raise ValueError(f"config.data.tfds_splits: {item!r} is not <train|val|test>=<tfds split>")
      out[ours.strip()].append(spec.strip())
    return out, skipped
  for name in builder.info.splits:
    split = normalize_split(name)
    if split is None:
      skipped.append((f"split {name}", "unknown split name (set config.data.tfds_splits)"))
    else:
      out[split].append(name)
  return out, skipped


def _build(builder, tfds, data_cfg, split_map, skipped):
  image_key = data_cfg.tfds_image_key
  label_key = data_cfg.tfds_label_key
  features = builder.info.features
  for key in (image_key, label_key):
    if key not in features:
      raise ValueError(
        f"config.data.tfds_{'image' if key == image_key else 'label'}_key: "
        f"{builder.name} has no feature {key!r} (features: {', '.join(features)})"
      )
  names = getattr(features[label_key], "names", None)
  if not names:
    raise ValueError(
      f"config.data.tfds_label_key: feature {label_key!r} of {builder.name} "
      "is not a ClassLabel with names"
    )
  classes = tuple(data_cfg.classes)
  label_of = [match_class(n, classes) for n in names]
  size, channels = data_cfg.image_size, data_cfg.channels
  dropped = collections.Counter()
  parts = {}
  for split, specs in split_map.items():
    images, labels, paths = [], [], []
    for spec in specs:
      ds = builder.as_dataset(split=spec, shuffle_files=False)
      for i, example in enumerate(tfds.as_numpy(ds)):
        label = label_of[int(example[label_key])]
        if label is None:
          dropped[f"class {names[int(example[label_key])]} not in config"] += 1
          continue
        pixels = np.asarray(example[image_key], np.uint8)
        if pixels.shape != (size, size, channels):
          pixels = to_array(
            Image.fromarray(pixels.squeeze(-1) if pixels.shape[-1] == 1 else pixels),
            size,
            channels,
            data_cfg.resize_filter,
          )
        images.append(pixels)
        labels.append(label)
        paths.append(f"tfds:{builder.name}/{spec}/{i}")
    empty = np.zeros((0, size, size, channels), np.uint8)
    parts[split] = (np.stack(images) if images else empty, np.array(labels, np.int32), paths)
  report = {
    "source": f"tfds:{builder.name}",
    "root": str(builder.data_dir),
    "skipped": skipped,
    "dropped": dict(dropped),
  }
  return data.assemble(f"tfds:{builder.name}", classes, parts, report)


def load(data_cfg, name):
  tfds = _import_tfds()
  data_dir = data_cfg.root or None
  try:
    builder = tfds.builder(name, data_dir=data_dir)
  except Exception as e:  # tfds raises DatasetNotFoundError, registry errors, ...
    raise ValueError(
      f"config.data.source: TFDS dataset {name!r} not found in "
      f"{data_dir or 'the default data_dir'} ({type(e).__name__}: {e})"
    ) from None
  if not builder.is_prepared():
    raise ValueError(
      f"config.data.source: TFDS dataset {name!r} is not prepared in "
      f"{builder.data_dir}; prepare it first (`tfds build {name} "
      f"--data_dir={data_dir or '...'}`)"
    )
  split_map, skipped = _split_map(builder, data_cfg)
  params = data.load_params(
    data_cfg,
    tfds_splits=dict(split_map),
    image_key=data_cfg.tfds_image_key,
    label_key=data_cfg.tfds_label_key,
  )
  key = cache.cache_key("tfds", str(builder.data_dir), params, name=builder.name)
  # The prepared files are not always on a local disk (gs://), so the fingerprint is what
  # TFDS records about them: version and, per split, examples, bytes and shard lengths.
  info = builder.info
  signature = [
    (str(info.version), s, v.num_examples, v.num_bytes, list(v.shard_lengths))
    for s, v in sorted(info.splits.items())
  ]
  fingerprint = cache.digest(repr(signature), 16)
  return cache.load_or_build(
    data_cfg.cache_dir,
    key,
    fingerprint,
    lambda: _build(builder, tfds, data_cfg, split_map, skipped),
  )
