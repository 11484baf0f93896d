"""Many runs: seed statistics per config, the study's winner rule, and the study report.

Runs in `<group>/seed<k>/` form one config's group; the winner is the best mean val accuracy
among configs whose mean train − val gap is below WINNER_MAX_GAP points, tested against the
runner-up with McNemar on the test predictions.
"""

import json
import os

import numpy as np

from fer_jax.configs import common
from fer_jax.evals import metrics
from fer_jax.report import plots, seeds
from fer_jax.report import summary as report_summary
from fer_jax.report.render import (
  bullets,
  heading,
  image,
  num,
  para,
  pct,
  run_title,
  seconds,
  table,
  to_html,
  to_markdown,
)
from fer_jax.train.history import read_history

STUDY_PLOTS = {
  "curves": "curves.png",
  "comparison": "comparison.png",
  "confusions": "confusions.png",
  "reliability": "reliability.png",
  "reliability_raw": "reliability_raw.png",
  "coverage": "coverage.png",
  "coverage_raw": "coverage_raw.png",
}
WINNER_MAX_GAP = 10.0  # the study's rule: best val accuracy among runs with gap < 10 points
# The study's deployment rule, config.eval.confidence_threshold as every study config sets it: the
# comparison table shows each config's calibrated coverage at it, whatever threshold its runs
# fitted.
STUDY_RULE_THRESHOLD = common.eval_config().confidence_threshold
SIGNIFICANCE = 0.05


def find_runs(root):
  """Every finished run under `root` (a directory holding metrics.json), sorted by path."""
  found = [dirpath for dirpath, _, files in os.walk(root) if "metrics.json" in files]
  return sorted(found)


def load_run(run_dir):
  """metrics.json, metrics.jsonl and (when present) test_predictions.npz of one run
  (seeds.load_predictions: `probs` are calibrated, `raw_probs` the ones before), and its
  val_predictions.npz under "val"."""
  summary = report_summary.read_summary(os.path.join(run_dir, "metrics.json"))
  history = read_history(os.path.join(run_dir, "metrics.jsonl"))
  predictions = seeds.load_predictions(os.path.join(run_dir, "test_predictions.npz"))
  val = seeds.load_predictions(os.path.join(run_dir, "val_predictions.npz"))
  return {"dir": run_dir, "summary": summary, "history": history, "val": val, **predictions}


def group_name(root, run_dir):
  """Runs in `<group>/seed<k>/` share the group `<group>`; any other run is its own group."""
  rel = os.path.relpath(run_dir, root)
  head, tail = os.path.split(rel)
  if tail.startswith("seed") and tail[4:].isdigit() and head:
    return head
  return rel


def _same_test_set(runs):
  """True when every run saved its test predictions, on one and the same test set."""
  return all(seeds.same_set(runs[0], r) for r in runs)


def summarize_group(name, runs):
  """Seed statistics of one group; test-set figures pool the seeds' predictions when saved."""
  s0 = runs[0]["summary"]
  sums = [r["summary"] for r in runs]
  conf = np.sum([s["test"]["confusion"] for s in sums], axis=0)
  g = {
    "name": name,
    "config": run_title(s0["name"], s0.get("variant")),
    "classes": list(s0["classes"]),
    "seeds": [s.get("seed") for s in sums],
    "runs": [r["dir"] for r in runs],  # relative to the study root
    "val_accuracy": seeds.mean_std(s["best"]["val_accuracy"] for s in sums),
    "test_accuracy": seeds.mean_std(s["test"]["accuracy"] for s in sums),
    "test_loss": seeds.mean_std(s["test"].get("loss") for s in sums),
    "macro_f1": seeds.mean_std(s["test"]["macro_f1"] for s in sums),
    "gap": seeds.mean_std(s["best"]["gap"] for s in sums),
    "gap_eval": seeds.mean_std(s["best"].get("gap_eval") for s in sums),
    "temperature": seeds.mean_std(s.get("calibration", {}).get("temperature", 1.0) for s in sums),
    "best_epoch": seeds.mean_std(s["best"]["epoch"] for s in sums),
    "params": s0["params"],
    "time_per_epoch_s": seeds.mean_std(s.get("time_per_epoch_s") for s in sums),
    "images_per_s": seeds.mean_std(s.get("images_per_s") for s in sums),
    "confusion_normalized": (conf / np.maximum(conf.sum(axis=1, keepdims=True), 1)).tolist(),
  }
  g["gap_diagnosis"] = metrics.gap_diagnosis(g["gap"]["mean"], g["gap_eval"]["mean"])
  g["ensemble"] = seeds.ensemble(name, runs, STUDY_RULE_THRESHOLD)
  if _same_test_set(runs):
    labels = runs[0]["labels"]
    preds = np.stack([r["probs"].argmax(axis=1) for r in runs])
    g["test_ci"] = metrics.bootstrap_accuracy_ci(labels, preds)
    pooled_labels = np.tile(labels, len(runs))
    threshold = s0["test"]["confidence_rule"]["threshold"]
    for prefix, key in (("", "probs"), ("raw_", "raw_probs")):
      pooled_probs = np.concatenate([r[key] for r in runs])
      pooled = metrics.confidence_metrics(pooled_labels, pooled_probs, threshold)
      g[prefix + "calibration"] = pooled["calibration"]
      g[prefix + "confidence_rule"] = pooled["confidence_rule"]
      g[prefix + "coverage_curve"] = pooled["coverage_curve"]
      g[prefix + "study_rule"] = metrics.confidence_rule(
        pooled_labels, pooled_probs, STUDY_RULE_THRESHOLD
      )
  return g


