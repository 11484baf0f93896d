"""Per-dataset `.npz` caches, keyed by a fingerprint of the source and the load parameters.

A cache file is `<cache_dir>/<source>-<name>-<root hash>-<params hash>-<files hash>.npz`:
- the root hash tells datasets with the same folder name apart;
- the params hash covers everything that changes the arrays (size, channels, filter, classes,
  val fraction and seed, source options, FORMAT_VERSION), so a 48x48 and a 224x224 cache of one
  dataset live side by side;
- the files hash covers every source file's relative path, size and mtime, so adding, removing
  or touching a file gives a new name and a rebuild; the stale file of the same dataset and
  parameters is then removed.
Files are written to a temporary name and moved into place (`os.replace`), so an interrupted
build leaves no half-written cache. The temporary name, `.tmp-<host>-<pid>-<random>.npz`, says
who writes it: a writer killed mid-write (SIGKILL, power loss) leaves it behind, and the next
load from that cache folder removes it once its writer is gone: on this host, when no process
<pid> runs; a file from another host (a shared cache folder) or of the old `.tmp-<random>.npz`
form, when it is unmodified for STALE_SECONDS. Arrays only, read with allow_pickle=False; the
load report is stored as a JSON string.
"""

import contextlib
import glob
import hashlib
import json
import os
import re
import socket
import tempfile
import time
import zipfile

import numpy as np

from fer_jax import data

FORMAT_VERSION = 1  # bump when the loaders change what they produce for the same inputs
TMP_PREFIX = ".tmp-"
# A temp file whose writer cannot be asked (another host) is stale after this long unmodified:
# np.savez writes continuously, so a live writer touches it within seconds.
STALE_SECONDS = 24 * 3600


def digest(text, n):
  return hashlib.sha256(text.encode()).hexdigest()[:n]


def files_fingerprint(root, files):
  """sha256 over sorted (path relative to `root`, size, mtime_ns) of the source files."""
  # Slicing, not os.path.relpath: relpath costs more than the rest of a 25k-file cached load.
  prefix = os.path.join(os.fspath(root), "")

  def rel(p):
    return p[len(prefix) :] if p.startswith(prefix) else p

  lines = sorted(f"{rel(os.fspath(p))}\0{size}\0{mtime_ns}" for p, size, mtime_ns in files)
  return digest("\n".join(lines), 16)


def stat_files(paths):
  """(path, size, mtime_ns) for each path: the input of `files_fingerprint`."""
  out = []
  for p in paths:
    st = os.stat(p)
    out.append((p, st.st_size, st.st_mtime_ns))
  return out


def cache_key(source, root, params, name=None):
  """The part of the cache name shared by every version of one dataset loaded one way.

  `name` (default: the root's base name) only makes the file name readable.
  """
  name = name or os.path.basename(os.path.normpath(root)) or "data"
  params = dict(params, format_version=FORMAT_VERSION)

  def readable(text):
    return re.sub(r"[^A-Za-z0-9_.]+", "_", text)

  return "-".join(
    [
      readable(source),
      readable(name),
      digest(os.path.abspath(root), 8),
      digest(json.dumps(params, sort_keys=True, default=list), 8),
    ]
  )


def write(path, dataset):
  arrays = {
    "name": np.array(dataset.name),
    "classes": np.array(list(dataset.classes)),
    "split_names": np.array(list(dataset.splits)),
    "report": np.array(json.dumps(dataset.report)),
  }
  for split, part in dataset.splits.items():
    arrays[f"{split}/images"] = part.images
    arrays[f"{split}/labels"] = part.labels
    if part.paths is not None:
      arrays[f"{split}/paths"] = np.array(part.paths, dtype=str)
  directory = os.path.dirname(path) or "."
  os.makedirs(directory, exist_ok=True)
  prefix = f"{TMP_PREFIX}{socket.gethostname()}-{os.getpid()}-"
  fd, tmp = tempfile.mkstemp(dir=directory, prefix=prefix, suffix=".npz")
  try:
    with os.fdopen(fd, "wb") as f:
      np.savez(f, **arrays)
    os.replace(tmp, path)
  except BaseException:
    os.remove(tmp)
    raise


