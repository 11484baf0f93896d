"""Seed ensembles in the study report (fer_jax/report/seeds.py): the mean of the members'
calibrated test probabilities, beside each member, on run directories written as runs write
them."""

import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from fer_jax.evals import metrics
from fer_jax.report import render, study
from tests.test_report import fake_run


def _npz(run_dir):
  with np.load(os.path.join(run_dir, "test_predictions.npz")) as d:
    return dict(d)


def _rewrite_npz(run_dir, **changes):
  arrays = {**_npz(run_dir), **changes}
  np.savez(os.path.join(run_dir, "test_predictions.npz"), **arrays)


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
  assert e["ece"] == pytest.approx(one["ece"]) and e["nll"] == pytest.approx(one["nll"])
  rule = metrics.confidence_rule(d["labels"], d["probs"], 0.7)
  assert e["rule"]["coverage"] == rule["coverage"] == e["member_coverage"]["mean"]
  assert "TTA" not in group["ensemble"]  # the runs had no test-time augmentation


def test_members_of_different_seeds_are_reported_with_the_ensembles_gain(tmp_path):
  for seed in (0, 1, 2):
    fake_run(tmp_path / "b_pp" / f"seed{seed}", "b_pp", seed, skill=0.6)
    d = _npz(tmp_path / "b_pp" / f"seed{seed}")  # TTA probabilities: a little sharper, say
    _rewrite_npz(tmp_path / "b_pp" / f"seed{seed}", tta_probs=d["probs"] ** 2)
  fake_run(tmp_path / "single", "model_0", 42, skill=0.6)  # one run: no ensemble
  group, summary = _group(tmp_path)
  runs = [_npz(tmp_path / "b_pp" / f"seed{s}") for s in (0, 1, 2)]
  labels, mean = runs[0]["labels"], np.mean([r["probs"] for r in runs], axis=0)
  members = [np.mean(r["probs"].argmax(1) == labels) for r in runs]
  e = group["ensemble"]["plain"]
  assert e["member_accuracy"]["values"] == pytest.approx(members)
  assert e["accuracy"] == pytest.approx(np.mean(mean.argmax(1) == labels))
  assert e["gain"] == pytest.approx(e["accuracy"] - np.mean(members)) and e["gain"] > 0
  assert e["gain_over_best"] == pytest.approx(e["accuracy"] - max(members))
  assert e["ece"] == pytest.approx(metrics.calibration(labels, mean)["ece"])
  assert e["rule"] == metrics.confidence_rule(labels, mean, 0.7)
  tta_mean = np.mean([r["tta_probs"] for r in runs], axis=0)
  assert group["ensemble"]["TTA"]["accuracy"] == pytest.approx(
    np.mean(tta_mean.argmax(1) == labels)
  )
  single = next(g for g in summary["groups"] if g["name"] == "single")
  assert single["ensemble"] is None
  md = render.to_markdown(study.study_blocks(summary))
  assert "## Seed ensembles" in md
  row = next(line for line in md.splitlines() if line.startswith("| b_pp | plain | 3 |"))
  assert f"{100 * e['accuracy']:.2f} %" in row and f"{100 * e['gain']:+.2f}" in row
  assert "| b_pp | TTA | 3 |" in md and "| single |" not in md.split("## Seed ensembles")[1]


def test_members_tested_on_different_test_sets_are_refused(tmp_path):
  for seed in (0, 1):
    fake_run(tmp_path / "runs" / "b_pp" / f"seed{seed}", "b_pp", seed, skill=0.8)
    _rewrite_npz(tmp_path / "runs" / "b_pp" / f"seed{seed}", fingerprint=np.str_(f"digest{seed}"))
  with pytest.raises(ValueError, match="b_pp/seed0 and b_pp/seed1 were tested on different test"):
    study.aggregate(str(tmp_path / "runs"))
  result = subprocess.run(
    [sys.executable, "-m", "fer_jax.report", str(tmp_path / "runs")],
    capture_output=True,
    text=True,
    timeout=120,
  )
  assert result.returncode != 0 and "Traceback" not in result.stderr, result.stderr
  (line,) = result.stderr.strip().splitlines()
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
