"""Soft augmentation on device: pure functions of (key, float images), jit-friendly.

Each image gets its own random flip, rotation, zoom, shift and contrast, as Keras's RandomFlip,
RandomRotation, RandomZoom, RandomTranslation and RandomContrast layers do. Rotation, zoom and
shift are one affine resampling (bilinear, `fill_mode` at the borders: Keras's default 'reflect'
is SciPy's 'reflect').

`mix_batch` is the other kind: mixup and CutMix blend faces across a batch, so their targets
(and the loss) change with the pixels; train/steps.py mixes the loss to match.
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


def _folded_beta(key, alpha):
  """lam ~ Beta(alpha, alpha) folded to [0.5, 1]: every face stays the larger part of its mix, so
  the train accuracy (which counts a face's own label) still means something. The batch pairs
  face i with face B-1-i, so folding only swaps which of a pair is 'own': the mixes are as
  likely as unfolded."""
  lam = jax.random.beta(key, alpha, alpha)
  return jnp.maximum(lam, 1.0 - lam)


def _mixup(key, images, partners, alpha):
  lam = _folded_beta(key, alpha)
  return lam * images + (1.0 - lam) * partners, lam


def _cutmix(key, images, partners, alpha):
  """A box of area about 1 - lam (centre uniform, clipped at the edges) taken from the partner;
  lam is then the share of the face's own pixels (timm's 'correct_lam')."""
  k_lam, k_centre = jax.random.split(key)
  h, w = images.shape[1:3]
  size = jnp.array([h, w], jnp.float32)
  half = jnp.sqrt(1.0 - _folded_beta(k_lam, alpha)) * size / 2
  centre = jax.random.uniform(k_centre, (2,)) * size
  lo = jnp.clip(jnp.round(centre - half), 0, size)
  hi = jnp.clip(jnp.round(centre + half), 0, size)
  rows = (jnp.arange(h) >= lo[0]) & (jnp.arange(h) < hi[0])
  cols = (jnp.arange(w) >= lo[1]) & (jnp.arange(w) < hi[1])
  box = rows[:, None] & cols[None, :]
  lam = 1.0 - jnp.prod(hi - lo) / (h * w)
  return jnp.where(box[None, :, :, None], partners, images), lam


def mix_batch(key, images, mixup_alpha, cutmix_alpha):
  """Mixup (Zhang et al., 2018) or CutMix (Yun et al., 2019) of float images [B, H, W, C] with
  the batch in reverse order (timm's 'batch' mode: one lam for the batch).

  Returns (mixed images, lam): face i is lam of itself and 1 - lam of face B-1-i, and its target
  is lam * own + (1 - lam) * partner's label. An alpha of 0 turns its method off; with both > 0
  each batch uses one of the two, p = 0.5 (timm's switch_prob).
  """
  if not (mixup_alpha or cutmix_alpha):
    raise ValueError("mix_batch: config.train.mixup_alpha or cutmix_alpha must be > 0")
  k_pick, k_mixup, k_cutmix = jax.random.split(key, 3)
  partners = images[::-1]
  if not cutmix_alpha:
    return _mixup(k_mixup, images, partners, mixup_alpha)
  if not mixup_alpha:
    return _cutmix(k_cutmix, images, partners, cutmix_alpha)
  use_cutmix = jax.random.bernoulli(k_pick)
  (m_x, m_lam), (c_x, c_lam) = (
    _mixup(k_mixup, images, partners, mixup_alpha),
    _cutmix(k_cutmix, images, partners, cutmix_alpha),
  )
  return jnp.where(use_cutmix, c_x, m_x), jnp.where(use_cutmix, c_lam, m_lam)
