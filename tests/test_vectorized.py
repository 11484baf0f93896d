"""Seeds trained together as members of one vmapped step (their data resident on the device) equal
the same seeds trained one by one (host-fed)."""

import contextlib
import io
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fer_jax import config_loading
from fer_jax.models.kernels import cpu_conv
from fer_jax.train import loop, members
from tests.conftest import ROOT, TEST_CACHE_DIR, read_history
from tests.test_feeding import DEVICE_8, HOST_1

SEEDS = (1, 2)  # seed 1 stops early after 3 epochs, seed 2 after 2: one member leaves first
# Tiny Model 0 with dropout (its own), augmentation, plateau and early stopping turned on. BN after
# the ReLU: before it (Model 0's order) the conv biases get a gradient of pure rounding noise, which
# Adam scales to full steps, so vmap's other summation order would show up as different biases.
OVERRIDES = {
  "model.widths": (4, 8, 8),
  "model.dense_widths": (16,),
  "data.builtin_per_class": 24,
  "model.bn_placement": "conv_relu_bn",
  "train.batch_size": 8,
  "eval.batch_size": 8,
  "train.log_every_steps": 4,
  "train.epochs": 4,
  "train.augment": True,
  "train.early_stopping": True,
  "train.early_stopping_patience": 1,
  "optim.plateau_patience": 1,
  "train.vectorize": "vmap",  # the accelerators' way; CPU's "map" below
  "eval.report": False,  # report.md and its plots: seconds a run, checked in test_train
  "data.cache_dir": TEST_CACHE_DIR,
}


# The separate runs are host-fed a step at a time (HOST_1); the members hold the data on the device
# and run 8 steps a dispatch (DEVICE_8): the comparison covers feeding members as well.
def _configs(feed):
  return [
    config_loading.load_config("configs/model_0.py:quick", {**OVERRIDES, **feed, "train.seed": s})
    for s in SEEDS
  ]


def _files(workdir):
  return sorted(f for f in os.listdir(workdir))


@pytest.fixture(scope="module")
def separate_and_together(tmp_path_factory):
  root = tmp_path_factory.mktemp("vectorized")
  separate = [str(root / f"separate{s}") for s in SEEDS]
  for config, workdir in zip(_configs(HOST_1), separate):
    loop.train_and_evaluate(config, workdir)
  together = [str(root / f"together{s}") for s in SEEDS]
  with contextlib.redirect_stdout(io.StringIO()) as out:
    summaries = members.train_together(_configs(DEVICE_8), together)
  assert "data on the devices, 8 step(s)/dispatch" in out.getvalue(), out.getvalue()
  return separate, together, summaries


def test_members_equal_separate_runs(separate_and_together):
  separate, together, summaries = separate_and_together
  epochs_run = [s["epochs_run"] for s in summaries]
  assert min(epochs_run) < OVERRIDES["train.epochs"], (
    "no member stopped early: the test would not cover it"
  )
  assert len(set(epochs_run)) > 1, (
    "every member stopped at the same epoch: the test would not cover leaving"
  )
  assert [s["seed"] for s in summaries] == list(SEEDS)
  for sep, tog, summary in zip(separate, together, summaries):
    assert _files(tog) == _files(sep)
    got, want = read_history(tog), read_history(sep)
    assert [r["epoch"] for r in got] == [r["epoch"] for r in want]
    for key in ("train_loss", "val_loss", "train_accuracy", "val_accuracy", "lr"):
      np.testing.assert_allclose(
        [r[key] for r in got], [r[key] for r in want], rtol=1e-4, err_msg=f"{tog} {key}"
      )
    with open(os.path.join(sep, "metrics.json")) as f:
      ref = json.load(f)
    assert (
      summary["best"]["epoch"] == ref["best"]["epoch"]
      and summary["stopped_early"] == ref["stopped_early"]
    )
    assert summary["seed"] == ref["seed"] and summary["test"]["accuracy"] == ref["test"]["accuracy"]
    # Float32 rounding of grouped (vmapped) vs plain convolutions, a few epochs on: 1e-5 in the
    # losses above, up to ~1e-3 in single probabilities (the accuracies are equal exactly).
    for split in ("test", "val"):  # val: what each member's temperature was fitted on
      np.testing.assert_allclose(
        np.load(os.path.join(tog, f"{split}_predictions.npz"))["probs"],
        np.load(os.path.join(sep, f"{split}_predictions.npz"))["probs"],
        atol=2e-3,
      )
    epochs = {d for d in os.listdir(os.path.join(tog, "checkpoints")) if d.isdigit()}
    assert epochs == {str(ref["best"]["epoch"]), str(ref["epochs_run"])}  # the best and the last


def test_members_differ_from_each_other(separate_and_together):
  _, together, _ = separate_and_together
  losses = [read_history(w)[0]["train_loss"] for w in together]
  assert len(set(losses)) == len(losses)  # own init, dropout, augmentation and batch order per seed


def test_finished_members_are_reported_not_retrained(separate_and_together):
  _, together, summaries = separate_and_together
  before = [os.path.getmtime(os.path.join(w, "metrics.json")) for w in together]
  again = members.train_together(_configs(DEVICE_8), together)
  assert [s["best"] for s in again] == [s["best"] for s in summaries]
  assert [os.path.getmtime(os.path.join(w, "metrics.json")) for w in together] == before


