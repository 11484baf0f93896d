import numpy as np
import pytest

from fer_jax.data import splits


@pytest.mark.parametrize(
  "name, expected",
  [
    ("train", "train"),
    ("Training", "train"),
    ("TRAIN", "train"),
    ("val", "val"),
    ("Valid", "val"),
    ("validation", "val"),
    ("dev", "val"),
    ("eval", "val"),
    ("PublicTest", "val"),
    ("public_test", "val"),
    ("public-test", "val"),
    ("Public", "val"),
    ("test", "test"),
    ("Testing", "test"),
    ("PrivateTest", "test"),
    ("private_test", "test"),
    ("private", "test"),
    ("extra", None),
    ("trainval", None),
    ("", None),
  ],
)
def test_normalize_split(name, expected):
  assert splits.normalize_split(name) == expected


def test_stratified_holdout_takes_each_class_share_and_is_seeded():
  labels = np.array([0] * 100 + [1] * 40 + [2] * 7 + [3] * 2 + [4] * 1)
  keep, held = splits.stratified_holdout(labels, 0.1, seed=42)
  # Disjoint, complete, sorted.
  assert np.array_equal(np.sort(np.concatenate([keep, held])), np.arange(len(labels)))
  assert np.all(np.diff(keep) > 0) and np.all(np.diff(held) > 0)
  held_counts = np.bincount(labels[held], minlength=5)
  # round(n * 0.1), at least one held out and one kept for n >= 2, a singleton stays.
  assert held_counts.tolist() == [10, 4, 1, 1, 0]
  assert np.bincount(labels[keep], minlength=5).tolist() == [90, 36, 6, 1, 1]
  again = splits.stratified_holdout(labels, 0.1, seed=42)
  assert np.array_equal(again[1], held)
  other = splits.stratified_holdout(labels, 0.1, seed=7)
  assert not np.array_equal(other[1], held)


def test_stratified_holdout_rounds_half_up():
  keep, held = splits.stratified_holdout(np.zeros(25, int), 0.1, seed=0)  # 2.5 -> 3
  assert len(held) == 3 and len(keep) == 22


@pytest.mark.parametrize("fraction", [0.0, 1.0, -0.1, 1.5])
def test_stratified_holdout_rejects_bad_fractions(fraction):
  with pytest.raises(ValueError, match="fraction"):
    splits.stratified_holdout(np.zeros(10, int), fraction, seed=0)
