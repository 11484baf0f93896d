"""Seed ensembles in the study report (fer_jax/report/seeds.py): the mean of the members'
calibrated test probabilities, beside each member, on run directories written as runs write
them."""

import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from fer_jax.evals import calibration, metrics
from fer_jax.report import render, seeds, study
from tests.test_report import fake_run, report_error


def _npz(run_dir, split="test"):
  with np.load(os.path.join(run_dir, f"{split}_predictions.npz")) as d:
    return dict(d)


def _rewrite_npz(run_dir, split="test", **changes):
  arrays = {**_npz(run_dir, split), **changes}
  np.savez(os.path.join(run_dir, f"{split}_predictions.npz"), **arrays)


def _calibrated_mean(runs, val_runs, key="probs"):
  """What the ensemble should report: the members' mean test probabilities, with the temperature
  fitted on their mean val probabilities."""
  mean = np.mean([r[key] for r in runs], axis=0, dtype=np.float64)
  val_mean = np.mean([r[key] for r in val_runs], axis=0, dtype=np.float64)
  t = calibration.fit_temperature(np.log(val_mean), val_runs[0]["labels"])
  return mean, t, calibration.probabilities(np.log(mean), t)


def _group(root, name="b_pp"):
  summary, _ = study.aggregate(str(root))
  return next(g for g in summary["groups"] if g["name"] == name), summary


def test_an_ensemble_of_identical_members_equals_one_member(tmp_path):
  fake_run(tmp_path / "b_pp" / "seed0", "b_pp", 0, skill=0.8)
  shutil.copytree(tmp_path / "b_pp" / "seed0", tmp_path / "b_pp" / "seed1")
  group, _ = _group(tmp_path)
  e = group["ensemble"]["plain"]
  d = _npz(tmp_path / "b_pp" / "seed0")
  one = metrics.calibration(d["labels"], d["probs"])
  assert e["members"] == 2 and e["accuracy"] == group["test_accuracy"]["mean"]
  assert e["gain"] == 0 and e["gain_over_best"] == 0 and e["member_accuracy"]["std"] == 0
  # The members are calibrated already: the ensemble's own temperature changes nothing.
  assert e["temperature"] == pytest.approx(1.0, abs=1e-3)
  assert e["uncalibrated_ece"] == pytest.approx(one["ece"])
  assert e["ece"] == pytest.approx(one["ece"], abs=1e-4)
  assert e["nll"] == pytest.approx(one["nll"], abs=1e-4)
  rule = metrics.confidence_rule(d["labels"], d["probs"], 0.7)
  assert e["rule"]["coverage"] == rule["coverage"] == e["member_coverage"]["mean"]
  assert "TTA" not in group["ensemble"]  # the runs had no test-time augmentation


def test_members_of_different_seeds_are_reported_with_the_ensembles_gain(tmp_path):
  dirs = [tmp_path / "b_pp" / f"seed{seed}" for seed in (0, 1, 2)]
  for seed, run_dir in enumerate(dirs):
    fake_run(run_dir, "b_pp", seed, skill=0.6)
    for split in ("test", "val"):  # TTA probabilities: a little sharper, say
      _rewrite_npz(run_dir, split, tta_probs=_npz(run_dir, split)["probs"] ** 2)
  fake_run(tmp_path / "single", "model_0", 42, skill=0.6)  # one run: no ensemble
  group, summary = _group(tmp_path)
  runs, val_runs = [_npz(d) for d in dirs], [_npz(d, "val") for d in dirs]
  labels = runs[0]["labels"]
  mean, t, calibrated = _calibrated_mean(runs, val_runs)
  members = [np.mean(r["probs"].argmax(1) == labels) for r in runs]
  e = group["ensemble"]["plain"]
  assert e["member_accuracy"]["values"] == pytest.approx(members)
  assert e["accuracy"] == pytest.approx(np.mean(mean.argmax(1) == labels))
  assert e["gain"] == pytest.approx(e["accuracy"] - np.mean(members)) and e["gain"] > 0
  assert e["gain_over_best"] == pytest.approx(e["accuracy"] - max(members))
  assert e["uncalibrated_ece"] == pytest.approx(metrics.calibration(labels, mean)["ece"])
  assert e["temperature"] == pytest.approx(t)
  assert e["ece"] == pytest.approx(metrics.calibration(labels, calibrated)["ece"])
  rule = metrics.confidence_rule(labels, calibrated, 0.7)
  assert e["rule"]["coverage"] == pytest.approx(rule["coverage"])
  # Members that disagree: their mean is under-confident, which the ensemble's temperature mends.
  assert t < 1 and e["ece"] < e["uncalibrated_ece"] / 2
  assert e["rule"]["coverage"] > metrics.confidence_rule(labels, mean, 0.7)["coverage"]
  tta_mean, tta_t, _ = _calibrated_mean(runs, val_runs, "tta_probs")
  tta = group["ensemble"]["TTA"]
  assert tta["accuracy"] == pytest.approx(np.mean(tta_mean.argmax(1) == labels))
  assert tta["temperature"] == pytest.approx(tta_t) and tta_t != pytest.approx(t)
  single = next(g for g in summary["groups"] if g["name"] == "single")
  assert single["ensemble"] is None
  md = render.to_markdown(study.study_blocks(summary))
  assert "## Seed ensembles" in md
  row = next(line for line in md.splitlines() if line.startswith("| b_pp | plain | 3 |"))
  assert f"{100 * e['accuracy']:.2f} %" in row and f"{100 * e['gain']:+.2f}" in row
  assert f"{e['uncalibrated_ece']:.4f} → {e['ece']:.4f} (T {t:.2f})" in row
  assert "| b_pp | TTA | 3 |" in md and "| single |" not in md.split("## Seed ensembles")[1]
  # ... and in one line where the report's command (and a sweep) ends
  (line,) = seeds.ensemble_lines(summary["groups"])
  assert line == (
    f"b_pp: ensemble of 3 seeds, test plain {100 * e['accuracy']:.2f} % "
    f"({100 * e['gain']:+.2f} over the members' mean), ECE {e['ece']:.3f} (T {t:.2f}); "
    f"TTA {100 * tta['accuracy']:.2f} % ({100 * tta['gain']:+.2f} over the members' mean), "
    f"ECE {tta['ece']:.3f} (T {tta_t:.2f})"
  )
  printed = subprocess.run(
    [sys.executable, "-m", "fer_jax.report", str(tmp_path)], capture_output=True, text=True
  )
  assert printed.returncode == 0 and line in printed.stdout.splitlines(), printed.stderr


