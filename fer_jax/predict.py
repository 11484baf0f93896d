"""`python -m fer_jax.predict PHOTO|FOLDER|VIDEO ...`: the command line of
fer_jax/inference/predict.py."""

from absl import app

from fer_jax.inference import predict

if __name__ == "__main__":
  app.run(predict.main)