def _running(pid):
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:  # another user's process
    return True
  return True


def _writer_gone(path, host, now):
  """Whether the cache writer of the temp file `path` is gone; see the module docstring."""
  writer = os.path.basename(path).removeprefix(TMP_PREFIX).rpartition("-")[0]  # '<host>-<pid>'
  writer_host, _, pid = writer.rpartition("-")
  if writer_host == host and pid.isdigit():
    return not _running(int(pid))
  try:
    return now - os.path.getmtime(path) > STALE_SECONDS
  except FileNotFoundError:  # its writer finished or another cleaner got there first
    return False


def remove_stale_temps(cache_dir):
  """Removes the temp files that killed cache writers left in `cache_dir`; returns how many."""
  host, now, removed = socket.gethostname(), time.time(), 0
  for path in glob.glob(os.path.join(glob.escape(cache_dir), f"{TMP_PREFIX}*.npz")):
    if _writer_gone(path, host, now):
      with contextlib.suppress(FileNotFoundError):
        os.remove(path)
        removed += 1
  return removed


def read(path):
  """The cached Dataset; ValueError when its arrays do not fit together (the caller rebuilds)."""
  with np.load(path, allow_pickle=False) as z:
    classes = tuple(z["classes"].tolist())
    splits = {}
    for split in z["split_names"].tolist():
      paths = z[f"{split}/paths"].tolist() if f"{split}/paths" in z.files else None
      splits[split] = data.Split(z[f"{split}/images"], z[f"{split}/labels"], paths)
      check_split(split, splits[split], len(classes))
    return data.Dataset(str(z["name"]), classes, splits, json.loads(str(z["report"])))


def check_split(name, split, num_classes):
  images, labels = split.images, split.labels
  if images.dtype != np.uint8 or images.ndim != 4 or labels.ndim != 1 or len(images) != len(labels):
    raise ValueError(
      f"split {name}: images {images.dtype}{list(images.shape)} do not match "
      f"labels {list(labels.shape)}"
    )
  if split.paths is not None and len(split.paths) != len(labels):
    raise ValueError(f"split {name}: {len(split.paths)} paths for {len(labels)} labels")
  if len(labels) and (labels.min() < 0 or labels.max() >= num_classes):
    raise ValueError(f"split {name}: labels outside 0..{num_classes - 1}")


def load_or_build(cache_dir, key, fingerprint, build):
  """The cached Dataset for (key, fingerprint), or `build()` it and cache it.

  `cache_dir` empty disables the cache. The returned report has a 'cache' entry
  ({'hit': bool, 'path': str}) and 'load_seconds' (reading or building, not scanning).
  """
  start = time.perf_counter()
  if not cache_dir:
    dataset = build()
    dataset.report["cache"] = {"hit": False, "path": None}
  else:
    if removed := remove_stale_temps(cache_dir):
      print(f"cache {cache_dir}: removed {removed} temp file(s) of killed cache writes", flush=True)
    path = os.path.join(cache_dir, f"{key}-{fingerprint}.npz")
    dataset, hit = None, False
    if os.path.exists(path):
      try:
        dataset, hit = read(path), True
      except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as e:  # damaged: rebuild
        print(f"cache {path} unreadable ({e}); rebuilding", flush=True)
    if dataset is None:
      dataset = build()
      try:
        write(path, dataset)
      except (
        OSError
      ) as e:  # a read-only or full cache folder costs a rebuild next time, nothing else
        print(
          f"warning: cannot write the cache {path} ({e.strerror}); loaded without caching "
          "(set config.data.cache_dir to a writable folder)",
          flush=True,
        )
        path = None
      for stale in (
        glob.glob(os.path.join(glob.escape(cache_dir), f"{glob.escape(key)}-*.npz")) if path else ()
      ):
        if stale != path:
          with contextlib.suppress(FileNotFoundError):  # another process got there first
            os.remove(stale)
    dataset.report["cache"] = {"hit": hit, "path": path}
  dataset.report["load_seconds"] = round(time.perf_counter() - start, 3)
  return dataset
