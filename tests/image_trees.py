"""Generated image trees for the data-tool tests: face-like images, planted copies, digests."""

import csv
import hashlib
import os

import numpy as np
from PIL import Image

from data_tools import hashing
from fer_jax.data import FER4 as CLASSES

# ---------------------------------------------------------------------------- generated data


def upsample(noise, size):
  return np.asarray(
    Image.fromarray(noise.astype(np.float32), "F").resize((size, size), Image.Resampling.BICUBIC)
  )


def face_like(rng, size=48):
  """A bright ellipse at a random place on a textured background.

  Distinct images are >= 10 bits apart.
  """
  y, x = np.mgrid[0:size, 0:size] * (48 / size)
  cy, cx = rng.uniform(18, 30, 2)
  ry, rx = rng.uniform(10, 18, 2)
  face = ((y - cy) / ry) ** 2 + ((x - cx) / rx) ** 2 < 1
  image = (
    80
    + 60 * face
    + upsample(rng.normal(0, 25, (8, 8)), size)
    + upsample(rng.normal(0, 10, (16, 16)), size)
  )
  return np.clip(image, 0, 255).astype(np.uint8)


def shifted(a, dy=1, dx=1):
  return np.asarray(hashing._translate(a, dy, dx))


# transform name -> (function of a uint8 [48, 48] array, file extension, save options)
TRANSFORMS = {
  "resized": (
    lambda a: np.asarray(Image.fromarray(a).resize((96, 96), Image.Resampling.BICUBIC)),
    ".png",
    {},
  ),
  "recompressed": (lambda a: a, ".jpg", {"quality": 40}),
  "shifted": (shifted, ".png", {}),
  "brighter": (lambda a: np.clip(a.astype(int) + 25, 0, 255).astype(np.uint8), ".png", {}),
  "flipped": (lambda a: a[:, ::-1], ".png", {}),
}


def save(path, array, **options):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  Image.fromarray(array).save(path, **options)
  return path


def write_originals(root, counts, seed=0, classes=CLASSES):
  """counts {split: {class: n}} distinct images -> {(split, class): [paths]}."""
  rng = np.random.default_rng(seed)
  paths = {}
  for split, per_class in counts.items():
    for c in classes:
      paths[split, c] = [
        save(os.path.join(root, split, c, f"{split}_{c}_{k:03d}.png"), face_like(rng))
        for k in range(per_class.get(c, 0))
      ]
  return paths


def plant_copy(root, original, split, class_name, transform, tag):
  fn, ext, options = TRANSFORMS[transform]
  array = np.asarray(Image.open(original))
  return save(
    os.path.join(root, split, class_name, f"copy_{tag}_{transform}{ext}"), fn(array), **options
  )


def tree_digest(root):
  """sha256 over every file's relative path, bytes and mtime: changes if anything in it does."""
  h = hashlib.sha256()
  for folder, _, files in sorted(os.walk(root)):
    for f in sorted(files):
      p = os.path.join(folder, f)
      h.update(os.path.relpath(p, root).encode())
      h.update(str(os.stat(p).st_mtime_ns).encode())
      with open(p, "rb") as fh:
        h.update(fh.read())
  return h.hexdigest()


def read_manifest(dst):
  with open(os.path.join(dst, "manifest.csv")) as f:
    return {row["source_path"]: row for row in csv.DictReader(f)}


def all_files(root):
  return sorted(os.path.join(folder, f) for folder, _, files in os.walk(root) for f in files)


def link_class_folders(root, split="train", a="happy", b="sad"):
  """The loop `ln -s ../b root/split/a/to_b; ln -s ../a root/split/b/to_a` -> the two links."""
  links = (os.path.join(root, split, a, f"to_{b}"), os.path.join(root, split, b, f"to_{a}"))
  os.symlink(os.path.join("..", b), links[0])
  os.symlink(os.path.join("..", a), links[1])
  return links
