"""End to end through launch.py on tiny built-in data: workdir, resume after SIGKILL, sharding,
NaN detection, and bad input. Each run is a subprocess, as a user would start it."""

import json
import os
import signal

import ml_collections
import numpy as np
import pytest
from PIL import Image

from fer_jax.evals import calibration, metrics
from fer_jax.platform import allocator
from fer_jax.report import study
from tests.conftest import ROOT, TINY, launch, launch_until, read_history, read_summary

EPOCHS = ["--config.train.epochs=3", "--config.train.early_stopping=False"]


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory):
  """An uninterrupted 3-epoch Model 0 run on one device (shared by the comparisons below)."""
  workdir = str(tmp_path_factory.mktemp("ref"))
  args = ["--config=configs/model_0.py:quick", f"--workdir={workdir}", *TINY, *EPOCHS]
  proc = launch([*args, "--config.eval.report=true"])
  return workdir, proc.stdout


def test_run_leaves_a_complete_workdir(reference_run):
  workdir, stdout = reference_run
  for name in (
    "config.json",
    "metrics.jsonl",
    "metrics.json",
    "report.md",
    "curves.png",
    "confusion.png",
    "test_predictions.npz",
    "val_predictions.npz",
  ):
    assert os.path.exists(os.path.join(workdir, name)), name
  history = read_history(workdir)
  assert [r["epoch"] for r in history] == [1, 2, 3]
  best_epoch = read_summary(workdir)["best"]["epoch"]
  # The best epoch and the latest, the temperature fitted on the best one and the config they
  # were trained with; nothing else.
  assert set(os.listdir(os.path.join(workdir, "checkpoints"))) == {
    str(best_epoch),
    "3",
    "calibration.json",
    "config.json",
  }
  assert {
    "train_loss",
    "train_accuracy",
    "val_loss",
    "val_accuracy",
    "gap",
    "lr",
    "epoch_time_s",
    "images_per_s",
  } <= set(history[0])
  if allocator.find_tcmalloc():  # launch.py re-ran itself with it (fer_jax/platform/allocator.py)
    assert "malloc: tcmalloc" in stdout
  s = read_summary(workdir)
  best = max(history, key=lambda r: r["val_accuracy"])
  assert s["best"]["val_accuracy"] == best["val_accuracy"]
  assert s["best"]["epoch"] == min(
    r["epoch"] for r in history if r["val_accuracy"] == best["val_accuracy"]
  )
  assert s["best"]["train_accuracy"] == history[s["best"]["epoch"] - 1]["train_accuracy"]
  assert s["best"]["gap"] == pytest.approx(
    (s["best"]["train_accuracy"] - s["best"]["val_accuracy"]) * 100
  )
  assert s["gap_diagnosis"]
  assert s["params"]["total"] > 0 and s["params"]["trainable"] <= s["params"]["total"]
  assert s["epochs_run"] == 3 and s["wall_time_s"] > 0 and s["images_per_s"] > 0
  test = s["test"]
  preds = np.load(os.path.join(workdir, "test_predictions.npz"))
  assert test["accuracy"] == pytest.approx(np.mean(preds["probs"].argmax(1) == preds["labels"]))
  assert len(test["confusion"]) == 4 and set(test["per_class"]) == {
    "happy",
    "neutral",
    "sad",
    "surprise",
  }
  for k in ("precision", "recall", "f1", "support"):
    assert k in test["per_class"]["happy"]
  assert "loss" in test and "main_confusions" in test
  # Calibrated on val: T saved next to the checkpoints and in metrics.json, test figures from
  # calibrated probs.
  cal = calibration.load(workdir, 0.7)
  assert cal.temperature == pytest.approx(s["calibration"]["temperature"]) and cal.threshold == 0.7
  expected = calibration.probabilities(np.log(preds["raw_probs"]), cal.temperature)
  np.testing.assert_allclose(preds["probs"], expected, atol=1e-5)
  assert float(preds["temperature"]) == pytest.approx(cal.temperature)
  assert test["calibration"]["ece"] == pytest.approx(
    metrics.calibration(preds["labels"], preds["probs"])["ece"], abs=1e-5
  )
  assert s["test_raw"]["calibration"]["ece"] == pytest.approx(
    metrics.calibration(preds["labels"], preds["raw_probs"])["ece"], abs=1e-5
  )
  assert s["calibration"]["val_calibrated"]["nll"] <= s["calibration"]["val_raw"]["nll"] + 1e-9
  # val_predictions.npz: the best weights' val probabilities, on which T was fitted (seed
  # ensembles fit theirs on the members' mean).
  with np.load(os.path.join(workdir, "val_predictions.npz")) as val:
    assert len(val["labels"]) == s["dataset"]["sizes"]["val"]
    assert np.mean(val["raw_probs"].argmax(1) == val["labels"]) == pytest.approx(
      s["best"]["val_accuracy"]
    )
    refit = calibration.fit_temperature(np.log(val["raw_probs"]), val["labels"])
    assert refit == pytest.approx(cal.temperature, rel=1e-3)
    np.testing.assert_allclose(
      val["probs"], calibration.probabilities(np.log(val["raw_probs"]), cal.temperature), atol=1e-5
    )
    assert float(val["temperature"]) == pytest.approx(cal.temperature)
    assert str(val["fingerprint"]) != str(preds["fingerprint"])
  assert s["best"]["train_eval_images"] == s["dataset"]["sizes"]["val"]
  assert s["best"]["gap_eval"] == pytest.approx(
    (s["best"]["train_accuracy_eval"] - s["best"]["val_accuracy"]) * 100
  )
  assert s["gap_diagnosis"] == metrics.gap_diagnosis(s["best"]["gap"], s["best"]["gap_eval"])
  assert f"T = {cal.temperature:.3f}" in open(os.path.join(workdir, "report.md")).read()
  for png in ("curves.png", "confusion.png", "reliability.png", "coverage.png"):
    with Image.open(os.path.join(workdir, png)) as im:
      assert im.size[0] > 200
  assert "epoch 3/3" in stdout and "test accuracy" in stdout and "gap" in stdout
  assert f"temperature {cal.temperature:.3f}" in stdout and "eval mode: train" in stdout


