"""Datasets as uint8 arrays: `load(config.data) -> Dataset`, whatever the source.

Sources are chosen by `config.data.source` (see configs/common.py and docs/data.md). Every
source returns the same thing: per split ('train', 'val', 'test') uint8 images [N, H, W, C]
and int32 labels indexing `config.data.classes`. Images stay uint8 on the host; the float
conversion, augmentation and any resizing happen on device.

Modules: `file_tree` (finding an image folder's files), `folders` (decoding them), `fer2013`
(FER2013 and FER+ CSVs), `tfds_source` (prepared TFDS datasets), `builtin` (synthetic faces),
`splits` (split names, stratified hold-out), `cache` (.npz caches).
"""

import collections
import dataclasses
import os

import numpy as np

from fer_jax.data import splits

SPLITS = ("train", "val", "test")
FER4 = ("happy", "neutral", "sad", "surprise")  # the study's classes, in label order


@dataclasses.dataclass
class Split:
  images: np.ndarray  # uint8 [N, H, W, C]
  labels: np.ndarray  # int32 [N]
  paths: list = None  # source file (or CSV row) of each image, when the source has them

  def __len__(self):
    return len(self.labels)


@dataclasses.dataclass
class Dataset:
  name: str  # short description of the source (used in reports)
  classes: tuple  # class names, in label order
  splits: dict  # split name -> Split
  report: dict = dataclasses.field(
    default_factory=dict
  )  # load report: skipped files, moved images, cache

  def sizes(self):
    return {k: len(v) for k, v in self.splits.items()}

  def class_counts(self, split="train"):
    return np.bincount(self.splits[split].labels, minlength=len(self.classes))

  def count_table(self):
    """{split: {class: images}}."""
    return {s: dict(zip(self.classes, self.class_counts(s).tolist())) for s in self.splits}

  def summary(self):
    """A few lines on what was loaded: sizes, cache, skipped files, the val split made."""
    r = self.report
    sizes = ", ".join(f"{k} {v}" for k, v in self.sizes().items())
    lines = [f"data: {self.name}: {sizes}"]
    if "cache" in r:
      lines[0] += (
        f"; cache {'hit' if r['cache']['hit'] else 'built'} ({r.get('load_seconds', 0):.1f} s)"
      )
    if r.get("val_from_train"):
      v = r["val_from_train"]
      lines.append(
        f"  no val split: {v['moved']} train images ({v['fraction']:.0%}) moved to val, "
        f"stratified by class, seed {v['seed']}"
      )
    for what in ("skipped", "bad_files"):
      items = r.get(what) or []
      if items:
        reasons = collections.Counter(reason.split(" (")[0] for _, reason in items)
        counts = "; ".join(f"{n} {reason}" for reason, n in reasons.most_common())
        lines.append(
          f"  {what.replace('_', ' ')}: {len(items)} ({counts}); "
          f"first: {items[0][0]}; all in Dataset.report[{what!r}]"
        )
    if r.get("dropped"):
      lines.append("  dropped: " + ", ".join(f"{n} {why}" for why, n in r["dropped"].items()))
    return "\n".join(lines)


def load_params(data_cfg, **source_options):
  """Everything that changes the arrays a source reads: part of the cache key."""
  return dict(
    image_size=data_cfg.image_size,
    channels=data_cfg.channels,
    resize_filter=data_cfg.resize_filter,
    classes=list(data_cfg.classes),
    **source_options,
  )


def resolve_source(data_cfg):
  """The concrete source for `config.data.source` ('auto' looks at `config.data.root`)."""
  source, root = data_cfg.source, data_cfg.root
  if source != "auto":
    return source
  if not root:
    return "builtin"
  if os.path.isdir(root):
    return "folder"
  if root.lower().endswith(".csv") and os.path.isfile(root):
    return "ferplus" if os.path.basename(root).lower() == "fer2013new.csv" else "fer2013"
  if not os.path.exists(root):
    raise FileNotFoundError(f"config.data.root: {root!r} does not exist")
  raise ValueError(
    f"config.data.root: {root!r} is neither a folder nor a .csv file; "
    "set config.data.source explicitly"
  )


