"""How hard the built-in faces are: a linear probe on pixels, and how fast they are drawn.

Generates the default built-in set (config.data defaults: 4 classes, 600 train faces per class,
75 each for val and test), times it, and fits a multinomial logistic regression on the raw
pixels (standardised per pixel, L2 strength chosen on val). For reference it also fits the same
probe on the true expression parameters, which shows how far the classes overlap before any
drawing. A linear probe well below the CNNs' accuracy means the set is not linearly solvable.

  python -m benchmarks.linear_probe [--per_class=600] [--seed=0] [--time_faces=10000]

Figures measured on this project's machine are in docs/builtin_data.md.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import app, flags

from benchmarks.timing import timed
from fer_jax.configs import common
from fer_jax.data import builtin

_PER_CLASS = flags.DEFINE_integer("per_class", 600, "train faces per class (val and test get 1/8)")
_SEED = flags.DEFINE_integer("seed", 0, "config.data.builtin_seed")
_TIME_FACES = flags.DEFINE_integer(
  "time_faces", 10_000, "also time drawing this many faces (0 = skip)"
)
L2_GRID = (1e-3, 1e-2, 1e-1, 1.0, 10.0)  # L2 strengths tried; the best on val is reported
STEPS = 150  # L-BFGS iterations (full batch); enough for the loss to converge


@functools.partial(jax.jit, static_argnames=("num_classes", "steps"))
def fit_logistic_regression(x, y, num_classes, l2, steps=STEPS):
  """Weights and bias of a multinomial logistic regression, fitted with optax's L-BFGS.

  Written here because scikit-learn is not a dependency; the objective is the usual mean
  cross-entropy + l2/2 * |W|^2 (bias not penalised). Jitted as a whole with `l2` traced, so
  the L2 grid compiles once per feature shape.
  """

  def loss(params):
    logits = x @ params["w"] + params["b"]
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean() + 0.5 * l2 * jnp.sum(
      params["w"] ** 2
    )

  opt = optax.lbfgs()
  value_and_grad = optax.value_and_grad_from_state(loss)

  def step(carry, _):
    params, state = carry
    value, grad = value_and_grad(params, state=state)
    updates, state = opt.update(grad, state, params, value=value, grad=grad, value_fn=loss)
    return (optax.apply_updates(params, updates), state), None

  params = {"w": jnp.zeros((x.shape[1], num_classes)), "b": jnp.zeros(num_classes)}
  (params, _), _ = jax.lax.scan(step, (params, opt.init(params)), length=steps)
  return params


def probe(features, labels, num_classes):
  """{'l2', split: accuracy} of the logistic regression whose L2 strength does best on val."""
  mean, std = features["train"].mean(0), features["train"].std(0) + 1e-6
  x = {k: ((v - mean) / std).astype(np.float32) for k, v in features.items()}
  best = None
  for l2 in L2_GRID:
    params = fit_logistic_regression(x["train"], labels["train"], num_classes, l2)
    acc = {
      k: float(np.mean(np.argmax(v @ params["w"] + params["b"], -1) == labels[k]))
      for k, v in x.items()
    }
    if best is None or acc["val"] > best["val"]:
      best = {"l2": l2, **acc}
  return best


def main(argv):
  del argv
  cfg = common.data_config()
  cfg.builtin_per_class = _PER_CLASS.value
  cfg.builtin_seed = _SEED.value
  # CPU time is what the drawing itself costs (one core); wall time grows on a shared machine.
  splits, wall, cpu = timed(lambda: builtin.generate_splits(cfg))
  sizes = {k: len(v[1]) for k, v in splits.items()}
  print(f"generated {sum(sizes.values())} faces {sizes} in {wall:.2f} s wall, {cpu:.2f} s CPU")
  if _TIME_FACES.value:
    _, wall, cpu = timed(
      lambda: builtin.generate(cfg.classes, _TIME_FACES.value // len(cfg.classes), seed=1)
    )
    print(f"drew {_TIME_FACES.value} faces in {wall:.2f} s wall, {cpu:.2f} s CPU")

  labels = {k: v[1] for k, v in splits.items()}
  pixels = {k: v[0].reshape(len(v[0]), -1).astype(np.float32) / 255 for k, v in splits.items()}
  geometry = {
    k: np.stack([v[2][p] for p in builtin.faces.EXPRESSION_PARAMS], 1) for k, v in splits.items()
  }
  print(f"{'probe':<28}{'L2':>8}{'train':>8}{'val':>8}{'test':>8}")
  for name, features in (("pixels", pixels), ("expression parameters", geometry)):
    r = probe(features, labels, len(cfg.classes))
    print(f"{name:<28}{r['l2']:>8g}{r['train']:>8.1%}{r['val']:>8.1%}{r['test']:>8.1%}")
  print(f"chance: {1 / len(cfg.classes):.1%}")


if __name__ == "__main__":
  app.run(main)
