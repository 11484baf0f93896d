"""What happens when things go wrong (docs/troubleshooting.md): a careless or hostile user's
inputs each end in one clear line, never in a mixed run, a second writer or a traceback.

Disk-full and read-only cases use small tmpfs mounts, which needs root (as the test machines run).
"""

import contextlib
import glob
import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys

import numpy as np
import pytest
from image_trees import CLASSES, tree_digest, write_originals

from data_tools import stratify
from fer_jax import config_loading, data
from fer_jax.data import cache, file_tree
from fer_jax.evals import metrics
from fer_jax.report import run_report, study
from fer_jax.train import workdir_guard
from tests.conftest import (
  ROOT,
  TEST_CACHE_DIR,
  TINY,
  launch,
  launch_until,
  read_history,
  read_summary,
)

TWO_EPOCHS = ["--config.train.epochs=2", "--config.train.early_stopping=False"]
MODEL_0 = "--config=configs/model_0.py:quick"


def run_launch(workdir, *extra):
  return launch([MODEL_0, f"--workdir={workdir}", *TINY, *TWO_EPOCHS, *extra], check=False)


def assert_one_error_line(proc, *fragments):
  """Failed, with no traceback, and the message on the last stderr line."""
  assert proc.returncode != 0, proc.stdout
  output = proc.stdout + proc.stderr
  assert "Traceback" not in output, output
  last = proc.stderr.strip().splitlines()[-1]
  for fragment in fragments:
    assert fragment in last, last
  return last


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
  """A finished 2-epoch tiny run; tests work on copies of it."""
  workdir = str(tmp_path_factory.mktemp("finished") / "run")
  proc = run_launch(workdir)
  assert proc.returncode == 0, proc.stderr
  return workdir


@pytest.fixture
def unfinished_run(finished_run, tmp_path):
  """The same run as if killed before its test evaluation: checkpoints of both epochs, no
  metrics.json."""
  workdir = str(tmp_path / "run")
  shutil.copytree(finished_run, workdir)
  os.remove(os.path.join(workdir, "metrics.json"))
  return workdir


def snapshot(workdir):
  return {
    name: open(os.path.join(workdir, name), "rb").read()
    for name in ("config.json", "metrics.jsonl")
  }


@contextlib.contextmanager
def tmpfs(path, size="3m", read_only=False):
  os.makedirs(path, exist_ok=True)
  subprocess.run(
    ["mount", "-t", "tmpfs", "-o", f"size={size}" + (",ro" if read_only else ""), "tmpfs", path],
    check=True,
  )
  try:
    yield path
  finally:
    subprocess.run(["umount", path], check=True)


# ------------------------------------------------------------------------ 1. one config per workdir


def test_resuming_with_other_settings_is_refused_and_changes_nothing(unfinished_run):
  before = snapshot(unfinished_run)
  proc = run_launch(unfinished_run, "--config.optim.lr=0.01", "--config.train.seed=7")
  assert_one_error_line(
    proc,
    "holds a run of other settings",
    "optim.lr: 0.001 -> 0.01",
    "train.seed: 42 -> 7",
    "config.json",
  )
  assert snapshot(unfinished_run) == before
  assert not os.path.exists(os.path.join(unfinished_run, "metrics.json"))


def test_copied_checkpoints_without_config_json_are_checked_against_their_own_config(
  unfinished_run, tmp_path
):
  workdir = str(tmp_path / "copy")
  shutil.copytree(os.path.join(unfinished_run, "checkpoints"), os.path.join(workdir, "checkpoints"))
  before = sorted(os.listdir(os.path.join(workdir, "checkpoints")))
  proc = run_launch(workdir, "--config.optim.lr=0.01", "--config.train.seed=7")
  ckpt_config = os.path.join(workdir, "checkpoints", "config.json")
  assert_one_error_line(
    proc, "holds a run of other settings", "optim.lr", "train.seed", f"settings in {ckpt_config}"
  )
  assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == before
  assert not os.path.exists(os.path.join(workdir, "config.json"))


