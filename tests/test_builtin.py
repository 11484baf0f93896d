"""The built-in synthetic faces: layout, determinism, class prototypes and difficulty."""

import numpy as np
import pytest

from fer_jax import data
from fer_jax.configs import common
from fer_jax.data import builtin
from fer_jax.report import plots

FER7 = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")


def data_cfg(**overrides):
  cfg = common.data_config()
  cfg.builtin_per_class = 16
  cfg.update(overrides)
  return cfg


@pytest.fixture(scope="module")
def small():
  return data.load(data_cfg())


def test_layout_and_sizes(small):
  assert small.classes == common.FER4
  assert small.name == "builtin-faces(seed=0)"
  assert small.sizes() == {"train": 64, "val": 8, "test": 8}  # val and test: 16 // 8 = 2 per class
  for split in small.splits.values():
    assert split.images.dtype == np.uint8 and split.images.shape[1:] == (48, 48, 1)
    assert split.labels.dtype == np.int32
    assert split.paths is None
    assert split.images.std() > 20  # drawn faces, not a blank canvas


def test_class_balance_and_shuffled_order(small):
  for name in data.SPLITS:
    assert (small.class_counts(name) == small.class_counts(name)[0]).all()
  labels = small.splits["train"].labels
  assert not (np.diff(labels) >= 0).all()  # not sorted by class


def test_val_and_test_have_at_least_one_face_per_class():
  ds = data.load(data_cfg(builtin_per_class=3))
  assert ds.sizes() == {"train": 12, "val": 4, "test": 4}


def test_same_seed_same_bytes_and_other_seed_other_faces(small):
  again = builtin.load(data_cfg())
  other = builtin.load(data_cfg(builtin_seed=1))
  for name in data.SPLITS:
    np.testing.assert_array_equal(again.splits[name].images, small.splits[name].images)
    np.testing.assert_array_equal(again.splits[name].labels, small.splits[name].labels)
    assert not np.array_equal(other.splits[name].images, small.splits[name].images)
  assert other.name == "builtin-faces(seed=1)"

  # splits come from independent sub-seeds: no face is shared between them
  def faces_of(name):
    return {img.tobytes() for img in small.splits[name].images}

  assert not faces_of("train") & faces_of("val") and not faces_of("train") & faces_of("test")
  assert not faces_of("val") & faces_of("test")


def test_classes_order_is_honoured():
  """Label i follows the prototype of classes[i], whatever the order."""
  for classes in (("surprise", "neutral"), ("neutral", "surprise")):
    _, labels, expression = builtin.generate(classes, 50, seed=0)
    open_mouth = np.array([expression["mouth_open"][labels == i].mean() for i in range(2)])
    assert open_mouth[classes.index("surprise")] > open_mouth[classes.index("neutral")] + 0.05


def test_fer2013_and_ferplus_classes_and_rgb():
  ds = data.load(
    data_cfg(classes=FER7 + ("contempt",), builtin_per_class=8, channels=3, image_size=64)
  )
  assert ds.classes == FER7 + ("contempt",)
  images = ds.splits["train"].images
  assert images.shape == (64, 64, 64, 3)
  assert (ds.class_counts() == 8).all()
  # a mild tint: channels differ a little, not a lot
  diff = np.abs(images[..., 0].astype(int) - images[..., 2].astype(int)).mean()
  assert 2 < diff < 40


def test_class_name_aliases():
  ds = builtin.load(data_cfg(classes=("Happiness", "sadness", "anger")))
  assert ds.classes == ("Happiness", "sadness", "anger")


def test_unknown_class_names_the_config_field():
  with pytest.raises(ValueError, match=r"config\.data\.classes.*'smirk'"):
    builtin.load(data_cfg(classes=("happy", "smirk")))


@pytest.mark.parametrize(
  "field,value", [("channels", 2), ("image_size", 8), ("builtin_per_class", 0)]
)
def test_bad_values_name_the_config_field(field, value):
  with pytest.raises(ValueError, match=rf"config\.data\.{field}"):
    builtin.load(data_cfg(**{field: value}))


def test_classes_differ_but_pixels_do_not_give_them_away():
  """Class means differ where the face does, yet nearest-class-mean on pixels is near chance."""
  images, labels, _ = builtin.generate(common.FER4, 200, seed=0)
  gray = images[..., 0].astype(np.float32)
  means = np.stack([gray[labels == c].mean(0) for c in range(4)])
  # surprise's open mouth: its mean face is darker than neutral's around the mouth
  assert (means[3] - means[1])[34:40, 21:27].mean() < -20
  # per-image standardised pixels (so brightness alone does not decide)
  pixels = gray.reshape(len(gray), -1)
  pixels = (pixels - pixels.mean(1, keepdims=True)) / pixels.std(1, keepdims=True)
  centroids = np.stack([pixels[labels == c].mean(0) for c in range(4)])
  accuracy = np.mean(((pixels[:, None] - centroids[None]) ** 2).sum(-1).argmin(1) == labels)
  assert 0.28 < accuracy < 0.6  # in-sample, 800 faces: some signal, far from solved


def test_sample_grid_png(tmp_path, small):
  path = tmp_path / "grid.png"
  split = small.splits["train"]
  plots.sample_grid(split.images, split.labels, small.classes, path, per_row=4)
  assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
