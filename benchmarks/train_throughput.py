"""Train-step throughput: fer_jax against the same models in Keras 3 (TensorFlow and JAX backends).

Times steady-state training steps (after compilation and warm-up) at batch 64 on 48x48x1
images, for Model 0 and B++, each framework in its own process:

  fer_jax         the real step (fer_jax.train.steps.make_train_step) with conv_impl='auto': on
                  CPU, per conv layer the implementation measured fastest on this CPU
                  (fer_jax/models/kernels/conv_choice.py; measured on first use, then cached on
                  disk)
  fer_jax_winograd  the same step with conv_impl='winograd'
  fer_jax_im2col  the same step with conv_impl='im2col'
  fer_jax_xla     the same step with conv_impl='xla' (XLA's own convolution gradients)
  keras_tf        Keras 3 on TensorFlow, jit_compile=False: TF's kernels. This is also what
                  Keras's default jit_compile='auto' picks on a machine without a GPU.
  keras_tf_xla    Keras 3 on TensorFlow, jit_compile=True (TF through XLA)
  keras_jax       Keras 3 on JAX (jitted by Keras, XLA's convolution gradients)
  keras_tf_tcmalloc  keras_tf with tcmalloc preloaded, as every fer_jax process runs
                  (fer_jax/platform/allocator.py; launch.py does it itself): the same allocator
                  on both sides

The Keras frameworks run as their users run them, with the C library's malloc, except
keras_tf_tcmalloc. Each line says which allocator its process had.

The Keras models are the study's (docs/study.md): B++ with its augmentation layers inside the
model, focal loss and L2; class weights; trained with `train_on_batch` on one fixed in-memory
batch, so no framework's input pipeline is measured. Keras refuses to jit a model holding
RandomRotation / RandomZoom, so for keras_tf_xla and keras_jax B++'s augmentation layers run
eagerly on each batch before the jitted step (as they would in a tf.data pipeline), inside the
timed step.
Parameter counts are printed as a check that the models match.

It prints the CPU (model, family, ISA flags, cores: figures only compare on the same CPU kind),
the implementation 'auto' chose for each conv layer, and for each fer_jax step its FLOP as XLA's
cost analysis counts them (Winograd's are fewer than a direct convolution's), the same model's
direct-convolution FLOP (the 'xla' step's count: the work every framework does), the FLOP/s
achieved and their share of the CPU's float32 peak where it is known (cores x clock x FLOP per
cycle from the ISA, fer_jax/platform/cpu_info.py).

  python benchmarks/train_throughput.py [--steps=3] [--rounds=1] [--models=model_0,b_pp]
      [--frameworks=fer_jax,fer_jax_winograd,fer_jax_im2col,fer_jax_xla,keras_tf,keras_tf_xla,keras_jax,
       keras_tf_tcmalloc]

Target: fer_jax >= 1.5x keras_tf for B++ and Model 0. Figures per CPU kind are in
docs/performance.md. On a shared machine wall times depend on the other load: compare ratios
from one run (--rounds > 1 interleaves the frameworks round by round and pools the steps);
CPU seconds per step depend much less on it.
"""

import json
import os
import subprocess
import sys
import time

import jax
import numpy as np
from absl import app, flags

from fer_jax.models.kernels import conv_choice
from fer_jax.platform import allocator, cpu_info

CONFIGS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs")
MODELS = ("model_0", "b_pp")
BATCH, SIZE, CLASSES = 64, 48, 4

_STEPS = flags.DEFINE_integer("steps", 3, "timed steps per framework and model (after warm-up)")
_ROUNDS = flags.DEFINE_integer(
  "rounds", 1, "times every framework is run, interleaved; steps are pooled"
)
_WARMUP = flags.DEFINE_integer("warmup", 1, "untimed steps after the first (compiling) one")
_MODELS = flags.DEFINE_list("models", list(MODELS), f"any of {', '.join(MODELS)}")
_FRAMEWORKS = flags.DEFINE_list(
  "frameworks",
  "fer_jax,fer_jax_winograd,fer_jax_im2col,fer_jax_xla,keras_tf,keras_tf_xla,keras_jax,"
  "keras_tf_tcmalloc",
  "which of them to time (see the module docstring)",
)
_WORKER = flags.DEFINE_string("worker", "", "internal: time one framework:model in this process")


def fixed_batch():
  """One batch of random faces-sized images (uint8) and labels covering every class."""
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (BATCH, SIZE, SIZE, 1), dtype=np.uint8)
  labels = (np.arange(BATCH) % CLASSES).astype(np.int32)
  return images, labels