def test_checkpoints_from_before_they_carried_their_config_resume(unfinished_run):
  os.remove(os.path.join(unfinished_run, "checkpoints", "config.json"))
  proc = run_launch(unfinished_run)
  assert proc.returncode == 0, proc.stderr
  assert f"Resuming {unfinished_run} after epoch 2" in proc.stdout


def test_a_resumed_run_counts_the_wall_time_of_its_earlier_processes(finished_run, unfinished_run):
  finished = read_summary(finished_run)
  meta_path = os.path.join(unfinished_run, "checkpoints", "2", "meta", "metadata")
  with open(meta_path) as f:
    meta = json.load(f)
  # up to epoch 2's checkpoint: the training, not the test evaluation after it
  assert finished["train_time_s"] < meta["wall_s"] < finished["wall_time_s"]
  meta["wall_s"] = 3600.0  # as if the killed process had run an hour
  with open(meta_path, "w") as f:
    json.dump(meta, f)
  proc = run_launch(unfinished_run)
  assert proc.returncode == 0, proc.stderr
  resumed = read_summary(unfinished_run)
  assert 3600 < resumed["wall_time_s"] < 3600 + 300
  assert "time 60." in proc.stdout
  assert resumed["train_time_s"] == pytest.approx(finished["train_time_s"])


def test_a_finished_run_of_another_config_is_refused(finished_run):
  proc = launch(
    ["--config=configs/b_pp.py:quick", f"--workdir={finished_run}", *TINY, *TWO_EPOCHS], check=False
  )
  assert_one_error_line(proc, "holds a run of other settings", 'name: "model_0" -> "b_pp"')


def test_fields_that_change_nothing_trained_may_differ(finished_run):
  proc = run_launch(finished_run, "--config.train.log_every_steps=2", "--config.data.num_workers=1")
  assert proc.returncode == 0, proc.stderr
  assert "This run is finished" in proc.stdout


def test_config_differences_lists_every_trained_field():
  saved = {
    "optim": {"lr": 1e-3},
    "train": {"log_every_steps": 50, "seed": 1},
    "model": {"widths": [4, 8]},
  }
  now = {
    "optim": {"lr": 1e-3},
    "train": {"log_every_steps": 5, "seed": 2},
    "model": {"widths": (4, 8)},
    "data": {"root": "x"},
  }
  assert workdir_guard.config_differences(saved, now) == [
    'data.root: (absent) -> "x"',
    "train.seed: 1 -> 2",
  ]


def test_a_workdir_from_before_a_field_existed_resumes_when_the_field_keeps_its_default():
  """A run trained before config.evals existed ran today's default evaluators: its workdir is
  the same run; a changed new field, or an absent field not at its default, still differs."""
  now = config_loading.load_config("configs/model_0.py:quick").to_dict()
  saved = json.loads(json.dumps({k: v for k, v in now.items() if k != "evals"}))  # as read back
  assert workdir_guard.config_differences(saved, now) == []
  now["evals"]["test"]["split"] = "val"
  saved["data"].pop("root")
  now["data"]["root"] = "/faces"
  assert workdir_guard.config_differences(saved, now) == [
    'data.root: (absent) -> "/faces"',
    'evals.test.split: (absent) -> "val"',
  ]


# ------------------------------------------------------------------------ 2. one writer per workdir


def test_a_second_writer_is_refused_with_the_holders_pid_and_host(unfinished_run):
  before = snapshot(unfinished_run)
  with workdir_guard.lock(unfinished_run):
    proc = run_launch(unfinished_run)
  assert_one_error_line(proc, "is in use by", f"PID {os.getpid()} on host {socket.gethostname()}")
  assert snapshot(unfinished_run) == before


