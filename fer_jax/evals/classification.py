"""Classification metrics of a split (`config.evals` entry `type="classification"`).

With the temperature and threshold of the calibration entry it reads (`calibration`), the best
weights' `split` (test by default) gets metrics.json's `<split>` record from the calibrated
probabilities (accuracy, F1, confusions, calibration, the confidence rule; "loss" is the
training loss of the raw logits) and `<split>_raw` from the raw ones (calibration and the
rule), and `<split>_predictions.npz` holds labels, probs, raw_probs and the temperature.
"""

import os

import numpy as np

from fer_jax.evals import calibration as calibration_lib
from fer_jax.evals import metrics


class Evaluator:
  """Metrics of `split` with the calibration of the `calibration` entry (see the module doc)."""

  def __init__(self, split, calibration):
    self.split = split
    self.calibration = calibration
    self.reads = (calibration,)

  def run(self, ctx, results):
    cal = results[self.calibration]
    split = ctx.dataset.splits[self.split]
    split_m, logits = ctx.evaluate(split)
    raw_probs = calibration_lib.probabilities(logits)
    probs = calibration_lib.probabilities(logits, cal.temperature)
    record = metrics.classification_metrics(
      split.labels, probs, list(ctx.dataset.classes), cal.threshold
    )
    record["loss"] = split_m["loss"]
    ctx.summary[self.split] = record
    ctx.summary[f"{self.split}_raw"] = metrics.confidence_metrics(
      split.labels, raw_probs, cal.threshold
    )
    if ctx.writes:
      np.savez(
        os.path.join(ctx.workdir, f"{self.split}_predictions.npz"),
        labels=split.labels.astype(np.int32),
        probs=probs.astype(np.float32),
        raw_probs=raw_probs.astype(np.float32),
        temperature=np.float32(cal.temperature),
      )
    return record
