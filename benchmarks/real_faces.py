"""Real face photos that installed packages ship, at 48x48 gray, and a labelled near-duplicate set.

Faces: the 100 faces of scikit-image's LFW subset (`skimage.data.lfw_subset()`: its first 100
images are faces, the other 100 are not; 25x25, upsampled), the astronaut's face
(`skimage.data.astronaut()`), and the faces in the `insightface` wheel's group photo `t1.jpg`
plus its `Tom_Hanks_54745.png`. The wheel is fetched once with `pip download --no-deps` into a
cache folder and read as a zip (never installed); without network only the scikit-image faces
are used, and `faces()` says so. Face boxes are fixed (found once with OpenCV's Haar cascade and
checked by eye), so the set is the same everywhere.

`duplicate_benchmark` turns the faces into a labelled set: each face plus copies of it made the
way near-duplicates arise in scraped FER sets (re-compression, shifts, crops, rescales, contrast
and gamma, a watermark, the mirror). Every pair of images from one face is a duplicate; every
pair from two faces is not (same pose and lighting, different person: the hard negatives).
Used by tests/test_dedup_quality.py and benchmarks/dedup_quality.py.
"""

import io
import os
import subprocess
import sys
import tempfile
import zipfile

import numpy as np
from PIL import Image, ImageDraw

SIZE = 48
INSIGHTFACE = "insightface==2.1"
# (file in the wheel, [(left, top, side)]) of the square face boxes, in the file's pixels.
INSIGHTFACE_FACES = {
  "insightface/data/images/t1.jpg": [
    (1114, 277, 118),
    (448, 271, 139),
    (729, 356, 114),
    (860, 80, 150),
    (60, 250, 130),
    (290, 120, 130),
  ],
  "insightface/data/images/Tom_Hanks_54745.png": [(14, 16, 85)],
}
ASTRONAUT_FACE = (177, 66, 95)


def _gray_square(image, box=None):
  """A PIL image (or a crop of it) -> uint8 [SIZE, SIZE] gray."""
  if box is not None:
    left, top, side = box
    image = image.crop((left, top, left + side, top + side))
  return np.asarray(image.convert("L").resize((SIZE, SIZE), Image.Resampling.BICUBIC))


def fetch_insightface(cache_dir):
  """(path of the insightface wheel in `cache_dir`, downloaded once, ""), or (None, why it is
  missing)."""
  os.makedirs(cache_dir, exist_ok=True)
  version = INSIGHTFACE.split("==")[1]
  wheel = os.path.join(cache_dir, f"insightface-{version}-py3-none-any.whl")
  if not os.path.exists(wheel):
    proc = subprocess.run(
      [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--only-binary=:all:",
        "-q",
        INSIGHTFACE,
        "-d",
        cache_dir,
      ],
      capture_output=True,
      text=True,
      timeout=300,
    )
    if proc.returncode != 0 or not os.path.exists(wheel):
      return (
        None,
        f"`pip download {INSIGHTFACE}` failed: {(proc.stderr or proc.stdout).strip()[-300:]}",
      )
  return wheel, ""


def faces(cache_dir=None):
  """(uint8 [N, 48, 48] faces, their names, '' or why the insightface faces are missing)."""
  from skimage import data as skdata  # the test extra

  lfw = skdata.lfw_subset()[:100]
  images = [_gray_square(Image.fromarray((255 * f).round().astype(np.uint8))) for f in lfw]
  names = [f"lfw_{k:03d}" for k in range(len(lfw))]
  images.append(_gray_square(Image.fromarray(skdata.astronaut()), ASTRONAUT_FACE))
  names.append("astronaut")
  cache_dir = cache_dir or os.path.join(tempfile.gettempdir(), "fer_jax_wheels")
  wheel, missing = fetch_insightface(cache_dir)
  if wheel:
    with zipfile.ZipFile(wheel) as archive:
      for member, boxes in INSIGHTFACE_FACES.items():
        photo = Image.open(io.BytesIO(archive.read(member)))
        for k, box in enumerate(boxes):
          images.append(_gray_square(photo, box))
          names.append(f"insightface_{os.path.basename(member).split('.')[0]}_{k}")
  return np.stack(images), names, missing


# ---------------------------------------------------------------------------- copies


def _pil(a):
  return Image.fromarray(a)


def _jpeg(a, quality):
  buf = io.BytesIO()
  _pil(a).save(buf, format="JPEG", quality=quality)
  return np.asarray(Image.open(buf).convert("L"))


