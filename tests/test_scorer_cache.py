"""The scorers predict keeps on disk: fer_jax.inference.scorer_cache (JAX) and onnx_scorer (the
model converted to ONNX). Each answers as the live scorer, is loaded without building, and
survives corrupt files; a changed run is a new key; a conversion that does not match is not kept
(the live model answers). jax2onnx converts the default model once (the `converted` fixture);
the tests' later conversions write copies of it."""

import json
import os
import pathlib

import numpy as np
import pytest

from fer_jax.inference import compile_cache, export, onnx_scorer, scorer_cache, scoring
from fer_jax.inference.export import onnx_format

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


@pytest.fixture(scope="module")
def live():
  return scoring.Scorer.default()


@pytest.fixture(scope="module")
def converted(live, tmp_path_factory):
  """The default model converted to ONNX once, by onnx_scorer itself (jax2onnx: ~8 s a
  conversion of it)."""
  directory = tmp_path_factory.mktemp("converted")
  assert onnx_scorer.scorer(str(directory), None, None, lambda: live).model is None
  (path,) = directory.glob("scorers/onnx-*/logits.onnx")
  return path.read_bytes()


@pytest.fixture
def copying_writer(converted, monkeypatch):
  """Conversions write a copy of `converted`; onnx_scorer's check against JAX still runs on each."""
  monkeypatch.setattr(
    onnx_format, "write", lambda fn, shape, path, name: pathlib.Path(path).write_bytes(converted)
  )


def counted(live):
  """A build function returning `live`, and the list it appends to at each call."""
  builds = []

  def build():
    builds.append(1)
    return live

  return build, builds


def unbuildable():
  raise AssertionError("the cache should have had everything")


def test_a_changed_run_is_a_new_key(tmp_path):
  run = tmp_path / "run"
  (run / "checkpoints" / "best").mkdir(parents=True)
  (run / "config.json").write_text('{"name": "b_pp", "variant": ""}')
  (run / "checkpoints" / "calibration.json").write_text('{"temperature": 1.5, "threshold": 0.7}')
  (run / "checkpoints" / "best" / "params").write_bytes(b"1234")
  first = scorer_cache.key(str(run), None)
  assert scorer_cache.key(str(run), None) == first
  keys = {first}
  for path, data in [
    ("checkpoints/calibration.json", '{"temperature": 1.6, "threshold": 0.7}'),
    ("checkpoints/best/params", "4321"),
    ("config.json", '{"name": "b_pp", "variant": "x"}'),
  ]:
    st = os.stat(run / path)
    (run / path).write_text(data)  # the same size: only the mtime says it changed
    os.utime(run / path, ns=(st.st_atime_ns, st.st_mtime_ns + 1))
    keys.add(scorer_cache.key(str(run), None))
  assert len(keys) == 4
  assert scorer_cache.key(None, None) != scorer_cache.key(None, ["happy", "sad"])


def test_the_cached_scorer_answers_as_the_live_one_and_survives_corrupt_files(
  tmp_path, live, capsys
):
  build, builds = counted(live)
  crops = np.random.default_rng(0).integers(0, 256, (2, 64, 64, 1), np.uint8)
  expected = np.asarray(live.apply(crops))
  first = scorer_cache.scorer(str(tmp_path), None, None, build)
  # Weights as arguments, not constants: XLA folds the batch norms otherwise, float32 rounding.
  np.testing.assert_allclose(first.logits(crops), expected, rtol=1e-6, atol=1e-5)
  assert first.model is None and first.classes == live.classes and builds == [1]
  assert first.calibration == live.calibration and first.name == live.name
  again = scorer_cache.scorer(str(tmp_path), None, None, unbuildable)
  np.testing.assert_array_equal(again.logits(crops), first.logits(crops))
  (entry,) = (tmp_path / "scorers").iterdir()
  for corrupt in (["weights.npz", "logits_2.jax"], ["scorer.json"]):
    for name in corrupt:
      (entry / name).write_bytes(b"PK\x03\x04 torn")
    repaired = scorer_cache.scorer(str(tmp_path), None, None, build)
    np.testing.assert_array_equal(repaired.logits(crops), first.logits(crops))
    assert all(f"ignoring {entry}/{name}" in capsys.readouterr().err for name in corrupt[:1])
  # Valid JSON, out of range: checked as calibration.json is (calibration.from_dict).
  fields = json.loads((entry / "scorer.json").read_text())
  fields["calibration"]["temperature"] = -1.0
  (entry / "scorer.json").write_text(json.dumps(fields))
  repaired = scorer_cache.scorer(str(tmp_path), None, None, build)
  assert repaired.calibration == live.calibration
  assert f"ignoring {entry}/scorer.json" in capsys.readouterr().err
  assert builds == [1, 1, 1, 1]
  rewritten = scorer_cache.scorer(str(tmp_path), None, None, unbuildable)
  np.testing.assert_array_equal(rewritten.logits(crops), first.logits(crops))


