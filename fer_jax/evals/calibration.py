"""Temperature scaling (Guo et al. 2017): one scalar T fitted on val, so that confidences mean what
they say.

A run fits T on the best checkpoint's val logits and saves it in `checkpoints/calibration.json`
next to the weights; every place where probabilities leave fer_jax (test metrics, predict, the
server, reports) reads it back with `load` and applies `probabilities`. T > 1 softens an
overconfident model, T < 1 sharpens an underconfident one, T = 1 changes nothing. Dividing
all logits by one T keeps their order, so predictions and accuracy do not change; only the
confidences do, and with them how many faces the "uncertain" rule answers.

Per-class vector scaling (a scale and a bias per class) is not used: it moves predictions, not
only confidences, and on the built-in quick runs its 5-fold cross-validated val NLL beat one T
for B++ (0.889 vs 0.909) but not for Model 0 (1.247 vs 1.233), with 148-300 val faces.

The saved threshold is the rule's: `config.eval.confidence_threshold`, or, when
`config.eval.threshold_target_accuracy` is set, the lowest threshold whose answered val faces
(calibrated) are right at least that often.

As an evaluator (`config.evals` entry `type="calibration"`, evals/common.py), `Evaluator` fits both
on the best weights' logits of its `split`, records them in metrics.json under "calibration",
saves calibration.json, saves the split's probabilities as the classification evaluator saves
test's (`val_predictions.npz`: the study report fits a seed ensemble's own temperature on them)
and returns the `Calibration` for the evaluators that read it. With
test-time augmentation (`config.eval.tta`, evals/tta.py) it fits a second pair on the split's
averaged TTA probabilities, for the TTA figures (`Calibration.tta`, "calibration"."tta" in
metrics.json, "tta" in calibration.json), which predict and the server use with `--tta`.
"""

import dataclasses
import json
import os

import numpy as np

from fer_jax.evals import metrics

FILE = os.path.join("checkpoints", "calibration.json")
LOG_T_BOUNDS = (
  -4.0,
  4.0,
)  # T in [0.018, 55]; a chance-level model reaches 55 (near-uniform probabilities)


@dataclasses.dataclass(frozen=True)
class Calibration:
  temperature: float  # 1 = the raw probabilities
  threshold: float  # the confidence below which an answer is "uncertain"
  tta: "Calibration" = None  # of the test-time-augmented probabilities (config.eval.tta; tta.py)


def probabilities(logits, temperature=1.0, xp=np):
  """softmax(logits / T); log-probabilities are valid logits too (softmax ignores a per-row
  shift). float64 on the host; xp=jax.numpy keeps a traced model's dtype (TTA in an export)."""
  # numpy's, not scipy.special's: importing scipy.special is 0.3 s of predict's start
  z = xp.asarray(logits, _dtype(xp)) / temperature
  e = xp.exp(z - z.max(axis=-1, keepdims=True))
  return e / e.sum(axis=-1, keepdims=True)


def as_logits(probs, xp=np):
  """Probabilities as logits: softmax(as_logits(p)) = p. Mean probabilities (TTA's views, a seed
  ensemble's members) are calibrated as softmax(as_logits(mean p) / T); zeros (float32 underflow)
  become a very negative logit instead of -inf."""
  probs = xp.asarray(probs, _dtype(xp))
  return xp.log(xp.maximum(probs, xp.finfo(probs.dtype).tiny))


def _dtype(xp):
  return np.float64 if xp is np else None


def nll(logits, labels, temperature=1.0):
  from scipy import special

  logp = special.log_softmax(np.asarray(logits, np.float64) / temperature, axis=-1)
  return float(-np.mean(logp[np.arange(len(labels)), labels]))


def fit_temperature(logits, labels):
  """The T > 0 minimising the mean negative log-likelihood of `labels` (a 1-D convex search in
  log T)."""
  labels = np.asarray(labels)
  if len(labels) == 0:
    raise ValueError("cannot fit a temperature on an empty split")
  from scipy import optimize  # 1 s of CPU to import; predict and serve never fit

  res = optimize.minimize_scalar(
    lambda log_t: nll(logits, labels, np.exp(log_t)),
    bounds=LOG_T_BOUNDS,
    method="bounded",
    options={"xatol": 1e-4},
  )
  return float(np.exp(res.x))


def threshold_for_accuracy(labels, probs, target):
  """The lowest threshold whose answered faces (top probability >= it) are right >= `target` of
  the time.

  The threshold is the top probability of the least confident face it answers; None when no
  threshold reaches the target (not even answering only the most confident face).
  """
  conf = np.asarray(probs).max(axis=1)
  order = np.argsort(-conf, kind="stable")
  conf_sorted = conf[order]
  correct = (np.asarray(probs).argmax(axis=1) == np.asarray(labels))[order]
  accuracy = np.cumsum(correct) / np.arange(1, len(conf) + 1)  # of the k most confident faces
  # Only a tie's last face is a threshold: a threshold answers every face at its confidence.
  is_threshold = np.append(conf_sorted[1:] < conf_sorted[:-1], True)
  reached = np.flatnonzero(is_threshold & (accuracy >= target))
  return float(conf_sorted[reached[-1]]) if reached.size else None


