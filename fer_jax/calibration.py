"""Temperature scaling (Guo et al. 2017): one scalar T fitted on val so confidences mean what they say.

A run fits T on the best checkpoint's val logits and saves it in `checkpoints/calibration.json`
next to the weights; every place where probabilities leave fer_jax (test metrics, predict, the
server, reports) reads it back with `load` and applies `probabilities`. T > 1 softens an
overconfident model, T < 1 sharpens an underconfident one, T = 1 changes nothing.
"""
import dataclasses
import json
import os

import numpy as np
from scipy import optimize, special

FILE = os.path.join("checkpoints", "calibration.json")
LOG_T_BOUNDS = (-4.0, 4.0)  # T in [0.018, 55]: far beyond any fitted value; keeps the search bounded


@dataclasses.dataclass(frozen=True)
class Calibration:
  temperature: float = 1.0
  threshold: float = 0.7  # the confidence below which an answer is "uncertain"


def probabilities(logits, temperature=1.0):
  """softmax(logits / T); log-probabilities are valid logits too (softmax ignores a per-row shift)."""
  return special.softmax(np.asarray(logits, np.float64) / temperature, axis=-1)


def nll(logits, labels, temperature=1.0):
  logp = special.log_softmax(np.asarray(logits, np.float64) / temperature, axis=-1)
  return float(-np.mean(logp[np.arange(len(labels)), labels]))


def fit_temperature(logits, labels):
  """The T > 0 minimising the mean negative log-likelihood of `labels` (a 1-D convex search in log T)."""
  labels = np.asarray(labels)
  if len(labels) == 0:
    raise ValueError("cannot fit a temperature on an empty split")
  res = optimize.minimize_scalar(lambda log_t: nll(logits, labels, np.exp(log_t)), bounds=LOG_T_BOUNDS,
                                 method="bounded", options={"xatol": 1e-4})
  return float(np.exp(res.x))


def save(workdir, calibration):
  path = os.path.join(workdir, FILE)
  tmp = f"{path}.tmp"
  with open(tmp, "w") as f:
    json.dump(dataclasses.asdict(calibration), f, indent=2)
  os.replace(tmp, path)


def load(workdir, default_threshold=0.7):
  """The run's calibration; T = 1 and `default_threshold` for a run that has none (trained before it existed)."""
  path = os.path.join(workdir, FILE)
  if not os.path.exists(path):
    return Calibration(threshold=default_threshold)
  try:
    with open(path) as f:
      values = json.load(f)
    cal = Calibration(temperature=float(values["temperature"]), threshold=float(values["threshold"]))
  except (ValueError, KeyError, TypeError) as e:
    raise ValueError(f"{path}: unreadable calibration ({e}); delete it and rerun the same command to refit") from None
  if not (cal.temperature > 0 and 0.0 <= cal.threshold <= 1.0):
    raise ValueError(f"{path}: temperature must be > 0 and threshold in [0, 1], got {values}")
  return cal
