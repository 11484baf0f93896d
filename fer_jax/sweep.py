"""Runs many trainings (configs x variants x overrides x seeds) and reports them together.

  # the whole study, one dataset root per stage (see configs/study.py)
  python -m fer_jax.sweep --spec=configs/study.py --root=runs/study --weights_dir=/data/keras \\
      --original=/data/original --cleaned=/data/stratified --merged=/data/merged
  # two CNNs x two seeds on the built-in faces
  python -m fer_jax.sweep --spec=configs/study.py:quick --root=runs/quick
  # ad hoc
  python -m fer_jax.sweep --configs=configs/b_p.py,configs/b_pp.py --seeds=0,1,2 \\
      --set=optim.lr=1e-3 --root=runs/lr
  # the seeds of each config trained together, as members of one vmapped step
  python -m fer_jax.sweep --configs=configs/b_pp.py --seeds=0,1,2,3 --root=runs/bpp --vectorize
  # one launch.py command per unfinished run, for a job array or TPU VMs
  python -m fer_jax.sweep --spec=configs/study.py --root=runs/study \\
    --emit | xargs -d '\\n' -n1 -P2 sh -c

Each run's workdir is `<root>/<config>[-<variant>][-<overrides>]/seed<k>/`, a normal launch.py
workdir. A run with metrics.json is finished and skipped; one with only checkpoints/ resumes.
Runs go seed by seed (every config's seed 0 first) so an early comparison is complete soonest;
with --vectorize, config by config, all seeds of a config at once.
A failing run is reported and the sweep goes on; at the end `fer_jax.report` aggregates the root.
"""

import contextlib
import dataclasses
import fcntl
import os
import re
import shlex
import sys
import traceback

from fer_jax import config_loading

DATA_FLAGS = ("original", "cleaned", "merged")  # the study's three dataset stages


ROOT_LOCK = ".sweep.lock"


@contextlib.contextmanager
def root_lock(root):
  """Holds `root` while this sweep trains and reports its runs. A second sweep on the same root
  waits for the first to end (saying who holds it), then skips the runs that one finished: two
  sweeps at once would each fail on every run the other is training."""
  from fer_jax.train import workdir_guard

  os.makedirs(root, exist_ok=True)
  fd = os.open(os.path.join(root, ROOT_LOCK), os.O_RDWR | os.O_CREAT, 0o644)
  try:
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      print(
        f"waiting for the sweep of {workdir_guard.lock_holder(fd)}, which holds {root}; this "
        "one goes on when that one ends, skipping the runs it finished",
        file=sys.stderr,
        flush=True,
      )
      fcntl.flock(fd, fcntl.LOCK_EX)
    workdir_guard.name_holder(fd)
    yield
  finally:
    os.close(fd)


@dataclasses.dataclass
class Run:
  config: str  # "configs/b_pp.py[:variant]"
  overrides: dict  # field -> value (data.root included), without the seed
  seed: int
  group: str  # directory name shared by the seeds
  workdir: str

  def status(self):
    from fer_jax.train import workdir_guard

    if workdir_guard.is_finished(self.workdir):
      return "finished"
    return "resume" if os.path.isdir(os.path.join(self.workdir, "checkpoints")) else "new"

  def all_overrides(self):
    return {**self.overrides, "train.seed": self.seed}

  def command(self, python="python"):
    args = [python, "launch.py", f"--config={self.config}", f"--workdir={self.workdir}"]
    args += [
      f"--config.{k}={config_loading.format_value(v)}" for k, v in self.all_overrides().items()
    ]
    return " ".join(shlex.quote(a) for a in args)


# Overrides left out of directory names: where files live or how data is read, not what is trained.
UNNAMED_FIELDS = (
  "data.root",
  "data.cache_dir",
  "data.num_workers",
  "train.log_every_steps",
  "model.init_from",
  "train.vectorize",
)


def _slug(overrides):
  """Short directory-safe text for the overrides that tell runs apart."""
  parts = []
  for field, value in overrides.items():
    if field in UNNAMED_FIELDS:
      continue
    text = re.sub(r"[^A-Za-z0-9.+-]+", "_", config_loading.format_value(value)).strip("_")
    parts.append(field.rsplit(".", 1)[-1] + text)
  return "_".join(parts)


def group_name(config_spec, overrides):
  path, _, variant = config_spec.partition(":")
  name = os.path.splitext(os.path.basename(path))[0]
  parts = (
    [name]
    + ([variant.replace(",", "+")] if variant else [])
    + ([_slug(overrides)] if _slug(overrides) else [])
  )
  return "-".join(parts)