def paired_tests(winner_runs, other_runs):
  """McNemar per seed pair (seeds matched by order) on the test predictions."""
  out = []
  for a, b in zip(winner_runs, other_runs):
    if not _same_test_set([a, b]):
      continue
    r = metrics.mcnemar(a["labels"], a["probs"].argmax(axis=1), b["probs"].argmax(axis=1))
    out.append(
      {"seed_winner": a["summary"].get("seed"), "seed_other": b["summary"].get("seed"), **r}
    )
  return out


def pick_winner(groups, runs_by_group, max_gap=WINNER_MAX_GAP):
  """The study's rule, then McNemar of the winner against the runner-up under the same rule."""
  eligible = [g for g in groups if g["gap"]["mean"] is not None and g["gap"]["mean"] < max_gap]
  eligible.sort(key=lambda g: -g["val_accuracy"]["mean"])
  if not eligible:
    return {
      "winner": None,
      "runner_up": None,
      "tests": [],
      "verdict": (f"No config has a mean train − val gap below {max_gap:g} points: no winner."),
    }
  win = eligible[0]
  if len(eligible) == 1:
    return {
      "winner": win["name"],
      "runner_up": None,
      "tests": [],
      "verdict": (
        f"{win['name']} is the study's only config, with a gap below {max_gap:g} points: "
        "nothing to compare it with."
        if len(groups) == 1
        else f"{win['name']} is the only config with a gap below {max_gap:g} points."
      ),
    }
  second = eligible[1]
  tests = paired_tests(runs_by_group[win["name"]], runs_by_group[second["name"]])
  diff = 100 * (win["val_accuracy"]["mean"] - second["val_accuracy"]["mean"])
  stds = [
    100 * s for s in (win["val_accuracy"]["std"], second["val_accuracy"]["std"]) if s is not None
  ]
  spread = f"; seed std up to {max(stds):.2f} points" if stds else "; one seed each, spread unknown"
  significant = sum(t["p_value"] < SIGNIFICANCE for t in tests)
  if tests:
    p_values = ", ".join(f"{t['p_value']:.3g}" for t in tests)
    test_text = (
      f"McNemar on the test predictions: p < {SIGNIFICANCE} in {significant} of {len(tests)} "
      f"seed pairs (p = {p_values}), so the two are "
      + ("distinguishable." if significant == len(tests) else "NOT reliably distinguishable.")
    )
  else:
    test_text = "No paired test: the runs saved no test predictions on a common test set."
  return {
    "winner": win["name"],
    "runner_up": second["name"],
    "tests": tests,
    "distinguishable": bool(tests) and significant == len(tests),
    "verdict": (
      f"Winner {win['name']} (best mean val accuracy among gap < {max_gap:g}); "
      f"runner-up {second['name']}, {diff:.2f} points behind{spread}. {test_text}"
    ),
  }