def test_members_on_device_groups_equal_separate_runs(separate_and_together, tmp_path):
  """4 CPU devices, 2 members: each member on its own group of 2 devices."""
  separate, _, _ = separate_and_together
  workdirs = [str(tmp_path / f"seed{s}") for s in SEEDS]
  script = (
    f"from fer_jax import config_loading\nfrom fer_jax.train import members\n"
    f"configs = [config_loading.load_config('configs/model_0.py:quick', "
    f"{{**{OVERRIDES!r}, **{DEVICE_8!r}, 'train.seed': s}}) for s in {SEEDS!r}]\n"
    f"members.train_together(configs, {workdirs!r})\n"
  )
  out = subprocess.run(
    [sys.executable, "-c", script],
    cwd=ROOT,
    capture_output=True,
    text=True,
    timeout=300,
    env=dict(os.environ, PYTHONPATH=ROOT, JAX_NUM_CPU_DEVICES="4"),
  )
  assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
  assert "2 runs as members of one vectorized step, on 2 group(s) of 2 device(s)" in out.stdout
  assert "data on the devices, 8 step(s)/dispatch" in out.stdout
  for got_dir, want_dir in zip(workdirs, separate):
    got, want = read_history(got_dir), read_history(want_dir)
    assert [r["epoch"] for r in got] == [r["epoch"] for r in want]
    # 2 devices per member sum its batch in another order than 1 device (as in test_train)
    for key in ("train_loss", "val_loss"):
      np.testing.assert_allclose(
        [r[key] for r in got], [r[key] for r in want], rtol=2e-3, err_msg=key
      )


def test_members_must_differ_only_in_seed():
  configs = _configs(HOST_1)
  other = config_loading.load_config("configs/model_0.py:quick", {**OVERRIDES, "optim.lr": 0.1})
  with pytest.raises(ValueError, match="optim.lr"):
    members.train_together([configs[0], other], ["/nonexistent/a", "/nonexistent/b"])


def test_mapped_members_equal_plain_steps():
  """train.vectorize='map' (CPU's default): the members one after another in one program."""
  from fer_jax import models
  from fer_jax.train import steps

  configs = [
    config_loading.load_config(
      "configs/model_0.py:quick", {**OVERRIDES, "train.seed": s, "train.vectorize": "map"}
    )
    for s in SEEDS
  ]
  model = models.build(configs[0].model, 4)
  states = []
  for config in configs:
    state, tx, labels = steps.create_state(config, model, (48, 48, 1), steps_per_epoch=10)
    states.append(state)
  rng = np.random.default_rng(0)
  x = rng.integers(0, 256, (len(SEEDS), 8, 48, 48, 1), dtype=np.uint8)
  y = rng.integers(0, 4, (len(SEEDS), 8))
  keys = jnp.stack([jax.random.key(s) for s in SEEDS])
  plain = steps.make_train_step(configs[0], model, tx, 4, param_labels=labels)
  together = steps.make_train_step(
    configs[0], model, tx, 4, param_labels=labels, members=len(SEEDS)
  )
  stacked = members.stack(states)  # before the plain steps, which donate (delete) their states
  want = []
  for i, state in enumerate(states):
    for _ in range(2):
      state, metrics = plain(state, x[i], y[i], keys[i])
    want.append((state, metrics))
  for _ in range(2):
    stacked, metrics = together(stacked, x, y, keys)
  for i, (state, m) in enumerate(want):
    np.testing.assert_allclose(metrics["loss"][i], m["loss"], rtol=1e-6)
    for got, plain_leaf in zip(jax.tree.leaves(stacked.params), jax.tree.leaves(state.params)):
      np.testing.assert_allclose(got[i], plain_leaf, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("impl", ["im2col", "winograd"])
def test_custom_conv_gradients_under_vmap(impl):
  """The CPU kernels' custom VJPs (conv weight gradient, argmax max-pool) batch over members."""
  keys = jax.random.split(jax.random.key(0), 3)
  x = jax.random.normal(keys[0], (3, 2, 8, 8, 32))  # 3 members, 32 channels: Winograd's range
  k = jax.random.normal(keys[1], (3, 3, 3, 32, 8)) * 0.1

  def loss(x, k):
    return jnp.sum(cpu_conv.max_pool_2x2(jax.nn.relu(cpu_conv.conv2d_same(x, k, impl)), impl) ** 2)

  def reference(x, k):
    return jnp.sum(
      cpu_conv.max_pool_2x2(jax.nn.relu(cpu_conv.conv2d_same(x, k, "xla")), "xla") ** 2
    )

  got = jax.jit(jax.vmap(jax.grad(loss, argnums=(0, 1))))(x, k)
  reference_grad = jax.jit(jax.grad(reference, argnums=(0, 1)))
  for m in range(3):
    want = reference_grad(x[m], k[m])
    for g, w in zip(got, want):
      np.testing.assert_allclose(g[m], w, rtol=1e-3, atol=1e-3)
