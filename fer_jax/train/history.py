"""A run's per-epoch history, `metrics.jsonl`: one JSON row per epoch, appended as training goes.

Training appends rows and trims the ones a crash left beyond the last checkpoint; reports read
them back. Only process 0 writes.
"""

import json
import os

import jax


def write_json(path, obj):
  """Atomic write: a crash never leaves a half-written file for a rerun to trip over."""
  tmp = f"{path}.tmp"
  with open(tmp, "w") as f:
    json.dump(obj, f, indent=2, default=float)
  os.replace(tmp, path)


def epoch_record(epoch, train_m, val_m, lr, seconds, images_per_s):
  """One row of metrics.jsonl."""
  return {
    "epoch": epoch,
    "train_loss": train_m["loss"],
    "train_accuracy": train_m["accuracy"],
    "val_loss": val_m["loss"],
    "val_accuracy": val_m["accuracy"],
    "gap": (train_m["accuracy"] - val_m["accuracy"]) * 100,
    "lr": lr,
    "epoch_time_s": seconds,
    "images_per_s": images_per_s,
  }


def read_history(path, upto_epoch=None):
  """The rows of a run's metrics.jsonl (none when it does not exist), up to `upto_epoch`."""
  if not os.path.exists(path):
    return []
  with open(path) as f:
    rows = [json.loads(line) for line in f if line.strip()]
  return [r for r in rows if upto_epoch is None or r["epoch"] <= upto_epoch]


def truncate_history(path, upto_epoch):
  """Drops the rows of epochs a crash lost (trained, but not checkpointed); returns what is kept."""
  rows = read_history(path, upto_epoch=upto_epoch)
  if jax.process_index() == 0:
    with open(path, "w") as f:
      f.writelines(json.dumps(r) + "\n" for r in rows)
  return rows


def append_history(rows, path, record):
  rows.append(record)
  if jax.process_index() == 0:
    with open(path, "a") as f:
      f.write(json.dumps(record) + "\n")
