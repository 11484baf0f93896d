"""One run's report: report.md with the test-set sections, curves, confusion and reliability
PNGs."""

import os

from fer_jax.evals import metrics
from fer_jax.report import plots
from fer_jax.report.render import (
  bullets,
  gap_text,
  heading,
  image,
  num,
  para,
  pct,
  run_title,
  seconds,
  table,
  to_markdown,
)

RUN_PLOTS = {
  "curves": "curves.png",
  "confusion": "confusion.png",
  "reliability": "reliability.png",
  "coverage": "coverage.png",
}


def classification_table(test, classes):
  # A class without test images has no recall (and so no F1): say so rather than print 0.
  def undefined(m, k):
    return f"{m[k]:.3f}" if m["support"] else "no test images"

  rows = [
    [c, f"{m['precision']:.3f}", undefined(m, "recall"), undefined(m, "f1"), m["support"]]
    for c, m in ((c, test["per_class"][c]) for c in classes)
  ]
  n = test["num_examples"]
  macro = [
    sum(test["per_class"][c][k] for c in classes) / len(classes) for k in ("precision", "recall")
  ]
  weighted = [
    sum(test["per_class"][c][k] * test["per_class"][c]["support"] for c in classes) / max(n, 1)
    for k in ("precision", "recall")
  ]
  rows += [
    ["accuracy", "", "", f"{test['accuracy']:.3f}", n],
    ["macro avg", f"{macro[0]:.3f}", f"{macro[1]:.3f}", f"{test['macro_f1']:.3f}", n],
    ["weighted avg", f"{weighted[0]:.3f}", f"{weighted[1]:.3f}", f"{test['weighted_f1']:.3f}", n],
  ]
  return table(["class", "precision", "recall", "f1", "support"], rows)


def confusions_text(test):
  found = [f"{m['true']} → {m['predicted']}: {pct(m['rate'], 1)}" for m in test["main_confusions"]]
  pct_line = f"Misclassifications above {100 * metrics.MAIN_CONFUSION_RATE:.0f} % of a class:"
  return [para(pct_line), bullets(found)] if found else [para(pct_line + " none.")]


def rule_line(rule):
  if rule["accuracy"] is None:
    return (
      f"At confidence ≥ {rule['threshold']:.2f} no face gets an answer (all are \"uncertain\")."
    )
  return (
    f"At confidence ≥ {rule['threshold']:.2f}, {pct(rule['coverage'], 1)} of faces get an answer "
    f"({rule['answered']}); {pct(rule['accuracy'], 1)} of those answers are right; "
    f"the rest are answered \"uncertain\"."
  )


def coverage_table(raw_curve, calibrated_curve, step=2):
  rows = [
    [
      f"{r['threshold']:.2f}",
      pct(r["coverage"], 1),
      pct(r["accuracy"], 1),
      pct(c["coverage"], 1),
      pct(c["accuracy"], 1),
    ]
    for r, c in zip(raw_curve[::step], calibrated_curve[::step])
  ]
  return table(
    [
      "threshold",
      "answered (raw)",
      "accuracy of answers (raw)",
      "answered (calibrated)",
      "accuracy of answers (calibrated)",
    ],
    rows,
  )


def calibration_blocks(summary):
  """Temperature, raw vs calibrated scores on val and test, and the reliability diagram."""
  cal, raw, test = (
    summary["calibration"],
    summary["test_raw"]["calibration"],
    summary["test"]["calibration"],
  )
  val_raw, val_cal = cal["val_raw"], cal["val_calibrated"]
  rows = [
    [f"{split} {name}", f"{a[key]:.4f}", f"{b[key]:.4f}"]
    for split, a, b in (("test", raw, test), ("val", val_raw, val_cal))
    for name, key in ((f"ECE ({test['num_bins']} bins)", "ece"), ("NLL", "nll"), ("Brier", "brier"))
  ]
  return [
    para(
      f"Temperature scaling: T = {cal['temperature']:.3f}, fitted on the best checkpoint's val "
      "logits (minimum val NLL). T > 1 softens overconfident probabilities, T < 1 sharpens "
      "underconfident ones; the predicted classes do not change. Every other probability in "
      "this report, and `probs` in test_predictions.npz, is calibrated; `raw_probs` holds the "
      "ones before."
    ),
    table(["", "raw", "calibrated"], rows),
    image(RUN_PLOTS["reliability"], "reliability diagram, raw and calibrated"),
  ]


def rule_blocks(summary):
  """The confidence rule on test, raw and calibrated, and where its threshold came from."""
  cal, raw, test = summary["calibration"], summary["test_raw"], summary["test"]
  target = cal["threshold_target_accuracy"]
  if target:
    val = cal["val_rule"]
    source = (
      f"Threshold {cal['threshold']:.2f}: the lowest whose answered val faces (calibrated) are "
      f"right at least {pct(target, 1)} of the time (on val: {pct(val['coverage'], 1)} answered, "
      f"{pct(val['accuracy'], 1)} of them right)."
    )
  else:
    source = f"Threshold {cal['threshold']:.2f}, as configured (config.eval.confidence_threshold)."
  return [
    para(source),
    para("Calibrated: " + rule_line(test["confidence_rule"])),
    para("Raw, before temperature scaling: " + rule_line(raw["confidence_rule"])),
    coverage_table(raw["coverage_curve"], test["coverage_curve"]),
    image(
      RUN_PLOTS["coverage"],
      "faces answered and their accuracy against the threshold, raw and calibrated",
    ),
  ]