def expand(entries, root, data_roots=None, extra_overrides=None, seeds=None, weights_dir=""):
  """Sweep entries -> runs, seed-major. `data_roots` maps an entry's `data` stage to a directory.

  An entry is {"config": path[:variant], "variant": "", "overrides": {}, "seeds": [..],
  "data": stage, "weights": file name of pretrained weights in `weights_dir`};
  `extra_overrides` (the --set flags) apply to every run; `seeds` replaces every entry's seeds.
  """
  data_roots = data_roots or {}
  runs = []
  for entry in entries:
    unknown = set(entry) - {"config", "variant", "overrides", "seeds", "data", "weights"}
    if unknown or "config" not in entry:
      raise ValueError(f"sweep entry {entry!r}: needs 'config'; unknown keys {sorted(unknown)}")
    spec = entry["config"] + (f":{entry['variant']}" if entry.get("variant") else "")
    overrides = dict(entry.get("overrides", {}))
    stage = entry.get("data")
    if stage:
      if not data_roots.get(stage):
        raise ValueError(f"sweep entry {spec} trains on the {stage!r} data: pass --{stage}=DIR")
      overrides["data.root"] = data_roots[stage]
    if entry.get("weights"):
      if not weights_dir:
        raise ValueError(
          f"sweep entry {spec} starts from {entry['weights']}: pass --weights_dir=DIR "
          "holding it (docs/transfer.md says where to get it)"
        )
      overrides["model.init_from"] = os.path.join(weights_dir, entry["weights"])
    overrides.update(config_loading.parse_overrides(extra_overrides or []))
    group = group_name(spec, overrides)
    for seed in seeds if seeds is not None else entry.get("seeds", (0,)):
      runs.append(Run(spec, overrides, int(seed), group, os.path.join(root, group, f"seed{seed}")))
  names = [r.workdir for r in runs]
  dupes = sorted({n for n in names if names.count(n) > 1})
  if dupes:
    raise ValueError(f"two sweep entries share a workdir (give them different overrides): {dupes}")
  runs.sort(key=lambda r: r.seed)  # stable: entry order within a seed
  return runs


def check_configs(runs):
  """Loads every run's config before anything trains, so a typo fails in seconds, not hours."""
  errors = {}
  for run in runs:
    if run.group in errors:
      continue
    try:
      config_loading.load_config(run.config, run.all_overrides())
      errors[run.group] = None
    except config_loading.ConfigError as e:
      errors[run.group] = f"{run.group}: {e}"
  bad = [e for e in errors.values() if e]
  if bad:
    raise config_loading.ConfigError("bad sweep entries:\n  " + "\n  ".join(bad))


def _done(summary):
  return f"val {summary['best']['val_accuracy']:.2%}, test {summary['test']['accuracy']:.2%}"


def _failed(run, error):
  """Records a failed run (traceback in its workdir); one bad run must not stop the others."""
  os.makedirs(run.workdir, exist_ok=True)
  with open(os.path.join(run.workdir, "error.txt"), "w") as f:
    f.write(traceback.format_exc())
  detail = f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"
  print(f"  FAILED {detail} (traceback in {run.workdir}/error.txt)", flush=True)
  return (run, "failed", detail)


def run_all(runs, train_fn=None):
  """Trains the runs one after another in this process; returns [(run, outcome, detail)]."""
  if train_fn is None:
    from fer_jax.train import loop

    train_fn = loop.train_and_evaluate
  results = []
  for i, run in enumerate(runs, 1):
    status = run.status()
    print(f"[{i}/{len(runs)}] {run.group} seed {run.seed}: {status}  ({run.workdir})", flush=True)
    if status == "finished":
      results.append((run, "skipped", "already finished"))
      continue
    try:
      config = config_loading.load_config(run.config, run.all_overrides())
      results.append((run, "done", _done(train_fn(config, run.workdir))))
    except Exception as e:  # noqa: BLE001 -- one bad run must not stop the others
      results.append(_failed(run, e))
  return results


def run_vectorized(runs, train_together=None):
  """Trains each group's unfinished seeds together, as members of one vectorized step
  (`members.train_together`), group after group; returns [(run, outcome, detail)]."""
  if train_together is None:
    from fer_jax.train import members

    train_together = members.train_together
  groups = {}
  for run in runs:
    groups.setdefault(run.group, []).append(run)
  results = []
  for i, (group, members) in enumerate(groups.items(), 1):
    todo = [r for r in members if r.status() != "finished"]
    print(
      f"[{i}/{len(groups)}] {group} seeds {','.join(str(r.seed) for r in members)}: "
      f"{len(todo)} to train together",
      flush=True,
    )
    results += [(r, "skipped", "already finished") for r in members if r not in todo]
    if not todo:
      continue
    try:
      configs = [config_loading.load_config(r.config, r.all_overrides()) for r in todo]
      summaries = train_together(configs, [r.workdir for r in todo])
      results += [(r, "done", _done(summary)) for r, summary in zip(todo, summaries)]
    except Exception as e:  # noqa: BLE001 -- one bad group must not stop the others
      results += [_failed(r, e) for r in todo]
  return results


