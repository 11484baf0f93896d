"""How batches reach the jitted steps: from the host or from data resident on the devices, and
how many train steps one dispatch runs (config.data.on_device, config.train.steps_per_dispatch).

Host feeding (the default on CPU) gathers each batch with NumPy and transfers it. On the device
(`on_device`), each split's uint8 images and labels are placed on every device once per run
(replicated: docs/performance.md has the measurement against sharding them over 'data') and
only the rows of each batch travel. Either way the rows are those of `batching.epoch_order`,
sorted within each batch, so the order, resume and multi-process behaviour do not depend on the
feeding, nor on N: one dispatch runs N train steps in a loop on the device
(`steps.make_train_steps`), and the host fetches their per-step losses and correct counts at the
log steps and the epoch's end, as it did with N = 1. A dispatch ends at the epoch's end; one
that crosses a log step prints that step's progress line when it returns, with the same figures.
Evaluation on the device runs a whole split in one dispatch.
"""

import dataclasses
import os
import time

import jax
import numpy as np

from fer_jax.data import batching
from fer_jax.platform import sharding
from fer_jax.train import steps

# Whether 'auto' puts the data on the devices on CPU: measured no faster on a 2-core AMD EPYC Zen 1
# (docs/performance.md, "Feeding").
ON_DEVICE_ON_CPU = False
# Share of a device's memory the resident data may take; the rest is for the model's activations,
# parameters, optimiser state and XLA's workspace.
DEVICE_MEMORY_SHARE = 0.25


def resident_bytes(dataset) -> int:
  """Bytes every device holds when `dataset` is resident (all splits, replicated)."""
  return sum(s.images.nbytes + 4 * len(s.labels) for s in dataset.splits.values())


def device_budget() -> int:
  """Bytes of one device the resident data may take: a share of its memory where the device
  reports it (GPU, TPU); on CPU, where the devices share the host's memory, that share of the
  host's RAM split over its devices."""
  stats = jax.local_devices()[0].memory_stats() or {}
  if stats.get("bytes_limit"):
    return int(stats["bytes_limit"] * DEVICE_MEMORY_SHARE)
  ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
  return int(ram * DEVICE_MEMORY_SHARE) // jax.local_device_count()


def resolve_on_device(setting, dataset) -> bool:
  """config.data.on_device -> whether the run's data is resident on the devices."""
  if setting != "auto":
    return setting == "true"
  if resident_bytes(dataset) > device_budget():
    return False
  return jax.default_backend() != "cpu" or ON_DEVICE_ON_CPU


def resolve_steps_per_dispatch(setting, steps_per_epoch, log_every) -> int:
  """config.train.steps_per_dispatch -> N: 0 (auto) is log_every_steps, so that the host waits for
  the device only where it prints anyway (on CPU too: measured never slower than N = 1)."""
  if setting == 0:
    setting = log_every
  return max(1, min(setting, steps_per_epoch))


@dataclasses.dataclass
class Feed:
  """A run's feeding: `on_device` and N = `steps_per_dispatch`, and the splits placed so far."""

  config: object
  mesh: object
  on_device: bool
  steps_per_dispatch: int
  resident_splits: dict = dataclasses.field(default_factory=dict)

  @classmethod
  def for_run(cls, config, mesh, dataset, steps_per_epoch):
    on_device = resolve_on_device(config.data.on_device, dataset)
    n = resolve_steps_per_dispatch(
      config.train.steps_per_dispatch, steps_per_epoch, config.train.log_every_steps
    )
    return cls(config, mesh, on_device, n)

  def describe(self):
    where = "data on the devices" if self.on_device else "host-fed"
    return f"{where}, {self.steps_per_dispatch} step(s)/dispatch"

  def resident(self, split):
    """(images, labels) of `split` on every device of the mesh, placed on its first use."""
    if id(split) not in self.resident_splits:
      placed = sharding.replicate((split.images, split.labels.astype(np.int32)), self.mesh)
      self.resident_splits[id(split)] = (split, placed)  # the split kept: its id stays unique
    return self.resident_splits[id(split)][1]

  def train_args(self, split, orders, start, stop, stacked=False):
    """(images, labels, idx, count) of `make_train_steps` for steps [start, stop) of an epoch;
    `orders`: the epoch order of each member (`stacked`) or of the run."""
    batch = self.config.train.batch_size
    rows = np.zeros((self.steps_per_dispatch, len(orders), batch), np.int32)
    for k, s in enumerate(range(start, stop)):
      for m, order in enumerate(orders):
        rows[k, m] = np.sort(order[s * batch : (s + 1) * batch])  # sorted rows read faster
    rows = rows if stacked else rows[:, 0]
    count = sharding.replicate(np.int32(stop - start), self.mesh)
    if self.on_device:
      return *self.resident(split), sharding.replicate(rows, self.mesh), count
    images, labels = sharding.shard_batch(
      self.mesh, split.images[rows], split.labels[rows], stacked=stacked, steps=True
    )
    return images, labels, None, count


