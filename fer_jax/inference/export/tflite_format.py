"""TFLite through jax2tf (the function's StableHLO inside a TensorFlow graph) and TensorFlow's
TFLite converter, built-in TFLite operators only (no TensorFlow ops, so the LiteRT runtime alone
runs it); checked with TensorFlow's TFLite interpreter."""

import os
import warnings

# TensorFlow's C++ info and warning lines (CUDA probing, MLIR passes) say nothing about the export.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import tensorflow as tf  # noqa: E402
from jax.experimental import jax2tf  # noqa: E402

CONVERTER = f"jax2tf + TFLiteConverter (tensorflow {tf.__version__})"
RUNTIME = f"tf.lite.Interpreter (tensorflow {tf.__version__})"
SIGNATURE = "serving_default"


def write(fn, face_shape, path):
  shape = ", ".join(str(d) for d in face_shape)
  converted = jax2tf.convert(fn, polymorphic_shapes=[f"(batch, {shape})"])
  holder = tf.Module()
  holder.serve = tf.function(
    lambda faces: {"probabilities": converted(faces)},
    input_signature=[tf.TensorSpec([None, *face_shape], tf.float32, name="faces")],
    autograph=False,
  )
  converter = tf.lite.TFLiteConverter.from_concrete_functions(
    [holder.serve.get_concrete_function()], holder
  )
  converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
  with open(path, "wb") as f:
    f.write(converter.convert())


def load(path):
  with warnings.catch_warnings():  # tf.lite.Interpreter's notice that LiteRT will replace it
    warnings.simplefilter("ignore")
    interpreter = tf.lite.Interpreter(model_path=path)

  def run(faces):
    runner = interpreter.get_signature_runner(SIGNATURE)
    return runner(faces=faces)["probabilities"]

  return run
