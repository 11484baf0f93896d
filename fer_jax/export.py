"""`python -m fer_jax.export --format=onnx|tflite|stablehlo --out=DIR [--workdir=RUN]`: the command
line of fer_jax/inference/export/."""

from absl import app

from fer_jax.inference.export import cli

if __name__ == "__main__":
  app.run(cli.main)
