"""Run and study reports: markdown for people, PNG plots, and a self-contained HTML page.

  python -m fer_jax.report runs/study [--out=DIR]    # aggregate every run under runs/study

A single run's report is written by the training loop through `write_run_report`.
A report is built as a list of blocks (heading, paragraph, bullets, table, image) and rendered
to markdown and, for studies, to HTML with the PNGs embedded; no markdown library is
a dependency, and the two renderers are a few lines each.
"""
import base64
import html
import json
import os

import numpy as np

from fer_jax import metrics
from fer_jax.history import read_history
from fer_jax import plots

RUN_PLOTS = {"curves": "curves.png", "confusion": "confusion.png", "reliability": "reliability.png"}


# --------------------------------------------------------------------------- formatting


def run_title(name, variant):
  """'b_pp' or 'b_pp:quick': how runs are named on the console and in reports."""
  return f"{name}:{variant}" if variant else name


def markdown_table(header, rows):
  """Lines of a Markdown table; cells are formatted with str()."""
  return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + [
      "| " + " | ".join(str(c) for c in row) + " |" for row in rows]

def pct(fraction, digits=2):
  return "—" if fraction is None else f"{100 * fraction:.{digits}f} %"


def num(value, fmt=",.0f"):
  return "—" if value is None else format(value, fmt)


def seconds(s):
  if s is None:
    return "—"
  return f"{s:.1f} s" if s < 120 else f"{s / 60:.1f} min"


def gap_text(gap):
  return f"{gap:+.1f} points ({metrics.gap_diagnosis(gap)})"


# --------------------------------------------------------------------------- documents

def heading(text, level=2):
  return ("heading", level, text)


def para(text):
  return ("para", text)


def bullets(items):
  return ("bullets", list(items))


def table(header, rows):
  return ("table", list(header), [list(map(str, r)) for r in rows])


def image(file, alt):
  return ("image", file, alt)


def to_markdown(blocks):
  out = []
  for block in blocks:
    kind = block[0]
    if kind == "heading":
      out.append("#" * block[1] + " " + block[2])
    elif kind == "para":
      out.append(block[1])
    elif kind == "bullets":
      out.append("\n".join(f"- {item}" for item in block[1]))
    elif kind == "table":
      out.append("\n".join(markdown_table(block[1], block[2])))
    elif kind == "image":
      out.append(f"![{block[2]}]({block[1]})")
  return "\n\n".join(out) + "\n"


