"""ONNX through jax2onnx, which turns the traced JAX function into ONNX operators (convolutions,
batch norms and pools stay single operators); checked with onnxruntime."""

import importlib.metadata
import logging

import jax2onnx
import onnxruntime

CONVERTER = f"jax2onnx {importlib.metadata.version('jax2onnx')}"
RUNTIME = f"onnxruntime {onnxruntime.__version__}"
# Opset 18 (ONNX 1.13): every onnxruntime since 1.14, onnxruntime-web included, reads it; jax2onnx
# writes opset-18 ReduceMean (axes as an input) even when asked for 17.
OPSET = 18
# jax2onnx logs each conversion step, and a traceback for each of its plugins for other libraries
# that fail to import.
logging.getLogger("jax2onnx").setLevel(logging.ERROR)


def write(fn, face_shape, path):
  jax2onnx.to_onnx(
    fn,
    [("batch", *face_shape)],
    model_name="fer_jax",
    opset=OPSET,
    input_names=["faces"],
    output_names=["probabilities"],
    return_mode="file",
    output_path=path,
  )


def load(path):
  options = onnxruntime.SessionOptions()
  options.log_severity_level = (
    3  # errors only: not a shape-annotation warning jax2onnx's graphs give
  )
  session = onnxruntime.InferenceSession(path, options, providers=["CPUExecutionProvider"])
  return lambda faces: session.run(["probabilities"], {"faces": faces})[0]