def test_default_evals_give_the_metrics_json_of_every_run(reference_run):
  """config.evals' default entries (calibration, train_gap, test) write today's metrics.json."""
  s = read_summary(reference_run[0])
  assert list(s) == [
    "name",
    "variant",
    "seed",
    "classes",
    "model",
    "weights",
    "dataset",
    "params",
    "best",
    "gap_diagnosis",
    "calibration",
    "test",
    "test_raw",
    "epochs_run",
    "stopped_early",
    "wall_time_s",
    "train_time_s",
    "time_per_epoch_s",
    "images_per_s",
    "system",
  ]
  assert list(s["best"]) == [
    "epoch",
    "val_accuracy",
    "val_loss",
    "train_accuracy",
    "train_loss",
    "gap",
    "train_accuracy_eval",
    "gap_eval",
    "train_eval_images",
  ]


def test_zero_epochs_evaluates_the_initial_weights_as_epoch_0(tmp_path):
  # How peers with ported weights (mini_xception) are scored; the study report reads metrics.jsonl.
  workdir = str(tmp_path / "eval_only")
  launch(
    ["--config=configs/model_0.py:quick", f"--workdir={workdir}", *TINY, "--config.train.epochs=0"]
  )
  (row,) = read_history(workdir)
  assert row["epoch"] == 0 and row["lr"] == 0 and 0 <= row["val_accuracy"] <= 1
  s = read_summary(workdir)
  assert (
    s["epochs_run"] == 0
    and s["best"]["epoch"] == 0
    and s["best"]["val_accuracy"] == row["val_accuracy"]
  )
  assert study.load_run(workdir)["history"] == [row]
  # eval.report=false (TINY's): metrics.json, no report.md and no plots
  assert not [f for f in os.listdir(workdir) if f == "report.md" or f.endswith(".png")]


def test_finished_run_prints_summary_and_how_to_start_fresh(reference_run):
  workdir, _ = reference_run
  before = os.path.getmtime(os.path.join(workdir, "metrics.json"))
  proc = launch(["--config=configs/model_0.py:quick", f"--workdir={workdir}", *TINY, *EPOCHS])
  assert (
    "finished" in proc.stdout and "new --workdir" in proc.stdout and "test accuracy" in proc.stdout
  )
  assert f"temperature {calibration.load(workdir, 0.7).temperature:.3f}" in proc.stdout
  assert os.path.getmtime(os.path.join(workdir, "metrics.json")) == before