def aggregate(root, max_gap=WINNER_MAX_GAP):
  """Every run under `root` grouped and summarised; returns (summary dict, runs by group).

  The winner is the best mean val accuracy among configs whose mean gap is below `max_gap`.
  """
  dirs = find_runs(root)
  if not dirs:
    raise FileNotFoundError(f"{root}: no run directories (with metrics.json) found")
  runs_by_group, by_classes = {}, {}  # by_classes: their confusions cannot be pooled or paired
  for d in dirs:
    run = load_run(d)
    run["dir"] = os.path.relpath(d, root)
    runs_by_group.setdefault(group_name(root, d), []).append(run)
    by_classes.setdefault(", ".join(run["summary"]["classes"]), []).append(run["dir"])
  if len(by_classes) > 1:
    kinds = "; ".join(f"{', '.join(d)}: {c}" for c, d in by_classes.items())
    raise ValueError(f"{root}: runs of different classes ({kinds}); report each class set apart")
  for runs in runs_by_group.values():
    runs.sort(key=lambda r: (r["summary"].get("seed") is None, r["summary"].get("seed")))
  groups = [summarize_group(name, runs) for name, runs in runs_by_group.items()]
  groups.sort(key=lambda g: -g["val_accuracy"]["mean"])  # best first, as the table reads
  summary = {
    "root": os.path.abspath(root),
    "num_runs": len(dirs),
    "groups": groups,
    "decision": pick_winner(groups, runs_by_group, max_gap),
  }
  return summary, runs_by_group


COMPARISON_HEADER = [
  "config",
  "seeds",
  "val acc",
  "test acc [95 % CI]",
  "gap, diagnosis",
  "best epoch",
  "params",
  "time/epoch",
  "images/s",
  "macro F1",
  "ECE raw → calibrated",
  f"answered at {STUDY_RULE_THRESHOLD} (calibrated)",
]


def comparison_rows(groups, winner=None):
  rows = []
  for g in groups:
    ci = g.get("test_ci")
    test = seeds.pm(g["test_accuracy"], fmt=".2f", unit="")
    test += f" [{100 * ci['low']:.2f}, {100 * ci['high']:.2f}] %" if ci else " %"
    rows.append(
      [
        g["name"] + (" (winner)" if g["name"] == winner else ""),
        len(g["seeds"]),
        seeds.pm(g["val_accuracy"]),
        test,
        f"{g['gap']['mean']:+.1f}, {g['gap_diagnosis']}",
        seeds.pm(g["best_epoch"], scale=1, fmt=".1f", unit=""),
        num(g["params"]["total"]),
        seconds(g["time_per_epoch_s"]["mean"]),
        num(g["images_per_s"]["mean"], ",.1f"),
        seeds.pm(g["macro_f1"], scale=1, fmt=".3f", unit=""),
        f"{g['raw_calibration']['ece']:.4f} → {g['calibration']['ece']:.4f}"
        if "calibration" in g
        else "—",
        pct(g["study_rule"]["coverage"], 1) if "calibration" in g else "—",
      ]
    )
  return rows


