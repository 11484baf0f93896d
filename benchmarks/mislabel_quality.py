"""Planted label flips on the built-in faces: how well `data_tools.mislabel` finds them.

Draws the built-in faces (fer_jax/data/builtin.py, 48x48, the FER4 classes), moves a --rate
share of them into another class's folder, runs the tool's step 1 (out-of-fold training with
--config, confident learning) and compares its review.csv with the planted flips: precision
and recall of the flagged set, and the estimated noise rate against the planted one.

  python -m benchmarks.mislabel_quality [--per_class=600 --rate=0.08 --folds=3]
      [--config=configs/model_0.py] [--set=train.epochs=20 ...]

Measured figures: docs/data_tools.md. tests/test_mislabel.py runs a small version.
"""
import csv
import os
import tempfile

from absl import app
from absl import flags
import numpy as np
from PIL import Image

from benchmarks.timing import timed
from data_tools import mislabel
from fer_jax.data import FER4
from fer_jax.data import builtin


def write_flipped_tree(root, per_class, rate, seed=0):
  """Built-in faces saved as <root>/train/<class>/<k>.png, `rate` of them in a wrong class
  folder. Returns {relative path: true class} of the flipped files and the image count."""
  rng = np.random.default_rng(seed)
  images, labels, _ = builtin.generate(FER4, per_class, size=48, seed=seed)
  n, k = len(labels), len(FER4)
  flipped = rng.choice(n, int(round(rate * n)), replace=False)
  given = labels.copy()
  given[flipped] = (labels[flipped] + rng.integers(1, k, len(flipped))) % k
  truth = {}
  for idx, (image, label) in enumerate(zip(images, given)):
    rel = os.path.join("train", FER4[label], f"face_{idx:05d}.png")
    os.makedirs(os.path.join(root, os.path.dirname(rel)), exist_ok=True)
    Image.fromarray(image[..., 0]).save(os.path.join(root, rel))
    if label != labels[idx]:
      truth[rel] = FER4[labels[idx]]
  return truth, n


def planted_flip_run(workdir, per_class, rate, folds, config, overrides, seed=0, workers=0):
  """Runs mislabel on a flipped tree -> dict of figures (precision, recall, estimate, ...)."""
  src, dst = os.path.join(workdir, "src"), os.path.join(workdir, "dst")
  truth, n = write_flipped_tree(src, per_class, rate, seed)
  argv = [src, "--out", dst, "--folds", str(folds), "--config", config, "--workers", str(workers)]
  argv += [a for o in overrides for a in ("--set", o)]
  if mislabel.main(argv) != 0:
    raise RuntimeError(f"mislabel failed on {src}")
  with open(os.path.join(dst, "review.csv")) as f:
    rows = list(csv.DictReader(f))
  with np.load(os.path.join(dst, "oof_probs.npz"), allow_pickle=False) as z:
    probs, labels = z["probs"], z["labels"]
  found = mislabel.find_suspects(probs, labels)
  flagged = {r["file"] for r in rows}
  hits = flagged & set(truth)
  fixed = sum(truth[r["file"]] == r["suggested_label"] for r in rows if r["file"] in truth)
  return {"images": n, "planted": len(truth) / n, "estimated": found.noise_rate,
          "flagged": len(flagged), "precision": len(hits) / max(len(flagged), 1),
          "recall": len(hits) / max(len(truth), 1), "right_suggestion": fixed / max(len(hits), 1),
          "accuracy": mislabel.judge_quality(probs, labels, len(FER4))[0]}


def define_flags():
  """Defined only when run as a program: tests import this module next to others with flags."""
  flags.DEFINE_integer("per_class", 600, "built-in faces per class (the default set's train size)")
  flags.DEFINE_float("rate", 0.08, "share of labels flipped to another class")
  flags.DEFINE_integer("folds", 3, "cross-validation folds")
  flags.DEFINE_string("config", mislabel.DEFAULT_CONFIG, "the judge's config")
  flags.DEFINE_multi_string("set", [], "config override field=value (repeatable)")
  flags.DEFINE_string("workdir", None, "where the tree and the runs go (default: a temp folder)")


def main(_):
  f = flags.FLAGS
  workdir = f.workdir or tempfile.mkdtemp(prefix="mislabel_quality_")
  result, wall, cpu = timed(lambda: planted_flip_run(workdir, f.per_class, f.rate, f.folds,
                                                    f.config, f.set))
  print(f"{result['images']:,} built-in faces, {result['planted']:.1%} labels flipped; judge {f.config} "
        f"{' '.join(f.set)}, {f.folds} folds: out-of-fold accuracy {result['accuracy']:.1%}")
  print(f"estimated noise {result['estimated']:.1%} (planted {result['planted']:.1%}); flagged "
        f"{result['flagged']:,}: precision {result['precision']:.1%}, recall {result['recall']:.1%}, "
        f"suggested label right for {result['right_suggestion']:.1%} of the found flips")
  print(f"{wall:.0f} s (CPU {cpu:.0f} s); runs in {workdir}")


if __name__ == "__main__":
  define_flags()
  app.run(main)
