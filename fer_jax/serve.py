"""`python -m fer_jax.serve [--workdir=runs/x] [--port=8000]`: the web demo
(fer_jax/inference/serve/)."""

from absl import app

from fer_jax.inference.serve import cli

if __name__ == "__main__":
  app.run(cli.main)