def study_blocks(summary):
  groups = summary["groups"]
  decision = summary["decision"]
  blocks = [
    heading("Study report", 1),
    para(
      f"{summary['num_runs']} runs in {len(groups)} configs under {summary['root']}. "
      "Val accuracy is the best epoch's, mean ± sample std over seeds; test accuracy is the "
      "seed mean with a 95 % bootstrap interval over test faces."
    ),
    table(COMPARISON_HEADER, comparison_rows(groups, decision["winner"])),
    heading("Winner"),
    para(decision["verdict"]),
  ]
  if decision["tests"]:
    blocks.append(
      table(
        [
          "winner seed",
          "runner-up seed",
          "b (winner only right)",
          "c (runner-up only right)",
          "statistic",
          "p",
          "test",
        ],
        [
          [
            t["seed_winner"],
            t["seed_other"],
            t["b"],
            t["c"],
            f"{t['statistic']:.3f}",
            f"{t['p_value']:.4g}",
            t["method"],
          ]
          for t in decision["tests"]
        ],
      )
    )
  blocks += [
    image(STUDY_PLOTS["comparison"], "val and test accuracy per config"),
    heading("Training curves"),
    image(STUDY_PLOTS["curves"], "val curves of every run"),
    heading("Confusion matrices (test, all seeds pooled)"),
    image(STUDY_PLOTS["confusions"], "confusion matrices"),
  ]
  calibrated = [g for g in groups if "calibration" in g]
  if calibrated:
    blocks += [
      heading("Calibration and the confidence rule"),
      para(
        "ECE, NLL, Brier and reliability pool the test predictions of all seeds, raw and after "
        "each run's temperature scaling (T, fitted on val; the mean over seeds). The rule answers "
        "only faces whose top probability reaches the threshold; the rest are \"uncertain\"."
      ),
      table(
        [
          "config",
          "T",
          "ECE raw",
          "ECE cal.",
          "NLL raw",
          "NLL cal.",
          "Brier raw",
          "Brier cal.",
          "threshold",
          "faces answered raw",
          "faces answered cal.",
          "accuracy of answers cal.",
        ],
        [
          [
            g["name"],
            seeds.pm(g["temperature"], scale=1, fmt=".3f", unit=""),
            *(
              f"{g[p + 'calibration'][k]:.4f}"
              for k in ("ece", "nll", "brier")
              for p in ("raw_", "")
            ),
            f"{g['confidence_rule']['threshold']:.2f}",
            pct(g["raw_confidence_rule"]["coverage"], 1),
            pct(g["confidence_rule"]["coverage"], 1),
            pct(g["confidence_rule"]["accuracy"], 1),
          ]
          for g in calibrated
        ],
      ),
      image(STUDY_PLOTS["reliability_raw"], "reliability diagrams, raw"),
      image(STUDY_PLOTS["reliability"], "reliability diagrams, calibrated"),
      image(
        STUDY_PLOTS["coverage_raw"], "coverage and accuracy against the confidence threshold, raw"
      ),
      image(
        STUDY_PLOTS["coverage"],
        "coverage and accuracy against the confidence threshold, calibrated",
      ),
    ]
  blocks += seeds.ensemble_blocks(groups, STUDY_RULE_THRESHOLD)
  blocks += [heading("Runs"), bullets(f"{g['name']}: " + ", ".join(g["runs"]) for g in groups)]
  return blocks


def closing_lines(summary, out):
  """What the report's command and a sweep print last: the verdict, a line per seed ensemble and
  where the report is."""
  return [
    summary["decision"]["verdict"],
    *seeds.ensemble_lines(summary["groups"]),
    f"report: {os.path.join(out, 'report.md')} and report.html",
  ]


def write_study_report(root, out=None, max_gap=WINNER_MAX_GAP):
  """Aggregates every run under `root`; writes report.md, report.html, summary.json and PNGs to
  `out`."""
  out = out or root
  os.makedirs(out, exist_ok=True)
  summary, runs_by_group = aggregate(root, max_gap)
  groups = summary["groups"]
  path = lambda key: os.path.join(out, STUDY_PLOTS[key])  # noqa: E731
  plots.overlaid_curves(
    [(g["name"], [r["history"] for r in runs_by_group[g["name"]]]) for g in groups], path("curves")
  )
  bars = []
  for g in groups:
    ci = g.get("test_ci") or {"low": g["test_accuracy"]["mean"], "high": g["test_accuracy"]["mean"]}
    bars.append(
      {
        "label": g["name"],
        "val_mean": 100 * g["val_accuracy"]["mean"],
        "val_std": 100 * (g["val_accuracy"]["std"] or 0.0),
        "test_mean": 100 * g["test_accuracy"]["mean"],
        "test_low": 100 * ci["low"],
        "test_high": 100 * ci["high"],
      }
    )
  plots.comparison_bars(bars, path("comparison"))
  plots.confusion_grid(
    [(g["name"], g["confusion_normalized"], g["classes"]) for g in groups], path("confusions")
  )
  calibrated = [g for g in groups if "calibration" in g]
  if calibrated:
    threshold = calibrated[0]["confidence_rule"]["threshold"]
    for prefix, suffix in (("", ""), ("raw_", "_raw")):
      plots.reliability(
        [(g["name"], g[prefix + "calibration"]) for g in calibrated], path("reliability" + suffix)
      )
      plots.coverage_accuracy(
        [(g["name"], g[prefix + "coverage_curve"]) for g in calibrated],
        path("coverage" + suffix),
        threshold,
      )
  blocks = study_blocks(summary)
  with open(os.path.join(out, "report.md"), "w") as f:
    f.write(to_markdown(blocks))
  with open(os.path.join(out, "report.html"), "w") as f:
    f.write(to_html(blocks, out, "fer_jax study report"))
  with open(os.path.join(out, "summary.json"), "w") as f:
    json.dump(summary, f, indent=1)
  return summary