def test_a_member_without_val_probabilities_leaves_the_ensemble_uncalibrated(tmp_path):
  dirs = [tmp_path / "b_pp" / f"seed{seed}" for seed in (0, 1)]
  for seed, run_dir in enumerate(dirs):
    fake_run(run_dir, "b_pp", seed, skill=0.6)
  os.remove(dirs[1] / "val_predictions.npz")  # a run from before runs saved them
  group, summary = _group(tmp_path)
  e = group["ensemble"]["plain"]
  mean = np.mean([_npz(d)["probs"] for d in dirs], axis=0, dtype=np.float64)
  assert e["temperature"] is None
  assert (
    e["ece"]
    == e["uncalibrated_ece"]
    == pytest.approx(metrics.calibration(_npz(dirs[0])["labels"], mean)["ece"])
  )
  row = next(
    line
    for line in render.to_markdown(study.study_blocks(summary)).splitlines()
    if line.startswith("| b_pp | plain | 2 |")
  )
  assert f"{e['member_ece']['mean']:.4f} → {e['ece']:.4f} |" in row and "(T " not in row


def test_members_calibrated_on_different_val_sets_are_refused(tmp_path):
  for seed in (0, 1):
    fake_run(tmp_path / "b_pp" / f"seed{seed}", "b_pp", seed, skill=0.8)
    _rewrite_npz(tmp_path / "b_pp" / f"seed{seed}", "val", fingerprint=np.str_(f"val{seed}"))
  with pytest.raises(
    ValueError,
    match="b_pp/seed0 and b_pp/seed1 were calibrated on different val sets "
    r"\(val fingerprints val0 and val1",
  ):
    study.aggregate(str(tmp_path))


def test_members_tested_on_different_test_sets_are_refused(tmp_path):
  for seed in (0, 1):
    fake_run(tmp_path / "runs" / "b_pp" / f"seed{seed}", "b_pp", seed, skill=0.8)
    _rewrite_npz(tmp_path / "runs" / "b_pp" / f"seed{seed}", fingerprint=np.str_(f"digest{seed}"))
  with pytest.raises(ValueError, match="b_pp/seed0 and b_pp/seed1 were tested on different test"):
    study.aggregate(str(tmp_path / "runs"))
  line = report_error(tmp_path / "runs")
  assert "test fingerprints digest0 and digest1" in line, line
  # without fingerprints (runs from before them), other labels are refused too
  for seed in (0, 1):
    d = _npz(tmp_path / "runs" / "b_pp" / f"seed{seed}")
    del d["fingerprint"]
    np.savez(tmp_path / "runs" / "b_pp" / f"seed{seed}" / "test_predictions.npz", **d)
  _rewrite_npz(
    tmp_path / "runs" / "b_pp" / "seed1",
    labels=_npz(tmp_path / "runs" / "b_pp" / "seed1")["labels"][::-1],
  )
  with pytest.raises(ValueError, match="different test sets"):
    study.aggregate(str(tmp_path / "runs"))


@pytest.mark.parametrize("split", ["test", "val"])
def test_an_unreadable_predictions_file_stops_the_report_in_one_line(tmp_path, split):
  for seed in (0, 1):
    fake_run(tmp_path / "runs" / "b_pp" / f"seed{seed}", "b_pp", seed, skill=0.8)
  path = tmp_path / "runs" / "b_pp" / "seed1" / f"{split}_predictions.npz"
  path.write_bytes(path.read_bytes()[:1000])  # cut short, as by a full disk
  with pytest.raises(ValueError, match=f"seed1/{split}_predictions.npz: unreadable"):
    study.aggregate(str(tmp_path / "runs"))
  np.savez(path, labels=np.array([{"a": 1}], dtype=object))  # a pickle: never loaded
  line = report_error(tmp_path / "runs")
  assert f"{split}_predictions.npz: unreadable" in line and "without its metrics.json" in line
