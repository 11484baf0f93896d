"""The runs of one config that differ only in their seed: mean ± std, and the seed ensemble.

The study report (study.py) groups the runs in `<group>/seed<k>/` (as `fer_jax.sweep` writes
them, vectorized or not) and evaluates each group of two or more runs as one ensemble: the mean of
the members' calibrated test probabilities (each calibrated with its own temperature, fitted on
its own val). It reports the ensemble beside each member and the members' mean ± std: accuracy,
the gain over the members' mean and over the best member, and calibration: ECE, NLL, and the
share of faces the 0.7 rule answers with the accuracy of those answers. The mean of calibrated
members is usually less confident than they are (where the members disagree, it spreads the
probability), which its ECE and coverage show; a temperature of the ensemble's own would be
fitted on the members' val probabilities, which runs do not save.

The probabilities are those each run's test evaluator saved in `test_predictions.npz`: labels,
`probs`, the test-time-augmented `tta_probs` when the run had `config.eval.tta` (then the TTA
ensemble is reported too) and the test split's `fingerprint` (a digest of its classes, images
and labels). Members tested on different sets are refused: their mean would mean nothing.
"""

import numpy as np

from fer_jax.evals import metrics
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
  """A run's test predictions (None each where the run saved none): labels, probs, raw_probs,
  tta_probs, fingerprint. A run from before calibration saved only raw `probs`, which then serve
  as both (its temperature is 1)."""
  out = dict.fromkeys(("labels", "probs", "raw_probs", "tta_probs", "fingerprint"))
  try:
    with np.load(path, allow_pickle=False) as d:
      out.update({k: d[k] for k in out if k in d.files})
  except FileNotFoundError:
    return out
  out["fingerprint"] = None if out["fingerprint"] is None else str(out["fingerprint"])
  if out["raw_probs"] is None:
    out["raw_probs"] = out["probs"]
  return out


def check_same_test_set(group, runs):
  """Refuses, in one line, members that were tested on different test sets."""
  first = runs[0]
  for run in runs[1:]:
    same_labels = run["labels"].shape == first["labels"].shape and np.array_equal(
      run["labels"], first["labels"]
    )
    fingerprints = (first["fingerprint"], run["fingerprint"])
    if not same_labels or (None not in fingerprints and fingerprints[0] != fingerprints[1]):
      raise ValueError(
        f"{group}: {first['dir']} and {run['dir']} were tested on different test sets "
        f"(test fingerprints {fingerprints[0]} and {fingerprints[1]}, "
        f"{len(first['labels'])} and {len(run['labels'])} faces): their seed ensemble would "
        "mean nothing; move the runs of other data out of the folder"
      )


def ensemble(group, runs, threshold):
  """The ensemble's figures of a group ({"plain": ..., "TTA": ...}), or None for one run or a
  run without saved predictions."""
  if len(runs) < 2 or any(r["probs"] is None for r in runs):
    return None
  check_same_test_set(group, runs)
  labels = runs[0]["labels"]
  return {
    name: figures(labels, [r[key] for r in runs], threshold)
    for key, name in KINDS
    if all(r[key] is not None for r in runs)
  }


def figures(labels, member_probs, threshold):
  """Each member, their mean ± std and the ensemble (mean probabilities) on one test set."""
  probs = np.mean(np.asarray(member_probs, np.float64), axis=0)
  members = [np.mean(np.argmax(p, axis=1) == labels) for p in member_probs]
  accuracy = float(np.mean(probs.argmax(axis=1) == labels))
  calibration = metrics.calibration(labels, probs)
  return {
    "members": len(member_probs),
    "member_accuracy": mean_std(members),
    "accuracy": accuracy,
    "gain": accuracy - float(np.mean(members)),
    "gain_over_best": accuracy - float(np.max(members)),
    "ece": calibration["ece"],
    "nll": calibration["nll"],
    "member_ece": mean_std(metrics.calibration(labels, p)["ece"] for p in member_probs),
    "rule": metrics.confidence_rule(labels, probs, threshold),
    "member_coverage": mean_std(
      metrics.confidence_rule(labels, p, threshold)["coverage"] for p in member_probs
    ),
  }


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
      f"{e['member_ece']['mean']:.4f} → {e['ece']:.4f}",
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
      "probabilities. Gain: the ensemble's accuracy minus the members' mean (minus the best "
      "member's), in points. ECE and the faces answered at the rule's threshold "
      f"({threshold}): the members' mean → the ensemble's. TTA: the same with each member's "
      "test-time-augmented probabilities (config.eval.tta)."
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
