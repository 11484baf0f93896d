"""The runs of one config that differ only in their seed: mean ± std, and the seed ensemble.

The study report (study.py) groups the runs in `<group>/seed<k>/` (as `fer_jax.sweep` writes
them, vectorized or not) and evaluates each group of two or more runs as one ensemble: the mean of
the members' calibrated test probabilities (each calibrated with its own temperature, fitted on
its own val). It reports the ensemble beside each member and the members' mean ± std: accuracy,
the gain over the members' mean and over the best member, and calibration: ECE, NLL, and the
share of faces the 0.7 rule answers with the accuracy of those answers.

The mean of calibrated members is less confident than they are where they disagree (it spreads
the probability), so the ensemble gets a temperature of its own, fitted as a run fits its own
(calibration.fit_temperature): on the members' mean calibrated val probabilities, whose logarithm
serves as the logits, and applied to their mean test probabilities as softmax(log(mean p) / T).
Dividing by one T keeps each face's order of classes, so it changes the ensemble's confidences,
not its accuracy. The report gives the ECE before it too; a group with a member that saved no
val probabilities (a run from before they were saved) keeps the plain mean.

The probabilities are those each run's evaluators saved: `test_predictions.npz` (labels, `probs`,
the test-time-augmented `tta_probs` when the run had `config.eval.tta`, then the TTA ensemble is
reported too, and the test split's `fingerprint`, a digest of its classes, images and labels) and
`val_predictions.npz` (the same of the val split the members' temperatures were fitted on).
Members tested, or calibrated, on different sets are refused: their mean would mean nothing.
"""

import zipfile

import numpy as np

from fer_jax.evals import calibration, metrics
from fer_jax.report import summary as report_summary
from fer_jax.report.render import heading, para, pct, table

KINDS = (("probs", "plain"), ("tta_probs", "TTA"))  # npz key, name in the report


def mean_std(values):
  """{"mean", "std" (sample; None for one value), "values"} of the values that are not None."""
  v = np.asarray([x for x in values if x is not None], np.float64)
  if v.size == 0:
    return {"mean": None, "std": None, "values": []}
  return {
    "mean": float(v.mean()),
    "std": float(v.std(ddof=1)) if v.size > 1 else None,
    "values": v.tolist(),
  }


def load_predictions(path):
  """A run's predictions of one split (None each where the run saved none): labels, probs,
  raw_probs, tta_probs, fingerprint. A run from before calibration saved only raw `probs`, which
  then serve as both (its temperature is 1). An unreadable file (cut short, not an .npz, holding
  pickled objects) stops the report in one line naming it."""
  out = dict.fromkeys(("labels", "probs", "raw_probs", "tta_probs", "fingerprint"))
  try:
    with np.load(path, allow_pickle=False) as d:
      out.update({k: d[k] for k in out if k in d.files})
  except FileNotFoundError:
    return out
  except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
    raise ValueError(f"{path}: unreadable ({e}); {report_summary.REEVALUATE}") from None
  out["fingerprint"] = None if out["fingerprint"] is None else str(out["fingerprint"])
  if out["raw_probs"] is None:
    out["raw_probs"] = out["probs"]
  return out


def same_set(a, b):
  """Whether two runs' predictions (load_predictions) are of one set: the same labels, and the
  same fingerprint where both saved one (two splits of equal class counts have equal labels)."""
  if a["labels"] is None or b["labels"] is None:
    return False
  same_labels = a["labels"].shape == b["labels"].shape and np.array_equal(a["labels"], b["labels"])
  fingerprints = (a["fingerprint"], b["fingerprint"])
  return same_labels and (None in fingerprints or fingerprints[0] == fingerprints[1])


def check_same_set(group, runs, split, done):
  """Refuses, in one line, members whose `split` predictions (`runs`: each a load_predictions
  with its "dir") are of different sets; `done` says what was done on it ("tested")."""
  first = runs[0]
  for run in runs[1:]:
    if not same_set(first, run):
      raise ValueError(
        f"{group}: {first['dir']} and {run['dir']} were {done} on different {split} sets "
        f"({split} fingerprints {first['fingerprint']} and {run['fingerprint']}, "
        f"{len(first['labels'])} and {len(run['labels'])} faces): their seed ensemble would "
        "mean nothing; move the runs of other data out of the folder"
      )


def ensemble(group, runs, threshold):
  """The ensemble's figures of a group ({"plain": ..., "TTA": ...}), or None for one run or a
  run without saved predictions. `runs`: each run's test predictions (load_predictions) with its
  "dir" and its val predictions under "val"."""
  if len(runs) < 2 or any(r["probs"] is None for r in runs):
    return None
  check_same_set(group, runs, "test", "tested")
  vals = [{"dir": r["dir"], **r["val"]} for r in runs]
  if all(v["probs"] is not None for v in vals):
    check_same_set(group, vals, "val", "calibrated")
  out = {}
  for key, name in KINDS:
    if all(r[key] is not None for r in runs):
      val = None
      if all(v[key] is not None for v in vals):
        val = (vals[0]["labels"], [v[key] for v in vals])
      out[name] = figures(runs[0]["labels"], [r[key] for r in runs], threshold, val)
  return out


