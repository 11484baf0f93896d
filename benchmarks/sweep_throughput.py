r"""Sweep throughput: S seeds of one config trained together (one vmapped step) against the same S
runs one after another, and the share of a step the host spends feeding batches.

For Model 0 and B++ at batch 64 on 48x48x1 images, times steady-state steps (after compilation
and warm-up) of fer_jax's real train step (`steps.make_train_step(members=S)`):

  sequential   one run's step, data already on device; S runs one after another train
               S x 64 images in S x that time, so their images/s is one run's
  vmap, map    S members stacked in one step, each with its own 64-image batch, as
               config.train.vectorize runs them: 'vmap' (one batched computation) or 'map'
               (the members one after another inside one program; the CPU default)
  host feed    one run's step as `loop.train_epoch` feeds it (rows gathered from the host
               arrays in epoch order, then transferred every step) against data on device

  python benchmarks/sweep_throughput.py [--members=1,2,4,8] [--models=model_0,b_pp] [--steps=3] \\
    [--how=map,vmap]

Prints total images/s and the ratios to sequential per S. Figures for this project's
machine are in docs/scaling.md. On a shared machine wall times depend on the other load:
compare ratios from one run.
"""

import os
import sys

import numpy as np
from absl import app, flags

# run as a script from anywhere
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks.timing import timed

CONFIGS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs")
BATCH, SIZE, CLASSES, POOL = 64, 48, 4, 1024

_MEMBERS = flags.DEFINE_list("members", ["1", "2", "4", "8"], "numbers of seeds trained together")
_MODELS = flags.DEFINE_list("models", ["model_0", "b_pp"], "configs/<name>.py to time")
_STEPS = flags.DEFINE_integer(
  "steps", 3, "timed steps per measurement (after one compiling and one warm-up step)"
)
_HOW = flags.DEFINE_list("how", ["map", "vmap"], "config.train.vectorize modes to time for S > 1")


def measure(step, n_steps):
  """Seconds per call of `step()` (which blocks until done), after a compiling and a warm-up
  call."""
  step()
  step()
  _, wall, _ = timed(lambda: [step() for _ in range(n_steps)])
  return wall / n_steps


def model_rows(name, member_counts, n_steps, modes):
  import jax
  import jax.numpy as jnp

  from fer_jax import config_loading, losses, models
  from fer_jax.data import batching
  from fer_jax.platform import sharding
  from fer_jax.train import steps
  from fer_jax.train.members import stack

  config = config_loading.load_config(os.path.join(CONFIGS, f"{name}.py"))
  model = models.build(config.model, CLASSES)
  rng = np.random.default_rng(0)
  # a train split to draw batches from
  pool_images = rng.integers(0, 256, (POOL, SIZE, SIZE, 1), dtype=np.uint8)
  pool_labels = (np.arange(POOL) % CLASSES).astype(np.int32)
  class_weights = losses.class_weights(config.loss, np.bincount(pool_labels, minlength=CLASSES))
  mesh = sharding.make_mesh()

  def make(members, how):
    states = []
    for seed in range(members):
      config_s = config_loading.load_config(
        os.path.join(CONFIGS, f"{name}.py"), {"train.seed": seed, "train.vectorize": how}
      )
      state, tx, labels_tree = steps.create_state(
        config_s, model, (SIZE, SIZE, 1), steps_per_epoch=100
      )
      states.append(state)
    # One member is a plain run: the plain step (no member axis).
    step = steps.make_train_step(
      config_s,
      model,
      tx,
      CLASSES,
      class_weights,
      param_labels=labels_tree,
      members=members if members > 1 else None,
    )
    if members == 1:
      return step, sharding.replicate(states[0], mesh), sharding.replicate(jax.random.key(0), mesh)
    keys = sharding.put_members(jnp.stack([jax.random.key(s) for s in range(members)]), mesh)
    return step, sharding.put_members(stack(states), mesh), keys

  def on_device_step(step, holder, keys, members):
    if members == 1:
      x, y = sharding.shard_batch(mesh, pool_images[:BATCH], pool_labels[:BATCH])
    else:
      x, y = sharding.shard_batch(
        mesh,
        np.stack([pool_images[:BATCH]] * members),
        np.stack([pool_labels[:BATCH]] * members),
        stacked=True,
      )

    def run():
      holder[0], metrics = step(holder[0], x, y, keys)
      jax.block_until_ready(metrics)

    return run

  def host_fed_step(step, holder, keys):
    """What loop.train_epoch does per step: rows gathered in epoch order, then transferred."""
    order = batching.epoch_order(POOL, 0, 1)
    position = [0]

    def run():
      s = position[0] % (POOL // BATCH)
      position[0] += 1
      idx = np.sort(order[s * BATCH : (s + 1) * BATCH])
      x, y = sharding.shard_batch(mesh, pool_images[idx], pool_labels[idx])
      holder[0], metrics = step(holder[0], x, y, keys)
      jax.block_until_ready(metrics)

    return run

  rows = {}
  for members in member_counts:
    rows[members] = {}
    for how in modes[:1] if members == 1 else modes:  # one member is a plain run either way
      step, state, keys = make(members, how)
      holder = [state]
      key = how if members > 1 else "plain"
      rows[members][key] = measure(on_device_step(step, holder, keys, members), n_steps)
      print(f"  {name} S={members} {key}: {rows[members][key]:.3f} s/step", flush=True)
    if members == 1:
      rows[members]["host_fed"] = measure(host_fed_step(step, holder, keys), n_steps)
  return rows


def main(argv):
  del argv
  import jax

  from fer_jax.platform import sharding

  sharding.configure_backend()
  member_counts = sorted({1, *(int(m) for m in _MEMBERS.value)})
  print(
    f"JAX {jax.__version__} on {jax.device_count()} x {jax.devices()[0].device_kind}, "
    f"{os.cpu_count()} CPUs; batch {BATCH} per member",
    flush=True,
  )
  modes = _HOW.value
  results = {name: model_rows(name, member_counts, _STEPS.value, modes) for name in _MODELS.value}
  print(
    "\n| model | S | sequential img/s | "
    + " | ".join(f"{m} img/s | {m} / sequential" for m in modes)
    + " |"
  )
  print("|---|---|---|" + "---|---|" * len(modes))
  for name, rows in results.items():
    sequential = BATCH / rows[1]["plain"]
    for members in member_counts[1:]:
      speeds = [members * BATCH / rows[members][m] for m in modes]
      cells = [f"{speed:.1f} | {speed / sequential:.2f}x" for speed in speeds]
      print(f"| {name} | {members} | {sequential:.1f} | " + " | ".join(cells) + " |")
  print("\n| model | step, data on device | step, fed from host | host share of a step |")
  print("|---|---|---|---|")
  for name, rows in results.items():
    device_s, host_s = rows[1]["plain"], rows[1]["host_fed"]
    share = max(0.0, 1 - device_s / host_s)
    print(f"| {name} | {device_s * 1000:.0f} ms | {host_s * 1000:.0f} ms | {share:.1%} |")


if __name__ == "__main__":
  app.run(main)
