"""Image folders decoded to uint8 arrays; the files are found by data.file_tree.

Pixels: EXIF orientation applied; transparent images (RGBA, LA, P with transparency) are
composited on BLACK; 16/32-bit integer images are scaled from 0..65535 to 0..255 (Pillow's own
conversion would clip them); everything else goes through Pillow's `convert` to 'L' (ITU-R 601
luma) or 'RGB'. The image is resized with the configured filter only when its size differs,
without keeping the aspect ratio (as Keras' `image_dataset_from_directory` did for the study).
Decoding runs in parallel chunks (map_chunks); load reads a whole tree into a data.Dataset.
"""

import concurrent.futures
import functools
import multiprocessing
import os
import sys

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from fer_jax import data
from fer_jax.data import cache, file_tree
from fer_jax.data.progress import Progress

RESIZE_FILTERS = {
  "nearest": Image.Resampling.NEAREST,
  "bilinear": Image.Resampling.BILINEAR,
  "bicubic": Image.Resampling.BICUBIC,
  "lanczos": Image.Resampling.LANCZOS,
  "box": Image.Resampling.BOX,
  "hamming": Image.Resampling.HAMMING,
}


_INT16_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")


class BadImage(Exception):
  """A file that is not a readable image: `path` and a short `reason`."""

  def __init__(self, path, reason):
    super().__init__(path, reason)
    self.path, self.reason = path, reason

  def __str__(self):
    return f"{self.path}: {self.reason}"


