"""Run reports and study aggregation, on run directories written here with the documented schema."""

import json
import os
import subprocess
import sys

import ml_collections
import numpy as np
import pytest
from PIL import Image

from fer_jax.evals import calibration, metrics
from fer_jax.report import render, run_report, study
from tests.conftest import gaussian_logits

CLASSES = ("happy", "neutral", "sad", "surprise")


def _fake_logits(rng, n, skill):
  """(labels, logits): more accurate for a higher `skill`, overconfident (twice the calibrated
  logits)."""
  labels = np.arange(n, dtype=np.int32) % len(CLASSES)
  return labels, gaussian_logits(rng, labels, separation=2 * skill, sharpness=2.0)


def fake_run(
  workdir, name, seed, skill, gap=3.0, epochs=4, n_test=200, variant="", target_accuracy=0.0
):
  """Writes metrics.json, metrics.jsonl, test_ and val_predictions.npz and calibration.json as a
  run does.

  `skill` is the chance that a test face is predicted right; the test labels are the same
  for every run (one test set), the predictions depend on the seed. T is fitted on a val set
  drawn like test.
  """
  os.makedirs(os.path.join(workdir, "checkpoints"), exist_ok=True)
  rng = np.random.default_rng(seed + int(1000 * skill))
  labels, logits = _fake_logits(rng, n_test, skill)
  val_labels, val_logits = _fake_logits(rng, 200, skill)
  eval_config = ml_collections.ConfigDict(
    {"confidence_threshold": 0.7, "threshold_target_accuracy": target_accuracy}
  )
  cal, cal_record = calibration.calibrate(val_logits, val_labels, eval_config)
  calibration.save(workdir, cal)
  for split, split_labels, split_logits in (
    ("test", labels, logits),
    ("val", val_labels, val_logits),
  ):
    arrays = calibration.prediction_arrays("", split_logits, cal.temperature)
    np.savez(
      os.path.join(workdir, f"{split}_predictions.npz"),
      labels=split_labels,
      **{k: np.asarray(v, np.float32) for k, v in arrays.items()},
    )
  raw_probs = calibration.probabilities(logits).astype(np.float32)
  probs = calibration.probabilities(logits, cal.temperature).astype(np.float32)
  history = []
  for e in range(1, epochs + 1):
    val = skill * e / epochs
    history.append(
      {
        "epoch": e,
        "train_loss": 1.5 / e,
        "train_accuracy": val + gap / 100,
        "val_loss": 1.6 / e,
        "val_accuracy": val,
        "gap": gap,
        "lr": 5e-4 / e,
        "epoch_time_s": 10.0,
        "images_per_s": 120.0,
      }
    )
  with open(os.path.join(workdir, "metrics.jsonl"), "w") as f:
    f.writelines(json.dumps(h) + "\n" for h in history)
  test = metrics.classification_metrics(labels, probs, CLASSES, cal.threshold)
  test["loss"] = 0.75
  best = history[-1]
  eval_gap = gap + 1.0
  summary = {
    "name": name,
    "variant": variant,
    "config_file": f"configs/{name}.py",
    "seed": seed,
    "classes": list(CLASSES),
    "dataset": {"name": "builtin", "sizes": {"train": 800, "val": 100, "test": n_test}},
    "params": {"total": 3509444, "trainable": 3507140, "non_trainable": 2304},
    "best": {
      "epoch": best["epoch"],
      "val_accuracy": best["val_accuracy"],
      "val_loss": best["val_loss"],
      "train_accuracy": best["train_accuracy"],
      "train_loss": best["train_loss"],
      "gap": gap,
      "train_accuracy_eval": best["val_accuracy"] + eval_gap / 100,
      "gap_eval": eval_gap,
      "train_eval_images": 100,
    },
    "gap_diagnosis": metrics.gap_diagnosis(gap, eval_gap),
    "calibration": cal_record,
    "test": test,
    "test_raw": metrics.confidence_metrics(labels, raw_probs, cal.threshold),
    "epochs_run": epochs,
    "stopped_early": False,
    "wall_time_s": 42.0,
    "time_per_epoch_s": 10.0,
    "images_per_s": 120.0,
    "system": {"jax": "0.10.2", "devices": "1 x cpu"},
  }
  with open(os.path.join(workdir, "metrics.json"), "w") as f:
    json.dump(summary, f)
  return summary, history


