"""Real face photos that packages ship, for the detector, predict, serve and browser tests.

scikit-image's astronaut and LFW subset come with the test extra. The insightface wheel holds a
6-person group photo (t1.jpg) and a portrait; it is fetched once with `pip download --no-deps`
(the Makefile's test set-up does it) into .cache/wheels and read as a zip: insightface is never
installed. Where PyPI cannot be reached the tests that need that photo skip, saying so.
"""

import glob
import io
import os
import subprocess
import sys
import zipfile

import numpy as np
import pytest
from PIL import Image
from skimage import data

from fer_jax.inference import detectors

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WHEELS = os.path.join(ROOT, ".cache", "wheels")
INSIGHTFACE = "insightface==2.1"
# t1.jpg's six faces (x, y, w, h), marked by eye on the photo; detectors must find each of them.
T1_FACES = [
  (59, 268, 108, 127),
  (269, 149, 96, 115),
  (463, 269, 112, 147),
  (744, 343, 101, 131),
  (905, 64, 99, 136),
  (1131, 273, 92, 123),
]
NO_FACE = (
  "coffee",
  "chelsea",
  "rocket",
  "brick",
  "grass",
  "page",
)  # scikit-image photos without a face


def insightface_wheel():
  found = glob.glob(os.path.join(WHEELS, "insightface-*.whl"))
  if not found:
    proc = subprocess.run(
      [sys.executable, "-m", "pip", "download", "-q", "--no-deps", INSIGHTFACE, "-d", WHEELS],
      capture_output=True,
      text=True,
    )
    found = glob.glob(os.path.join(WHEELS, "insightface-*.whl"))
    if not found:
      pytest.skip(
        f"cannot get the insightface wheel's photos (pip download {INSIGHTFACE} failed: "
        f"{proc.stderr.strip()[-200:]}); run `make test` with PyPI reachable"
      )
  return found[0]


def insightface_image(name):
  """RGB uint8 of insightface/data/images/<name> read out of the wheel."""
  with zipfile.ZipFile(insightface_wheel()) as z:
    return detectors.load_image(io.BytesIO(z.read(f"insightface/data/images/{name}")), name)


def group_photo():
  return insightface_image("t1.jpg")


def astronaut():
  return data.astronaut()


def astronaut_face():
  """The astronaut's face as (x, y, w, h), marked by eye."""
  return (180, 65, 90, 105)


def lfw_face(i, side=100, pad=30):
  """LFW subset face i (of the first 100), upscaled from 25x25 and padded so that a detector's
  minimum size and window fit around it."""
  gray = np.rint(data.lfw_subset()[i] * 255).astype(np.uint8)
  big = np.asarray(Image.fromarray(gray).resize((side, side), Image.Resampling.BILINEAR))
  return np.pad(big, pad, mode="edge")


def jpeg_bytes(rgb, quality=90):
  buf = io.BytesIO()
  Image.fromarray(rgb).save(buf, "JPEG", quality=quality)
  return buf.getvalue()


def held_expression_clip(rgb, frames, seed=0, shift=3, noise=6.0, size=(640, 480)):
  """`frames` RGB frames of one photo on a `size` canvas with the small motions and sensor noise of
  someone holding an expression in front of a webcam: up to `shift` px of jitter, +-3 % zoom,
  +-6 % brightness and Gaussian noise."""
  rng = np.random.default_rng(seed)
  w, h = size
  base = Image.fromarray(rgb)
  scale = min(w / base.width, h / base.height)
  out = []
  for _ in range(frames):
    z = scale * (1 + rng.uniform(-0.03, 0.03))
    im = base.resize((round(base.width * z), round(base.height * z)), Image.Resampling.BILINEAR)
    canvas = Image.new("RGB", size, (90, 90, 90))
    dx, dy = rng.integers(-shift, shift + 1, 2)
    canvas.paste(im, ((w - im.width) // 2 + int(dx), (h - im.height) // 2 + int(dy)))
    frame = np.asarray(canvas, np.float32) * (1 + rng.uniform(-0.06, 0.06)) + rng.normal(
      0, noise, (h, w, 3)
    )
    out.append(np.clip(np.rint(frame), 0, 255).astype(np.uint8))
  return out