def test_the_onnx_scorer_answers_as_the_live_one_and_survives_corrupt_files(
  tmp_path, live, capsys, copying_writer
):
  build, builds = counted(live)
  crops = np.random.default_rng(0).integers(0, 256, (3, 64, 64, 1), np.uint8)
  first = onnx_scorer.scorer(str(tmp_path), None, None, build)
  assert first.model is None and builds == [1]  # onnxruntime's, not the live model
  assert first.classes == live.classes and first.calibration == live.calibration
  np.testing.assert_allclose(
    first.probabilities(crops), live.probabilities(crops), atol=export.TOLERANCE
  )
  again = onnx_scorer.scorer(str(tmp_path), None, None, unbuildable)
  np.testing.assert_array_equal(again.logits(crops), first.logits(crops))
  (entry,) = (tmp_path / "scorers").iterdir()
  assert entry.name == f"onnx-{onnx_scorer.key(None, None)}"
  for name in ("logits.onnx", "scorer.json"):
    (entry / name).write_bytes(b"\x08\x07 torn")
    repaired = onnx_scorer.scorer(str(tmp_path), None, None, build)
    np.testing.assert_array_equal(repaired.logits(crops), first.logits(crops))
    assert f"ignoring {entry}/{name}" in capsys.readouterr().err
  assert builds == [1, 1, 1]
  rewritten = onnx_scorer.scorer(str(tmp_path), None, None, unbuildable)
  np.testing.assert_array_equal(rewritten.logits(crops), first.logits(crops))


def test_a_conversion_that_does_not_match_is_not_kept(
  tmp_path, live, capsys, monkeypatch, copying_writer
):
  monkeypatch.setattr(export, "TOLERANCE", -1.0)  # no conversion can match
  got = onnx_scorer.scorer(str(tmp_path), None, None, lambda: live)
  assert got is live
  assert "warning: predict runs on JAX: no ONNX model of" in capsys.readouterr().err
  assert not list(tmp_path.glob("scorers/*/logits.onnx"))
  # Later runs do not try again: the caller scores with JAX (Scorer.for_command_line).
  assert onnx_scorer.scorer(str(tmp_path), None, None, unbuildable) is None


def test_the_key_names_the_runtime_and_the_model():
  assert onnx_scorer.key(None, None) != onnx_scorer.key(None, ["happy", "sad"])
  assert onnx_scorer.available()  # the test extra installs onnxruntime and jax2onnx


def test_a_model_that_does_not_convert_is_scored_on_jax_with_its_caches(
  tmp_path, live, monkeypatch
):
  monkeypatch.setenv(compile_cache.ENV, str(tmp_path))
  monkeypatch.setattr(onnx_scorer, "scorer", lambda *args: None)  # its unconverted.txt found
  monkeypatch.setattr(scoring.Scorer, "default", classmethod(lambda cls, classes=None: live))
  got = scoring.Scorer.for_command_line(None, None, runtime="onnxruntime")
  assert isinstance(got.apply, scorer_cache.Entry) and got.classes == live.classes
