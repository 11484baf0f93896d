"""config.model.dtype=bfloat16 is mixed precision: convolutions and matmuls in bfloat16; parameters,
optimiser state, BatchNorm statistics and normalisation, softmax and loss in float32."""

import os
import re

import jax
import jax.numpy as jnp
import numpy as np

from fer_jax import config_loading, models
from fer_jax.models import layers
from fer_jax.models.kernels import conv_choice, cpu_conv
from fer_jax.train import steps
from tests.conftest import ROOT

SIZE, CLASSES, BATCH = 16, 4, 32
TINY = {"model.widths": (4, 8, 8), "model.dense_widths": (16,), "model.bn_momentum": 0.9}


def make_step(config_name, dtype, **overrides):
  config = config_loading.load_config(
    os.path.join(ROOT, "configs", f"{config_name}.py"),
    {**TINY, "model.dtype": dtype, **overrides},
  )
  model = models.build(config.model, CLASSES)
  state, tx, labels = steps.create_state(config, model, (SIZE, SIZE, 1), steps_per_epoch=10)
  return state, steps.make_train_step(config, model, tx, CLASSES, param_labels=labels)


def toy_batch(seed=0):
  """Class k: a bright square in quadrant k over noise."""
  rng = np.random.default_rng(seed)
  labels = (np.arange(BATCH) % CLASSES).astype(np.int32)
  images = rng.integers(0, 100, (BATCH, SIZE, SIZE, 1)).astype(np.uint8)
  half = SIZE // 2
  for i, k in enumerate(labels):
    r, c = divmod(int(k), 2)
    images[i, r * half : (r + 1) * half, c * half : (c + 1) * half] += 150
  return images, labels


def op_types(hlo_text, op):
  """Element types in the type signatures of every `stablehlo.<op>` line."""
  types = set()
  for line in hlo_text.splitlines():
    if re.search(rf"stablehlo\.{op}\b", line):
      types |= set(re.findall(r"x(bf16|f16|f32|f64)>", line.rsplit(" : ", 1)[-1]))
  return types


def lowered_text(state, train_step):
  images, labels = toy_batch()
  return train_step.lower(state, images, labels, jax.random.key(0)).as_text()


def float_dtypes(tree):
  return {leaf.dtype for leaf in jax.tree.leaves(tree) if jnp.issubdtype(leaf.dtype, jnp.floating)}


def test_bf16_step_computes_convs_and_matmuls_in_bf16_and_keeps_state_float32():
  state, train_step = make_step("b_pp", "bfloat16")
  text = lowered_text(state, train_step)
  # b_pp: augmentation, focal loss, BN after every conv's ReLU, dropout, a BN'd Dense head
  assert op_types(text, "convolution") == {"bf16"}
  assert op_types(text, "dot_general") == {"bf16"}
  # BatchNorm's rsqrt, the softmax's exp and the loss's log
  for op in ("rsqrt", "exponential", "log"):
    assert op_types(text, op) == {"f32"}, op

  images, labels = toy_batch()
  new_state, metrics = train_step(state, images, labels, jax.random.key(0))
  assert float_dtypes(new_state.params) == {jnp.dtype(jnp.float32)}
  assert float_dtypes(new_state.batch_stats) == {jnp.dtype(jnp.float32)}
  assert float_dtypes(new_state.opt_state) == {jnp.dtype(jnp.float32)}
  assert metrics["loss"].dtype == jnp.float32 and np.isfinite(metrics["loss"])
  # BatchNorm's moving averages moved
  assert any(np.any(np.asarray(v) != 0) for v in jax.tree.leaves(new_state.batch_stats))


def test_float32_default_has_no_16_bit_arithmetic():
  config = config_loading.load_config(os.path.join(ROOT, "configs", "model_0.py"))
  assert config.model.dtype == "float32"
  state, train_step = make_step("model_0", "float32")
  text = lowered_text(state, train_step)
  assert "bf16" not in text and op_types(text, "convolution") == {"f32"}


def test_logits_are_float32_and_bn_output_is_the_compute_dtype():
  model = models.build(
    config_loading.load_config(
      os.path.join(ROOT, "configs", "model_0.py"), {**TINY, "model.dtype": "bfloat16"}
    ).model,
    CLASSES,
  )
  variables = models.init_variables(model, (SIZE, SIZE, 1))
  x = jnp.asarray(toy_batch()[0], jnp.float32) / 255
  # jitted as training runs it (op by op, the model takes seconds to dispatch)
  train = jax.jit(lambda v, x: models.apply(model, v, x, train=True, rng=jax.random.key(0)))
  logits, _ = train(variables, x)
  assert logits.dtype == jnp.float32
  capture = jax.jit(
    lambda v, x: model.apply(v, x, capture_intermediates=True, mutable=["intermediates"])
  )
  _, captured = capture(variables, x)
  # normalised in float32, handed on in bfloat16
  assert captured["intermediates"]["bn1_1"]["__call__"][0].dtype == jnp.bfloat16


def test_bf16_training_still_learns():
  no_dropout = {"model.block_dropouts": (0.0, 0.0, 0.0), "model.dense_dropouts": (0.0,)}
  state, train_step = make_step("model_0", "bfloat16", **{"optim.lr": 3e-3, **no_dropout})
  images, labels = toy_batch()
  losses = []
  for i in range(15):
    state, metrics = train_step(state, images, labels, jax.random.key(i))
    losses.append(float(metrics["loss"]))
  # float32 follows the same curve (1.76 -> 0.45 in 15 steps, all 32 right from step 11)
  assert losses[-1] < 0.4 * losses[0], losses
  assert int(metrics["correct"]) >= 0.9 * BATCH, losses


def test_normalization_computes_in_float32():
  x = jnp.linspace(0, 1, 12).reshape(1, 2, 2, 3)
  norm = layers.Normalization()
  variables = {
    "batch_stats": {
      "mean": jnp.array([0.3, 0.5, 0.7]),
      "variance": jnp.array([0.01, 0.02, 0.03]),
      "count": jnp.array(0.0),
    }
  }
  y16 = norm.apply(variables, x.astype(jnp.bfloat16))
  y32 = norm.apply(variables, x.astype(jnp.bfloat16).astype(jnp.float32))
  assert y16.dtype == jnp.bfloat16
  np.testing.assert_array_equal(np.asarray(y16), np.asarray(y32.astype(jnp.bfloat16)))


def test_conv_choice_measures_only_implementations_that_differ_in_bf16():
  assert conv_choice.candidates(jnp.float32) == cpu_conv.IMPLS
  assert conv_choice.candidates(jnp.bfloat16) == ("xla", "im2col")
  runners = conv_choice.layer_runners((1, 8, 8, 32), (3, 3, 32, 8), jnp.bfloat16)
  assert set(runners) == {"xla", "im2col"}