def _comparable(workdir):
  s = read_summary(workdir)
  return (
    [(r["train_loss"], r["val_loss"], r["val_accuracy"]) for r in read_history(workdir)],
    s["test"]["accuracy"],
    calibration.load(workdir, 0.7).temperature,
  )


def test_sigkill_then_resume_gives_the_same_result(reference_run, tmp_path):
  ref_dir, _ = reference_run
  workdir = str(tmp_path / "killed")
  args = ["--config=configs/model_0.py:quick", f"--workdir={workdir}", *TINY, *EPOCHS]
  proc = launch_until(args, "epoch 2/3", signal.SIGKILL, checkpointed=workdir)
  proc.wait(timeout=60)
  assert proc.returncode == -signal.SIGKILL
  assert not os.path.exists(os.path.join(workdir, "metrics.json"))
  resumed = launch(args)
  assert "Resuming" in resumed.stdout
  got, want = _comparable(workdir), _comparable(ref_dir)
  np.testing.assert_allclose(got[0], want[0], rtol=1e-6)
  assert got[1] == want[1]
  assert got[2] == pytest.approx(want[2], rel=1e-4)  # the resumed run fits the same T


def test_four_devices_match_one_device(reference_run, tmp_path):
  """4 devices holding their shards of the data, a whole epoch a dispatch, against the host-fed
  reference on one device (fer_jax/train/feeding.py; tests/test_feeding.py compares feedings on
  one device to the bit)."""
  ref_dir, ref_stdout = reference_run
  workdir = str(tmp_path / "sharded")
  resident = ["--config.data.on_device=true", "--config.train.steps_per_dispatch=1000"]
  proc = launch(
    ["--config=configs/model_0.py:quick", f"--workdir={workdir}", *TINY, *EPOCHS, *resident],
    env={"JAX_NUM_CPU_DEVICES": "4"},
  )
  assert "4 x cpu" in proc.stdout and "data on the devices, 8 step(s)/dispatch" in proc.stdout
  assert "host-fed" in ref_stdout
  got, want = _comparable(workdir), _comparable(ref_dir)
  # Same maths, different reduction order across shards: losses equal up to float32 rounding
  # (accuracy on 8 val images can flip one borderline face, so it is not compared).
  np.testing.assert_allclose(np.array(got[0])[:, :2], np.array(want[0])[:, :2], rtol=2e-3)


def test_nan_loss_stops_naming_epoch_and_step(tmp_path):
  workdir = str(tmp_path / "nan")
  proc = launch(
    ["--config=configs/model_0.py:quick", f"--workdir={workdir}", *TINY, "--config.optim.lr=1e30"],
    check=False,
  )
  assert proc.returncode != 0
  assert "error: loss became" in proc.stderr and "at epoch 1, step" in proc.stderr
  # the advised rerun with a lower lr is another config: the line says how to start afresh
  assert f"pass a new --workdir (or delete {workdir})" in proc.stderr.strip().splitlines()[-1]


@pytest.mark.parametrize(
  "args,message",
  [
    (["--config.data.root=/no/such/faces"], "config.data.root"),
    (["--config.model.name=resnet9000"], "config.model.name"),
    (["--config.train.epochs=many"], "config.train.epochs"),
    (["--config.train.epochz=3"], "epochz"),
    (["--config.eval.threshold_target_accuracy=90"], "config.eval.threshold_target_accuracy"),
  ],
)
def test_bad_input_is_one_line_and_leaves_no_workdir(tmp_path, args, message):
  workdir = tmp_path / "bad"
  proc = launch(
    ["--config=configs/model_0.py:quick", f"--workdir={workdir}", *TINY, *args], check=False
  )
  assert proc.returncode != 0
  errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
  assert len(errors) == 1 and message in errors[0], proc.stderr
  assert "Traceback" not in proc.stderr
  assert not workdir.exists()