def time_steps(step, n_warmup, n_steps):
  """Calls `step()` (which must block until done) 1 + n_warmup times untimed, then n_steps timed.

  Returns the first call's seconds (compilation included) and per-step wall and CPU seconds.
  """
  start = time.perf_counter()
  step()
  first = time.perf_counter() - start
  for _ in range(n_warmup):
    step()
  wall, cpu = [], []
  for _ in range(n_steps):
    start, start_cpu = time.perf_counter(), time.process_time()
    step()
    wall.append(time.perf_counter() - start)
    cpu.append(time.process_time() - start_cpu)
  return {"first_s": first, "wall_s": wall, "cpu_s": cpu}


def fer_jax_step(model_name, conv_impl):
  """(parameter count, the train step, its arguments) of fer_jax's real step on fixed_batch()."""
  from fer_jax import config_loading, losses, models
  from fer_jax.platform import sharding
  from fer_jax.train import steps

  config = config_loading.load_config(
    os.path.join(CONFIGS, f"{model_name}.py"), {"model.conv_impl": conv_impl}
  )
  model = models.build(config.model, CLASSES)
  state, tx, labels_tree = steps.create_state(config, model, (SIZE, SIZE, 1), steps_per_epoch=100)
  params = models.count_params(state.variables(), labels_tree)["total"]
  images, labels = fixed_batch()
  class_weights = losses.class_weights(config.loss, np.bincount(labels, minlength=CLASSES))
  mesh = sharding.make_mesh()
  train_step = steps.make_train_step(
    config, model, tx, CLASSES, class_weights, param_labels=labels_tree
  )
  return (
    params,
    train_step,
    (
      sharding.replicate(state, mesh),
      *sharding.shard_batch(mesh, images, labels),
      jax.random.key(0),
    ),
  )


def fer_jax_worker(model_name, conv_impl):
  from fer_jax.platform import sharding

  sharding.configure_backend()  # as train_and_evaluate does before anything is traced
  params, train_step, args = fer_jax_step(model_name, conv_impl)
  # Lowering traces the step: 'auto' makes (or reads) its per-layer choices here.
  flop = train_step.lower(*args).cost_analysis()["flops"]
  _, xla_step, xla_args = fer_jax_step(model_name, "xla")
  info = {
    "flop": flop,
    "direct_flop": xla_step.lower(*xla_args).cost_analysis()["flops"],
    "chosen": conv_choice.chosen(),
  }
  holder = [args[0]]

  def step():
    holder[0], metrics = train_step(holder[0], *args[1:])
    jax.block_until_ready(metrics)

  return params, step, info


def keras_model(keras, model_name):
  """The study's Model 0 or B++ in Keras 3 (docs/study.md).

  Returns (augmentation layers, the rest, loss, lr).
  """
  layers, l2 = keras.layers, keras.regularizers.L2
  augmentation = []
  if model_name == "model_0":
    body = []
    for width in (32, 64, 128):
      body += [
        layers.Conv2D(width, 3, padding="same"),
        layers.BatchNormalization(),
        layers.Activation("relu"),
        layers.MaxPooling2D(),
        layers.Dropout(0.25),
      ]
    head = [layers.Flatten(), layers.Dense(256, activation="relu"), layers.Dropout(0.5)]
    loss = keras.losses.CategoricalCrossentropy(label_smoothing=0.1)
    lr = 1e-3
  elif model_name == "b_pp":
    augmentation = [
      layers.RandomFlip("horizontal"),
      layers.RandomRotation(0.05),
      layers.RandomZoom(0.05),
      layers.RandomContrast(0.05, value_range=(0, 1)),
    ]
    body = []
    for width, dropout in ((64, 0.25), (128, 0.30), (256, 0.40)):
      for _ in range(2):
        body += [
          layers.Conv2D(width, 3, padding="same", activation="relu", kernel_regularizer=l2(1e-4)),
          layers.BatchNormalization(),
        ]
      body += [layers.MaxPooling2D(), layers.Dropout(dropout)]
    head = [
      layers.Flatten(),
      layers.Dense(256, activation="relu", kernel_regularizer=l2(1e-4)),
      layers.BatchNormalization(),
      layers.Dropout(0.5),
    ]
    loss = keras.losses.CategoricalFocalCrossentropy(alpha=0.25, gamma=2.0, label_smoothing=0.1)
    lr = keras.optimizers.schedules.CosineDecay(5e-4, decay_steps=100 * 75, alpha=0.02)
  else:
    raise ValueError(f"--models: no Keras version of {model_name!r}; known: {', '.join(MODELS)}")
  return augmentation, [*body, *head, layers.Dense(CLASSES, activation="softmax")], loss, lr


