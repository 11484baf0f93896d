"""The CNN family matches the study's Keras parameter counts (docs/study.md) exactly, for every
study config."""

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fer_jax import config_loading, models
from fer_jax.configs import a, b, b_p, b_pp, c, color, d, model_0, vgg16
from fer_jax.configs import mini_xception as mini_xception_config
from fer_jax.models import summary

# (config module, variant) -> (total params incl. batch_stats, non-trainable), from docs/study.md.
STUDY_COUNTS = [
  (model_0, "", 1_274_500, 448),
  (a, "", 3_509_444, 2_304),
  (b, "", 3_509_444, 2_304),
  (c, "", 3_509_444, 2_304),
  (b_p, "", 3_509_444, 2_304),
  (b_pp, "", 3_509_444, 2_304),
  (d, "", 4_980_324, 1_984),
  (color, "gray", 5_867_204, 896),
  (color, "rgb", 5_868_356, 896),
]


def _variables(config):
  model = models.build(config.model, len(config.data.classes))
  shape = (config.data.image_size, config.data.image_size, config.data.channels)
  return model, jax.eval_shape(lambda: models.init_variables(model, shape))


@pytest.mark.parametrize(
  "module,variant,total,non_trainable",
  STUDY_COUNTS,
  ids=[f"{m.__name__.split('.')[-1]}{':' + v if v else ''}" for m, v, _, _ in STUDY_COUNTS],
)
def test_parameter_counts_match_spec(module, variant, total, non_trainable):
  config = module.get_config(variant)
  model, variables = _variables(config)
  counts = models.count_params(variables, models.param_labels(config.model, variables["params"]))
  assert counts["total"] == total
  assert counts["non_trainable"] == non_trainable
  assert counts["trainable"] == total - non_trainable


@pytest.mark.parametrize("variant,channels", [("gray", 1), ("rgb", 3)])
def test_output_shapes_gray_and_rgb(variant, channels):
  config = color.get_config(variant)
  model, variables = _variables(config)
  logits = jax.eval_shape(
    lambda v, x: model.apply(v, x, train=False),
    variables,
    jax.ShapeDtypeStruct((3, 48, 48, channels), jnp.float32),
  )
  assert logits.shape == (3, 4) and logits.dtype == jnp.float32
  # a gray model refuses RGB input and vice versa
  with pytest.raises(flax.errors.ScopeParamShapeError, match="conv1_1"):
    jax.eval_shape(
      lambda v, x: model.apply(v, x, train=False),
      variables,
      jax.ShapeDtypeStruct((1, 48, 48, 4 - channels), jnp.float32),
    )


def test_block_structure_follows_config():
  """BN placement and pooling follow the config: Model 0 is conv->BN->ReLU, D pools twice."""
  model, variables = _variables(model_0.get_config())
  assert sorted(variables["batch_stats"]) == ["bn1_1", "bn2_1", "bn3_1"]
  rows, _ = summary.layer_rows(models.build(d.get_config().model, 4), (48, 48, 1))
  shapes = dict((name, shape) for name, shape, _ in rows)
  assert shapes["conv5_2"] == (1, 12, 12, 512)  # 48 -> 24 (block 1) -> 12 (block 3) only


def test_apply_dropout_is_random_in_training_off_in_eval_and_training_updates_batch_stats():
  config = b.get_config()
  with config.unlocked():
    config.model.widths = (4, 4, 4)  # Model B's structure, narrow: the test is about models.apply
  model = models.build(config.model, 4)
  variables = models.init_variables(model, (16, 16, 1))
  x = jax.random.uniform(jax.random.key(1), (2, 16, 16, 1))
  apply_eval = jax.jit(lambda x: models.apply(model, variables, x, train=False))
  apply_train = jax.jit(lambda x, k: models.apply(model, variables, x, train=True, rng=k))
  np.testing.assert_array_equal(apply_eval(x), apply_eval(x))
  (logits0, stats0), (logits1, _) = (
    apply_train(x, jax.random.key(0)),
    apply_train(x, jax.random.key(1)),
  )
  assert not np.allclose(logits0, logits1)
  assert jax.tree.structure(stats0) == jax.tree.structure(variables["batch_stats"])
  moved = [
    not np.allclose(new, old)
    for new, old in zip(jax.tree.leaves(stats0), jax.tree.leaves(variables["batch_stats"]))
  ]
  assert all(moved)  # every moving mean and variance took a step towards the batch's statistics


@pytest.mark.parametrize(
  "field,value,message",
  [
    ("bn_placement", "after", "config.model.bn_placement"),
    ("block_dropouts", (0.1,), "config.model.block_dropouts"),
    ("name", "resnet9000", "config.model.name"),
  ],
)
def test_bad_model_config_names_the_field(field, value, message):
  config = a.get_config()
  with config.unlocked():
    config.model[field] = value
  with pytest.raises(ValueError, match=message):
    models.build(config.model, 4)


def test_model_names_allowed_by_the_config_are_the_registry():
  rule = config_loading.declared_fields()["model.name"].rule
  assert rule.text == "one of " + " | ".join(models.REGISTRY)
  config = a.get_config()
  with config.unlocked():
    config.model.name = "resnet9000"
  with pytest.raises(config_loading.ConfigError, match="config.model.name=resnet9000: must be one"):
    config_loading.check_values(config)


@pytest.mark.parametrize("config_module", [vgg16, mini_xception_config])
def test_another_model_refuses_the_cnns_fields(config_module):
  config = config_module.get_config("quick")
  models.build(config.model, 4)  # the CNN's fields at their defaults: nothing to refuse
  with config.unlocked():
    config.model.dense_dropouts = (0.3,)
  with pytest.raises(ValueError, match=r"config.model.dense_dropouts=\(0.3,\): only model 'cnn'"):
    models.build(config.model, 4)


def test_summary_lists_layers_and_keras_counts():
  text = summary.model_summary(b_pp.get_config())
  assert "conv1_1" in text and "logits" in text
  assert "Total params: 3,509,444" in text
  assert "Non-trainable params: 2,304" in text
  assert "Trainable params: 3,507,140" in text