def _face_folder(root, empty_test=False):
  """A tiny <root>/<split>/<class>/ tree of PNGs, plus one corrupt file."""
  rng = np.random.default_rng(0)
  for split, n in (("train", 8), ("val", 2), ("test", 0 if empty_test else 2)):
    for c in ("happy", "neutral", "sad", "surprise"):
      d = root / split / c
      d.mkdir(parents=True)
      for i in range(n):
        Image.fromarray(rng.integers(0, 255, (48, 48), dtype=np.uint8)).save(d / f"{i}.png")
  (root / "train" / "happy" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")


def _readme_recipe_command():
  """The README's one command that trains the recipe for real faces, as launch.py's arguments."""
  with open(os.path.join(ROOT, "README.md")) as f:
    lines = [line for line in f if line.startswith("python launch.py --config=configs/b_p.py:real")]
  assert len(lines) == 1, lines
  return lines[0].split()[2:]


def test_the_readme_recipe_trains_on_an_image_folder_and_reports_the_unreadable_file(tmp_path):
  _face_folder(tmp_path / "faces")
  workdir = tmp_path / "run"
  args = [
    a.replace("SPLIT", str(tmp_path / "faces")).replace("runs/real", str(workdir))
    for a in _readme_recipe_command()
  ]
  # The recipe as the README gives it, on a network a few channels wide for one short epoch.
  proc = launch([*args, *TINY, "--config.train.epochs=1"])
  assert "broken.jpg" in proc.stdout + proc.stderr
  summary = read_summary(workdir)
  assert summary["dataset"]["sizes"] == {"train": 32, "val": 8, "test": 8}
  config = json.loads((workdir / "config.json").read_text())
  assert config["name"] == "b_p" and config["variant"] == "real"
  # The recipe's weight averaging and test-time augmentation, whichever it holds, are what ran.
  assert summary["weights"].startswith("ema" if config["optim"]["ema_decay"] else "plain")
  assert config["eval"]["tta"] == "none" or summary["test_tta"]["views"] == config["eval"]["tta"]


def test_data_relabelled_between_a_kill_and_the_resume_is_refused(tmp_path):
  faces, workdir = tmp_path / "faces", tmp_path / "run"
  _face_folder(faces)
  args = ["--config=configs/model_0.py:quick", f"--workdir={workdir}", *TINY]
  launch([*args, f"--config.data.root={faces}", "--config.train.epochs=1"])
  os.remove(workdir / "metrics.json")  # as if killed before its test evaluation
  os.rename(faces / "train" / "happy" / "0.png", faces / "train" / "sad" / "happy_0.png")
  proc = launch([*args, f"--config.data.root={faces}", "--config.train.epochs=1"], check=False)
  last = proc.stderr.strip().splitlines()[-1]
  assert proc.returncode != 0 and "Traceback" not in proc.stderr, proc.stderr
  assert f"the data changed since {workdir}/checkpoints/1 was saved" in last, last
  assert "pass a new --workdir to train afresh" in last
  assert not (workdir / "metrics.json").exists()


def test_empty_split_is_an_error_naming_the_root(tmp_path):
  _face_folder(tmp_path / "faces", empty_test=True)
  workdir = tmp_path / "run"
  proc = launch(
    [
      "--config=configs/model_0.py:quick",
      f"--workdir={workdir}",
      *TINY,
      f"--config.data.root={tmp_path / 'faces'}",
    ],
    check=False,
  )
  assert proc.returncode != 0 and "test" in proc.stderr and str(tmp_path / "faces") in proc.stderr
  assert not workdir.exists()


def test_predict_uses_the_best_checkpoint_and_the_confidence_rule(reference_run, tmp_path):
  from fer_jax.inference import predict, scoring

  workdir, _ = reference_run
  scorer = scoring.Scorer.from_workdir(workdir)
  saved = np.load(os.path.join(workdir, "test_predictions.npz"))
  from fer_jax.data import builtin

  with open(os.path.join(workdir, "config.json")) as f:
    data_config = ml_collections.ConfigDict(json.load(f)["data"])
  test = builtin.load(data_config).splits["test"]
  np.testing.assert_allclose(
    scorer.probabilities(test.images), saved["probs"], atol=1e-5
  )  # the evaluated weights
  # ... and the run's calibration: predict and the server answer with the calibrated probabilities.
  assert (
    scorer.calibration == calibration.load(workdir, 0.7) and scorer.calibration.temperature != 1.0
  )
  assert scorer.calibration.temperature == pytest.approx(float(saved["temperature"]))
  for i, im in enumerate(test.images[:3]):
    Image.fromarray(im[..., 0]).save(tmp_path / f"face{i}.png")
  assert predict.input_paths([str(tmp_path)]) == (
    [str(tmp_path / f"face{i}.png") for i in range(3)],
    [],
  )
  probs = np.array([[0.69, 0.11, 0.1, 0.1], [0.1, 0.8, 0.05, 0.05]])
  assert scoring.answers(probs, scorer.classes, 0.7) == ["uncertain", "neutral"]
