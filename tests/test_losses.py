"""Losses against NumPy references of the study's formulas (docs/study.md), and the train
step's loss on mixed batches (mixup, CutMix)."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from fer_jax import augment, config_loading, losses, models
from fer_jax.configs import b_p, c
from fer_jax.train import steps


def _softmax(z):
  e = np.exp(z - z.max(-1, keepdims=True))
  return e / e.sum(-1, keepdims=True)


def _loss_cfg(name, eps=0.1):
  return ml_collections.ConfigDict(
    dict(name=name, label_smoothing=eps, focal_gamma=2.0, focal_alpha=0.25)
  )


@pytest.fixture
def batch():
  rng = np.random.default_rng(0)
  logits = rng.normal(size=(16, 4)).astype(np.float32) * 3
  logits[0] = [40.0, -40.0, 0.0, 0.0]  # saturated: exercises the 1e-7 clip
  return logits, rng.integers(0, 4, 16)


def test_cross_entropy_with_label_smoothing(batch):
  logits, labels = batch
  y = np.eye(4)[labels] * 0.9 + 0.1 / 4
  want = -(y * np.log(_softmax(logits.astype(np.float64)))).sum(-1)
  got = losses.per_sample_loss_fn(_loss_cfg("cross_entropy"), 4)(logits, labels)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_focal_loss_matches_numpy_reference(batch):
  logits, labels = batch
  y = np.eye(4)[labels] * 0.9 + 0.1 / 4
  p = np.clip(_softmax(logits.astype(np.float64)), 1e-7, 1 - 1e-7)
  want = (y * 0.25 * (1 - p) ** 2 * -np.log(p)).sum(-1)
  got = losses.per_sample_loss_fn(_loss_cfg("focal"), 4)(logits, labels)
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-7)
  ce = losses.per_sample_loss_fn(_loss_cfg("cross_entropy"), 4)(logits, labels)
  assert np.all(np.asarray(got) < np.asarray(ce))  # focal down-weights every sample


def test_unknown_loss_names_the_field():
  with pytest.raises(ValueError, match="config.loss.name"):
    losses.per_sample_loss_fn(_loss_cfg("hinge"), 4)


def test_balanced_class_weights_formula():
  counts = np.array([4277, 4292, 4367, 4619])  # the study's merged train split (docs/study.md)
  w = losses.balanced_class_weights(counts)
  np.testing.assert_allclose(w, counts.sum() / (4 * counts), rtol=1e-6)
  np.testing.assert_allclose((w * counts).sum(), counts.sum(), rtol=1e-6)  # weighted count = n
  # absent class: no weight, no division by 0
  assert losses.balanced_class_weights([10, 0, 30])[1] == 0.0


def _cnn_params(config):
  with config.unlocked():  # the study's layer structure, narrow: L2 selects by layer name
    config.model.widths, config.model.dense_widths = (4, 4, 4), (8,)
  model = models.build(config.model, 4)
  return jax.eval_shape(lambda: models.init_variables(model, (48, 48, 1)))["params"]


def test_l2_gradient_is_2_lambda_w_on_chosen_kernels_only():
  config = b_p.get_config()  # B+: 1e-4 on every conv kernel and the first Dense kernel
  shapes = _cnn_params(config)
  leaves, treedef = jax.tree.flatten(shapes)
  keys = jax.random.split(jax.random.key(0), len(leaves))
  params = jax.tree.unflatten(
    treedef, [jax.random.normal(k, s.shape) for k, s in zip(keys, leaves)]
  )
  coeff = losses.l2_coefficients(params, config.loss)
  grads = jax.grad(lambda p: losses.l2_penalty(p, coeff))(params)
  for path, g in jax.tree_util.tree_flatten_with_path(grads)[0]:
    layer, leaf = path[-2].key, path[-1].key
    w = params[layer][leaf]
    if leaf == "kernel" and (layer.startswith("conv") or layer == "dense1"):
      np.testing.assert_allclose(g, 2 * 1e-4 * w, rtol=1e-6, err_msg=layer)
    else:  # biases, BatchNorm scale/bias, the output layer
      assert not np.any(np.asarray(g)), f"{layer}/{leaf} should not be regularised"


def test_l2_model_c_covers_both_dense_kernels_only():
  config = c.get_config()
  coeff = losses.l2_coefficients(_cnn_params(config), config.loss)
  chosen = {
    "/".join(p.key for p in path)
    for path, lam in jax.tree_util.tree_flatten_with_path(coeff)[0]
    if lam
  }
  assert chosen == {"dense1/kernel", "logits/kernel"}
  assert coeff["dense1"]["kernel"] == 1e-3


def test_l2_conv_covers_the_cnn_convs_not_backbone_layers_named_conv():
  config = c.get_config()
  with config.unlocked():
    config.loss.l2_conv = 1e-4
  kernel = {"kernel": np.ones((3, 3, 1, 1), np.float32)}
  params = {
    "conv1_1": kernel,
    "conv3_2": kernel,
    "conv1_conv": kernel,  # ResNet50V2's stem
    "conv2d_7": kernel,
    "conv2_block1_1_conv": kernel,
  }  # mini-XCEPTION's classifier, a ResNet block
  coeff = losses.l2_coefficients(params, config.loss)
  assert {name for name, v in coeff.items() if v["kernel"]} == {"conv1_1", "conv3_2"}


def test_a_mixed_train_step_reports_the_lam_weighted_loss_of_both_labels():
  """The step's loss is lam * loss(own label) + (1 - lam) * loss(partner's label) on the mixed
  faces (both losses are linear in the targets); 'correct' counts each face's own label. Both
  alphas on: the batch is mixed one way or the other (tests/test_augment.py pins each)."""
  alphas = (0.4, 1.0)
  config = config_loading.load_config(
    "configs/model_0.py:quick",
    {
      "model.widths": (4, 4, 4),
      "model.dense_widths": (8,),
      "train.augment": False,
      "train.mixup_alpha": alphas[0],
      "train.cutmix_alpha": alphas[1],
      "loss.class_weights": "none",
    },
  )
  model = models.build(config.model, 4)
  shape = (16, 16, 1)  # small faces: this checks the loss, not the network
  state, tx, labels = steps.create_state(config, model, shape, steps_per_epoch=10)
  step = steps.make_train_step(config, model, tx, 4, param_labels=labels)
  rng = np.random.default_rng(0)
  x = rng.integers(0, 256, (8, *shape), dtype=np.uint8)
  y = rng.integers(0, 4, 8).astype(np.int32)

  @jax.jit
  def expected(variables, x, y):
    key = jax.random.fold_in(jax.random.key(3), 0)  # the step's key at step 0
    mixed, lam = augment.mix_batch(jax.random.fold_in(key, 2), models.to_float(x), *alphas)
    logits, _ = models.apply(model, variables, mixed, train=True, rng=jax.random.split(key)[1])
    per_sample = losses.per_sample_loss_fn(config.loss, 4)
    loss = jnp.mean(lam * per_sample(logits, y) + (1 - lam) * per_sample(logits, y[::-1]))
    l2 = losses.l2_penalty(variables["params"], losses.l2_coefficients(state.params, config.loss))
    return loss + l2, jnp.sum(jnp.argmax(logits, -1) == y)

  want_loss, want_correct = expected(state.variables(), x, y)
  _, metrics = step(state, x, y, jax.random.key(3))
  np.testing.assert_allclose(metrics["loss"], want_loss, rtol=1e-5)
  assert int(metrics["correct"]) == int(want_correct)