def report_error(root):
  """The one line `python -m fer_jax.report root` fails with (no traceback)."""
  result = subprocess.run(
    [sys.executable, "-m", "fer_jax.report", str(root)], capture_output=True, text=True, timeout=120
  )
  assert result.returncode != 0 and "Traceback" not in result.stderr, result.stderr
  (line,) = result.stderr.strip().splitlines()
  return line


def _assert_png(path):
  with Image.open(path) as im:
    im.verify()
  with Image.open(path) as im:
    assert im.format == "PNG" and im.size[0] > 200 and im.size[1] > 200


def test_run_report(tmp_path):
  summary, history = fake_run(tmp_path, "b_pp", 0, skill=0.8, gap=4.6, variant="quick")
  run_report.write_run_report(str(tmp_path), summary, history)
  for png in run_report.RUN_PLOTS.values():
    _assert_png(tmp_path / png)
  md = (tmp_path / "report.md").read_text()
  test = summary["test"]
  for needle in [
    "b_pp:quick",
    "best val accuracy",
    "80.00 %",
    "+4.6 points (healthy)",
    f"{100 * test['accuracy']:.2f} %",
    "0.7500",
    f"{test['macro_f1']:.3f}",
    "3,509,444",
    "2,304",
    "42.0 s",
    "10.0 s",
    "120.0",
    "jax: 0.10.2",
    f"{test['per_class']['sad']['precision']:.3f}",
    "weighted avg",
    "Main confusions",
    "At confidence ≥ 0.70",
    "curves.png",
    "confusion.png",
    "reliability.png",
    "coverage.png",
    "eval mode, 100 train faces",
    "+5.6 points",
  ]:
    assert needle in md, needle
  # The report reads T and shows every score raw and calibrated.
  raw = summary["test_raw"]
  assert f"T = {summary['calibration']['temperature']:.3f}" in md
  for key in ("ece", "nll", "brier"):
    assert f"{raw['calibration'][key]:.4f} | {test['calibration'][key]:.4f}" in md, key
  assert (
    test["calibration"]["ece"] < raw["calibration"]["ece"]
  )  # overconfident fake, calibrated on val
  for label, rule in (
    ("Calibrated", test["confidence_rule"]),
    ("Raw, before temperature scaling", raw["confidence_rule"]),
  ):
    assert (
      f"{label}: At confidence ≥ 0.70, {100 * rule['coverage']:.1f} % of faces get an answer" in md
    )
    assert f"{100 * rule['accuracy']:.1f} % of those answers are right" in md


def test_run_report_with_a_threshold_from_a_target_accuracy(tmp_path):
  summary, history = fake_run(tmp_path, "b_pp", 0, skill=0.8, target_accuracy=0.9)
  run_report.write_run_report(str(tmp_path), summary, history)
  md = (tmp_path / "report.md").read_text()
  cal, rule = summary["calibration"], summary["test"]["confidence_rule"]
  assert cal["val_rule"]["accuracy"] >= 0.9 and rule["threshold"] == cal["threshold"] != 0.7
  assert calibration.load(str(tmp_path), 0.7).threshold == cal["threshold"]
  assert (
    f"Threshold {cal['threshold']:.2f}: the lowest whose answered val faces (calibrated) are "
    "right at least 90.0 %" in md
  )
  assert (
    f"Calibrated: At confidence ≥ {cal['threshold']:.2f}, {100 * rule['coverage']:.1f} % of "
    "faces get an answer" in md
  )


def test_markdown_and_html_render_the_same_blocks(tmp_path):
  Image.new("RGB", (4, 4)).save(tmp_path / "x.png")
  blocks = [
    render.heading("T", 1),
    render.para("a < b"),
    render.bullets(["one"]),
    render.table(["h1", "h2"], [[1, 2]]),
    render.image("x.png", "pic"),
  ]
  md = render.to_markdown(blocks)
  assert "# T" in md and "| h1 | h2 |" in md and "| 1 | 2 |" in md and "- one" in md
  assert "![pic](x.png)" in md
  page = render.to_html(blocks, str(tmp_path), "t")
  assert "<h1>T</h1>" in page and "a &lt; b" in page and "<td>2</td>" in page
  assert "data:image/png;base64," in page


