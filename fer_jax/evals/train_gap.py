"""The train - val gap in eval mode (`config.evals` entry `type="train_gap"`).

The running train accuracy of metrics.jsonl is measured with dropout and augmentation on, so a
negative train - val gap may be theirs rather than the data's. This evaluator measures the best
weights in eval mode on a fixed random train subset as large as val, adds that accuracy and the
gap it gives to metrics.json's "best", and reads the gap diagnosis again with it.
"""

import numpy as np

from fer_jax import data
from fer_jax.evals import metrics


def train_subset(split, size, seed):
  """A fixed random subset of `size` images of `split` (the same on every rerun and process)."""
  idx = np.sort(np.random.default_rng(seed).permutation(len(split))[:size])
  return data.Split(split.images[idx], split.labels[idx])


class Evaluator:
  """Eval-mode accuracy on `len(val)` train images drawn with `subset_seed`, and its gap."""

  reads = ()

  def __init__(self, subset_seed):
    self.subset_seed = subset_seed

  def run(self, ctx, results):
    size = len(ctx.dataset.splits["val"])
    train_m, _ = ctx.evaluate(train_subset(ctx.dataset.splits["train"], size, self.subset_seed))
    best = ctx.summary["best"]
    eval_gap = (train_m["accuracy"] - best["val_accuracy"]) * 100
    best["train_accuracy_eval"] = train_m["accuracy"]
    best["gap_eval"] = eval_gap
    best["train_eval_images"] = size
    ctx.summary["gap_diagnosis"] = metrics.gap_diagnosis(best["gap"], eval_gap)
    return train_m
