"""Config loading, sweep expansion and running, and a real two-config x two-seed sweep end to
end."""

import json
import os
import shlex
import subprocess
import sys

import pytest
from PIL import Image

from fer_jax import config_loading, sweep
from fer_jax.report import study
from tests.conftest import optimised_xla_env

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(autouse=True)
def _in_repo(monkeypatch):
  monkeypatch.chdir(REPO)  # config paths in specs are relative to the repository


def test_loading_any_config_leaves_the_jax_backend_unstarted():
  # launch.py parses --config before jax.distributed.initialize(), which fails once a backend
  # exists.
  code = (
    "import glob; from jax._src import xla_bridge; from fer_jax import config_loading\n"
    "for f in sorted(glob.glob('configs/*.py')):\n"
    "  if not f.endswith(('common.py', 'study.py', '__init__.py')):\n"
    "    config_loading.load_config(f)\n"
    "    assert not xla_bridge.backends_are_initialized(), f\n"
  )
  proc = subprocess.run(
    [sys.executable, "-c", code],
    cwd=REPO,
    capture_output=True,
    text=True,
    env=dict(os.environ, PYTHONPATH=REPO),
  )
  assert proc.returncode == 0, proc.stderr


def test_load_config_variant_and_typed_overrides():
  c = config_loading.load_config(
    "configs/b_pp.py:quick",
    [
      "optim.lr=1e-3",
      "model.widths=(8, 16, 32)",
      "train.augment=false",
      "data.root=/a b",
      "train.seed=3",
    ],
  )
  assert (c.variant, c.optim.lr, c.model.widths, c.train.augment, c.data.root, c.train.seed) == (
    "quick",
    1e-3,
    (8, 16, 32),
    False,
    "/a b",
    3,
  )
  assert c.data.builtin_per_class == 300  # the quick variant was applied
  c = config_loading.load_config(
    "configs/color.py:rgb", {"optim.lr": 1, "model.widths": [4, 8, 16]}
  )
  assert (c.data.channels, c.optim.lr, c.model.widths) == (3, 1.0, (4, 8, 16))


@pytest.mark.parametrize(
  "spec,overrides,message",
  [
    (
      "configs/b_pp.py",
      {"optim.lrr": 1},
      r"--config.optim.lrr: no such config field. Did you mean \"lr\"",
    ),
    ("configs/b_pp.py", ["optim.lr=abc"], "--config.optim.lr=abc: not a valid float"),
    ("configs/b_pp.py", ["train.seed=1.5"], "--config.train.seed"),
    ("configs/b_pp.py", {"train.seed": True}, "--config.train.seed: expected an int"),
    ("configs/b_pp.py", {"model.widths": ("a",)}, "--config.model.widths: element 'a'"),
    ("configs/b_pp.py", ["optim.lr"], "expected field=value"),
    ("configs/nope.py", {}, "configs/nope.py: no such file"),
    ("configs/b_pp.py:nope", {}, "no variant 'nope'"),
    ("configs/common.py", {}, "defines no get_config"),
  ],
)
def test_load_config_errors_name_the_field_or_file(spec, overrides, message):
  with pytest.raises(config_loading.ConfigError, match=message):
    config_loading.load_config(spec, overrides)


@pytest.mark.parametrize("value", [True, False, 3, 1e-3, "x y", (8, 16), (0.25,), ("happy", "sad")])
def test_format_value_parses_back(value):
  c = config_loading.load_config("configs/b_pp.py")
  field = {bool: "train.augment", int: "train.seed", float: "optim.lr", str: "data.root"}.get(
    type(value)
  )
  if isinstance(value, tuple):
    field = {int: "model.widths", float: "model.dense_dropouts", str: "data.classes"}[
      type(value[0])
    ]
  config_loading.apply_overrides(c, [f"{field}={config_loading.format_value(value)}"])
  assert config_path_value(c, field) == value


def config_path_value(c, field):
  for part in field.split("."):
    c = c[part]
  return c


def test_study_spec_maps_each_stage_to_its_data_root():
  roots = {"original": "/d/orig", "cleaned": "/d/clean", "merged": "/d/merged"}
  runs = sweep.expand(sweep.load_spec("configs/study.py"), "runs/study", roots, weights_dir="/w")
  sweep.check_configs(runs)  # every study config, variant and override loads
  by_group = {}
  for r in runs:
    by_group.setdefault(r.group, []).append(r)
  assert list(by_group) == [
    "model_0",
    "a",
    "b",
    "c",
    "b_p",
    "b_pp",
    "d",
    "color-gray",
    "color-rgb",
    "vgg16",
    "resnet50v2",
    "efficientnet_b0",
  ]
  assert all(len(v) == 3 for v in by_group.values())
  assert by_group["model_0"][0].overrides == {"data.root": "/d/orig"}
  assert {r.overrides["data.root"] for g in ("a", "b", "c") for r in by_group[g]} == {"/d/clean"}
  assert by_group["color-rgb"][0].config == "configs/color.py:rgb"
  assert by_group["vgg16"][0].overrides == {
    "data.root": "/d/merged",
    "model.init_from": "/w/vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5",
  }
  assert by_group["b_pp"][2].workdir == os.path.join("runs/study", "b_pp", "seed2")
  assert [r.seed for r in runs[:12]] == [0] * 12  # seed-major: every config's seed 0 first
  with pytest.raises(ValueError, match="pass --merged=DIR"):
    sweep.expand(
      sweep.load_spec("configs/study.py"), "runs/study", {"original": "/o", "cleaned": "/c"}
    )
  with pytest.raises(ValueError, match="pass --weights_dir=DIR"):
    sweep.expand(sweep.load_spec("configs/study.py"), "runs/study", roots)