def run_epoch(feed, state, train_steps, rng, split, orders, total, check, progress=None, **kw):
  """`total` train steps of `train_steps` (steps.make_train_steps) over `orders` (and `stacked`,
  as Feed.train_args takes them); returns (state, loss sum, correct count, seconds).

  The losses stay on device until a dispatch reaches a log step (config.train.log_every_steps)
  or the epoch's end; then they come back in one transfer for `check(losses, first_step)` and
  `progress(step, mean loss, accuracy)`, a log step at a time, summed as with N = 1.
  """
  n, batch, log_every = (
    feed.steps_per_dispatch,
    feed.config.train.batch_size,
    feed.config.train.log_every_steps,
  )
  pending, losses, corrects = [], [], []  # device metrics; fetched ones not summed yet
  loss_sum, correct_sum, done = 0.0, 0, 0
  start_time = time.perf_counter()
  for start in range(0, total, n):
    stop = min(start + n, total)
    state, metrics = train_steps(state, *feed.train_args(split, orders, start, stop, **kw), rng)
    pending.append((metrics, stop - start))
    if stop // log_every == start // log_every and stop < total:
      continue  # no log step in this dispatch: the device runs on
    for fetched, (_, count) in zip(sharding.to_host([m for m, _ in pending]), pending):
      losses.extend(fetched["loss"][:count])
      corrects.extend(fetched["correct"][:count])
    pending = []
    ends = list(range((done // log_every + 1) * log_every, stop + 1, log_every))
    if stop == total and ends[-1:] != [total]:
      ends.append(total)
    for end in ends:
      values = np.asarray(losses[: end - done])
      check(values, done + 1)
      loss_sum = loss_sum + np.sum(values, axis=0)
      correct_sum = correct_sum + np.sum(corrects[: end - done], axis=0)
      del losses[: end - done], corrects[: end - done]
      done = end
      if progress and done < total:
        progress(done, loss_sum / done, float(correct_sum) / (done * batch))
  return state, loss_sum, correct_sum, time.perf_counter() - start_time


class EvalPass:
  """Mean loss / accuracy and logits of a state over a whole split, padding the last batch: one
  dispatch per batch from the host, or one for the whole split on the device.

  `members=S`: of a state stacked over S runs (train/members.py); `run` then returns each figure
  with a leading axis of members.
  """

  def __init__(self, config, model, feed, num_classes, members=None):
    self.batch = config.eval.batch_size + (-config.eval.batch_size) % jax.device_count()
    self.feed = feed
    if feed.on_device:
      self.eval_pass = steps.make_eval_pass(
        config, model, num_classes, batch_sharding=sharding.data_sharded(feed.mesh), members=members
      )
    else:
      self.eval_step = steps.make_eval_step(config, model, num_classes, members)
    self.l2 = steps.make_l2_fn(config, members)

  def __call__(self, state, split) -> tuple[dict, np.ndarray]:
    """({"loss", "accuracy"}, logits [N, K]) of `state` on `split`."""
    loss, accuracy, logits = self.run(state, split)
    return {"loss": float(loss), "accuracy": float(accuracy)}, logits

  def run(self, state, split):
    """(loss, accuracy, logits) as NumPy arrays."""
    batches = list(batching.padded_batches(len(split), self.batch))
    if self.feed.on_device:
      idx, mask = (sharding.replicate(np.stack(a), self.feed.mesh) for a in zip(*batches))
      all_sums, all_logits = sharding.to_host(
        self.eval_pass(state, *self.feed.resident(split), idx, mask)
      )
      per_batch = [{k: v[b] for k, v in all_sums.items()} for b in range(len(batches))]
      logits = np.moveaxis(all_logits, 0, -3)
      logits = [logits.reshape(*logits.shape[:-3], -1, logits.shape[-1])[..., : len(split), :]]
    else:
      per_batch, logits = [], []
      for idx, mask in batches:
        x, y, m = sharding.shard_batch(self.feed.mesh, split.images[idx], split.labels[idx], mask)
        batch_sums, batch_logits = sharding.to_host(self.eval_step(state, x, y, m))
        per_batch.append(batch_sums)
        logits.append(batch_logits[..., mask > 0, :])
    sums = {"loss": 0.0, "correct": 0.0, "count": 0.0}
    for batch_sums in per_batch:  # batch by batch, in order: the same sums either way
      sums = {k: sums[k] + v for k, v in batch_sums.items()}
    loss = sums["loss"] / sums["count"] + sharding.to_host(self.l2(state))
    return loss, sums["correct"] / sums["count"], np.concatenate(logits, axis=-2)