def assemble(name, classes, parts, report):
  """Per-split arrays as the source holds them -> Dataset (splits without images left out).

  `parts` maps split -> (images, labels, paths). `report` must name the source's 'root'.
  """
  out = {
    s: Split(
      np.ascontiguousarray(parts[s][0], np.uint8), np.asarray(parts[s][1], np.int32), parts[s][2]
    )
    for s in SPLITS
    if s in parts and len(parts[s][1])
  }
  if not out:
    raise ValueError(
      f"config.data.root: no images of the classes {', '.join(classes)} in {report['root']!r}"
    )
  return Dataset(name, tuple(classes), out, report)


def finalize(dataset, data_cfg):
  """The dataset as training needs it: val made from train when there is none, every split
  present and every class in train. Errors name the root."""
  root = dataset.report.get("root", dataset.name)
  parts = dict(dataset.splits)
  if "train" not in parts:
    raise ValueError(f"config.data.root: no train images found in {root!r}")
  if "val" not in parts:
    train = parts["train"]
    keep, held = splits.stratified_holdout(train.labels, data_cfg.val_fraction, data_cfg.split_seed)

    def pick(idx):
      return Split(
        train.images[idx], train.labels[idx], [train.paths[i] for i in idx] if train.paths else None
      )

    parts["train"], parts["val"] = pick(keep), pick(held)
    dataset.report["val_from_train"] = dict(
      fraction=data_cfg.val_fraction, seed=data_cfg.split_seed, moved=len(held)
    )
  if "test" not in parts:
    raise ValueError(
      f"config.data.root: no test images found in {root!r}; add a test split "
      "(or re-split the data, e.g. with python -m data_tools.stratify)"
    )
  train_counts = np.bincount(parts["train"].labels, minlength=len(dataset.classes))
  if not train_counts.all():
    missing = [c for c, n in zip(dataset.classes, train_counts) if n == 0]
    raise ValueError(
      f"config.data.root: no train images of class {', '.join(missing)} in "
      f"{root!r}; check the class folder names and config.data.classes"
    )
  test_counts = np.bincount(parts["test"].labels, minlength=len(dataset.classes))
  if not test_counts.all():
    missing = [c for c, n in zip(dataset.classes, test_counts) if n == 0]
    print(
      f"warning: no test images of class {', '.join(missing)} in {root!r}: the test report "
      "marks its recall and F1 'no test images'",
      flush=True,
    )
  return Dataset(dataset.name, dataset.classes, {s: parts[s] for s in SPLITS}, dataset.report)


def load(data_cfg, verbose=True, as_found=False):
  """The dataset `config.data` describes, ready for training (see `finalize`).

  `as_found=True` returns the splits the source holds, unchanged (no val made, no checks):
  what the audit reports on. Prints `Dataset.summary()` unless verbose=False.
  """
  from fer_jax.data import builtin

  source = resolve_source(data_cfg)
  if source == "builtin":
    return builtin.load(data_cfg)
  if source == "folder":
    from fer_jax.data import folders

    dataset = folders.load(data_cfg)
  elif source in ("fer2013", "ferplus"):
    from fer_jax.data import fer2013

    dataset = fer2013.load(data_cfg, ferplus=source == "ferplus")
  elif source.startswith("tfds:") and len(source) > len("tfds:"):
    from fer_jax.data import tfds_source

    dataset = tfds_source.load(data_cfg, source[len("tfds:") :])
  else:
    raise ValueError(
      f"config.data.source: unknown source {source!r}; use auto, builtin, folder, "
      "fer2013, ferplus or tfds:<name>"
    )
  if not as_found:
    dataset = finalize(dataset, data_cfg)
  if verbose:
    print(dataset.summary(), flush=True)
  return dataset