def _fake_study(root):
  # Model "a" has the best val accuracy but overfits (gap > 10): the rule must skip it.
  for name, skill, gap in [("a", 0.90, 14.6), ("b_p", 0.85, 4.6), ("b_pp", 0.84, 2.0)]:
    for seed in (0, 1):
      fake_run(
        os.path.join(root, name, f"seed{seed}"),
        name,
        seed,
        skill=skill + 0.01 * seed,
        gap=gap + seed,
      )
  fake_run(os.path.join(root, "single"), "model_0", 42, skill=0.6, gap=-5.7)  # a lone launch.py run


def test_study_aggregation_and_report_text(tmp_path):
  # The PNGs and the HTML page are checked by the end-to-end sweep test (tests/test_sweep.py).
  _fake_study(str(tmp_path))
  summary, _ = study.aggregate(str(tmp_path))
  groups = {g["name"]: g for g in summary["groups"]}
  assert list(groups) == ["a", "b_p", "b_pp", "single"]  # best mean val accuracy first
  b_p = groups["b_p"]
  assert b_p["seeds"] == [0, 1] and b_p["runs"] == ["b_p/seed0", "b_p/seed1"]
  assert b_p["val_accuracy"]["mean"] == pytest.approx(0.855)
  assert b_p["val_accuracy"]["std"] == pytest.approx(np.std([0.85, 0.86], ddof=1))
  assert b_p["gap"]["mean"] == pytest.approx(5.1) and b_p["gap_diagnosis"] == "moderate overfit"
  ci = b_p["test_ci"]
  assert ci["low"] < b_p["test_accuracy"]["mean"] < ci["high"]
  assert groups["single"]["val_accuracy"]["std"] is None
  np.testing.assert_allclose(np.sum(b_p["confusion_normalized"], axis=1), 1.0)
  decision = summary["decision"]
  assert (decision["winner"], decision["runner_up"]) == ("b_p", "b_pp")
  assert len(decision["tests"]) == 2 and all(0 <= t["p_value"] <= 1 for t in decision["tests"])
  assert "distinguishable" in decision["verdict"]

  md = render.to_markdown(study.study_blocks(summary))
  for needle in [
    "b_p (winner)",
    "85.50 ± 0.71 %",
    f"[{100 * ci['low']:.2f}, {100 * ci['high']:.2f}] %",
    "+5.1, moderate overfit",
    "+15.1, severe overfit",
    "3,509,444",
    "10.0 s",
    "120.0",
    "McNemar",
    "runner-up b_pp",
    "ECE raw → calibrated",
    "answered at 0.7 (calibrated)",
    "answered cal.",
    "coverage.png",
    "coverage_raw.png",
    "reliability.png",
    "reliability_raw.png",
    "confusions.png",
    "curves.png",
    "comparison.png",
  ]:
    assert needle in md, needle
  # The study pools the calibrated probabilities and the raw ones, and reads each run's T.
  temps = [
    calibration.load(os.path.join(str(tmp_path), "b_p", f"seed{k}"), 0.7).temperature
    for k in (0, 1)
  ]
  assert b_p["temperature"]["mean"] == pytest.approx(np.mean(temps))
  assert b_p["calibration"]["ece"] < b_p["raw_calibration"]["ece"]
  row = study.comparison_rows([b_p])[0]
  assert row[-2] == f"{b_p['raw_calibration']['ece']:.4f} → {b_p['calibration']['ece']:.4f}"
  assert row[-1] == f"{100 * b_p['study_rule']['coverage']:.1f} %"
  assert json.loads(json.dumps(summary))["num_runs"] == 7  # summary.json is this dict


