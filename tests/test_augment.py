"""On-device soft augmentation: each op's semantics pinned."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from fer_jax import augment


def _cfg(**overrides):
  cfg = dict(flip=False, rotation=0.0, zoom=0.0, shift=0.0, contrast=0.0, fill_mode="reflect")
  cfg.update(overrides)
  return ml_collections.ConfigDict(cfg)


@pytest.fixture
def images():
  return jax.random.uniform(jax.random.key(0), (6, 12, 12, 1))


def test_zero_angle_and_unit_zoom_are_identity(images):
  out = jax.vmap(lambda x: augment.affine_resample(x, 0.0, 1.0))(images)
  np.testing.assert_allclose(out, images, atol=1e-6)


def test_quarter_turn_is_rot90(images):
  """A 0.25-turn maps pixel centres onto pixel centres: it must equal np.rot90 exactly."""
  out = augment.affine_resample(images[0], jnp.pi / 2, 1.0)
  np.testing.assert_allclose(out, np.rot90(np.asarray(images[0]), k=-1, axes=(0, 1)), atol=1e-5)


def test_flip_mirrors_exactly(images):
  out = augment.augment_batch(jax.random.key(3), images, _cfg(flip=True))
  for x, y in zip(np.asarray(images), np.asarray(out)):
    assert np.array_equal(y, x) or np.array_equal(y, x[:, ::-1])
  flipped = [not np.array_equal(y, x) for x, y in zip(np.asarray(images), np.asarray(out))]
  assert 0 < sum(flipped) < len(flipped)  # p = 0.5: with this key some flip, some don't


def test_contrast_keeps_mean_and_range():
  # no clipping at 0.95-1.05
  x = jax.random.uniform(jax.random.key(1), (12, 12, 1), minval=0.3, maxval=0.7)
  for factor in (0.95, 1.05):
    y = augment.adjust_contrast(x, factor)
    np.testing.assert_allclose(jnp.mean(y), jnp.mean(x), atol=1e-6)
    np.testing.assert_allclose(jnp.std(y), jnp.std(x) * factor, rtol=1e-5)
  y = augment.adjust_contrast(jnp.array([[[0.0]], [[1.0]]]), 3.0)
  assert float(y.min()) >= 0.0 and float(y.max()) <= 1.0


def test_zoom_out_uses_reflect_fill():
  """Zooming out samples beyond the border; 'reflect' mirrors the edge (d c b a | a b c d)."""
  ramp = jnp.tile(jnp.arange(8, dtype=jnp.float32)[None, :, None], (8, 1, 1)) / 7
  out = augment.affine_resample(ramp, 0.0, 1.5, "reflect")
  assert float(out[4, 0, 0]) > float(out[4, 1, 0])  # left of the border, values rise again
  out = augment.affine_resample(ramp, 0.0, 1.5, "constant")
  assert float(out[4, 0, 0]) == 0.0


def test_full_augmentation_in_range_random_per_image_and_deterministic(images):
  cfg = _cfg(flip=True, rotation=0.05, zoom=0.05, contrast=0.05)
  same = jnp.repeat(images[:1], 4, axis=0)
  out = augment.augment_batch(jax.random.key(7), same, cfg)
  assert out.shape == same.shape
  assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0
  assert not np.allclose(out[0], out[1])  # one key per image
  np.testing.assert_array_equal(out, augment.augment_batch(jax.random.key(7), same, cfg))


def test_shift_moves_the_content_by_whole_pixels_and_leaves_other_draws_alone(images):
  dot = jnp.zeros((9, 9, 1)).at[4, 4, 0].set(1.0)
  out = augment.affine_resample(dot, 0.0, 1.0, "constant", shift=(2.0, -1.0))
  assert np.unravel_index(int(jnp.argmax(out)), out.shape)[:2] == (6, 3)  # 2 down, 1 left
  # Shifts stay within the fraction of the side, and adding them leaves the flip, rotation,
  # zoom and contrast draws of a config without shift as they were (same keys).
  key = jax.random.key(5)
  cfg = _cfg(flip=True, rotation=0.05, zoom=0.05, contrast=0.05)
  plain = augment.augment_batch(key, images, cfg)
  shifted = augment.augment_batch(
    key, images, _cfg(flip=True, rotation=0.05, zoom=0.05, contrast=0.05, shift=0.1)
  )
  assert not np.allclose(plain, shifted)
  again = augment.augment_batch(key, images, cfg)
  np.testing.assert_array_equal(plain, again)
  dots = jnp.repeat(dot[None], 16, axis=0)
  moved = augment.augment_batch(key, dots, _cfg(shift=0.25))
  peaks = [np.unravel_index(int(jnp.argmax(m)), m.shape)[:2] for m in moved]
  assert all(abs(r - 4) <= 9 * 0.25 + 1 and abs(c - 4) <= 9 * 0.25 + 1 for r, c in peaks)
  assert len(set(peaks)) > 4  # each image its own shift


def test_unknown_fill_mode_names_the_field(images):
  with pytest.raises(ValueError, match="config.train.fill_mode"):
    augment.augment_batch(jax.random.key(0), images, _cfg(fill_mode="mirror-ish"))


def test_mixup_blends_each_face_with_its_reverse_partner_by_one_folded_lam(images):
  lams = []
  for seed in range(8):
    mixed, lam = augment.mix_batch(jax.random.key(seed), images, 0.4, 0.0)
    assert 0.5 <= float(lam) <= 1.0
    np.testing.assert_allclose(mixed, lam * images + (1 - lam) * images[::-1], atol=1e-6)
    lams.append(float(lam))
  assert len(set(lams)) == 8  # a new lam every batch


def test_cutmix_takes_one_box_from_the_partner_and_lam_is_the_share_of_own_pixels():
  # Faces of distinct constant values: each pixel tells whose it is.
  images = jnp.arange(1.0, 7.0)[:, None, None, None] * jnp.ones((6, 12, 12, 1))
  areas = set()
  for seed in range(12):
    mixed, lam = augment.mix_batch(jax.random.key(seed), images, 0.0, 1.0)
    mixed = np.asarray(mixed)
    for i in range(6):
      own, partner = mixed[i, ..., 0] == i + 1, mixed[i, ..., 0] == 6 - i
      assert np.all(own | partner)
      if i != 5 - i:
        np.testing.assert_allclose(own.mean(), float(lam), atol=1e-6)
        rows, cols = np.nonzero(partner)
        if rows.size:  # the partner's pixels fill their bounding box: one rectangle
          assert partner[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1].all()
    assert 0.5 <= float(lam) <= 1.0
    areas.add(round(1 - float(lam), 4))
  assert len(areas) > 4


def test_with_both_alphas_each_batch_uses_one_of_the_two():
  images = jnp.arange(1.0, 7.0)[:, None, None, None] * jnp.ones((6, 12, 12, 1))
  kinds = set()
  for seed in range(16):
    mixed, lam = augment.mix_batch(jax.random.key(seed), images, 0.4, 1.0)
    values = np.unique(np.asarray(mixed[0]))
    kinds.add("cutmix" if set(values) <= {1.0, 6.0} else "mixup")
  assert kinds == {"cutmix", "mixup"}
  with pytest.raises(ValueError, match="mixup_alpha or cutmix_alpha"):
    augment.mix_batch(jax.random.key(0), images, 0.0, 0.0)