def _shift(a, dy, dx):
  """Moved by (dy, dx) px; the uncovered border repeats the edge (a re-cropped photo)."""
  h, w = a.shape
  padded = np.pad(a, ((abs(dy),) * 2, (abs(dx),) * 2), mode="edge")
  return padded[abs(dy) - dy : abs(dy) - dy + h, abs(dx) - dx : abs(dx) - dx + w]


def _crop(a, top, left, bottom, right):
  """A crop, resized back to 48x48 (a tighter face box)."""
  h, w = a.shape
  return np.asarray(
    _pil(a[top : h - bottom, left : w - right]).resize((SIZE, SIZE), Image.Resampling.BILINEAR)
  )


def _zoom_out(a, side):
  """Shrunk to `side` px and padded back to 48 with its edges (a looser face box)."""
  small = np.asarray(_pil(a).resize((side, side), Image.Resampling.BILINEAR))
  before = (SIZE - side) // 2
  return np.pad(small, ((before, SIZE - side - before),) * 2, mode="edge")


def _levels(a, contrast, brightness):
  f = a.astype(np.float32)
  return np.clip((f - f.mean()) * contrast + f.mean() + brightness, 0, 255).astype(np.uint8)


def _gamma(a, gamma):
  return np.clip(255 * (a / 255.0) ** gamma, 0, 255).astype(np.uint8)


def _watermark(a, text="stock"):
  im = _pil(a)
  ImageDraw.Draw(im).text((SIZE - 32, SIZE - 12), text, fill=255)
  return np.asarray(im)


def _direction(rng, step):
  dy, dx = [(1, 0), (0, 1), (-1, 0), (0, -1), (1, 1), (-1, 1), (1, -1), (-1, -1)][rng.integers(8)]
  return dy * step, dx * step


# name -> function (uint8 [48, 48], rng) -> uint8 [48, 48]: how near-duplicates arise.
COPIES = {
  "jpeg q20": lambda a, rng: _jpeg(a, 20),
  "jpeg q50": lambda a, rng: _jpeg(a, 50),
  "jpeg q85": lambda a, rng: _jpeg(a, 85),
  "shift 1 px": lambda a, rng: _shift(a, *_direction(rng, 1)),
  "shift 2 px": lambda a, rng: _shift(a, *_direction(rng, 2)),
  "shift 3 px": lambda a, rng: _shift(a, *_direction(rng, 3)),
  "crop 2 px + resize": lambda a, rng: _crop(a, 2, 2, 2, 2),
  "crop 3 px one corner + resize": lambda a, rng: _crop(a, *rng.permutation([3, 3, 0, 0])),
  "zoom out to 44 px": lambda a, rng: _zoom_out(a, 44),
  "contrast 0.7, +20": lambda a, rng: _levels(a, 0.7, 20),
  "contrast 1.3, -15": lambda a, rng: _levels(a, 1.3, -15),
  "gamma 0.7": lambda a, rng: _gamma(a, 0.7),
  "gamma 1.5": lambda a, rng: _gamma(a, 1.5),
  "watermark text": lambda a, rng: _watermark(a),
  "mirror": lambda a, rng: a[:, ::-1],
  "mirror + jpeg q50": lambda a, rng: _jpeg(a[:, ::-1], 50),
}


def duplicate_benchmark(images, seed=0, copies=None):
  """Faces -> (uint8 [M, 48, 48] the faces then their copies, source face [M], how made [M]).

  Images with the same source are duplicates of each other; all other pairs are distinct.
  """
  rng = np.random.default_rng(seed)
  copies = copies or list(COPIES)
  out, source, made = list(images), list(range(len(images))), ["original"] * len(images)
  for name in copies:
    for k, a in enumerate(images):
      out.append(np.ascontiguousarray(COPIES[name](a, rng)).astype(np.uint8))
      source.append(k)
      made.append(name)
  return np.stack(out), np.array(source), np.array(made)


def _pairs(counts):
  """Pairs within groups of these sizes."""
  return (counts * (counts - 1) // 2).sum()


def pair_scores(found_i, found_j, groups, source):
  """Pair-counting precision and recall of a grouping against the true sources.

  `found_i, found_j`: the linked pairs (i < j); `groups`: group id per image. Returns
  {"links": (precision, recall) of the pairs, "groups": (precision, recall) of "same group"}.
  """
  true_pairs = sum(n * (n - 1) // 2 for n in np.bincount(source))
  link_true = np.sum(source[found_i] == source[found_j])
  joint = np.zeros((groups.max() + 1, source.max() + 1), np.int64)
  np.add.at(joint, (groups, source), 1)
  together, both = _pairs(np.bincount(groups)), _pairs(joint)
  return {
    "links": (link_true / max(len(found_i), 1), link_true / max(true_pairs, 1)),
    "groups": (both / max(together, 1), both / max(true_pairs, 1)),
  }
