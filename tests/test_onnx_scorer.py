"""fer_jax.inference.onnx_scorer: the scorer converted to ONNX answers as the live JAX one, is
loaded without building, survives corrupt files, and a conversion that does not match is not
kept (the live model answers)."""

import numpy as np
import pytest

from fer_jax.inference import export, onnx_scorer, scoring

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


@pytest.fixture(scope="module")
def live():
  return scoring.Scorer.default()


def test_the_onnx_scorer_answers_as_the_live_one_and_survives_corrupt_files(tmp_path, live, capsys):
  builds = []

  def build():
    builds.append(1)
    return live

  def unbuildable():
    raise AssertionError("the cache should have had everything")

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


def test_a_conversion_that_does_not_match_is_not_kept(tmp_path, live, capsys, monkeypatch):
  monkeypatch.setattr(export, "TOLERANCE", -1.0)  # no conversion can match
  got = onnx_scorer.scorer(str(tmp_path), None, None, lambda: live)
  assert got is live
  assert "warning: predict runs on JAX: no ONNX model of" in capsys.readouterr().err
  assert not list(tmp_path.glob("scorers/*/logits.onnx"))


def test_the_key_names_the_runtime_and_the_model():
  assert onnx_scorer.key(None, None) != onnx_scorer.key(None, ["happy", "sad"])
  assert onnx_scorer.available()  # the test extra installs onnxruntime and jax2onnx