def to_mode(im, channels):
  """A PIL image in 'L' (channels=1) or 'RGB' (3), converted as the module docstring says."""
  if im.mode in _INT16_MODES:
    wide = np.asarray(im, dtype=np.int64)
    im = Image.fromarray(((np.clip(wide, 0, 65535) * 255 + 32767) // 65535).astype(np.uint8), "L")
  elif im.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (
    im.mode == "P" and "transparency" in im.info
  ):
    rgba = im.convert("RGBA")
    im = Image.alpha_composite(Image.new("RGBA", rgba.size, (0, 0, 0, 255)), rgba)
  return im.convert("L" if channels == 1 else "RGB")


def resample_filter(name):
  """The Pillow filter for a `config.data.resize_filter` name."""
  try:
    return RESIZE_FILTERS[name]
  except KeyError:
    raise ValueError(
      f"config.data.resize_filter: unknown filter {name!r}; use one of {', '.join(RESIZE_FILTERS)}"
    ) from None


def _check_params(channels, resize_filter):
  if channels not in (1, 3):
    raise ValueError(f"config.data.channels: must be 1 or 3, got {channels}")
  resample_filter(resize_filter)


def to_array(im, size, channels, resize_filter="bilinear"):
  """A PIL image -> uint8 [size, size, channels], converted as the module docstring says."""
  _check_params(channels, resize_filter)
  im = to_mode(im, channels)
  if im.size != (size, size):
    im = im.resize((size, size), resample_filter(resize_filter))
  return np.asarray(im, dtype=np.uint8).reshape(size, size, channels)


def open_image(path):
  """Image.open, trying the format of the file's extension first.

  Pillow tries every format plugin in turn, which costs more than decoding a 48x48 JPEG;
  a misnamed file (a PNG called .jpg) still opens on the full search.
  """
  ext_format = Image.registered_extensions().get(os.path.splitext(path)[1].lower())
  if ext_format:
    try:
      return Image.open(path, formats=[ext_format])
    except UnidentifiedImageError:
      pass
  return Image.open(path)


def decode_image(path, size, channels, resize_filter="bilinear"):
  """One image file -> uint8 [size, size, channels]; raises BadImage for unreadable files."""
  _check_params(channels, resize_filter)  # a bad config value is not a bad image
  try:
    with open_image(path) as im:  # a GIF opens on its first frame
      im.load()
      return to_array(ImageOps.exif_transpose(im), size, channels, resize_filter)
  except FileNotFoundError:
    raise BadImage(path, "file not found (removed while loading?)") from None
  except UnidentifiedImageError:
    reason = "empty file" if os.path.getsize(path) == 0 else "not an image Pillow can read"
    raise BadImage(path, reason) from None
  except Exception as e:  # Pillow raises many types for corrupt data (OSError, SyntaxError...)
    raise BadImage(path, f"corrupt or truncated image ({type(e).__name__}: {e})") from None


def _decode_chunk(paths, size, channels, resize_filter):
  images = np.zeros((len(paths), size, size, channels), np.uint8)
  ok = np.zeros(len(paths), bool)
  errors = []
  for i, p in enumerate(paths):
    try:
      images[i] = decode_image(p, size, channels, resize_filter)
      ok[i] = True
    except BadImage as e:
      errors.append((e.path, e.reason))
  return images, ok, errors


def executor(workers):
  """A process pool (fork), or a thread pool once JAX is imported.

  Most of the time per small image is Python code in Pillow, which threads cannot share, so
  processes decode up to `workers` times faster. But forking a process that runs JAX's
  threads can deadlock, and the alternatives to fork (spawn, forkserver) re-import the
  caller's main module, which breaks scripts without an `if __name__ == "__main__"` guard.
  So a process that has imported JAX decodes in threads (Pillow releases the GIL while it
  decodes and resizes), which is still within the load-time target.
  """
  if "jax" in sys.modules:
    return concurrent.futures.ThreadPoolExecutor(workers)
  return concurrent.futures.ProcessPoolExecutor(
    workers, mp_context=multiprocessing.get_context("fork")
  )


def map_chunks(fn, items, chunk, workers=0, progress=None):
  """Yields (start, fn(items[start:start + chunk])) for every chunk, in parallel.

  `workers` processes, or threads once JAX is imported (see `executor`); 0 = one per CPU core;
  1, or no more than one chunk of items, = in this process. `fn` must be picklable (a
  module-level function or a functools.partial of one). Pairs come in completion order, not
  start order, so callers can store each chunk as it arrives; `progress.update` is called
  with the chunk's length as each one finishes.
  """
  n = len(items)
  workers = workers or os.cpu_count() or 1
  starts = range(0, n, chunk)
  if workers == 1 or n <= chunk:
    for s in starts:
      result = fn(items[s : s + chunk])
      if progress is not None:
        progress.update(min(chunk, n - s))
      yield s, result
  else:
    with executor(workers) as pool:
      futures = {pool.submit(fn, items[s : s + chunk]): s for s in starts}
      for fut in concurrent.futures.as_completed(futures):
        s = futures[fut]
        result = fut.result()
        if progress is not None:
          progress.update(min(chunk, n - s))
        yield s, result


def decode_many(
  paths, size, channels, resize_filter="bilinear", num_workers=0, label="loading images"
):
  """Decodes files in parallel -> (images uint8 [N, size, size, C], ok_mask bool [N], errors).

  `errors` lists (path, reason) for the files that failed; their rows in `images` are zero and
  `ok_mask` is False. `num_workers` processes, or threads once JAX is imported (see
  `executor`); 0 = one per CPU core, 1 = in this process.
  Progress goes to stderr, one update per chunk of files.
  """
  _check_params(channels, resize_filter)  # fail on bad config before starting workers
  paths = [os.fspath(p) for p in paths]
  n = len(paths)
  workers = num_workers or os.cpu_count() or 1
  images = np.zeros((n, size, size, channels), np.uint8)
  ok = np.zeros(n, bool)
  errors = []
  # Chunks amortise the inter-process transfer; ~8 per worker keeps the progress line moving.
  chunk = int(min(1024, max(64, -(-n // (workers * 8)))))
  progress = Progress(label, n)
  decode = functools.partial(
    _decode_chunk, size=size, channels=channels, resize_filter=resize_filter
  )
  for start, (chunk_images, chunk_ok, chunk_errors) in map_chunks(
    decode, paths, chunk, workers, progress
  ):
    images[start : start + len(chunk_ok)] = chunk_images  # stored as each chunk arrives
    ok[start : start + len(chunk_ok)] = chunk_ok
    errors.extend(chunk_errors)
  progress.close()
  errors.sort()
  return images, ok, errors


def load(data_cfg):
  """`config.data.source='folder'`: the image tree at `config.data.root` as a Dataset, cached.

  A flat tree (no split folders) is loaded as train; val is then held out of it and a test
  split is missing, which is an error (re-split such data with data_tools.stratify).
  """
  root = os.fspath(data_cfg.root)
  classes = tuple(data_cfg.classes)
  scan = file_tree.scan_tree(root, classes)
  if not scan.files:
    raise ValueError(
      f"config.data.root: no images of the classes {', '.join(classes)} "
      f"under {root!r} (expected <root>/<split>/<class>/<image>)"
    )
  params = data.load_params(data_cfg)
  key = cache.cache_key("folder", root, params)
  fingerprint = cache.files_fingerprint(root, [(f.path, f.size, f.mtime_ns) for f in scan.files])

  def build():
    images, ok, bad_files = decode_many(
      [f.path for f in scan.files],
      data_cfg.image_size,
      data_cfg.channels,
      data_cfg.resize_filter,
      data_cfg.num_workers,
    )
    split_of = np.array([f.split or "train" for f in scan.files])
    labels = np.array([f.label for f in scan.files], np.int32)
    parts = {}
    for split in data.SPLITS:
      idx = np.flatnonzero((split_of == split) & ok)
      parts[split] = (images[idx], labels[idx], [scan.files[i].path for i in idx])
    report = {"source": "folder", "root": root, "layout": scan.layout, "bad_files": bad_files}
    return data.assemble(f"folder:{root}", classes, parts, report)

  dataset = cache.load_or_build(data_cfg.cache_dir, key, fingerprint, build)
  # Skipped folders and files never reach the arrays, so they are reported from this scan.
  dataset.report["skipped"] = [list(s) for s in scan.skipped]
  return dataset
