"""What matters for training on the device found (GPU, TPU or CPU), in one command.

  python -m benchmarks.accelerator            # the full version: minutes on a GPU
  python -m benchmarks.accelerator --quick    # a small version: under 3 minutes on a CPU

Everything is measured with real runs (`fer_jax.train.members.train_together`, which is
`loop.train_and_evaluate` for one seed) on built-in faces held in memory, each row its own run
in a temporary workdir whose settings are config overrides, so a row measures exactly what a
user's run with those settings does:

1. the device and its memory;
2. train images/s of B++ and Model 0 at batch 64 and 512: the timed second epoch of
   --steps steps (the first compiles), for a baseline (float32, host-fed batches, one step per
   dispatch: `model.dtype=float32 data.on_device=false train.steps_per_dispatch=1`), each of
   bfloat16, on-device data and steps_per_dispatch=auto alone, and all three, with the ratio
   to the baseline;
3. vectorized seeds (`sweep --vectorize`): S = 1, 2, 4, 8 members of B++ (the first of
   --models) at batch 64 with the config's defaults, the group's images/s against one run's;
4. the wall time of a complete B++ run (its schedule: epochs with early stopping, evaluation
   and evaluators) on 20,000 faces, in the dtype measured faster for B++ at batch 64 in 2.;
5. the same B++ network and step in PyTorch (benchmarks/torch_peer.py: torch.compile,
   channels-last, bfloat16 autocast) on the same device, in its own process, where torch is
   installed; one line saying it is skipped where not.

--quick shrinks all of it (B++ only, at an eighth of its width, batch 32, the baseline and the
all-three rows, 320 faces, 3 steps a row, 2 seeds, 1 epoch, XLA's optimisations off as in the
test suite, PyTorch uncompiled) so that it runs on a CPU; its figures only show that everything
runs. The other flags shrink it further (the test suite's smoke test) or trim it.
Figures: docs/performance.md.
"""

import contextlib
import importlib.util
import io
import json
import os
import subprocess
import sys
import tempfile

import jax
from absl import app, flags, logging

from benchmarks.timing import timed

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = os.path.join(ROOT, "configs")

_QUICK = flags.DEFINE_bool("quick", False, "a small version that runs on a CPU in minutes")
_MODELS = flags.DEFINE_list(
  "models", None, "configs/<name>.py to time (default b_pp,model_0; quick b_pp)"
)
_BATCHES = flags.DEFINE_list("batches", None, "train batch sizes (default 64,512; quick 32)")
_STEPS = flags.DEFINE_integer("steps", None, "timed steps per row (default 200; quick 3)")
_FACES = flags.DEFINE_integer("faces", None, "built-in faces, all splits (default 20000)")
_MEMBERS = flags.DEFINE_list("members", None, "vectorized seeds S (default 1,2,4,8; quick 1,2)")
_FULL_EPOCHS = flags.DEFINE_integer(
  "full_epochs", None, "epochs of the complete B++ run (default its config's; quick 1)"
)
_WIDTHS = flags.DEFINE_string(
  "widths", None, "conv widths of every network, e.g. 8,16,32 (default the configs'; quick /8)"
)
_TORCH = flags.DEFINE_bool("torch", True, "time the PyTorch peer where torch is installed")
_VARIANTS = flags.DEFINE_list(
  "variants", None, "indices of VARIANTS to time (default all; quick 0,4)"
)

# One-factor-at-a-time rows: the baseline is the loop shaped for the CPU; each row changes one
# setting, the last all three.
BASELINE = {"model.dtype": "float32", "data.on_device": "false", "train.steps_per_dispatch": 1}
VARIANTS = (
  ("float32, host-fed, 1 step/dispatch", {}),
  ("bfloat16", {"model.dtype": "bfloat16"}),
  ("on-device data", {"data.on_device": "true"}),
  ("steps_per_dispatch auto", {"train.steps_per_dispatch": 0}),
  (
    "bfloat16 + on-device + auto",
    {"model.dtype": "bfloat16", "data.on_device": "true", "train.steps_per_dispatch": 0},
  ),
)


