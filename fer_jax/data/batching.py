"""Which rows make each batch: the shuffled epoch order and padded evaluation batches.

Both are pure functions of sizes and seeds, so every process of a multi-host run computes the
same batches without talking to the others, and a resumed run repeats an epoch exactly.
"""

import numpy as np


def epoch_order(num_examples, seed, epoch):
  """The shuffled order of one epoch: a function of (seed, epoch) only, so resuming repeats it."""
  return np.random.default_rng([seed, epoch]).permutation(num_examples)


def padded_batches(num_examples, batch_size):
  """(indices, mask) per batch covering every example once; the last batch padded with index 0."""
  for start in range(0, num_examples, batch_size):
    idx = np.arange(start, min(start + batch_size, num_examples))
    mask = np.ones(batch_size, np.float32)
    mask[len(idx) :] = 0.0
    yield np.pad(idx, (0, batch_size - len(idx))), mask
