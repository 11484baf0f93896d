"""The train state and factories of the jitted steps a run calls.

`make_train_step` returns `(state, images_u8, labels, rng) -> (state, metrics)`, `make_eval_step`
`(state, images_u8, labels, mask) -> (sums, logits)` (no randomness: eval mode) and `make_l2_fn`
`state -> L2 penalty`; each is built once per run from its config, model and optimiser. The host
feeds uint8 images; conversion to float, augmentation, the forward pass, loss and update all run
on device. Randomness is the run's key folded with the step number, so a resumed run draws
exactly the numbers an uninterrupted one would.

`members=S` (S >= 2, vectorized seeds: train/members.py) gives the same step over S runs at once:
states, batches and keys stacked on a leading axis and the step `jax.vmap`ped (or `lax.map`ped,
see `over_members`) over it, so each member computes what its own run would.
"""

import flax
import jax
import jax.numpy as jnp
import optax
from jax import lax

from fer_jax import augment, losses, models
from fer_jax.train import ema, optim


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  params: dict
  batch_stats: dict
  opt_state: tuple
  ema: dict = None  # {"params", "batch_stats"} averaged (config.optim.ema_decay > 0; train/ema.py)

  def variables(self):
    return {"params": self.params, "batch_stats": self.batch_stats}

  def eval_variables(self):
    """The weights every evaluation uses: the average when the run keeps one, else the live ones."""
    return self.variables() if self.ema is None else self.ema


def create_state(config, model, input_shape, steps_per_epoch, param_labels=None):
  """Fresh state: Keras-style initialised model (plus pretrained weights) and optimiser.

  Returns (state, tx, param_labels).
  """
  variables = models.init_variables(model, input_shape, seed=config.train.seed)
  variables = models.load_pretrained(config.model, variables)
  if param_labels is None:
    param_labels = models.param_labels(config.model, variables["params"])
  tx = optim.build(config.optim, steps_per_epoch, param_labels)
  state = TrainState(
    step=jnp.zeros((), jnp.int32),
    params=variables["params"],
    batch_stats=variables.get("batch_stats", {}),
    opt_state=tx.init(variables["params"]),
    ema=ema.init(variables, config.optim.ema_decay),
  )
  return state, tx, param_labels


def over_members(fn, members, in_axes, how):
  """`fn` over a leading member axis of the arguments marked 0 in `in_axes` (and of every output).

  members None (a plain run): `fn` itself. `how` (config.train.vectorize): 'vmap' batches the
  members into one computation; 'map' runs them one after another inside one program
  (`lax.map`): the same values, XLA's plain kernels, one dispatch for all members. 'auto': 'map'
  on CPU, where XLA's batched (grouped) convolutions ran 2-3x slower than one member after
  another, 'vmap' elsewhere.
  """
  if members is None:
    return fn
  if how == "auto":
    how = "map" if jax.default_backend() == "cpu" else "vmap"
  if how == "vmap":
    return jax.vmap(fn, in_axes=in_axes)
  if how != "map":
    raise ValueError(f"config.train.vectorize: {how!r}; use auto | vmap | map")

  def mapped(*args):
    def one(member_args):
      it = iter(member_args)
      return fn(*[next(it) if axis == 0 else a for a, axis in zip(args, in_axes)])

    return lax.map(one, [a for a, axis in zip(args, in_axes) if axis == 0])

  return mapped


def make_train_step(
  config, model, tx, num_classes, class_weights=None, *, param_labels, members=None
):
  """Returns jitted `(state, images_u8, labels, rng) -> (state, metrics)`; the state is donated.

  `members=S`: every argument and output has a leading axis of S runs (see the module doc).

  `param_labels`: create_state's 'train' | 'finetune' | 'frozen' pytree over the params.
  metrics: loss (weighted data loss + L2, as Keras reports it), correct (count), grad_norm (of
  the parameters that train).
  """
  per_sample = losses.per_sample_loss_fn(config.loss, num_classes)
  weights = (
    jnp.ones(num_classes) if class_weights is None else jnp.asarray(class_weights, jnp.float32)
  )

  def train_step(state, images_u8, labels, rng):
    l2_coeff = losses.l2_coefficients(
      state.params, config.loss
    )  # Python floats, fixed at trace time
    key = jax.random.fold_in(rng, state.step)
    aug_key, dropout_key = jax.random.split(key)
    x = models.to_float(images_u8)
    if config.train.augment:
      x = augment.augment_batch(aug_key, x, config.train)

    def loss_fn(params):
      # Frozen parameters get no gradient: the optimiser would drop it, but grad_norm reads every
      # gradient, which made XLA run the backward pass through all frozen blocks of a fine-tuned
      # backbone (2.7x the FLOPs for VGG16 finetune, docs/performance.md).
      params = jax.tree.map(
        lambda p, label: lax.stop_gradient(p) if label == "frozen" else p, params, param_labels
      )
      logits, batch_stats = models.apply(
        model, {"params": params, "batch_stats": state.batch_stats}, x, train=True, rng=dropout_key
      )
      # Keras's class_weight scales each sample's loss; the mean is still over the batch size.
      data_loss = jnp.mean(per_sample(logits, labels) * weights[labels])
      return data_loss + losses.l2_penalty(params, l2_coeff), (logits, batch_stats)

    (loss, (logits, batch_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    deltas, opt_state = tx.update(grads, state.opt_state, state.params)
    params = jax.tree.map(jnp.add, state.params, deltas)
    new_state = state.replace(
      step=state.step + 1,
      params=params,
      batch_stats=batch_stats,
      opt_state=opt_state,
      ema=ema.update(
        state.ema,
        {"params": params, "batch_stats": batch_stats},
        state.step,
        config.optim.ema_decay,
      ),
    )
    metrics = {
      "loss": loss,
      "correct": jnp.sum(jnp.argmax(logits, -1) == labels),
      "grad_norm": optax.tree.norm(grads),
    }
    return new_state, metrics

  return jax.jit(
    over_members(train_step, members, (0, 0, 0, 0), config.train.vectorize), donate_argnums=0
  )


def make_eval_step(config, model, num_classes, members=None):
  """Returns jitted `(state, images_u8, labels, mask) -> (sums, logits)`.

  `members=S`: the state is stacked over S runs and so are the outputs; the batch is shared.

  Padding rows (mask 0) are left out of the sums; the loss is unweighted (Keras applies
  class weights to training only); add `make_l2_fn`'s penalty to the mean, as Keras does.
  Logits, not probabilities, leave the device so that a temperature can be fitted on them.
  """
  per_sample = losses.per_sample_loss_fn(config.loss, num_classes)

  def eval_step(state, images_u8, labels, mask):
    logits = models.apply(model, state.eval_variables(), models.to_float(images_u8), train=False)
    sums = {
      "loss": jnp.sum(per_sample(logits, labels) * mask),
      "correct": jnp.sum((jnp.argmax(logits, -1) == labels) * mask),
      "count": jnp.sum(mask),
    }
    return sums, logits

  return jax.jit(over_members(eval_step, members, (0, None, None, None), config.train.vectorize))


def make_l2_fn(config, members=None):
  """Jitted state -> the config's L2 penalty of the weights evaluations use (the regularisation
  term of Keras's val_loss)."""

  def l2(state):
    params = state.eval_variables()["params"]
    return losses.l2_penalty(params, losses.l2_coefficients(params, config.loss))

  return jax.jit(over_members(l2, members, (0,), config.train.vectorize))
