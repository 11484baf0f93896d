"""`source='tfds:<name>'` on a tiny dataset this test prepares with a real TFDS builder."""

import sys

import numpy as np
import pytest

from fer_jax import data
from fer_jax.configs import common

NAMES = ["happiness", "sadness", "anger", "neutral", "surprised"]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  tfds = pytest.importorskip("tensorflow_datasets")
  pytest.importorskip("tensorflow")

  class FerJaxTinyFaces(tfds.core.GeneratorBasedBuilder):
    """Gray 40x40 faces in train and test; pixel value = 10 * label + example index."""

    VERSION = tfds.core.Version("1.0.0")

    def _info(self):
      return tfds.core.DatasetInfo(
        builder=self,
        features=tfds.features.FeaturesDict(
          {
            "image": tfds.features.Image(shape=(None, None, 1)),
            "label": tfds.features.ClassLabel(names=NAMES),
          }
        ),
      )

    def _split_generators(self, dl_manager):
      return {"train": self._generate_examples(20), "test": self._generate_examples(10)}

    def _generate_examples(self, n):
      for i in range(n):
        image = np.full((40, 40, 1), 10 * (i % 5) + i // 5, np.uint8)
        yield i, {"image": image, "label": i % 5}

  root = tmp_path_factory.mktemp("tfds")
  FerJaxTinyFaces(data_dir=str(root)).download_and_prepare()
  return root


def config(root, cache_dir, **fields):
  c = common.data_config()
  c.source, c.root, c.cache_dir = "tfds:fer_jax_tiny_faces", str(root), str(cache_dir)
  for k, v in fields.items():
    setattr(c, k, v)
  return c


def test_tfds_source(data_dir, tmp_path):
  cfg = config(data_dir, tmp_path / "cache")
  dataset = data.load(cfg)
  # anger is not in the 4 classes; train has no val split, so 10 % per class moves to val.
  assert dataset.sizes() == {"train": 12, "val": 4, "test": 8}
  assert dataset.report["dropped"] == {"class anger not in config": 6}
  assert dataset.report["val_from_train"]["moved"] == 4
  test = dataset.splits["test"]
  assert test.images.shape == (8, 48, 48, 1) and test.images.dtype == np.uint8
  # Label and pixel value agree: value // 10 is the TFDS label, mapped to FER4 by name.
  fer4_of_tfds = {0: 0, 1: 2, 3: 1, 4: 3}
  for image, label in zip(test.images, test.labels):
    assert fer4_of_tfds[int(image[0, 0, 0]) // 10] == label
  assert data.load(cfg).report["cache"]["hit"]


def test_tfds_split_mapping_and_size(data_dir, tmp_path):
  cfg = config(data_dir, tmp_path / "cache", image_size=32, channels=3, classes=tuple(NAMES))
  cfg.tfds_splits = "train=train[:50%],val=train[50%:],test=test"
  dataset = data.load(cfg)
  assert dataset.sizes() == {"train": 10, "val": 10, "test": 10}
  assert dataset.splits["val"].images.shape[1:] == (32, 32, 3)
  assert "val_from_train" not in dataset.report


def test_tfds_errors(data_dir, tmp_path):
  with pytest.raises(ValueError, match="config.data.source.*not prepared"):
    data.load(config(tmp_path / "empty", tmp_path / "cache"))
  cfg = config(data_dir, tmp_path / "cache")
  cfg.tfds_image_key = "picture"
  with pytest.raises(ValueError, match="config.data.tfds_image_key.*'picture'"):
    data.load(cfg)


def test_tfds_without_the_extra_says_how_to_install(tmp_path, monkeypatch):
  monkeypatch.setitem(sys.modules, "tensorflow_datasets", None)  # as if not installed
  monkeypatch.setitem(sys.modules, "tensorflow", None)
  with pytest.raises(ImportError, match=r"pip install 'fer_jax\[tfds\]'"):
    data.load(config(tmp_path, tmp_path / "cache"))