def eval_mode_rows(best):
  """The train accuracy and gap in eval mode (none when config.evals has no train_gap entry)."""
  if "gap_eval" not in best:
    return []
  return [
    [
      f"train accuracy at best (eval mode, {best['train_eval_images']} train faces)",
      pct(best["train_accuracy_eval"]),
    ],
    ["train − val gap (eval mode)", f"{best['gap_eval']:+.1f} points"],
  ]


def weights_text(weights):
  if weights == "plain":
    return "the live weights"
  decay = weights.split()[-1]
  return f"EMA of the parameters and BatchNorm statistics, decay {decay} (best epoch chosen by it)"


def tta_rows(summary):
  """Test-time augmentation's figures beside the plain ones (none when config.eval.tta is none)."""
  if "test_tta" not in summary:
    return []
  tta, raw, val = summary["test_tta"], summary["test_tta_raw"], summary["calibration"]["tta"]
  views = f"TTA {tta['views']}, {tta['num_views']} views"
  rule = tta["confidence_rule"]
  return [
    [
      f"val accuracy with {views} (plain)",
      f"{pct(val['accuracy'])} ({pct(val['plain_accuracy'])})",
    ],
    [f"test accuracy with {views}", pct(tta["accuracy"])],
    [f"test macro F1 with {views}", f"{tta['macro_f1']:.3f}"],
    [
      f"test ECE with {views}, raw → calibrated (T = {val['temperature']:.3f})",
      f"{raw['calibration']['ece']:.4f} → {tta['calibration']['ece']:.4f}",
    ],
    [f"answered at {rule['threshold']:.2f} with {views}", pct(rule["coverage"], 1)],
  ]


def system_bullets(system):
  if not isinstance(system, dict):
    return bullets([str(system)])
  return bullets(f"{k}: {v}" for k, v in system.items())


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
    para(
      f"Config {summary.get('config_file') or title}; data {dataset.get('name', '?')} ({sizes})."
    ),
    heading("Summary"),
    table(
      ["metric", "value"],
      [
        ["best val accuracy", pct(best["val_accuracy"])],
        ["best epoch", f"{best['epoch']} of {summary.get('epochs_run', '?')}{stop}"],
        ["train accuracy at best (running, train mode)", pct(best["train_accuracy"])],
        ["train − val gap", gap_text(best["gap"], best.get("gap_eval"))],
        *eval_mode_rows(best),
        ["weights evaluated", weights_text(summary.get("weights", "plain"))],
        ["test accuracy", pct(test["accuracy"])],
        ["test loss", num(test.get("loss"), ".4f")],
        ["test macro F1", f"{test['macro_f1']:.3f}"],
        *tta_rows(summary),
      ],
    ),
    heading("Training curves"),
    image(RUN_PLOTS["curves"], "accuracy, loss, gap and learning rate per epoch"),
    heading("Parameters"),
    table(
      ["total", "trainable", "non-trainable"],
      [[num(params["total"]), num(params["trainable"]), num(params["non_trainable"])]],
    ),
    heading("Timing"),
    table(
      ["total", "per epoch", "images/s"],
      [
        [
          seconds(summary.get("wall_time_s")),
          seconds(summary.get("time_per_epoch_s")),
          num(summary.get("images_per_s"), ",.1f"),
        ]
      ],
    ),
    heading("Test set: classification report"),
    classification_table(test, classes),
    heading("Main confusions"),
    *confusions_text(test),
    image(RUN_PLOTS["confusion"], "normalised confusion matrix"),
    heading("Per-class accuracy"),
    table(classes, [[pct(test["per_class"][c]["accuracy"], 1) for c in classes]]),
    heading("Calibration"),
    *calibration_blocks(summary),
    heading("Deployment rule"),
    *rule_blocks(summary),
  ]
  if summary.get("system"):
    blocks += [heading("System"), system_bullets(summary["system"])]
  return blocks


def write_run_report(workdir, summary, history):
  """Writes report.md, curves.png, confusion.png, reliability.png and coverage.png of one run
  into `workdir`."""
  test, raw = summary["test"], summary["test_raw"]
  title = run_title(summary["name"], summary.get("variant"))
  path = lambda key: os.path.join(workdir, RUN_PLOTS[key])  # noqa: E731
  plots.training_curves(history, path("curves"), title)
  plots.confusion(
    test["confusion_normalized"],
    list(summary["classes"]),
    path("confusion"),
    f"{title}: test, row-normalised",
  )
  calibrated = f"calibrated, T = {summary['calibration']['temperature']:.2f}"
  plots.reliability(
    [("raw", raw["calibration"]), (calibrated, test["calibration"])], path("reliability")
  )
  plots.coverage_accuracy(
    [("raw", raw["coverage_curve"]), (calibrated, test["coverage_curve"])],
    path("coverage"),
    summary["calibration"]["threshold"],
  )
  with open(os.path.join(workdir, "report.md"), "w") as f:
    f.write(to_markdown(run_blocks(summary)))
