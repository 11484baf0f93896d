"""The train state and factories of the jitted steps a run calls.

`make_train_step` returns `(state, images_u8, labels, rng) -> (state, metrics)`, `make_eval_step`
`(state, images_u8, labels, mask) -> (sums, logits)` (no randomness: eval mode) and `make_l2_fn`
`state -> L2 penalty`; each is built once per run from its config, model and optimiser. The host
feeds uint8 images; conversion to float, augmentation, the forward pass, loss and update all run
on device. Randomness is the run's key folded with the step number, so a resumed run draws
exactly the numbers an uninterrupted one would.

What a run dispatches (train/feeding.py) wraps the same steps in a loop on the device:
`make_train_steps` runs N train steps per call, from batches the host stacked or from a split
resident on the devices; `make_eval_pass` evaluates every batch of a resident split in one call.

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
  metrics: loss (weighted data loss + L2, as Keras reports it), correct (count of faces whose own
  label is the argmax: with mixup or CutMix the larger part of the mix), grad_norm (of the
  parameters that train).
  """
  step = train_step_fn(config, model, tx, num_classes, class_weights, param_labels)
  return jax.jit(
    over_members(step, members, (0, 0, 0, 0), config.train.vectorize), donate_argnums=0
  )


def make_train_steps(
  config,
  model,
  tx,
  num_classes,
  class_weights=None,
  *,
  param_labels,
  batch_sharding,
  members=None,
):
  """Returns jitted `(state, images_u8, labels, idx, count, rng) -> (state, metrics)`: the first
  `count` of N train steps in one dispatch (a loop on the device); the state is donated.

  Each step is `make_train_step`'s. Its batch: with `idx` None, step i's batch is
  `images_u8[i], labels[i]` (the host stacked N batches, [N, B, ...]); otherwise images_u8 and
  labels are a whole split resident on the devices and `idx[i]` [B] the rows of step i, gathered
  there. The batch is placed as `batch_sharding` says, as the host would have placed it. N is
  the leading size of `idx` (or of the stacked batches); a shorter last dispatch of an epoch
  passes a smaller `count` and so reuses the compiled program.

  `members=S`: the state, rng and metrics have a leading axis of S runs; the batches have one
  behind the step axis ([N, S, B, ...], idx [N, S, B]); a resident split is shared.
  metrics: {"loss", "correct"} of every step, [N] (members [N, S]); rows from `count` on are 0.
  """
  step = over_members(
    train_step_fn(config, model, tx, num_classes, class_weights, param_labels),
    members,
    (0, 0, 0, 0),
    config.train.vectorize,
  )

  def train_steps(state, images_u8, labels, idx, count, rng):
    n = (images_u8 if idx is None else idx).shape[0]

    def body(i, carry):
      state, losses, correct = carry
      x, y = (images_u8[i], labels[i]) if idx is None else (images_u8[idx[i]], labels[idx[i]])
      x, y = lax.with_sharding_constraint((x, y), batch_sharding)
      state, metrics = step(state, x, y, rng)
      return state, losses.at[i].set(metrics["loss"]), correct.at[i].set(metrics["correct"])

    shape = (n,) if members is None else (n, members)
    init = (state, jnp.zeros(shape, jnp.float32), jnp.zeros(shape, jnp.int32))
    state, losses, correct = lax.fori_loop(0, count, body, init)
    return state, {"loss": losses, "correct": correct}

  return jax.jit(train_steps, donate_argnums=0)


def train_step_fn(config, model, tx, num_classes, class_weights, param_labels):
  """The train step, unjitted: `(state, images_u8, labels, rng) -> (state, metrics)` of one run."""
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
    mixing = bool(config.train.mixup_alpha or config.train.cutmix_alpha)
    if mixing:
      # A key of its own (not a third split) leaves the other draws of unmixed runs unchanged.
      x, lam = augment.mix_batch(
        jax.random.fold_in(key, 2), x, config.train.mixup_alpha, config.train.cutmix_alpha
      )

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
      per_face = per_sample(logits, labels) * weights[labels]
      if mixing:
        # Both losses are linear in the (label-smoothed) targets, so the loss on the mixed target
        # lam * own + (1 - lam) * partner's is this mix of the two losses.
        partners = labels[::-1]
        per_face = lam * per_face + (1.0 - lam) * per_sample(logits, partners) * weights[partners]
      data_loss = jnp.mean(per_face)
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

  return train_step


def eval_step_fn(config, model, num_classes):
  """The eval step, unjitted: `(state, images_u8, labels, mask) -> (sums, logits)` of one run.

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

  return eval_step


def make_eval_step(config, model, num_classes, members=None):
  """Returns jitted `(state, images_u8, labels, mask) -> (sums, logits)` of one batch.

  `members=S`: the state is stacked over S runs and so are the outputs; the batch is shared.
  The step is `eval_step_fn`'s.
  """
  step = eval_step_fn(config, model, num_classes)
  return jax.jit(over_members(step, members, (0, None, None, None), config.train.vectorize))


def make_eval_pass(config, model, num_classes, *, batch_sharding, members=None):
  """Returns jitted `(state, images_u8, labels, idx, mask) -> (sums, logits)`: every batch of a
  split resident on the devices in one dispatch.

  `idx` [nb, B] and `mask` [nb, B] are the rows and mask of each batch (batching.padded_batches);
  the outputs are `make_eval_step`'s stacked over the batches (sums [nb], logits [nb, B, K];
  members: [nb, S] and [nb, S, B, K]).
  """
  step = over_members(
    eval_step_fn(config, model, num_classes), members, (0, None, None, None), config.train.vectorize
  )

  def eval_pass(state, images_u8, labels, idx, mask):
    def one(batch):
      rows, m = batch
      x, y, m = lax.with_sharding_constraint((images_u8[rows], labels[rows], m), batch_sharding)
      return step(state, x, y, m)

    return lax.map(one, (idx, mask))

  return jax.jit(eval_pass)


def make_l2_fn(config, members=None):
  """Jitted state -> the config's L2 penalty of the weights evaluations use (the regularisation
  term of Keras's val_loss)."""

  def l2(state):
    params = state.eval_variables()["params"]
    return losses.l2_penalty(params, losses.l2_coefficients(params, config.loss))

  return jax.jit(over_members(l2, members, (0,), config.train.vectorize))
