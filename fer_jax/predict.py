"""Emotion predictions for face crops from a trained run, with the study's deployment rule.

  python -m fer_jax.predict --workdir=runs/b_pp-quick face1.png faces_dir/ [--threshold=0.7] [--csv=out.csv]

Images are decoded as the training data was (gray or RGB, resized to the config's size) and
scored with the run's best checkpoint. A face whose top probability is below the threshold
gets the answer "uncertain", as the study proposed for deployment.
"""
import csv
import json
import os
import sys

import jax
import ml_collections
import numpy as np
from absl import app, flags

from fer_jax import checkpoint, models, sharding, steps
from fer_jax.data import folders

UNCERTAIN = "uncertain"


class Predictor:
  """The best checkpoint of a finished or running workdir, ready to score uint8 images."""

  def __init__(self, workdir):
    config_path = os.path.join(workdir, "config.json")
    if not os.path.exists(config_path):
      raise FileNotFoundError(f"--workdir: {workdir!r} has no config.json; is it a fer_jax run?")
    with open(config_path) as f:
      self.config = ml_collections.ConfigDict(json.load(f))
    self.classes = tuple(self.config.data.classes)
    sharding.configure_backend()
    self.model = models.build(self.config.model, len(self.classes))
    d = self.config.data
    like, _, _ = steps.create_state(self.config, self.model, (d.image_size, d.image_size, d.channels), 1)
    ckpts = checkpoint.RunCheckpoints(os.path.join(workdir, "checkpoints"))
    restored = ckpts.restore_best(like)
    ckpts.close()
    if restored is None:
      raise FileNotFoundError(f"--workdir: {workdir!r} has no best checkpoint yet")
    self.variables = restored[0].variables()
    self._probs = jax.jit(lambda v, x: jax.nn.softmax(self.model.apply(v, steps.to_float(x), train=False)))

  def probs(self, images_u8, batch_size=256):
    return np.concatenate([np.asarray(self._probs(self.variables, images_u8[i:i + batch_size]))
                           for i in range(0, len(images_u8), batch_size)])


def answers(probs, classes, threshold):
  """Top class per row, or UNCERTAIN where its probability is below `threshold`."""
  top = probs.argmax(1)
  return [classes[t] if p[t] >= threshold else UNCERTAIN for t, p in zip(top, probs)]


def image_paths(inputs):
  paths = []
  for item in inputs:
    if os.path.isdir(item):
      paths += sorted(os.path.join(d, f) for d, _, files in os.walk(item) for f in files
                      if os.path.splitext(f)[1].lower() in folders.IMAGE_EXTENSIONS)
    elif os.path.exists(item):
      paths.append(item)
    else:
      raise FileNotFoundError(f"no such image or folder: {item!r}")
  return paths


_WORKDIR = flags.DEFINE_string("workdir", None, "A training run's workdir.")
_THRESHOLD = flags.DEFINE_float("threshold", 0.7, "Below this top probability the answer is 'uncertain'.")
_CSV = flags.DEFINE_string("csv", None, "Also write the predictions to this CSV file.")


def main(argv):
  try:
    predictor = Predictor(_WORKDIR.value)
    paths = image_paths(argv[1:])
  except FileNotFoundError as e:
    sys.exit(f"error: {e}")
  d = predictor.config.data
  images, ok, errors = folders.decode_many(paths, d.image_size, d.channels, d.resize_filter)
  for path, reason in errors:
    print(f"skipped {path}: {reason}", file=sys.stderr)
  paths = [p for p, good in zip(paths, ok) if good]
  probs = predictor.probs(images[ok]) if paths else np.zeros((0, len(predictor.classes)))
  labels = answers(probs, predictor.classes, _THRESHOLD.value)
  rows = [{"file": p, "answer": a, **{c: f"{q:.4f}" for c, q in zip(predictor.classes, pr)}}
          for p, a, pr in zip(paths, labels, probs)]
  for r in rows:
    print(f"{r['answer']:<10} {max(float(r[c]) for c in predictor.classes):.2f}  {r['file']}")
  n_sure = sum(a != UNCERTAIN for a in labels)
  print(f"{len(rows)} faces: {n_sure} answered, {len(rows) - n_sure} uncertain (threshold {_THRESHOLD.value})")
  if _CSV.value:
    with open(_CSV.value, "w", newline="") as f:
      writer = csv.DictWriter(f, fieldnames=["file", "answer", *predictor.classes])
      writer.writeheader()
      writer.writerows(rows)


if __name__ == "__main__":
  flags.mark_flags_as_required(["workdir"])
  app.run(main)