def to_html(blocks, image_dir, title):
  """One HTML file with every image embedded as base64, readable offline and mailable."""
  out = []
  esc = html.escape
  for block in blocks:
    kind = block[0]
    if kind == "heading":
      out.append(f"<h{block[1]}>{esc(block[2])}</h{block[1]}>")
    elif kind == "para":
      out.append(f"<p>{esc(block[1])}</p>")
    elif kind == "bullets":
      out.append("<ul>" + "".join(f"<li>{esc(i)}</li>" for i in block[1]) + "</ul>")
    elif kind == "table":
      _, header, rows = block
      head = "".join(f"<th>{esc(h)}</th>" for h in header)
      body = "".join("<tr>" + "".join(f"<td>{esc(c)}</td>" for c in r) + "</tr>" for r in rows)
      out.append(f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")
    elif kind == "image":
      with open(os.path.join(image_dir, block[1]), "rb") as f:
        data = base64.b64encode(f.read()).decode("ascii")
      out.append(f'<img alt="{esc(block[2])}" src="data:image/png;base64,{data}">')
  style = ("body{font-family:sans-serif;max-width:1200px;margin:2em auto;padding:0 1em}"
           "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;"
           "padding:3px 8px;text-align:right}th{background:#f0f0f0}img{max-width:100%}")
  return (f"<!DOCTYPE html>\n<html><head><meta charset='utf-8'><title>{esc(title)}</title>"
          f"<style>{style}</style></head><body>\n" + "\n".join(out) + "\n</body></html>\n")


# --------------------------------------------------------------------------- test-set sections

def classification_table(test, classes):
  rows = [[c, f"{m['precision']:.3f}", f"{m['recall']:.3f}", f"{m['f1']:.3f}", m["support"]]
          for c, m in ((c, test["per_class"][c]) for c in classes)]
  n = test["num_examples"]
  macro = [sum(test["per_class"][c][k] for c in classes) / len(classes) for k in ("precision", "recall")]
  weighted = [sum(test["per_class"][c][k] * test["per_class"][c]["support"] for c in classes) / max(n, 1)
              for k in ("precision", "recall")]
  rows += [["accuracy", "", "", f"{test['accuracy']:.3f}", n],
           ["macro avg", f"{macro[0]:.3f}", f"{macro[1]:.3f}", f"{test['macro_f1']:.3f}", n],
           ["weighted avg", f"{weighted[0]:.3f}", f"{weighted[1]:.3f}", f"{test['weighted_f1']:.3f}", n]]
  return table(["class", "precision", "recall", "f1", "support"], rows)


def confusions_text(test):
  found = [f"{m['true']} → {m['predicted']}: {pct(m['rate'], 1)}" for m in test["main_confusions"]]
  pct_line = f"Misclassifications above {100 * metrics.MAIN_CONFUSION_RATE:.0f} % of a class:"
  return [para(pct_line), bullets(found)] if found else [para(pct_line + " none.")]


def rule_line(rule):
  if rule["accuracy"] is None:
    return f"At confidence ≥ {rule['threshold']:.2f} no face gets an answer (all are \"uncertain\")."
  return (f"At confidence ≥ {rule['threshold']:.2f}, {pct(rule['coverage'], 1)} of faces get an answer "
          f"({rule['answered']}); {pct(rule['accuracy'], 1)} of those answers are right; "
          f"the rest are answered \"uncertain\".")


def coverage_table(curve, step=2):
  rows = [[f"{c['threshold']:.2f}", pct(c["coverage"], 1), pct(c["accuracy"], 1)] for c in curve[::step]]
  return table(["threshold", "faces answered", "accuracy of answers"], rows)


def system_bullets(system):
  if not isinstance(system, dict):
    return bullets([str(system)])
  return bullets(f"{k}: {v}" for k, v in system.items())


# --------------------------------------------------------------------------- one run

def run_blocks(summary):
  best = summary["best"]
  test = summary["test"]
  classes = list(summary["classes"])
  params = summary["params"]
  title = run_title(summary["name"], summary.get("variant"))
  dataset = summary.get("dataset", {})
  sizes = ", ".join(f"{k} {v:,}" for k, v in dataset.get("sizes", {}).items())
  stop = " (stopped early)" if summary.get("stopped_early") else ""
  blocks = [
      heading(f"Run report: {title}, seed {summary.get('seed')}", 1),
      para(f"Config {summary.get('config_file') or title}; data {dataset.get('name', '?')} ({sizes})."),
      heading("Summary"),
      table(["metric", "value"], [
          ["best val accuracy", pct(best["val_accuracy"])],
          ["best epoch", f"{best['epoch']} of {summary.get('epochs_run', '?')}{stop}"],
          ["train accuracy at best", pct(best["train_accuracy"])],
          ["train − val gap", gap_text(best["gap"])],
          ["test accuracy", pct(test["accuracy"])],
          ["test loss", num(test.get("loss"), ".4f")],
          ["test macro F1", f"{test['macro_f1']:.3f}"],
      ]),
      heading("Training curves"),
      image(RUN_PLOTS["curves"], "accuracy, loss, gap and learning rate per epoch"),
      heading("Parameters"),
      table(["total", "trainable", "non-trainable"],
            [[num(params["total"]), num(params["trainable"]), num(params["non_trainable"])]]),
      heading("Timing"),
      table(["total", "per epoch", "images/s"],
            [[seconds(summary.get("wall_time_s")), seconds(summary.get("time_per_epoch_s")),
              num(summary.get("images_per_s"), ",.1f")]]),
      heading("Test set: classification report"),
      classification_table(test, classes),
      heading("Main confusions"),
      *confusions_text(test),
      image(RUN_PLOTS["confusion"], "normalised confusion matrix"),
      heading("Per-class accuracy"),
      table(classes, [[pct(test["per_class"][c]["accuracy"], 1) for c in classes]]),
      heading("Calibration"),
      para(f"Expected calibration error (ECE, {test['calibration']['num_bins']} bins): "
           f"{test['calibration']['ece']:.4f}."),
      image(RUN_PLOTS["reliability"], "reliability diagram"),
      heading("Deployment rule"),
      para(rule_line(test["confidence_rule"])),
      coverage_table(test["coverage_curve"]),
  ]
  if summary.get("system"):
    blocks += [heading("System"), system_bullets(summary["system"])]
  return blocks


def write_run_report(workdir, summary, history):
  """Writes report.md, curves.png, confusion.png and reliability.png of one run into `workdir`."""
  test = summary["test"]
  title = run_title(summary["name"], summary.get("variant"))
  path = lambda key: os.path.join(workdir, RUN_PLOTS[key])  # noqa: E731
  plots.training_curves(history, path("curves"), title)
  plots.confusion(test["confusion_normalized"], list(summary["classes"]), path("confusion"),
                  f"{title}: test, row-normalised")
  plots.reliability([(title, test["calibration"])], path("reliability"))
  with open(os.path.join(workdir, "report.md"), "w") as f:
    f.write(to_markdown(run_blocks(summary)))


# --------------------------------------------------------------------------- many runs

STUDY_PLOTS = {"curves": "curves.png", "comparison": "comparison.png", "confusions": "confusions.png",
               "reliability": "reliability.png", "coverage": "coverage.png"}
WINNER_MAX_GAP = 10.0  # the study's rule: best val accuracy among runs with gap < 10 points
SIGNIFICANCE = 0.05


def find_runs(root):
  """Every finished run under `root` (a directory holding metrics.json), sorted by path."""
  found = [dirpath for dirpath, _, files in os.walk(root) if "metrics.json" in files]
  return sorted(found)


def load_run(run_dir):
  """metrics.json, metrics.jsonl and (when present) test_predictions.npz of one run."""
  with open(os.path.join(run_dir, "metrics.json")) as f:
    summary = json.load(f)
  history = read_history(os.path.join(run_dir, "metrics.jsonl"))
  labels = probs = None
  npz = os.path.join(run_dir, "test_predictions.npz")
  if os.path.exists(npz):
    with np.load(npz, allow_pickle=False) as d:
      labels, probs = d["labels"], d["probs"]
  return {"dir": run_dir, "summary": summary, "history": history, "labels": labels, "probs": probs}


def group_name(root, run_dir):
  """Runs in `<group>/seed<k>/` share the group `<group>`; any other run is its own group."""
  rel = os.path.relpath(run_dir, root)
  head, tail = os.path.split(rel)
  if tail.startswith("seed") and tail[4:].isdigit() and head:
    return head
  return rel


def _mean_std(values):
  v = np.asarray([x for x in values if x is not None], np.float64)
  if v.size == 0:
    return {"mean": None, "std": None, "values": []}
  return {"mean": float(v.mean()), "std": float(v.std(ddof=1)) if v.size > 1 else None,
          "values": v.tolist()}


def _same_test_set(runs):
  """True when every run saved its test predictions, on one and the same test set."""
  first = runs[0]["labels"]
  return first is not None and all(
      r["labels"] is not None and r["labels"].shape == first.shape and (r["labels"] == first).all()
      for r in runs)


def summarize_group(name, runs):
  """Seed statistics of one group; test-set figures pool the seeds' predictions when saved."""
  s0 = runs[0]["summary"]
  classes = list(s0["classes"])
  sums = [r["summary"] for r in runs]
  conf = np.sum([s["test"]["confusion"] for s in sums], axis=0)
  g = {
      "name": name, "config": run_title(s0["name"], s0.get("variant")),
      "classes": classes, "seeds": [s.get("seed") for s in sums],
      "runs": [r["dir"] for r in runs],  # relative to the study root
      "val_accuracy": _mean_std(s["best"]["val_accuracy"] for s in sums),
      "test_accuracy": _mean_std(s["test"]["accuracy"] for s in sums),
      "test_loss": _mean_std(s["test"].get("loss") for s in sums),
      "macro_f1": _mean_std(s["test"]["macro_f1"] for s in sums),
      "gap": _mean_std(s["best"]["gap"] for s in sums),
      "best_epoch": _mean_std(s["best"]["epoch"] for s in sums),
      "params": s0["params"],
      "time_per_epoch_s": _mean_std(s.get("time_per_epoch_s") for s in sums),
      "images_per_s": _mean_std(s.get("images_per_s") for s in sums),
      "confusion_normalized": (conf / np.maximum(conf.sum(axis=1, keepdims=True), 1)).tolist(),
  }
  g["gap_diagnosis"] = metrics.gap_diagnosis(g["gap"]["mean"])
  if _same_test_set(runs):
    labels = runs[0]["labels"]
    preds = np.stack([r["probs"].argmax(axis=1) for r in runs])
    g["test_ci"] = metrics.bootstrap_accuracy_ci(labels, preds)
    pooled_labels = np.tile(labels, len(runs))
    pooled_probs = np.concatenate([r["probs"] for r in runs])
    threshold = s0["test"]["confidence_rule"]["threshold"]
    pooled = metrics.classification_metrics(pooled_labels, pooled_probs, classes, threshold)
    g["calibration"] = pooled["calibration"]
    g["confidence_rule"] = pooled["confidence_rule"]
    g["coverage_curve"] = pooled["coverage_curve"]
  return g


def paired_tests(winner_runs, other_runs):
  """McNemar per seed pair (seeds matched by order) on the test predictions."""
  out = []
  for a, b in zip(winner_runs, other_runs):
    if not _same_test_set([a, b]):
      continue
    r = metrics.mcnemar(a["labels"], a["probs"].argmax(axis=1), b["probs"].argmax(axis=1))
    out.append({"seed_winner": a["summary"].get("seed"), "seed_other": b["summary"].get("seed"), **r})
  return out


def pick_winner(groups, runs_by_group, max_gap=WINNER_MAX_GAP):
  """The study's rule, then McNemar of the winner against the runner-up under the same rule."""
  eligible = [g for g in groups if g["gap"]["mean"] is not None and g["gap"]["mean"] < max_gap]
  eligible.sort(key=lambda g: -g["val_accuracy"]["mean"])
  if not eligible:
    return {"winner": None, "runner_up": None, "tests": [], "verdict": (
        f"No config has a mean train − val gap below {max_gap:g} points: no winner.")}
  win = eligible[0]
  if len(eligible) == 1:
    return {"winner": win["name"], "runner_up": None, "tests": [], "verdict": (
        f"{win['name']} is the only config with a gap below {max_gap:g} points.")}
  second = eligible[1]
  tests = paired_tests(runs_by_group[win["name"]], runs_by_group[second["name"]])
  diff = 100 * (win["val_accuracy"]["mean"] - second["val_accuracy"]["mean"])
  stds = [100 * s for s in (win["val_accuracy"]["std"], second["val_accuracy"]["std"]) if s is not None]
  spread = f"; seed std up to {max(stds):.2f} points" if stds else "; one seed each, spread unknown"
  significant = sum(t["p_value"] < SIGNIFICANCE for t in tests)
  if tests:
    p_values = ", ".join(f"{t['p_value']:.3g}" for t in tests)
    test_text = (f"McNemar on the test predictions: p < {SIGNIFICANCE} in {significant} of {len(tests)} "
                 f"seed pairs (p = {p_values}), so the two are "
                 + ("distinguishable." if significant == len(tests) else "NOT reliably distinguishable."))
  else:
    test_text = "No paired test: the runs saved no test predictions on a common test set."
  return {"winner": win["name"], "runner_up": second["name"], "tests": tests,
          "distinguishable": bool(tests) and significant == len(tests),
          "verdict": (f"Winner {win['name']} (best mean val accuracy among gap < {max_gap:g}); "
                      f"runner-up {second['name']}, {diff:.2f} points behind{spread}. {test_text}")}


def aggregate(root, max_gap=WINNER_MAX_GAP):
  """Every run under `root` grouped and summarised; returns (summary dict, runs by group).

  The winner is the best mean val accuracy among configs whose mean gap is below `max_gap`.
  """
  dirs = find_runs(root)
  if not dirs:
    raise FileNotFoundError(f"{root}: no run directories (with metrics.json) found")
  runs_by_group = {}
  for d in dirs:
    run = load_run(d)
    run["dir"] = os.path.relpath(d, root)
    runs_by_group.setdefault(group_name(root, d), []).append(run)
  for runs in runs_by_group.values():
    runs.sort(key=lambda r: (r["summary"].get("seed") is None, r["summary"].get("seed")))
  groups = [summarize_group(name, runs) for name, runs in runs_by_group.items()]
  groups.sort(key=lambda g: -g["val_accuracy"]["mean"])  # best first, as the table reads
  summary = {"root": os.path.abspath(root), "num_runs": len(dirs), "groups": groups,
             "decision": pick_winner(groups, runs_by_group, max_gap)}
  return summary, runs_by_group


def _pm(stat, scale=100, fmt=".2f", unit=" %"):
  if stat["mean"] is None:
    return "—"
  text = f"{scale * stat['mean']:{fmt}}"
  if stat["std"] is not None:
    text += f" ± {scale * stat['std']:{fmt}}"
  return text + unit


COMPARISON_HEADER = ["config", "seeds", "val acc", "test acc [95 % CI]", "gap, diagnosis",
                     "best epoch", "params", "time/epoch", "images/s", "macro F1", "ECE"]


def comparison_rows(groups, winner=None):
  rows = []
  for g in groups:
    ci = g.get("test_ci")
    test = _pm(g["test_accuracy"], fmt=".2f", unit="")
    test += f" [{100 * ci['low']:.2f}, {100 * ci['high']:.2f}] %" if ci else " %"
    rows.append([g["name"] + (" (winner)" if g["name"] == winner else ""), len(g["seeds"]), _pm(g["val_accuracy"]), test,
                 f"{g['gap']['mean']:+.1f}, {g['gap_diagnosis']}",
                 _pm(g["best_epoch"], scale=1, fmt=".1f", unit=""), num(g["params"]["total"]),
                 seconds(g["time_per_epoch_s"]["mean"]), num(g["images_per_s"]["mean"], ",.1f"),
                 _pm(g["macro_f1"], scale=1, fmt=".3f", unit=""),
                 f"{g['calibration']['ece']:.4f}" if "calibration" in g else "—"])
  return rows


def study_blocks(summary):
  groups = summary["groups"]
  decision = summary["decision"]
  blocks = [
      heading("Study report", 1),
      para(f"{summary['num_runs']} runs in {len(groups)} configs under {summary['root']}. "
           "Val accuracy is the best epoch's, mean ± sample std over seeds; test accuracy is the "
           "seed mean with a 95 % bootstrap interval over test faces."),
      table(COMPARISON_HEADER, comparison_rows(groups, decision["winner"])),
      heading("Winner"),
      para(decision["verdict"]),
  ]
  if decision["tests"]:
    blocks.append(table(["winner seed", "runner-up seed", "b (winner only right)", "c (runner-up only right)",
                         "statistic", "p", "test"],
                        [[t["seed_winner"], t["seed_other"], t["b"], t["c"], f"{t['statistic']:.3f}",
                          f"{t['p_value']:.4g}", t["method"]] for t in decision["tests"]]))
  blocks += [image(STUDY_PLOTS["comparison"], "val and test accuracy per config"),
             heading("Training curves"), image(STUDY_PLOTS["curves"], "val curves of every run"),
             heading("Confusion matrices (test, all seeds pooled)"),
             image(STUDY_PLOTS["confusions"], "confusion matrices")]
  calibrated = [g for g in groups if "calibration" in g]
  if calibrated:
    blocks += [
        heading("Calibration and the confidence rule"),
        para("ECE and reliability pool the test predictions of all seeds. The rule answers only "
             "faces whose top probability reaches the threshold; the rest are \"uncertain\"."),
        table(["config", "ECE", "threshold", "faces answered", "accuracy of answers"],
              [[g["name"], f"{g['calibration']['ece']:.4f}", f"{g['confidence_rule']['threshold']:.2f}",
                pct(g["confidence_rule"]["coverage"], 1), pct(g["confidence_rule"]["accuracy"], 1)]
               for g in calibrated]),
        image(STUDY_PLOTS["reliability"], "reliability diagrams"),
        image(STUDY_PLOTS["coverage"], "coverage and accuracy against the confidence threshold")]
  blocks += [heading("Runs"), bullets(f"{g['name']}: " + ", ".join(g["runs"]) for g in groups)]
  return blocks


def write_study_report(root, out=None, max_gap=WINNER_MAX_GAP):
  """Aggregates every run under `root`; writes report.md, report.html, summary.json and PNGs to `out`."""
  out = out or root
  os.makedirs(out, exist_ok=True)
  summary, runs_by_group = aggregate(root, max_gap)
  groups = summary["groups"]
  path = lambda key: os.path.join(out, STUDY_PLOTS[key])  # noqa: E731
  plots.overlaid_curves([(g["name"], [r["history"] for r in runs_by_group[g["name"]]]) for g in groups],
                        path("curves"))
  bars = []
  for g in groups:
    ci = g.get("test_ci") or {"low": g["test_accuracy"]["mean"], "high": g["test_accuracy"]["mean"]}
    bars.append({"label": g["name"], "val_mean": 100 * g["val_accuracy"]["mean"],
                 "val_std": 100 * (g["val_accuracy"]["std"] or 0.0),
                 "test_mean": 100 * g["test_accuracy"]["mean"],
                 "test_low": 100 * ci["low"], "test_high": 100 * ci["high"]})
  plots.comparison_bars(bars, path("comparison"))
  plots.confusion_grid([(g["name"], g["confusion_normalized"], g["classes"]) for g in groups],
                       path("confusions"))
  calibrated = [g for g in groups if "calibration" in g]
  if calibrated:
    plots.reliability([(g["name"], g["calibration"]) for g in calibrated], path("reliability"))
    plots.coverage_accuracy([(g["name"], g["coverage_curve"]) for g in calibrated], path("coverage"),
                            calibrated[0]["confidence_rule"]["threshold"])
  blocks = study_blocks(summary)
  with open(os.path.join(out, "report.md"), "w") as f:
    f.write(to_markdown(blocks))
  with open(os.path.join(out, "report.html"), "w") as f:
    f.write(to_html(blocks, out, "fer_jax study report"))
  with open(os.path.join(out, "summary.json"), "w") as f:
    json.dump(summary, f, indent=1)
  return summary


def main():
  # Flags are defined here, not at import, so that train.py importing this module adds none.
  from absl import app
  from absl import flags
  out_flag = flags.DEFINE_string("out", None, "where to write the report (default: the runs directory)")
  gap_flag = flags.DEFINE_float("max_gap", WINNER_MAX_GAP, "winner: best val accuracy among mean gap < this")

  def run(argv):
    if len(argv) != 2:
      raise app.UsageError("usage: python -m fer_jax.report RUNS_DIR [--out=DIR]")
    root = argv[1]
    out = out_flag.value or root
    summary = write_study_report(root, out, gap_flag.value)
    rows = comparison_rows(summary["groups"], summary["decision"]["winner"])
    print(to_markdown([table(COMPARISON_HEADER, rows)]))
    print(summary["decision"]["verdict"])
    print(f"report: {os.path.join(out, 'report.md')} and report.html")

  app.run(run)


if __name__ == "__main__":
  main()