def test_adhoc_sweep_names_overrides_and_emits_launch_commands(tmp_path):
  runs = sweep.expand(
    [{"config": "configs/b_p.py"}, {"config": "configs/b_pp.py", "variant": "quick"}],
    str(tmp_path),
    extra_overrides=["optim.lr=1e-3", "model.widths=(8,16,32)"],
    seeds=[0, 1],
  )
  assert [(r.group, r.seed) for r in runs] == [
    ("b_p-lr1e-3_widths8_16_32", 0),
    ("b_pp-quick-lr1e-3_widths8_16_32", 0),
    ("b_p-lr1e-3_widths8_16_32", 1),
    ("b_pp-quick-lr1e-3_widths8_16_32", 1),
  ]
  args = shlex.split(runs[3].command())
  assert args[:4] == [
    "python",
    "launch.py",
    "--config=configs/b_pp.py:quick",
    f"--workdir={tmp_path}/b_pp-quick-lr1e-3_widths8_16_32/seed1",
  ]
  # The emitted overrides load to the same config the in-process sweep would train.
  overrides = [a[len("--config.") :] for a in args[4:]]
  c = config_loading.load_config("configs/b_pp.py:quick", overrides)
  assert (c.optim.lr, c.model.widths, c.train.seed) == (1e-3, (8, 16, 32), 1)
  with pytest.raises(ValueError, match="share a workdir"):
    sweep.expand([{"config": "configs/b_p.py"}] * 2, str(tmp_path))


def test_run_all_skips_finished_and_survives_a_failing_run(tmp_path):
  runs = sweep.expand([{"config": "configs/model_0.py", "seeds": (0, 1, 2)}], str(tmp_path))
  os.makedirs(runs[0].workdir)
  open(os.path.join(runs[0].workdir, "metrics.json"), "w").close()
  os.makedirs(os.path.join(runs[2].workdir, "checkpoints"))
  assert [r.status() for r in runs] == ["finished", "new", "resume"]
  trained = []

  def fake_train(config, workdir):
    trained.append(config.train.seed)
    if config.train.seed == 1:
      raise RuntimeError("out of memory")
    return {"best": {"val_accuracy": 0.5}, "test": {"accuracy": 0.25}}

  results = sweep.run_all(runs, fake_train)
  assert trained == [1, 2]
  assert [(o, d) for _, o, d in results] == [
    ("skipped", "already finished"),
    ("failed", "RuntimeError: out of memory"),
    ("done", "val 50.00%, test 25.00%"),
  ]
  assert "out of memory" in open(os.path.join(runs[1].workdir, "error.txt")).read()


def test_cli_emit_checks_every_config_first(tmp_path):
  cmd = [
    sys.executable,
    "-m",
    "fer_jax.sweep",
    "--spec=configs/study.py:quick",
    f"--root={tmp_path}",
    "--emit",
  ]
  out = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, check=True)
  lines = out.stdout.strip().splitlines()
  assert len(lines) == 4 and all(
    line.startswith("python launch.py --config=configs/") for line in lines
  )
  assert "--config.train.seed=1" in lines[-1] and "4 of 4 runs to do" in out.stderr
  bad = subprocess.run(cmd + ["--set=optim.lrr=2"], capture_output=True, text=True, cwd=REPO)
  assert bad.returncode != 0 and "--config.optim.lrr: no such config field" in bad.stderr


