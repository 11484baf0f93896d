"""config.evals chooses what runs at the end of a run: evaluators built by fer_jax.evals.common."""

import json
import os

import ml_collections
import pytest

import fer_jax.evals
from fer_jax import config_loading
from fer_jax.configs import common as config_common
from fer_jax.evals import common
from fer_jax.train import loop
from tests.conftest import TEST_CACHE_DIR

TINY = {
  "model.widths": (4, 8, 8),
  "model.dense_widths": (16,),
  "data.builtin_per_class": 16,
  "train.batch_size": 8,
  "eval.batch_size": 8,
  "train.epochs": 1,
  "eval.report": False,  # report.md and its plots: seconds a run, checked in test_train
  "data.cache_dir": TEST_CACHE_DIR,
}

# One module is a new evaluator: it reads the test entry's result, so it runs after it.
PROBE = '''
class Evaluator:
  def __init__(self, split, reads_entry):
    self.split = split
    self.reads = (reads_entry,)

  def run(self, ctx, results):
    metrics, logits = ctx.evaluate(ctx.dataset.splits[self.split])
    ctx.summary["probe"] = {
      "accuracy": metrics["accuracy"],
      "rows": len(logits),
      "test_accuracy": results[self.reads[0]]["accuracy"],
    }
    return metrics
'''


def _config(edit=None):
  config = config_loading.load_config("configs/model_0.py:quick", TINY)
  if edit:
    config.unlock()
    edit(config.evals)
    config.lock()
  return config


@pytest.fixture
def probe_module(tmp_path, monkeypatch):
  """fer_jax/evals/probe.py, as a researcher would add it (here in a folder on the package path)."""
  (tmp_path / "probe.py").write_text(PROBE)
  monkeypatch.setattr(fer_jax.evals, "__path__", [*fer_jax.evals.__path__, str(tmp_path)])
  # ... and its entry's fields declared in configs/common.py's EVALS, as every config field is
  # (the tests below name the entry `probe` or `a_probe`).
  entry = {
    "type": config_loading.Field("probe", "evaluator module: a probe of the context"),
    "split": config_loading.Field("val", "the split it measures"),
    "reads_entry": config_loading.Field("test", "the entry whose result it reads"),
  }
  for name in ("probe", "a_probe"):
    monkeypatch.setitem(config_common.EVALS, name, entry)


def test_default_evals_run_calibration_and_test_in_order():
  names = [name for name, _ in common.from_config(_config())]
  assert names.index("calibration") < names.index("test") and set(names) == {
    "calibration",
    "test",
    "train_gap",
  }


def test_an_evaluator_runs_after_the_entries_it_reads(probe_module):
  def add_probe(evals):
    evals.a_probe = ml_collections.ConfigDict(
      {"type": "probe", "split": "val", "reads_entry": "test"}
    )

  names = [name for name, _ in common.from_config(_config(add_probe))]
  assert names.index("a_probe") > names.index("test") > names.index("calibration")


@pytest.mark.parametrize(
  "entry, message",
  [
    ({"type": "no_such_evaluator"}, "fer_jax/evals/ has no no_such_evaluator.py"),
    ({"type": "metrics"}, "defines no Evaluator"),
    ({"type": "calibration", "split": "val", "bins": 3}, "config.evals.extra: .*bins"),
    ({"type": "classification", "split": "val", "calibration": "cal"}, "reads config.evals.cal"),
    ({"split": "val"}, "needs a type"),
  ],
)
def test_bad_entries_fail_before_training(entry, message):
  def add(evals):
    evals.extra = ml_collections.ConfigDict(entry)

  with pytest.raises(ValueError, match=message):
    common.from_config(_config(add))


def test_evals_chosen_by_the_config_shape_metrics_json(tmp_path, probe_module):
  """No train_gap entry: no eval-mode figures; a probe entry: its figures, after the test's."""

  def edit(evals):
    del evals.train_gap
    evals.probe = ml_collections.ConfigDict(
      {"type": "probe", "split": "val", "reads_entry": "test"}
    )

  workdir = str(tmp_path / "run")
  config = _config(edit)
  with config.unlocked():
    config.eval.report = True  # its report.md is read below
  summary = loop.train_and_evaluate(config, workdir)
  with open(os.path.join(workdir, "metrics.json")) as f:
    assert json.load(f) == json.loads(json.dumps(summary))
  assert not {"train_accuracy_eval", "gap_eval", "train_eval_images"} & set(summary["best"])
  assert {"calibration", "test", "test_raw"} <= set(summary)
  assert summary["probe"]["rows"] == summary["dataset"]["sizes"]["val"]
  assert summary["probe"]["test_accuracy"] == summary["test"]["accuracy"]
  assert summary["probe"]["accuracy"] == summary["best"]["val_accuracy"]  # the best = last epoch
  with open(os.path.join(workdir, "report.md")) as f:
    assert "eval mode" not in f.read()
