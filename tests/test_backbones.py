"""VGG16, ResNet50V2 and EfficientNetB0 in Flax against Keras Applications (include_top=False).

Each Keras model gets random weights (fixed seed), is saved in the layout of the ImageNet
`*_notop.h5` downloads, loaded through the model's own `load_pretrained`, and both compute
the same batch in inference mode. Small inputs keep the XLA compiles short; odd feature-map
sizes (72 -> 9 -> 5 -> 3) exercise Keras's padding rules.
"""

import os

os.environ["KERAS_BACKEND"] = "jax"

import h5py
import jax
import keras
import numpy as np
import pytest
from keras.src.legacy.saving import legacy_h5_format
from test_porting import keras_model

from fer_jax import models
from fer_jax.configs import efficientnet_b0, resnet50v2
from fer_jax.configs import vgg16 as vgg16_config
from fer_jax.models import efficientnet, resnet_v2, vgg16

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

# name: Keras builder, Flax module, input side, input range, weight gain, Keras's count
CASES = {
  "vgg16": (keras.applications.VGG16, vgg16, 40, (-1, 1), 2.0, 14_714_688),
  "resnet50v2": (keras.applications.ResNet50V2, resnet_v2, 72, (-1, 1), 0.5, 23_564_800),
  "efficientnet_b0": (
    keras.applications.EfficientNetB0,
    efficientnet,
    72,
    (0, 255),
    2.0,
    4_049_571,
  ),
}


CONFIGS = {"vgg16": vgg16_config, "resnet50v2": resnet50v2, "efficientnet_b0": efficientnet_b0}


def model_config(name, init_from):
  cfg = CONFIGS[name].get_config().model
  cfg.init_from = init_from
  cfg.head_widths, cfg.head_bn, cfg.head_dropouts = (8,), (True,), (0.5,)
  if "imagenet_rescale" in cfg:
    cfg.imagenet_rescale = False  # the Keras reference is built with weights=None
  return cfg


@pytest.mark.parametrize("name", list(CASES))
def test_backbone_matches_keras(name, tmp_path):
  build_keras, module, size, (low, high), gain, keras_count = CASES[name]
  reference = keras_model(
    lambda: build_keras(include_top=False, weights=None, input_shape=(size, size, 3)),
    seed=0,
    gain=gain,
  )
  assert reference.count_params() == keras_count
  path = str(tmp_path / module.WEIGHTS_FILE)
  with h5py.File(path, "w") as f:
    legacy_h5_format.save_weights_to_hdf5_group(f, reference)

  cfg = model_config(name, path)
  model = models.build(cfg, 4)
  shapes = jax.eval_shape(lambda: models.init_variables(model, (size, size, 3)))
  variables = models.load_pretrained(cfg, shapes)
  backbone_variables = {c: v["backbone"] for c, v in variables.items() if "backbone" in v}
  assert models.count_params(backbone_variables)["total"] == keras_count

  x = np.random.default_rng(1).uniform(low, high, (2, size, size, 3)).astype(np.float32)
  expected = reference.predict(x, verbose=0)
  got = np.asarray(jax.jit(model.backbone.apply)(backbone_variables, x))
  assert got.shape == expected.shape
  delta = float(np.abs(got - expected).max())
  print(f"{name}: max |delta| {delta:.2e} (outputs up to {np.abs(expected).max():.2f})")
  assert delta <= 1e-4
