"""Soft augmentation on device: pure functions of (key, float images), jit-friendly.

Each image gets its own random flip, rotation, zoom, shift and contrast, as Keras's RandomFlip,
RandomRotation, RandomZoom, RandomTranslation and RandomContrast layers do. Rotation, zoom and
shift are one affine resampling (bilinear, `fill_mode` at the borders: Keras's default 'reflect'
is SciPy's 'reflect').
"""

import jax
import jax.numpy as jnp
from jax.scipy import ndimage

FILL_MODES = ("reflect", "nearest", "constant", "wrap")


def affine_resample(image, angle, scale, fill_mode="reflect", shift=(0.0, 0.0)):
  """Rotates by `angle` (radians), samples at `scale` x the distance from the centre and moves
  the content by `shift` = (down, right) pixels.

  scale > 1 shows more of the image (zoom out), < 1 less (zoom in); angle 0, scale 1 and shift
  0 are the identity, exactly. `image` is [H, W, C].
  """
  h, w, c = image.shape
  cy, cx = (h - 1) / 2.0, (w - 1) / 2.0
  yy, xx = jnp.meshgrid(
    jnp.arange(h, dtype=jnp.float32) - cy, jnp.arange(w, dtype=jnp.float32) - cx, indexing="ij"
  )
  cos, sin = jnp.cos(angle), jnp.sin(angle)
  src_y = scale * (cos * yy - sin * xx) + cy - shift[0]
  src_x = scale * (sin * yy + cos * xx) + cx - shift[1]

  def sample(ch):
    return ndimage.map_coordinates(ch, [src_y, src_x], order=1, mode=fill_mode, cval=0.0)

  return jax.vmap(sample, in_axes=2, out_axes=2)(image)


def adjust_contrast(image, factor):
  """(x - mean) * factor + mean per channel, clipped to [0, 1] like Keras's RandomContrast."""
  mean = jnp.mean(image, axis=(0, 1), keepdims=True)
  return jnp.clip((image - mean) * factor + mean, 0.0, 1.0)


def augment_image(key, image, train_cfg):
  k_flip, k_rot, k_zoom, k_con = jax.random.split(key, 4)
  if train_cfg.flip:
    image = jnp.where(jax.random.bernoulli(k_flip), image[:, ::-1, :], image)
  if train_cfg.rotation or train_cfg.zoom or train_cfg.shift:
    max_angle = 2 * jnp.pi * train_cfg.rotation
    angle = jax.random.uniform(k_rot, minval=-max_angle, maxval=max_angle)
    scale = jax.random.uniform(k_zoom, minval=1 - train_cfg.zoom, maxval=1 + train_cfg.zoom)
    shift = (0.0, 0.0)
    if train_cfg.shift:
      # A key of its own (not a fifth split) keeps the other draws of earlier configs unchanged.
      h, w = image.shape[:2]
      frac = jax.random.uniform(
        jax.random.fold_in(key, 4), (2,), minval=-train_cfg.shift, maxval=train_cfg.shift
      )
      shift = (frac[0] * h, frac[1] * w)
    image = affine_resample(image, angle, scale, train_cfg.fill_mode, shift)
  if train_cfg.contrast:
    factor = jax.random.uniform(k_con, minval=1 - train_cfg.contrast, maxval=1 + train_cfg.contrast)
    image = adjust_contrast(image, factor)
  return image


def augment_batch(key, images, train_cfg) -> jax.Array:
  """Random soft augmentation of float images [B, H, W, C] in [0, 1], independent per image."""
  if train_cfg.fill_mode not in FILL_MODES:
    raise ValueError(f"config.train.fill_mode: {train_cfg.fill_mode!r} is not one of {FILL_MODES}")
  keys = jax.random.split(key, images.shape[0])
  return jax.vmap(lambda k, x: augment_image(k, x, train_cfg))(keys, images)
