"""The end of a run, chosen by the config: evaluators built from `config.evals`.

`config.evals` holds named entries (configs/common.py `evals_config`). Each entry's `type` names a
module of fer_jax/evals/, whose `Evaluator` class takes the entry's other fields as keyword
arguments; adding an evaluator is one module and one entry. When training ends, the loop gives
every evaluator the best epoch's weights in a `Context` and runs them in turn:
`Evaluator.run(ctx, results)` adds its figures to `ctx.summary` (what metrics.json will hold),
may write files into `ctx.workdir` when `ctx.writes` (`ctx.save_predictions` writes a split's
`<split>_predictions.npz`), and returns a value that the evaluators
after it find in `results` under its entry name. An evaluator lists the entries it reads in
`reads` (e.g. the test metrics read the temperature and threshold of the `calibration` entry);
entries run in name order, each after the ones it reads.

`from_config` builds the evaluators when a run starts, so an unknown type, a bad setting or a
missing dependency fails before training, not after it.
"""

import dataclasses
import importlib
import os
from collections.abc import Callable

import numpy as np

from fer_jax.train import workdir_guard


@dataclasses.dataclass
class Context:
  """What an evaluator is given: the run's config and data, and its best weights as a function."""

  config: object  # the run's ConfigDict
  dataset: object  # data.Dataset
  evaluate: Callable  # split -> ({"loss", "accuracy"}, logits [N, K]) of the best weights
  history: list  # the rows of metrics.jsonl
  workdir: str
  writes: bool  # this process writes the run's files (process 0)
  summary: dict  # metrics.json so far; evaluators add their figures

  def save_predictions(self, split_name, arrays):
    """Writes `<split_name>_predictions.npz` (when this process writes): the split's labels, its
    `fingerprint` (a digest of the classes, images and labels: the study report refuses to put
    runs of different sets into one ensemble) and `arrays` (probabilities, temperatures) as
    float32."""
    if not self.writes:
      return
    split = self.dataset.splits[split_name]
    fingerprint = workdir_guard.data_fingerprint(
      dataclasses.replace(self.dataset, splits={split_name: split})
    )
    np.savez(
      os.path.join(self.workdir, f"{split_name}_predictions.npz"),
      labels=split.labels.astype(np.int32),
      fingerprint=np.str_(fingerprint),
      **{k: np.asarray(v, np.float32) for k, v in arrays.items()},
    )


def _build(name, entry):
  settings = dict(entry)
  kind = settings.pop("type", None)
  if not isinstance(kind, str):
    raise ValueError(f"config.evals.{name}: needs a type naming a module of fer_jax/evals/")
  module_name = f"fer_jax.evals.{kind}"
  try:
    module = importlib.import_module(module_name)
  except ModuleNotFoundError as e:
    if e.name != module_name:
      raise
    raise ValueError(
      f"config.evals.{name}.type={kind!r}: fer_jax/evals/ has no {kind}.py"
    ) from None
  if not hasattr(module, "Evaluator"):
    raise ValueError(f"config.evals.{name}.type={kind!r}: {module_name} defines no Evaluator")
  try:
    return module.Evaluator(**settings)
  except TypeError as e:
    raise ValueError(f"config.evals.{name}: {e}") from None


def from_config(config) -> list[tuple[str, object]]:
  """[(entry name, evaluator)] of `config.evals`, in the order they run."""
  pending = {name: _build(name, entry) for name, entry in sorted(config.evals.items())}
  for name, evaluator in pending.items():
    for needed in evaluator.reads:
      if needed not in pending:
        raise ValueError(f"config.evals.{name} reads config.evals.{needed}, which does not exist")
  ordered = []
  while pending:
    ready = [n for n, e in pending.items() if all(r not in pending for r in e.reads)]
    if not ready:
      raise ValueError(f"config.evals: {', '.join(pending)} read each other in a circle")
    ordered.append((ready[0], pending.pop(ready[0])))
  return ordered


def run_all(evaluators, ctx) -> dict:
  """Runs `evaluators` (from `from_config`) in order; returns each one's result by entry name."""
  results = {}
  for name, evaluator in evaluators:
    results[name] = evaluator.run(ctx, results)
  return results