def test_the_lock_of_a_killed_process_is_not_stale(tmp_path):
  holder = subprocess.Popen(
    [
      sys.executable,
      "-c",
      "import sys, time; from fer_jax.train import workdir_guard\n"
      f"with workdir_guard.lock({str(tmp_path)!r}):\n  print('locked', flush=True); time.sleep(60)",
    ],
    stdout=subprocess.PIPE,
    text=True,
    env=dict(os.environ, PYTHONPATH=ROOT),
  )
  assert holder.stdout.readline().strip() == "locked"
  with pytest.raises(workdir_guard.WorkdirError, match=f"PID {holder.pid} "):
    with workdir_guard.lock(str(tmp_path)):
      pass
  holder.kill()
  holder.wait()
  with workdir_guard.lock(str(tmp_path)):  # the kernel dropped the dead holder's lock
    with open(os.path.join(tmp_path, workdir_guard.LOCK_FILE)) as f:
      assert f.read().startswith(f"PID {os.getpid()} ")


# --------------------------------------------------------------------------- 3. values out of range


def test_out_of_range_values_are_listed_one_per_line_before_anything_is_created(tmp_path):
  workdir = tmp_path / "never"
  proc = launch(
    [
      MODEL_0,
      f"--workdir={workdir}",
      "--config.train.batch_size=-4",
      "--config.train.max_steps_per_epoch=-2",
      "--config.train.epochs=-5",
      "--config.data.classes=('happy',)",
      "--config.model.widths=(4,0,8)",
      "--config.model.bn_placement=after",
    ],
    check=False,
  )
  assert proc.returncode != 0 and "Traceback" not in proc.stderr
  lines = proc.stderr.strip().splitlines()
  assert lines == [
    "error: config.data.classes=('happy',): must be at least 2 distinct class names",
    "error: config.model.widths=(4, 0, 8): must be at least 1 value(s), each >= 1",
    "error: config.model.bn_placement=after: must be one of "
    "conv_bn_relu | conv_relu_bn | block_end | none",
    "error: config.train.epochs=-5: must be >= 0",
    "error: config.train.batch_size=-4: must be >= 1",
    "error: config.train.max_steps_per_epoch=-2: must be >= 0",
  ]
  assert not workdir.exists()
  zero = launch(
    [MODEL_0, f"--workdir={workdir}", *TINY, "--config.train.batch_size=0"], check=False
  )
  assert_one_error_line(zero, "config.train.batch_size=0: must be >= 1")


def test_a_config_lacking_sections_is_named_in_one_line(tmp_path):
  path = tmp_path / "partial.py"
  path.write_text(
    "import ml_collections\n"
    "from fer_jax.configs import common\n\n\n"
    "def get_config(arg=None):\n"
    "  model = common.model_config()\n"
    "  del model.name\n"
    "  return ml_collections.ConfigDict(\n"
    "    {'name': 'partial', 'variant': '', 'data': common.data_config(), 'model': model}\n"
    "  )\n"
  )
  want = (
    "config.model.name, config.loss, config.optim, config.train, config.eval, config.evals: "
    "missing from the config"
  )
  proc = launch([f"--config={path}", f"--workdir={tmp_path / 'run'}"], check=False)
  assert_one_error_line(proc, want, "common.base_config(name)")
  with pytest.raises(config_loading.ConfigError, match=want):
    config_loading.load_config(str(path), {"optim.lr": "0.1"})
  assert not (tmp_path / "run").exists()


def test_every_shipped_config_is_in_range():
  for path in sorted(glob.glob(os.path.join(ROOT, "configs", "*.py"))):
    with open(path) as f:
      if "def get_config(" in f.read():
        config_loading.check_values(config_loading.load_config(path))
  config_loading.check_values(
    config_loading.load_config(os.path.join(ROOT, "configs/color.py:rgb,quick"))
  )