def figures(labels, member_probs, threshold, val=None):
  """Each member, their mean ± std and the ensemble (mean probabilities) on one test set; with
  `val` = (labels, the members' val probabilities), the ensemble's temperature is fitted on
  their mean and applied (module doc)."""
  probs = np.mean(np.asarray(member_probs, np.float64), axis=0)
  members = [np.mean(np.argmax(p, axis=1) == labels) for p in member_probs]
  uncalibrated_ece = metrics.calibration(labels, probs)["ece"]
  temperature = None
  if val is not None:
    temperature = ensemble_temperature(*val)
    probs = calibration.probabilities(calibration.as_logits(probs), temperature)
  accuracy = float(np.mean(probs.argmax(axis=1) == labels))
  scores = metrics.calibration(labels, probs)
  return {
    "members": len(member_probs),
    "member_accuracy": mean_std(members),
    "accuracy": accuracy,
    "gain": accuracy - float(np.mean(members)),
    "gain_over_best": accuracy - float(np.max(members)),
    "temperature": temperature,  # None: no val probabilities, the plain mean is reported
    "uncalibrated_ece": uncalibrated_ece,
    "ece": scores["ece"],
    "nll": scores["nll"],
    "member_ece": mean_std(metrics.calibration(labels, p)["ece"] for p in member_probs),
    "rule": metrics.confidence_rule(labels, probs, threshold),
    "member_coverage": mean_std(
      metrics.confidence_rule(labels, p, threshold)["coverage"] for p in member_probs
    ),
  }


def ensemble_temperature(val_labels, member_val_probs):
  """The ensemble's own temperature, fitted on the members' mean val probabilities (module doc);
  the predictor of a seed ensemble (inference/scoring.py) applies the same."""
  val_mean = np.mean(np.asarray(member_val_probs, np.float64), axis=0)
  return calibration.fit_temperature(calibration.as_logits(val_mean), val_labels)


def _ece_cell(e):
  """ECE, the members' mean → the ensemble's (→ after its temperature)."""
  if e["temperature"] is None:
    return f"{e['member_ece']['mean']:.4f} → {e['ece']:.4f}"
  return (
    f"{e['member_ece']['mean']:.4f} → {e['uncalibrated_ece']:.4f} → {e['ece']:.4f} "
    f"(T {e['temperature']:.2f})"
  )


def ensemble_lines(groups):
  """One line per seed ensemble, printed where a sweep or the report command ends."""
  lines = []
  for g in groups:
    if not g.get("ensemble"):
      continue
    parts = [
      f"{kind} {pct(e['accuracy'], 2)} ({100 * e['gain']:+.2f} over the members' mean), "
      f"ECE {e['ece']:.3f}" + ("" if e["temperature"] is None else f" (T {e['temperature']:.2f})")
      for kind, e in g["ensemble"].items()
    ]
    members = g["ensemble"]["plain"]["members"]  # every ensemble has plain probabilities
    lines.append(f"{g['name']}: ensemble of {members} seeds, test " + "; ".join(parts))
  return lines


def ensemble_blocks(groups, threshold):
  """The study report's section on seed ensembles (none when no group has one)."""
  rows = [
    [
      g["name"],
      kind,
      e["members"],
      ", ".join(pct(a, 2) for a in e["member_accuracy"]["values"]),
      pm(e["member_accuracy"]),
      pct(e["accuracy"], 2),
      f"{100 * e['gain']:+.2f} ({100 * e['gain_over_best']:+.2f})",
      _ece_cell(e),
      f"{pct(e['member_coverage']['mean'], 1)} → {pct(e['rule']['coverage'], 1)} "
      f"({pct(e['rule']['accuracy'], 1)} right)",
    ]
    for g in groups
    for kind, e in (g.get("ensemble") or {}).items()
  ]
  if not rows:
    return []
  return [
    heading("Seed ensembles"),
    para(
      "Each config's seeds as one model: the mean of the members' calibrated test "
      "probabilities, calibrated again with a temperature of the ensemble's own, fitted on the "
      "members' mean val probabilities (where every member saved them). Gain: the ensemble's "
      "accuracy minus the members' mean (minus the best member's), in points. ECE: the "
      "members' mean → the ensemble's before its temperature → after it (T). Faces answered "
      f"at the rule's threshold ({threshold}): the members' mean → the calibrated ensemble's. "
      "TTA: the same with each member's test-time-augmented probabilities (config.eval.tta)."
    ),
    table(
      [
        "config",
        "probabilities",
        "members",
        "member test accuracies",
        "members mean ± std",
        "ensemble",
        "gain (over best)",
        "ECE",
        f"answered at {threshold}",
      ],
      rows,
    ),
  ]


def pm(stat, scale=100, fmt=".2f", unit=" %"):
  """ "mean ± std" of a `mean_std`, times `scale`; "—" when it has no values."""
  if stat["mean"] is None:
    return "—"
  text = f"{scale * stat['mean']:{fmt}}"
  if stat["std"] is not None:
    text += f" ± {scale * stat['std']:{fmt}}"
  return text + unit