def load_spec(spec):
  """`path[:arg]` of a sweep spec file defining get_sweep(arg) -> list of entries."""
  path, _, arg = spec.partition(":")
  return config_loading.import_file(path, "get_sweep").get_sweep(arg or None)


def main():
  from fer_jax.platform import allocator

  allocator.use_tcmalloc()  # as launch.py: XLA:CPU steps without page faults
  from absl import app, flags, logging

  spec_flag = flags.DEFINE_string("spec", None, "sweep spec file[:arg] defining get_sweep(arg)")
  configs_flag = flags.DEFINE_list("configs", [], "ad-hoc sweep: config files[:variant]")
  seeds_flag = flags.DEFINE_list("seeds", None, "seeds (replace the spec's); ad-hoc default 0")
  set_flag = flags.DEFINE_multi_string(
    "set", [], "override for every run, field=value (repeatable)"
  )
  root_flag = flags.DEFINE_string("root", None, "directory of the sweep's runs")
  emit_flag = flags.DEFINE_bool(
    "emit", False, "print a launch.py command per unfinished run; train nothing"
  )
  vectorize_flag = flags.DEFINE_bool(
    "vectorize",
    False,
    "train the seeds of each config together, as members of one vmapped step (docs/scaling.md)",
  )
  python_flag = flags.DEFINE_string("python", "python", "interpreter named in --emit commands")
  report_flag = flags.DEFINE_bool(
    "report", True, "aggregate the root into report.md/.html at the end"
  )
  cache_flag = flags.DEFINE_bool(
    "compile_cache",
    True,
    "share compiled XLA programs between runs "
    "(seeds of one config compile once), in <root>/.jax_cache",
  )
  data_flags = {
    s: flags.DEFINE_string(s, "", f"dataset root for entries on the {s!r} data") for s in DATA_FLAGS
  }
  weights_flag = flags.DEFINE_string(
    "weights_dir",
    "",
    "directory of pretrained weight files (the transfer entries' Keras ImageNet .h5 files)",
  )
  flags.mark_flag_as_required("root")

  def run(argv):
    if len(argv) > 1:
      raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    logging.set_verbosity(logging.WARNING)  # orbax logs every checkpoint step at INFO
    if bool(spec_flag.value) == bool(configs_flag.value):
      raise app.UsageError("give either --spec=FILE[:arg] or --configs=A,B")
    try:
      seeds = [int(s) for s in seeds_flag.value] if seeds_flag.value else None
    except ValueError:
      sys.exit(
        f"error: --seeds={','.join(seeds_flag.value)}: seeds are integers, e.g. --seeds=0,1,2"
      )
    try:
      entries = (
        load_spec(spec_flag.value)
        if spec_flag.value
        else [{"config": c} for c in configs_flag.value]
      )
      runs = expand(
        entries,
        root_flag.value,
        {s: f.value for s, f in data_flags.items()},
        set_flag.value,
        seeds,
        weights_flag.value,
      )
      check_configs(runs)
    except ValueError as e:
      sys.exit(f"error: {e}")
    if emit_flag.value:
      todo = [r for r in runs if r.status() != "finished"]
      for r in todo:
        print(r.command(python_flag.value))
      print(
        f"# {len(todo)} of {len(runs)} runs to do; "
        f"then: python -m fer_jax.report {root_flag.value}",
        file=sys.stderr,
      )
      return
    if cache_flag.value:
      import jax

      if not jax.config.jax_compilation_cache_dir:  # a cache the user configured wins
        jax.config.update("jax_compilation_cache_dir", os.path.join(root_flag.value, ".jax_cache"))
    with root_lock(root_flag.value):
      results = run_vectorized(runs) if vectorize_flag.value else run_all(runs)
      print("\nsweep summary")
      for r, outcome, detail in results:
        print(f"  {outcome:8s} {r.group}/seed{r.seed}  {detail}")
      failed = sum(outcome == "failed" for _, outcome, _ in results)
      if report_flag.value and len(results) > failed:
        from fer_jax.report import study

        summary = study.write_study_report(root_flag.value)
        print("\n".join(study.closing_lines(summary, root_flag.value)))
    if failed:
      sys.exit(f"{failed} of {len(runs)} runs failed; rerun the same command to retry them")

  app.run(run)


if __name__ == "__main__":
  main()