def test_mcnemar_pairs_only_runs_tested_on_one_set():
  """Two splits of equal class counts have equal label vectors: the fingerprint tells them apart
  (a run from before fingerprints is paired on its labels)."""
  rng = np.random.default_rng(0)
  labels = np.repeat(np.arange(4), 25)

  def run(seed, fingerprint):
    probs = rng.dirichlet(np.ones(4), size=labels.size).astype(np.float32)
    return {"labels": labels, "probs": probs, "fingerprint": fingerprint, "summary": {"seed": seed}}

  assert len(study.paired_tests([run(0, "split-a")], [run(0, "split-a")])) == 1
  assert study.paired_tests([run(0, "split-a")], [run(0, "split-b")]) == []
  assert len(study.paired_tests([run(0, "split-a")], [run(0, None)])) == 1
  other_labels = {**run(0, None), "labels": labels[::-1].copy()}
  assert study.paired_tests([run(0, None)], [other_labels]) == []


def test_no_eligible_winner_and_missing_predictions(tmp_path):
  fake_run(tmp_path / "a" / "seed0", "a", 0, skill=0.9, gap=12.0)
  os.remove(tmp_path / "a" / "seed0" / "test_predictions.npz")
  summary, _ = study.aggregate(str(tmp_path))
  assert summary["decision"]["winner"] is None and "no winner" in summary["decision"]["verdict"]
  assert "test_ci" not in summary["groups"][0] and "calibration" not in summary["groups"][0]
  summary, _ = study.aggregate(str(tmp_path), max_gap=15)
  assert summary["decision"]["winner"] == "a"
  assert "only config" in summary["decision"]["verdict"]
  assert "nothing to compare it with" in summary["decision"]["verdict"]
  test_cell = study.comparison_rows(summary["groups"], "a")[0][3]
  assert test_cell.endswith(" %") and "[" not in test_cell  # no interval without predictions
  # Beside a config over the gap limit, the winner is the only eligible one, not the only one.
  fake_run(tmp_path / "b" / "seed0", "b", 0, skill=0.95, gap=20.0)
  summary, _ = study.aggregate(str(tmp_path), max_gap=15)
  assert summary["decision"]["verdict"] == "a is the only config with a gap below 15 points."


def test_command_line_writes_the_study_report(tmp_path):
  fake_run(tmp_path / "runs" / "b_p" / "seed0", "b_p", 0, skill=0.85, gap=4.0)
  out = tmp_path / "out"
  result = subprocess.run(
    [sys.executable, "-m", "fer_jax.report", str(tmp_path / "runs"), f"--out={out}"],
    capture_output=True,
    text=True,
    timeout=120,
  )
  assert result.returncode == 0, result.stderr
  assert "| b_p (winner) | 1 |" in result.stdout and "only config" in result.stdout
  assert {"report.md", "report.html", "summary.json", *study.STUDY_PLOTS.values()} <= set(
    os.listdir(out)
  )


def test_runs_of_different_classes_are_named_with_their_classes(tmp_path):
  fake_run(tmp_path / "runs" / "a" / "seed0", "a", 0, skill=0.85)
  fake_run(tmp_path / "runs" / "b" / "seed0", "b", 0, skill=0.8)
  path = tmp_path / "runs" / "b" / "seed0" / "metrics.json"
  summary = json.loads(path.read_text())
  path.write_text(json.dumps({**summary, "classes": ["happy", "sad"]}))
  last = report_error(tmp_path / "runs")
  assert f"error: {tmp_path / 'runs'}: runs of different classes (" in last, last
  assert f"a/seed0: {', '.join(CLASSES)}; b/seed0: happy, sad)" in last, last


def test_runs_from_before_calibration_count_as_temperature_one(tmp_path):
  run_dir = tmp_path / "old" / "seed0"
  summary, _ = fake_run(run_dir, "old", 0, skill=0.8)
  with np.load(run_dir / "test_predictions.npz") as d:
    labels, raw = d["labels"], d["raw_probs"]
  np.savez(run_dir / "test_predictions.npz", labels=labels, probs=raw)  # what runs saved before
  for key in ("calibration", "test_raw"):
    del summary[key]
  (run_dir / "metrics.json").write_text(json.dumps(summary))
  (group,) = study.aggregate(str(tmp_path))[0]["groups"]
  assert group["temperature"]["mean"] == 1.0
  assert group["calibration"] == group["raw_calibration"] == metrics.calibration(labels, raw)