def test_a_second_sweep_on_a_root_waits_for_the_first_naming_it(tmp_path):
  root = str(tmp_path / "root")
  (run,) = sweep.expand([{"config": "configs/model_0.py:quick"}], root)
  os.makedirs(run.workdir)
  open(os.path.join(run.workdir, "metrics.json"), "w").close()  # finished: nothing to train
  cmd = [sys.executable, "-m", "fer_jax.sweep", "--configs=configs/model_0.py:quick"]
  cmd += [f"--root={root}", "--report=false", "--compile_cache=false"]
  with sweep.root_lock(root):  # the first sweep
    proc = subprocess.Popen(
      cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    waiting = proc.stderr.readline()
    assert f"waiting for the sweep of PID {os.getpid()} on host" in waiting, waiting
    assert proc.poll() is None
  out, err = proc.communicate(timeout=300)
  assert proc.returncode == 0, err
  assert "skipped  model_0-quick/seed0  already finished" in out


# Small enough to train in seconds: tiny widths, two steps per epoch, no augmentation.
TINY = [
  "data.builtin_per_class=16",
  "train.epochs=2",
  "train.batch_size=16",
  "train.max_steps_per_epoch=2",
  "model.widths=(8, 16, 32)",
  "model.dense_widths=(16,)",
  "train.augment=false",
  "model.conv_impl=xla",
  "eval.batch_size=64",
  "eval.report=false",  # each run's report.md and plots; the study report is checked below
]


def test_quick_study_sweep_end_to_end(tmp_path):
  """Two quick configs x two seeds trained for real by the CLI, then aggregated."""
  root = tmp_path / "study"
  sets = [f"--set={s}" for s in TINY + [f"data.cache_dir={tmp_path / 'cache'}"]]
  env = optimised_xla_env({**os.environ, "JAX_PLATFORMS": "cpu"})
  cmd = [
    sys.executable,
    "-m",
    "fer_jax.sweep",
    "--spec=configs/study.py:quick",
    f"--root={root}",
    *sets,
  ]
  out = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env=env)
  assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
  assert out.stdout.count("  done ") == 4
  # It ends with the report: the verdict, a line per config's seed ensemble, where it is.
  last = out.stdout.strip().splitlines()[-3:]
  assert all(": ensemble of 2 seeds, test plain " in line and "(T " in line for line in last[:2])
  assert last[2] == f"report: {root / 'report.md'} and report.html"
  runs = study.find_runs(str(root))
  assert len(runs) == 4 and all(
    os.path.exists(os.path.join(r, "test_predictions.npz")) for r in runs
  )
  # The gap of a two-step run is noise; a loose gap bound makes the winner rule and McNemar run.
  summary = study.write_study_report(str(root), max_gap=1000)
  groups = summary["groups"]
  assert sorted(g["name"].split("-")[0] for g in groups) == ["b_pp", "model_0"]
  assert all(
    g["seeds"] == [0, 1] and g["val_accuracy"]["std"] is not None and "test_ci" in g for g in groups
  )
  assert len(summary["decision"]["tests"]) == 2
  # The runs saved their val probabilities: each seed ensemble gets a temperature of its own.
  assert all(g["ensemble"]["plain"]["temperature"] > 0 for g in groups)
  md = (root / "report.md").read_text()
  for needle in [
    " ± ",
    "[",
    "(winner)",
    "McNemar",
    "best epoch",
    "params",
    "time/epoch",
    "images/s",
    "ECE",
    "faces answered",
    *study.STUDY_PLOTS.values(),
  ]:
    assert needle in md, needle
  for png in study.STUDY_PLOTS.values():
    with Image.open(root / png) as im:
      assert im.format == "PNG" and min(im.size) > 200
  page = (root / "report.html").read_text()
  assert page.count('src="data:image/png;base64,') == len(study.STUDY_PLOTS) and "(winner)" in page
  saved = json.loads((root / "summary.json").read_text())
  assert saved["num_runs"] == 4 and saved["decision"]["winner"] in {g["name"] for g in groups}
  # A second sweep finds every run finished and trains nothing.
  again = subprocess.run(cmd + ["--emit"], capture_output=True, text=True, cwd=REPO, env=env)
  assert again.stdout.strip() == "" and "0 of 4 runs to do" in again.stderr


def test_run_vectorized_trains_each_configs_seeds_together(tmp_path):
  runs = sweep.expand(
    [
      {"config": "configs/model_0.py", "seeds": (0, 1, 2)},
      {"config": "configs/b_pp.py", "seeds": (0, 1)},
    ],
    str(tmp_path),
  )
  os.makedirs(runs[0].workdir)  # model_0 seed 0
  open(os.path.join(runs[0].workdir, "metrics.json"), "w").close()
  calls = []

  def fake_together(configs, workdirs):
    calls.append([(c.name, c.train.seed) for c in configs])
    if configs[0].name == "b_pp":
      raise RuntimeError("out of memory")
    return [{"best": {"val_accuracy": 0.5}, "test": {"accuracy": 0.25}} for _ in configs]

  results = sweep.run_vectorized(runs, fake_together)
  assert calls == [[("model_0", 1), ("model_0", 2)], [("b_pp", 0), ("b_pp", 1)]]
  assert sorted((r.group, r.seed, o) for r, o, _ in results) == [
    ("b_pp", 0, "failed"),
    ("b_pp", 1, "failed"),
    ("model_0", 0, "skipped"),
    ("model_0", 1, "done"),
    ("model_0", 2, "done"),
  ]
  assert "out of memory" in open(os.path.join(tmp_path, "b_pp", "seed1", "error.txt")).read()
