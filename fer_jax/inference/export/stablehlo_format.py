"""StableHLO through jax.export: the function's StableHLO with its weights, serialized; JAX
(jax.export.deserialize(...).call) runs it without fer_jax. Checked by deserializing and calling
it."""

import importlib.metadata

CONVERTER = f"jax.export (jax {importlib.metadata.version('jax')})"
RUNTIME = f"jax.export.deserialize (jax {importlib.metadata.version('jax')})"
# Lowered for these platforms too, so the file runs on a GPU or TPU, not only on this CPU.
PLATFORMS = ("cpu", "cuda", "tpu")


def write(fn, face_shape, path):
  import jax
  import jax.numpy as jnp
  from jax import export

  (batch,) = export.symbolic_shape("batch")
  exported = export.export(jax.jit(fn), platforms=PLATFORMS)(
    jax.ShapeDtypeStruct((batch, *face_shape), jnp.float32)
  )
  with open(path, "wb") as f:
    f.write(exported.serialize())


def load(path):
  import numpy as np
  from jax import export

  with open(path, "rb") as f:
    exported = export.deserialize(bytearray(f.read()))
  return lambda faces: np.asarray(exported.call(faces))
