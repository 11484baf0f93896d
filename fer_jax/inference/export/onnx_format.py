"""ONNX through jax2onnx, which turns the traced JAX function into ONNX operators (convolutions,
batch norms and pools stay single operators); checked with onnxruntime."""

import contextlib
import importlib.metadata
import io
import logging

import jax2onnx
import onnx
import onnxruntime

CONVERTER = f"jax2onnx {importlib.metadata.version('jax2onnx')}"
RUNTIME = f"onnxruntime {onnxruntime.__version__}"
# Opset 18 (ONNX 1.13): every onnxruntime since 1.14, onnxruntime-web included, reads it; jax2onnx
# writes opset-18 ReduceMean (axes as an input) even when asked for 17.
OPSET = 18
# jax2onnx logs each conversion step, and a traceback for each of its plugins for other libraries
# that fail to import; onnx_ir warns of each shape it leaves to the runtime (TTA's views).
for _name in ("jax2onnx", "onnx_ir"):
  logging.getLogger(_name).setLevel(logging.ERROR)


def write(fn, face_shape, path, output="probabilities"):
  # jax2onnx 0.13's Conv plugin print()s a DEBUG block per convolution (hundreds of lines).
  with contextlib.redirect_stdout(io.StringIO()):
    jax2onnx.to_onnx(
      fn,
      [("batch", *face_shape)],
      model_name="fer_jax",
      opset=OPSET,
      input_names=["faces"],
      output_names=[output],
      return_mode="file",
      output_path=path,
    )
  # jax2onnx 0.13 annotates intermediate tensors with JAX's NHWC shapes where its graph holds
  # NCHW; onnxruntime (Python) merges them leniently with a warning, onnxruntime-web refuses the
  # model. The annotations are optional: without them each runtime infers the shapes itself.
  model = onnx.load(path)
  del model.graph.value_info[:]
  onnx.checker.check_model(model, full_check=True)
  onnx.save(model, path)


def load(path):
  session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
  return lambda faces: session.run(["probabilities"], {"faces": faces})[0]