def settings():
  """The knobs, from the flags over the full or quick defaults."""
  quick = _QUICK.value
  return {
    "models": _MODELS.value or (["b_pp"] if quick else ["b_pp", "model_0"]),
    "batches": [int(b) for b in _BATCHES.value or ((32,) if quick else (64, 512))],
    "steps": _STEPS.value or (3 if quick else 200),
    "faces": _FACES.value or (320 if quick else 20_000),
    "members": [int(s) for s in _MEMBERS.value or ((1, 2) if quick else (1, 2, 4, 8))],
    "full_epochs": _FULL_EPOCHS.value or (1 if quick else None),
    "widths": _WIDTHS.value or ("8,16,32" if quick else None),
    # quick: the baseline and all three changes at once
    "variants": _VARIANTS.value or (["0", "4"] if quick else None),
  }


def variants(chosen=None):
  """[(name, overrides)] of the VARIANTS indexed in `chosen` (default all)."""
  return [
    (name, {**BASELINE, **changes})
    for i, (name, changes) in enumerate(VARIANTS)
    if chosen is None or str(i) in chosen
  ]


def describe_device():
  device = jax.devices()[0]
  text = f"{jax.device_count()} x {device.device_kind} ({device.platform})"
  limit = (device.memory_stats() or {}).get("bytes_limit")
  if limit:
    text += f", {limit / 2**30:.1f} GiB per device"
  if device.platform == "cpu":
    from fer_jax.platform import cpu_info

    text += f": {cpu_info.current().describe()}"
  return f"{text}; jax {jax.__version__}"