def keras_worker(model_name, backend, jit_compile):
  os.environ["KERAS_BACKEND"] = backend  # read when keras is first imported
  import keras

  keras.utils.set_random_seed(0)
  augmentation, rest, loss, lr = keras_model(keras, model_name)
  augment_outside = jit_compile and augmentation  # Keras would silently fall back to no jit
  layers = rest if augment_outside else [*augmentation, *rest]
  model = keras.Sequential([keras.Input((SIZE, SIZE, 1)), *layers])
  model.compile(
    optimizer=keras.optimizers.Adam(lr), loss=loss, metrics=["accuracy"], jit_compile=jit_compile
  )
  augment = keras.Sequential(augmentation) if augment_outside else None
  images, labels = fixed_batch()
  x = images.astype(np.float32) / 255.0
  y = np.eye(CLASSES, dtype=np.float32)[labels]
  class_weight = {c: 1.0 for c in range(CLASSES)}  # balanced weights of a balanced batch

  def step():
    inputs = augment(x, training=True) if augment else x
    # train_on_batch returns host values: the step is done
    model.train_on_batch(inputs, y, class_weight=class_weight)

  return model.count_params(), step, {}  # the augmentation layers have no weights


# framework -> (model name -> (parameter count, step function, extra figures)), each called in its
# own process
WORKERS = {
  "fer_jax": lambda model_name: fer_jax_worker(model_name, "auto"),
  "fer_jax_winograd": lambda model_name: fer_jax_worker(model_name, "winograd"),
  "fer_jax_im2col": lambda model_name: fer_jax_worker(model_name, "im2col"),
  "fer_jax_xla": lambda model_name: fer_jax_worker(model_name, "xla"),
  "keras_tf": lambda model_name: keras_worker(model_name, "tensorflow", jit_compile=False),
  "keras_tf_xla": lambda model_name: keras_worker(model_name, "tensorflow", jit_compile=True),
  "keras_jax": lambda model_name: keras_worker(model_name, "jax", jit_compile=True),
  "keras_tf_tcmalloc": lambda model_name: keras_worker(model_name, "tensorflow", jit_compile=False),
}
WITH_TCMALLOC = (
  "fer_jax",
  "fer_jax_winograd",
  "fer_jax_im2col",
  "fer_jax_xla",
  "keras_tf_tcmalloc",
)


def worker(spec):
  framework, model_name = spec.split(":")
  params, step, info = WORKERS[framework](model_name)
  result = time_steps(step, _WARMUP.value, _STEPS.value)
  malloc = "tcmalloc" if allocator.loaded() else "system"
  print("RESULT " + json.dumps({"params": params, "malloc": malloc, **info, **result}), flush=True)


def run_worker(framework, model_name):
  """Times one framework on one model in a fresh process; returns its RESULT dict."""
  cmd = [
    sys.executable,
    os.path.abspath(__file__),
    f"--worker={framework}:{model_name}",
    f"--steps={_STEPS.value}",
    f"--warmup={_WARMUP.value}",
  ]
  env = dict(
    allocator.preload_env() if framework in WITH_TCMALLOC else os.environ, TF_CPP_MIN_LOG_LEVEL="2"
  )
  proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
  lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
  if proc.returncode != 0 or not lines:
    raise RuntimeError(
      f"{framework} on {model_name} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n"
      f"{proc.stderr[-3000:]}"
    )
  return json.loads(lines[-1][len("RESULT ") :])


def images_per_s(result):
  return BATCH / float(np.median(result["wall_s"]))


def ratio_text(results, model_name, den):
  a, b = results.get((model_name, "fer_jax")), results.get((model_name, den))
  return f"{images_per_s(a) / images_per_s(b):.2f}x" if a and b else "-"


