"""A run's summary, metrics.json: built when the run finishes, and the lines printed from it.

The loop builds it in three parts, in the order metrics.json keeps them: `run_fields` (what ran
and its best epoch, from the history), then the figures of the config's evaluators
(`config.evals`: calibration, the eval-mode gap, test metrics), then `closing_fields` (epochs,
time, system). `format_summary` gives the few lines a person reads at the end of a run, and
`finished_summary` reads a finished run back.
"""

import json
import os
import platform
import sys

import jax
import numpy as np

from fer_jax.evals import metrics
from fer_jax.report import render


def system_info() -> dict:
  return {
    "jax": jax.__version__,
    "backend": jax.default_backend(),
    "device_kind": jax.devices()[0].device_kind,
    "devices": jax.device_count(),
    "processes": jax.process_count(),
    "cpu_count": os.cpu_count(),
    "platform": platform.platform(),
    "python": sys.version.split()[0],
  }


def run_fields(config, ds, history, best_epoch, param_counts) -> dict:
  """What ran, and its best epoch's row (the last row when no epoch was best)."""
  best_row = next((r for r in history if r["epoch"] == best_epoch), history[-1])
  return {
    "name": config.name,
    "variant": config.variant,
    "seed": config.train.seed,
    "classes": list(ds.classes),
    "model": config.model.name,
    # what every evaluation used, the best epoch's choice included (train/ema.py)
    "weights": f"ema {config.optim.ema_decay:g}" if config.optim.ema_decay else "plain",
    "dataset": {"name": ds.name, "sizes": ds.sizes()},
    "params": param_counts,
    "best": {
      "epoch": best_row["epoch"],
      "val_accuracy": best_row["val_accuracy"],
      "val_loss": best_row["val_loss"],
      "train_accuracy": best_row["train_accuracy"],
      "train_loss": best_row["train_loss"],
      "gap": best_row["gap"],
    },
    "gap_diagnosis": metrics.gap_diagnosis(best_row["gap"]),
  }


def closing_fields(history, stopped_early, train_s, wall_s) -> dict:
  """Epochs run, time and the system, after the evaluators' figures."""
  steady = [r["images_per_s"] for r in history[1:]] or [
    r["images_per_s"] for r in history
  ]  # epoch 1 compiles
  return {
    "epochs_run": sum(r["epoch"] > 0 for r in history),
    "stopped_early": bool(stopped_early),
    "wall_time_s": wall_s,
    "train_time_s": train_s,
    "time_per_epoch_s": train_s / max(len(history), 1),
    "images_per_s": float(np.median(steady)),
    "system": system_info(),
  }


def format_summary(summary) -> str:
  """The few lines a person reads at the end of a run."""
  best, test, p = summary["best"], summary["test"], summary["params"]
  return "\n".join(
    [
      f"== {render.run_title(summary['name'], summary['variant'])} "
      f"(seed {summary['seed']}) on {summary['dataset']['name']}",
      f"best val accuracy {best['val_accuracy']:.2%} at epoch {best['epoch']} of "
      f"{summary['epochs_run']}{' (early stop)' if summary['stopped_early'] else ''}; "
      f"train accuracy then {best['train_accuracy']:.2%}",
      f"train-val gap {best['gap']:+.1f} points: {summary['gap_diagnosis']}"
      + (
        f" (eval mode: train {best['train_accuracy_eval']:.2%}, gap {best['gap_eval']:+.1f})"
        if "gap_eval" in best
        else ""
      ),
      f"test accuracy {test['accuracy']:.2%}  loss {test['loss']:.4f}  "
      f"macro F1 {test['macro_f1']:.3f}" + weights_note(summary),
      *tta_lines(summary),
      *calibration_lines(summary),
      f"params {p['total']:,} ({p['trainable']:,} trainable)  "
      f"time {summary['wall_time_s'] / 60:.1f} min "
      f"({summary['time_per_epoch_s']:.1f} s/epoch, {summary['images_per_s']:.0f} img/s)",
    ]
  )


def weights_note(summary) -> str:
  """Which weights the figures are of, when not the live ones (runs from before say nothing)."""
  weights = summary.get("weights", "plain")
  return "" if weights == "plain" else f"  (weights: {weights})"


def tta_lines(summary) -> list:
  """Test accuracy with test-time augmentation beside the plain one (none without TTA)."""
  if "test_tta" not in summary:
    return []
  tta, raw, plain = summary["test_tta"], summary["test_tta_raw"], summary["test"]
  return [
    f"with TTA ({tta['views']}, {tta['num_views']} views): test accuracy {tta['accuracy']:.2%} "
    f"({100 * (tta['accuracy'] - plain['accuracy']):+.2f} points)  macro F1 "
    f"{tta['macro_f1']:.3f}  ECE {raw['calibration']['ece']:.4f} -> "
    f"{tta['calibration']['ece']:.4f} (T {summary['calibration']['tta']['temperature']:.3f}); "
    f"answered at {tta['confidence_rule']['threshold']:.2f}: "
    f"{tta['confidence_rule']['coverage']:.1%}",
  ]


def calibration_lines(summary) -> list:
  """Raw -> calibrated test ECE, NLL and coverage of the rule (none for runs from before
  calibration)."""
  if "calibration" not in summary:
    return []
  cal, raw, test = summary["calibration"], summary["test_raw"], summary["test"]
  target = cal["threshold_target_accuracy"]
  source = f" (lowest reaching {target:.0%} on val)" if target else ""
  return [
    f"temperature {cal['temperature']:.3f}: test ECE {raw['calibration']['ece']:.4f} -> "
    f"{test['calibration']['ece']:.4f}, NLL {raw['calibration']['nll']:.4f} -> "
    f"{test['calibration']['nll']:.4f}",
    f"answered at confidence >= {cal['threshold']:.2f}{source}: "
    f"{raw['confidence_rule']['coverage']:.1%} raw -> "
    f"{test['confidence_rule']['coverage']:.1%} calibrated (accuracy of those "
    f"{render.pct(test['confidence_rule']['accuracy'], 1)})",
  ]


# What writes a finished run's metrics.json, predictions and report again: without metrics.json
# (written last) the run is unfinished, and its command resumes it after its last epoch.
REEVALUATE = (
  "rerun the run's command without its metrics.json (move that away): it resumes after the "
  "last epoch and runs only the evaluators, which write the files again"
)


def read_summary(path):
  """metrics.json at `path`; a file that is not JSON (cut short) stops with what to do."""
  with open(path) as f:
    try:
      return json.load(f)
    except ValueError as e:
      raise ValueError(f"{path}: not valid JSON ({e}); {REEVALUATE}") from None


def finished_summary(workdir) -> tuple[dict, str]:
  """A finished run's metrics.json, and the lines that tell it and how to train again."""
  summary = read_summary(os.path.join(workdir, "metrics.json"))
  note = (
    f"This run is finished ({workdir}). To train again, pass a new --workdir or delete this one."
  )
  return summary, format_summary(summary) + "\n" + note