def load(name, overrides, knobs):
  from fer_jax import config_loading

  size = {"data.builtin_per_class": knobs["faces"] // 5}  # val and test 1/8 of train each
  if knobs["widths"]:
    widths = tuple(int(w) for w in knobs["widths"].split(","))
    size.update({"model.widths": widths, "model.dense_widths": (4 * widths[-1],)})
  return config_loading.load_config(os.path.join(CONFIGS, f"{name}.py"), {**size, **overrides})


def train(configs, dataset):
  """Real runs of `configs` (seeds of one config: members of one step), each in a temporary
  workdir, their log kept quiet; returns (summaries, wall seconds)."""
  from fer_jax.train import members

  log = io.StringIO()
  with tempfile.TemporaryDirectory() as root:
    workdirs = [os.path.join(root, str(i)) for i in range(len(configs))]
    try:
      with contextlib.redirect_stdout(log):
        summaries, wall, _ = timed(lambda: members.train_together(configs, workdirs, dataset))
    except Exception:
      print(log.getvalue()[-3000:], file=sys.stderr)
      raise
  return summaries, wall


def rate(name, overrides, knobs, dataset, seeds=1):
  """Images/s of all `seeds` together in the steady (second) epoch."""
  timing = {
    "train.epochs": 2,
    "train.max_steps_per_epoch": knobs["steps"],
    "train.early_stopping": False,
    "eval.report": False,  # its plots would be a third of a quick row
  }
  configs = [load(name, {**overrides, **timing, "train.seed": s}, knobs) for s in range(seeds)]
  summaries, _ = train(configs, dataset)
  return sum(s["images_per_s"] for s in summaries)


def step_rows(knobs, dataset):
  """{(model, batch, variant): images/s}, printed as they come."""
  print(f"\ntrain images/s: the second epoch of {knobs['steps']} steps (the first compiles)")
  print(f"{'model':8s} {'batch':>5s}  {'variant':36s} {'img/s':>9s}  x baseline")
  rates = {}
  for name in knobs["models"]:
    for batch in knobs["batches"]:
      base = None
      for variant, overrides in variants(knobs["variants"]):
        r = rate(name, {**overrides, "train.batch_size": batch}, knobs, dataset)
        rates[name, batch, variant] = r
        base = base or r  # the first row timed: the baseline unless --variants left it out
        print(f"{name:8s} {batch:5d}  {variant:36s} {r:9.1f}  {r / base:6.2f}x", flush=True)
  return rates


def member_rows(name, knobs, dataset):
  first = knobs["members"][0]
  against = "one run" if first == 1 else f"S={first} per seed"
  print(f"\nvectorized seeds: {name}, batch 64, the config's defaults otherwise")
  print(f"{'S':>3s} {'group img/s':>12s}  x {against}")
  per_seed = None
  for s in knobs["members"]:
    r = rate(name, {"train.batch_size": 64}, knobs, dataset, seeds=s)
    per_seed = per_seed or r / s
    print(f"{s:3d} {r:12.1f}  {r / per_seed:6.2f}x", flush=True)


def full_run(name, knobs, dataset, dtype):
  overrides = {"model.dtype": dtype}
  if knobs["full_epochs"]:
    overrides["train.epochs"] = knobs["full_epochs"]
  config = load(name, overrides, knobs)
  (summary,), wall = train([config], dataset)
  print(
    f"\ncomplete {name} run ({dtype}, batch {config.train.batch_size}, "
    f"{config.train.epochs} epochs scheduled): {wall:.1f} s wall, {summary['epochs_run']} epochs"
    f"{' (early stop)' if summary['stopped_early'] else ''}, {summary['images_per_s']:.0f} "
    f"train img/s, best val {summary['best']['val_accuracy']:.2%}, "
    f"test {summary['test']['accuracy']:.2%}",
    flush=True,
  )


def torch_rows(knobs, rates, batch):
  """The PyTorch peer's B++ step at `batch` in each dtype, against fer_jax's fastest b_pp row."""
  if "b_pp" not in knobs["models"]:
    print("\nPyTorch peer: skipped (b_pp not among --models)")
    return
  if importlib.util.find_spec("torch") is None:
    print("\nPyTorch peer: skipped (torch is not installed)")
    return
  # torch.compile takes about a minute per setting on a GPU: one batch, and on a CPU one dtype
  quick = _QUICK.value
  print(f"\nPyTorch peer (benchmarks/torch_peer.py{', uncompiled' if quick else ''}), b_pp")
  for dtype in ("float32",) if quick else ("float32", "bfloat16"):
    cmd = [sys.executable, "-m", "benchmarks.torch_peer", f"--batch={batch}", f"--dtype={dtype}"]
    cmd += ["--steps=2", "--no-compile"] if quick else ["--steps=100"]
    if knobs["widths"]:
      cmd.append(f"--widths={knobs['widths']}")
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    lines = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
    if proc.returncode or not lines:
      print(f"  batch {batch} {dtype}: FAILED\n{proc.stderr[-2000:]}")
      continue
    torch_rate = json.loads(lines[-1][len("RESULT ") :])["images_per_s"]
    ours = fastest(rates, "b_pp", batch).get(dtype)
    ratio = f"   fer_jax's fastest {dtype} row: {ours / torch_rate:.2f}x" if ours else ""
    print(f"  batch {batch:4d} {dtype:9s} {torch_rate:9.1f} img/s{ratio}", flush=True)


def fastest(rates, name, batch):
  """{dtype: the fastest images/s of `name` at `batch`} among the rows timed."""
  best = {}
  for (model, b, variant), r in rates.items():
    dtype = {**BASELINE, **dict(VARIANTS)[variant]}["model.dtype"]
    if model == name and b == batch and r > best.get(dtype, 0):
      best[dtype] = r
  return best


def main(argv):
  del argv
  from fer_jax import data

  logging.set_verbosity(logging.WARNING)  # orbax logs every checkpoint at INFO
  if _QUICK.value:
    # its figures mean nothing: compile as the test suite does, minutes faster on a CPU
    jax.config.update("jax_disable_most_optimizations", True)

  knobs = settings()
  print(f"device: {describe_device()}")
  config = load("b_pp", {}, knobs)
  dataset = data.load(config.data, verbose=False)
  print(f"data: {knobs['faces']:,} built-in faces {dataset.sizes()}, 48x48x1")
  rates = step_rows(knobs, dataset)
  # B++ (the first of --models) for the rest; the complete run in the dtype measured faster at
  # its batch (float32 if untimed)
  name = knobs["models"][0]
  member_rows(name, knobs, dataset)
  batch = load(name, {}, knobs).train.batch_size
  by_dtype = fastest(rates, name, batch)
  full_run(name, knobs, dataset, max(by_dtype, key=by_dtype.get) if by_dtype else "float32")
  if _TORCH.value:
    torch_rows(knobs, rates, batch if batch in knobs["batches"] else knobs["batches"][0])


if __name__ == "__main__":
  app.run(main)