def print_table(results, model_names, frameworks):
  others = [f for f in frameworks if f != "fer_jax"]

  def cell(key):
    return f"{images_per_s(results[key]):.1f}" if key in results else "-"

  print(f"\nimages/s (median step){'':2s}" + "".join(f"{f:>18s}" for f in frameworks))
  for model_name in model_names:
    print(f"{model_name:24s}" + "".join(f"{cell((model_name, f)):>18s}" for f in frameworks))
  print("\nfer_jax / ..." + " " * 11 + "".join(f"{f:>18s}" for f in others))
  for model_name in model_names:
    print(
      f"{model_name:24s}" + "".join(f"{ratio_text(results, model_name, f):>18s}" for f in others)
    )
  print("target: fer_jax >= 1.5x keras_tf for b_pp and model_0")


def print_flop(results, model_names, frameworks, peak):
  """Per fer_jax step: FLOP (XLA's count and the direct-convolution count), FLOP/s, share of
  peak."""

  def share(flop_s):
    return f" = {100 * flop_s / peak:4.1f} % of peak" if peak else ""

  print(
    f"\nFLOP per step (XLA cost analysis) and achieved FLOP/s; fp32 peak: "
    f"{f'{peak / 1e9:.0f} GFLOP/s' if peak else 'unknown for this CPU'}"
  )
  for model_name in model_names:
    for framework in frameworks:
      r = results.get((model_name, framework))
      if not r or "flop" not in r:
        continue
      seconds = float(np.median(r["wall_s"]))
      counted, direct = r["flop"], r["direct_flop"]
      print(
        f"  {model_name:8s} {framework:17s} counted {counted / 1e9:6.1f} G -> "
        f"{counted / seconds / 1e9:6.1f} GFLOP/s{share(counted / seconds)};  "
        f"direct-conv {direct / 1e9:6.1f} G -> "
        f"{direct / seconds / 1e9:6.1f} GFLOP/s{share(direct / seconds)}"
      )
  for model_name in model_names:
    chosen = results.get((model_name, "fer_jax"), {}).get("chosen")
    if chosen is not None:
      print(
        f"\nconv_impl 'auto' chose for {model_name} (layers under "
        f"{conv_choice.MIN_MEASURED_FLOP / 1e9:.0f} GFLOP run {conv_choice.DEFAULT!r} unmeasured):"
      )
      for layer, impl in chosen.items():
        print(f"  {layer:36s} {impl}")


def main(argv):
  del argv
  if _WORKER.value:
    return worker(_WORKER.value)
  for name, values, known in (
    ("models", _MODELS.value, MODELS),
    ("frameworks", _FRAMEWORKS.value, WORKERS),
  ):
    unknown = sorted(set(values) - set(known))
    if unknown:
      raise app.UsageError(f"--{name}: unknown {', '.join(unknown)}; known: {', '.join(known)}")
  here = cpu_info.current()
  print(f"CPU: {here.describe()}\n     all flags: {' '.join(sorted(here.flags))}")
  print(
    f"jax {jax.__version__}, XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}; batch {BATCH}, "
    f"{_STEPS.value} timed steps after {1 + _WARMUP.value} untimed, {_ROUNDS.value} round(s)"
  )
  results = {}
  for _ in range(_ROUNDS.value):
    for model_name in _MODELS.value:
      for framework in _FRAMEWORKS.value:
        load = os.getloadavg()[0]
        try:
          r = run_worker(framework, model_name)
        except RuntimeError as e:
          # one framework failing (e.g. TensorFlow missing) spoils no other figure
          print(f"  {model_name:8s} {framework:17s} FAILED: {e}", flush=True)
          continue
        print(
          f"  {model_name:8s} {framework:17s} {images_per_s(r):7.1f} img/s   median step "
          f"{np.median(r['wall_s']):.3f} s wall, {np.median(r['cpu_s']):.3f} s CPU   first step "
          f"{r['first_s']:5.1f} s   {r['params']:,} params   malloc {r['malloc']}   "
          f"load avg before {load:.1f}",
          flush=True,
        )
        pooled = results.setdefault((model_name, framework), {**r, "wall_s": [], "cpu_s": []})
        pooled["wall_s"] += r["wall_s"]
        pooled["cpu_s"] += r["cpu_s"]
  print_table(results, _MODELS.value, _FRAMEWORKS.value)
  print_flop(results, _MODELS.value, _FRAMEWORKS.value, here.fp32_peak_flops())
  per_cycle = here.fp32_flop_per_cycle()
  if per_cycle:
    print(
      f"(peak = {here.cores} cores x {here.mhz / 1000:.2f} GHz x {per_cycle} fp32 FLOP/cycle "
      "from the ISA; turbo or AVX-512 clock limits move it)"
    )


if __name__ == "__main__":
  app.run(main)