def test_fields_of_some_models_only_are_checked_too():
  # The transfer models' fields are declared in configs/common.py with all the others.
  spec = os.path.join(ROOT, "configs/vgg16.py:quick")
  with pytest.raises(config_loading.ConfigError) as e:
    config_loading.load_config(
      spec, {"model.input_size": 8, "model.backbone_mode": "thaw", "optim.lr": 0}
    )
  assert str(e.value).splitlines() == [
    "config.model.backbone_mode=thaw: must be one of freeze | finetune | train",
    "config.model.input_size=8: must be >= 32",
    "config.optim.lr=0.0: must be > 0",
  ]
  config_loading.load_config(os.path.join(ROOT, "configs/model_0.py"))  # has no such field


# --------------------------------------------------------------------------- 4. the cluster recipe


def test_the_documented_emit_xargs_recipe_trains_the_runs(tmp_path):
  # Each emitted line must reach `sh -c` whole, as its script: `xargs -L1` split it into words,
  # so that sh ran `python` alone (and read nothing) and every run "succeeded" untrained.
  for doc, recipe in (
    ("docs/experiments.md", "xargs -d '\\n' -n1 -P4 sh -c < jobs.txt"),
    ("fer_jax/sweep.py", "--emit | xargs -d '\\\\n' -n1 -P2 sh -c"),
  ):
    with open(os.path.join(ROOT, doc)) as f:
      assert recipe in f.read(), doc
  recipe = "xargs -d '\\n' -n1 -P2 sh -c"
  root = tmp_path / "sweep"
  cache = TEST_CACHE_DIR
  sets = [f"--set={a.removeprefix('--config.')}" for a in TINY] + [
    "--set=train.epochs=1",
    f"--set=data.cache_dir={cache}",
  ]
  sweep = [
    sys.executable,
    "-m",
    "fer_jax.sweep",
    "--configs=configs/model_0.py:quick",
    "--seeds=0,1",
    f"--root={root}",
    *sets,
    f"--python={sys.executable}",
    "--emit",
  ]
  command = f"{shlex.join(sweep)} | {recipe}"
  proc = subprocess.run(
    command,
    shell=True,
    cwd=ROOT,
    env=dict(os.environ, PYTHONPATH=ROOT),
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert proc.returncode == 0, proc.stderr
  finished = sorted(os.path.relpath(d, root) for d in study.find_runs(str(root)))
  assert len(finished) == 2 and {d.rsplit("/", 1)[1] for d in finished} == {"seed0", "seed1"}
  assert {read_summary(os.path.join(root, d))["seed"] for d in finished} == {0, 1}


# ----------------------------------------------------------------------- 5. data tools and symlinks


def test_a_symlink_inside_dst_is_refused_before_anything_is_written(tmp_path, capsys):
  src, dst = tmp_path / "src", tmp_path / "dst"
  write_originals(str(src), {"train": {c: 4 for c in CLASSES}, "test": {c: 2 for c in CLASSES}})
  before = tree_digest(src)
  dst.mkdir()
  os.symlink(src / "train", dst / "train")
  assert (
    stratify.main([str(src), "--out", str(dst), "--workers", "1", "--no_groups", "--apply"]) != 0
  )
  err = capsys.readouterr().err
  assert f"holds the symlink {dst / 'train'} -> {src / 'train'}" in err and "Traceback" not in err
  assert tree_digest(src) == before and sorted(os.listdir(dst)) == ["train"]


# --------------------------------------------------------------------------- 6. disk full


def _fill(disk, leave_kb):
  free = shutil.disk_usage(disk).free
  with open(os.path.join(disk, "filler"), "wb") as f:
    f.write(b"\0" * (free - leave_kb * 1024))


def test_disk_full_while_checkpointing_is_one_line_naming_the_folder(tmp_path):
  with tmpfs(str(tmp_path / "disk"), size="3m") as disk:
    _fill(disk, leave_kb=120)  # less than one checkpoint
    workdir = os.path.join(disk, "run")
    proc = run_launch(workdir)
    assert_one_error_line(
      proc,
      f"error: no space left on device writing {workdir}/checkpoints (a checkpoint needs about",
      "MB are free); no checkpoint was saved yet; free space and rerun",
    )


def test_disk_full_while_reporting_names_the_last_good_checkpoint(unfinished_run, tmp_path):
  with tmpfs(str(tmp_path / "disk"), size="3m") as disk:
    workdir = os.path.join(disk, "run")
    shutil.copytree(unfinished_run, workdir, ignore=shutil.ignore_patterns("*.png", "report.md"))
    _fill(disk, leave_kb=8)  # the rerun evaluates on test, then cannot write its report
    proc = run_launch(workdir)
    assert_one_error_line(
      proc,
      "error: no space left on device writing",
      f"the last good checkpoint is epoch 2 ({workdir}/checkpoints/2)",
      "free space and rerun the same command to resume",
    )


# --------------------------------------------------------------------------- 7. damaged checkpoints


def _truncate_largest_file(folder):
  files = [p for p in glob.glob(os.path.join(folder, "**"), recursive=True) if os.path.isfile(p)]
  path = max(files, key=os.path.getsize)
  with open(path, "r+b") as f:
    f.truncate(os.path.getsize(path) // 2)


def _epochs_saved(workdir):
  return sorted(int(n) for n in os.listdir(os.path.join(workdir, "checkpoints")) if n.isdigit())


def test_a_truncated_latest_checkpoint_is_named_and_the_advice_works(unfinished_run):
  checkpoints = os.path.join(unfinished_run, "checkpoints")
  epochs = _epochs_saved(unfinished_run)  # the latest (2) and, when it is another, the best
  _truncate_largest_file(os.path.join(checkpoints, "2"))
  proc = run_launch(unfinished_run)
  if len(epochs) == 2:  # fall back to the best epoch's checkpoint: the run resumes from there
    advice = f"delete {checkpoints}/2 and rerun the same command to resume from epoch {epochs[0]}"
  else:
    advice = f"delete {checkpoints} and rerun the same command to train this run again from epoch 1"
  last = assert_one_error_line(proc, f"checkpoint {checkpoints}/2 (epoch 2) is unreadable", advice)
  assert len(last) < 600
  shutil.rmtree(os.path.join(checkpoints, "2") if len(epochs) == 2 else checkpoints)
  proc = run_launch(unfinished_run)
  assert proc.returncode == 0, proc.stderr
  assert read_summary(unfinished_run)["epochs_run"] == 2
  assert [r["epoch"] for r in read_history(unfinished_run)] == [1, 2]


def test_a_truncated_best_checkpoint_is_named(unfinished_run, finished_run):
  best = read_summary(finished_run)["best"]["epoch"]
  _truncate_largest_file(os.path.join(unfinished_run, "checkpoints", str(best)))
  proc = run_launch(unfinished_run)
  assert_one_error_line(proc, f"checkpoints/{best} (epoch {best}) is unreadable")


def test_a_lock_that_is_a_folder_is_named_in_one_line(tmp_path):
  workdir = str(tmp_path / "run")
  os.makedirs(os.path.join(workdir, workdir_guard.LOCK_FILE))
  proc = run_launch(workdir)
  assert_one_error_line(proc, f"{workdir}/.lock is a folder", "move it out of the workdir")


# --------------------------------------------------------------------------- 8. Ctrl-C


def test_ctrl_c_says_where_the_run_stopped_and_how_to_resume(tmp_path):
  workdir = str(tmp_path / "run")
  args = [MODEL_0, f"--workdir={workdir}", *TINY, "--config.train.epochs=200"]
  args += ["--config.train.early_stopping=False"]
  proc = launch_until(args, "epoch 2/", signal.SIGINT, stderr=subprocess.PIPE)
  out, err = proc.communicate(timeout=120)
  assert proc.returncode != 0 and "Traceback" not in out + err, err
  last = err.strip().splitlines()[-1]
  epoch = int(last.split("interrupted after epoch ")[1].split(";")[0])
  assert epoch >= 2 and last.endswith("; rerun the same command to resume"), last


@pytest.mark.parametrize("then", [None, RuntimeError("a library's error after it")])
def test_a_ctrl_c_that_library_code_swallows_still_ends_the_run(then):
  from fer_jax.platform import run_errors

  def swallowing_run():
    try:
      signal.raise_signal(signal.SIGINT)  # the handler runs here, as if mid-way in a library
    except BaseException:  # noqa: BLE001 -- what a finalizer or a broad library handler does
      pass
    if then is not None:
      raise then

  try:
    with pytest.raises(KeyboardInterrupt):
      run_errors.interruptible(swallowing_run)
  finally:
    signal.signal(signal.SIGINT, signal.default_int_handler)
    run_errors._interrupted.clear()


# --------------------------------------------------------------------------- 9. unusable paths


def test_a_workdir_that_is_a_file_is_refused(tmp_path):
  path = tmp_path / "file"
  path.write_text("not a folder")
  proc = run_launch(str(path))
  assert_one_error_line(proc, f"--workdir {path}: is a file, not a folder")


def test_a_read_only_workdir_is_refused_in_one_line(tmp_path):
  with tmpfs(str(tmp_path / "ro"), size="1m", read_only=True) as ro:
    proc = run_launch(ro)
    assert_one_error_line(proc, f"cannot write {ro}", "Read-only file system")


def test_a_read_only_cache_dir_loads_uncached_with_a_warning(tmp_path, capsys):
  built = data.Dataset(
    "tiny",
    ("a", "b"),
    {"train": data.Split(np.zeros((2, 4, 4, 1), np.uint8), np.array([0, 1], np.int32))},
  )
  with tmpfs(str(tmp_path / "ro"), size="1m", read_only=True) as ro:
    dataset = cache.load_or_build(ro, "key", "fingerprint", lambda: built)
  assert dataset is built and dataset.report["cache"] == {"hit": False, "path": None}
  out = capsys.readouterr().out
  assert "warning: cannot write the cache" in out and "Read-only file system" in out


def test_symlink_loops_in_a_data_tree_are_skipped_and_reported(tmp_path):
  write_originals(str(tmp_path), {"train": {c: 2 for c in CLASSES}})
  happy = tmp_path / "train" / "happy"
  os.symlink("..", happy / "up")  # a folder link back to train/: walking it never ends
  os.symlink("self.png", happy / "self.png")  # a file link to itself: ELOOP
  scan = file_tree.scan_tree(str(tmp_path), CLASSES)
  assert len(scan.files) == 2 * len(CLASSES)
  reasons = dict(scan.skipped)
  assert reasons[str(happy / "up")].startswith("symlink loop")
  assert "Too many levels of symbolic links" in reasons[str(happy / "self.png")]


# --------------------------------------------------------------------------- 11. one line each


def _module(args, **kw):
  return subprocess.run(
    [sys.executable, "-m", *args],
    cwd=ROOT,
    env=dict(os.environ, PYTHONPATH=ROOT),
    capture_output=True,
    text=True,
    timeout=120,
    **kw,
  )


def test_sweep_with_a_seed_that_is_not_a_number(tmp_path):
  proc = _module(
    ["fer_jax.sweep", "--configs=configs/model_0.py", "--seeds=0,x", f"--root={tmp_path}", "--emit"]
  )
  assert_one_error_line(proc, "--seeds=0,x: seeds are integers")


def test_report_on_an_empty_root_or_a_truncated_metrics_json(tmp_path, finished_run):
  proc = _module(["fer_jax.report", str(tmp_path)])
  assert_one_error_line(proc, f"error: {tmp_path}: no run directories")
  run = tmp_path / "run"
  shutil.copytree(finished_run, run)
  text = (run / "metrics.json").read_text()
  (run / "metrics.json").write_text(text[: len(text) // 2])
  proc = _module(["fer_jax.report", str(tmp_path)])
  assert_one_error_line(proc, f"error: {run / 'metrics.json'}: not valid JSON")
  # The run's own command says the same, and what the message says to do writes it again.
  proc = run_launch(str(run))
  assert_one_error_line(proc, f"error: {run / 'metrics.json'}: not valid JSON", "move that away")
  os.rename(run / "metrics.json", tmp_path / "metrics.json.cut")
  proc = run_launch(str(run))
  assert proc.returncode == 0, proc.stderr
  with open(os.path.join(finished_run, "metrics.json")) as a, open(run / "metrics.json") as b:
    before, after = json.load(a), json.load(b)
  assert after["test"] == before["test"] and after["calibration"] == before["calibration"]
  assert after["epochs_run"] == before["epochs_run"]  # nothing trained again


def test_a_config_file_without_get_config(tmp_path):
  config = tmp_path / "config.py"
  config.write_text("x = 1\n")
  proc = launch([f"--config={config}", f"--workdir={tmp_path / 'run'}"], check=False)
  assert_one_error_line(proc, "the config file defines no get_config(arg)")


def test_a_missing_config_file_and_an_unknown_field_are_named_plainly(tmp_path):
  proc = launch(["--config=configs/nope.py", f"--workdir={tmp_path / 'run'}"], check=False)
  assert_one_error_line(proc, "error: no config file configs/nope.py (--config=configs/nope.py")
  for field, said in (
    ("nope", "unknown field nope ("),
    ("widthz", 'unknown field widthz. Did you'),
  ):
    proc = launch([MODEL_0, f"--config.model.{field}=1"], check=False)
    assert_one_error_line(proc, said)


# --------------------------------------------------------------------------- 12. data


def test_a_cache_with_inconsistent_arrays_is_rebuilt(tmp_path, capsys):
  good = data.Dataset(
    "tiny",
    ("a", "b"),
    {"train": data.Split(np.zeros((2, 4, 4, 1), np.uint8), np.array([0, 1], np.int32))},
  )
  for bad in (
    data.Split(
      np.zeros((2, 4, 4, 1), np.uint8), np.array([0, 2], np.int32)
    ),  # label 2 of 2 classes
    data.Split(np.zeros((3, 4, 4, 1), np.uint8), np.array([0, 1], np.int32)),
  ):  # 3 images, 2 labels
    cache.write(str(tmp_path / "key-fp.npz"), data.Dataset("tiny", ("a", "b"), {"train": bad}))
    dataset = cache.load_or_build(str(tmp_path), "key", "fp", lambda: good)
    assert dataset is good and dataset.report["cache"]["hit"] is False
    assert "unreadable" in capsys.readouterr().out
    assert cache.load_or_build(str(tmp_path), "key", "fp", lambda: None).report["cache"][
      "hit"
    ]  # rebuilt


def test_a_test_split_missing_a_class_is_warned_and_reported(capsys):
  def split(labels):
    return data.Split(np.zeros((len(labels), 4, 4, 1), np.uint8), np.array(labels, np.int32))

  ds = data.Dataset(
    "tiny",
    ("a", "b", "c"),
    {"train": split([0, 1, 2]), "val": split([0, 1, 2]), "test": split([0, 0, 1])},
    {"root": "/data/tiny"},
  )
  data.finalize(ds, None)
  assert "warning: no test images of class c in '/data/tiny'" in capsys.readouterr().out
  probs = np.eye(3)[[0, 1, 1]]
  test = metrics.classification_metrics(ds.splits["test"].labels, probs, list(ds.classes), 0.7)
  _, header, rows = run_report.classification_table(test, list(ds.classes))
  row_c = dict(zip(header, rows[2]))
  assert row_c["class"] == "c" and row_c["support"] == "0"
  assert row_c["recall"] == row_c["f1"] == "no test images"
