"""Classification metrics of a split (`config.evals` entry `type="classification"`).

With the temperature and threshold of the calibration entry it reads (`calibration`), the best
weights' `split` (test by default) gets metrics.json's `<split>` record from the calibrated
probabilities (accuracy, F1, confusions, calibration, the confidence rule; "loss" is the
training loss of the raw logits) and `<split>_raw` from the raw ones (calibration and the
rule), and `<split>_predictions.npz` holds labels, probs, raw_probs, the temperature and the
split's `fingerprint` (a digest of its classes, images and labels: the study report refuses to
average runs tested on different sets into an ensemble). With test-time augmentation
(`config.eval.tta`) the same figures of the averaged views, calibrated with the TTA temperature,
go beside them as `<split>_tta` and `<split>_tta_raw`, and into the .npz as tta_probs,
tta_raw_probs and tta_temperature.
"""

from fer_jax.evals import calibration as calibration_lib
from fer_jax.evals import metrics, tta


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
    arrays = calibration_lib.prediction_arrays("", logits, cal.temperature)
    record = metrics.classification_metrics(
      split.labels, arrays["probs"], list(ctx.dataset.classes), cal.threshold
    )
    record["loss"] = split_m["loss"]
    ctx.summary[self.split] = record
    ctx.summary[f"{self.split}_raw"] = metrics.confidence_metrics(
      split.labels, arrays["raw_probs"], cal.threshold
    )
    if cal.tta is not None:
      arrays.update(self.tta_figures(ctx, split, cal.tta))
    ctx.save_predictions(self.split, arrays)
    return record

  def tta_figures(self, ctx, split, cal):
    """Adds `<split>_tta` and `<split>_tta_raw` to the summary; returns their arrays."""
    mode = ctx.config.eval.tta
    tta_m, log_probs = tta.evaluate(ctx.evaluate, split, mode)
    arrays = calibration_lib.prediction_arrays("tta_", log_probs, cal.temperature)
    record = metrics.classification_metrics(
      split.labels, arrays["tta_probs"], list(ctx.dataset.classes), cal.threshold
    )
    ctx.summary[f"{self.split}_tta"] = {"views": mode, "num_views": tta_m["views"], **record}
    ctx.summary[f"{self.split}_tta_raw"] = metrics.confidence_metrics(
      split.labels, arrays["tta_raw_probs"], cal.threshold
    )
    return arrays
