"""OpenCV's Haar cascade (Viola-Jones); `fer` uses the same detector (with the default cascade;
alt2, used here, found more of the test photos' faces with fewer false boxes).

Needs `opencv-python-headless>=4.8,<5`: its wheel ships the cascade XML files
(cv2.data.haarcascades); OpenCV 5 drops both CascadeClassifier and the files. Scores are the
cascade's final-stage weights (about 0 to 10; a higher value is a surer face).
"""

import os
import threading

import cv2
import numpy as np

from fer_jax.inference.detectors import Face, scaled


class HaarDetector:
  """`cascade` is a file name in cv2.data.haarcascades or a path; images are detected at most
  `max_side` pixels on their longer side (larger ones are downscaled: faster, same faces)."""

  def __init__(
    self,
    cascade="haarcascade_frontalface_alt2.xml",
    scale_factor=1.1,
    min_neighbors=5,
    min_size=30,
    max_side=640,
  ):
    path = cascade if os.path.exists(cascade) else os.path.join(cv2.data.haarcascades, cascade)
    self.classifier = cv2.CascadeClassifier(path)
    if self.classifier.empty():
      raise ValueError(f"haar cascade: cannot load {path!r}")
    self.scale_factor, self.min_neighbors, self.min_size, self.max_side = (
      scale_factor,
      min_neighbors,
      min_size,
      max_side,
    )
    self._lock = threading.Lock()  # one CascadeClassifier is not safe to share between threads

  def __call__(self, rgb):
    gray = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    factor = min(1.0, self.max_side / max(gray.shape))
    if factor < 1.0:
      gray = cv2.resize(gray, None, fx=factor, fy=factor, interpolation=cv2.INTER_AREA)
    min_size = max(1, int(round(self.min_size * factor)))
    with self._lock:
      boxes, _, weights = self.classifier.detectMultiScale3(
        gray,
        scaleFactor=self.scale_factor,
        minNeighbors=self.min_neighbors,
        minSize=(min_size, min_size),
        outputRejectLevels=True,
      )
    found = [
      Face(int(x), int(y), int(w), int(h), float(s))
      for (x, y, w, h), s in zip(np.reshape(boxes, (-1, 4)), np.ravel(weights))
    ]
    return scaled(found, factor)