def calibrate(val_logits, val_labels, eval_config):
  """Fits T and picks the threshold on val; returns (Calibration, what metrics.json records of
  it)."""
  val_labels = np.asarray(val_labels)
  temperature = fit_temperature(val_logits, val_labels)
  raw, calibrated = probabilities(val_logits), probabilities(val_logits, temperature)
  target = eval_config.threshold_target_accuracy
  threshold = eval_config.confidence_threshold
  if target:
    # Unreachable on val: answer nothing rather than promise an accuracy the model does not have.
    threshold = threshold_for_accuracy(val_labels, calibrated, target)
    threshold = 1.0 if threshold is None else threshold
  cal = Calibration(temperature=temperature, threshold=threshold)
  record = {
    "temperature": temperature,
    "threshold": threshold,
    "threshold_target_accuracy": target or None,
    "val_raw": _scores(metrics.calibration(val_labels, raw)),
    "val_calibrated": _scores(metrics.calibration(val_labels, calibrated)),
    "val_rule": metrics.confidence_rule(val_labels, calibrated, threshold),
  }
  return cal, record


def _scores(calibration_metrics):
  return {k: calibration_metrics[k] for k in ("ece", "nll", "brier")}


def save(workdir, calibration):
  from fer_jax.train import history  # imports JAX, which predict's ONNX start never needs

  history.write_json(os.path.join(workdir, FILE), dataclasses.asdict(calibration))


def load(workdir, default_threshold):
  """The run's calibration, with its TTA one where the run had config.eval.tta; T = 1 and
  `default_threshold` (its config.eval.confidence_threshold) for a run that has none (trained
  before it existed)."""
  path = os.path.join(workdir, FILE)
  if not os.path.exists(path):
    return Calibration(temperature=1.0, threshold=default_threshold)
  try:
    with open(path) as f:
      return from_dict(json.load(f))
  except (ValueError, KeyError, TypeError, AttributeError) as e:
    raise ValueError(
      f"{path}: unreadable calibration ({e}); delete it and rerun the same command to refit"
    ) from None


def from_dict(values):
  """The Calibration that `dataclasses.asdict` wrote as `values` (calibration.json, the scorer
  cache), range-checked; ValueError, KeyError or TypeError where it is not one."""
  tta = values.get("tta") and _checked(values["tta"])
  return dataclasses.replace(_checked(values), tta=tta)


def _checked(values):
  cal = Calibration(temperature=float(values["temperature"]), threshold=float(values["threshold"]))
  if not (cal.temperature > 0 and 0.0 <= cal.threshold <= 1.0):
    raise ValueError(f"temperature must be > 0 and threshold in [0, 1], got {values}")
  return cal


class Evaluator:
  """Fits the temperature and threshold on the best weights' logits of `split` (module doc)."""

  reads = ()

  def __init__(self, split):
    self.split = split

  def run(self, ctx, results):
    split = ctx.dataset.splits[self.split]
    split_m, logits = ctx.evaluate(split)
    cal, record = calibrate(logits, split.labels, ctx.config.eval)
    arrays = prediction_arrays("", logits, cal.temperature)
    mode = ctx.config.eval.tta
    if mode != "none":
      from fer_jax.evals import tta  # imports scipy.special and the data package

      tta_m, tta_logits = tta.evaluate(ctx.evaluate, split, mode)
      tta_cal, tta_record = calibrate(tta_logits, split.labels, ctx.config.eval)
      record["tta"] = {
        "views": mode,
        "num_views": tta_m["views"],
        "accuracy": tta_m["accuracy"],
        "plain_accuracy": split_m["accuracy"],
        **tta_record,
      }
      cal = dataclasses.replace(cal, tta=tta_cal)
      arrays.update(prediction_arrays("tta_", tta_logits, tta_cal.temperature))
    ctx.summary["calibration"] = record
    if ctx.writes:
      save(ctx.workdir, cal)
    ctx.save_predictions(self.split, arrays)
    return cal


def prediction_arrays(prefix, logits, temperature):
  """What a split's `<split>_predictions.npz` holds of `logits` (or TTA log-probabilities, with
  prefix "tta_"): calibrated probs, raw_probs and the temperature."""
  return {
    f"{prefix}probs": probabilities(logits, temperature),
    f"{prefix}raw_probs": probabilities(logits),
    f"{prefix}temperature": temperature,
  }
