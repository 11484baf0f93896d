"""Image folders: find the files, match their class folders, decode them to uint8 arrays.

Layouts: `<root>/<split>/<class>/<file>` (split names normalised by `splits.normalize_split`)
or, for unsplit data, `<root>/<class>/<file>` (every file gets split=None). Files may sit in
sub-folders of a class folder. Anything that is not used is listed in `ScanResult.skipped`
with a reason, never guessed: unknown split folders, classes not in the list, non-image files.
Every path is resolved and each real file used once, where it lives (links between class
folders, links to what the tree holds anyway and loops are skipped); only regular files are
opened (a named pipe called x.png would block its reader). See `_Walk`.

Pixels: EXIF orientation applied; transparent images (RGBA, LA, P with transparency) are
composited on BLACK; 16/32-bit integer images are scaled from 0..65535 to 0..255 (Pillow's own
conversion would clip them); everything else goes through Pillow's `convert` to 'L' (ITU-R 601
luma) or 'RGB'. The image is resized with the configured filter only when its size differs,
without keeping the aspect ratio (as Keras' `image_dataset_from_directory` did for the study).
"""

import collections
import concurrent.futures
import dataclasses
import functools
import multiprocessing
import os
import stat
import sys

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from fer_jax import data
from fer_jax.data import cache
from fer_jax.data.progress import Progress
from fer_jax.data.splits import name_key, normalize_split

Image.init()
# Extensions of formats Pillow can open (registered_extensions also lists save-only ones: PDF...).
IMAGE_EXTENSIONS = frozenset(
  ext for ext, fmt in Image.registered_extensions().items() if fmt in Image.OPEN
)

RESIZE_FILTERS = {
  "nearest": Image.Resampling.NEAREST,
  "bilinear": Image.Resampling.BILINEAR,
  "bicubic": Image.Resampling.BICUBIC,
  "lanczos": Image.Resampling.LANCZOS,
  "box": Image.Resampling.BOX,
  "hamming": Image.Resampling.HAMMING,
}

# Folder names researchers use for the FER2013 / FER+ / AffectNet classes -> the canonical name.
# Keys and values are compared after `name_key` (lower case, no '_', '-' or spaces).
CLASS_ALIASES = {
  "happiness": "happy",
  "joy": "happy",
  "joyful": "happy",
  "smile": "happy",
  "sadness": "sad",
  "unhappy": "sad",
  "surprised": "surprise",
  "surprize": "surprise",
  "neutrality": "neutral",
  "anger": "angry",
  "mad": "angry",
  "disgusted": "disgust",
  "fearful": "fear",
  "afraid": "fear",
  "scared": "fear",
  "contemptuous": "contempt",
}

_INT16_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")


class BadImage(Exception):
  """A file that is not a readable image: `path` and a short `reason`."""

  def __init__(self, path, reason):
    super().__init__(path, reason)
    self.path, self.reason = path, reason

  def __str__(self):
    return f"{self.path}: {self.reason}"


@dataclasses.dataclass(frozen=True)
class FileRecord:
  path: str  # the file, as found under the root
  split: str  # 'train' | 'val' | 'test', or None in an unsplit tree
  label: int  # index into the configured classes
  class_name: str  # classes[label]
  size: int = 0  # bytes, and modification time: the cache fingerprint uses both
  mtime_ns: int = 0


@dataclasses.dataclass
class ScanResult:
  root: str
  layout: str  # 'split' (<root>/<split>/<class>/...) or 'flat' (<root>/<class>/...)
  files: list  # FileRecord, sorted by path
  skipped: list  # (path, reason) for what the scan did not use


def canonical_class(name):
  """A class name as researchers spell it ('Happiness', 'sad_ness', 'Surprised') -> canonical."""
  k = name_key(name)
  return CLASS_ALIASES.get(k, k)


def match_class(folder_name, classes):
  """Index of `folder_name` in `classes` (case, '_', '-' and aliases ignored), or None."""
  target = canonical_class(folder_name)
  for i, c in enumerate(classes):
    if canonical_class(c) == target:
      return i
  return None


def _visible(entries):
  # Dot-files (.DS_Store, .ipynb_checkpoints) are operating-system or tool litter, not data.
  return sorted((e for e in entries if not e.name.startswith(".")), key=lambda e: e.name)


def file_kind(mode):
  """'dir' | 'file' for a folder or regular file (an `os.stat` st_mode); else what it is."""
  if stat.S_ISDIR(mode):
    return "dir"
  if stat.S_ISREG(mode):
    return "file"
  for test, name in _SPECIAL_FILES:
    if test(mode):
      return name
  return "special file"


_SPECIAL_FILES = (
  (stat.S_ISFIFO, "named pipe"),
  (stat.S_ISSOCK, "socket"),
  (stat.S_ISCHR, "character device"),
  (stat.S_ISBLK, "block device"),
)


class _Walk:
  """Reaches every real file and folder of a tree once, where it lives; see `scan_tree`.

  The tree is first walked without following symlinks; then each symlink is resolved, in
  path order, and followed only when its target lies outside everything reached so far. So a
  face is read once, under the class folder it really lives in, however links point between
  class folders; a link out of the tree (`train/happy -> /data/happy`) is read, once.
  Only folders and regular files are used: a named pipe named `x.png` would block its reader.
  """

  def __init__(self, root):
    self.skipped = []  # (path, reason)
    self.found = {os.path.realpath(root): root}  # real path -> path as found
    self.links = collections.deque()  # (path, name, visit): followed after the tree in place

  def folder(self, path, real, visit):
    """Calls visit(path, name, real, kind) for each visible entry of `path`; links wait."""
    try:
      with os.scandir(path) as it:
        entries = _visible(it)
    except OSError as e:
      self.skipped.append((path, f"unreadable ({e.strerror})"))
      return
    for e in entries:
      if e.is_symlink():
        self.links.append((e.path, e.name, visit))
      elif e.is_dir(follow_symlinks=False):
        self._reach(e.path, e.name, os.path.join(real, e.name), "dir", visit)
      elif e.is_file(follow_symlinks=False):
        self._reach(e.path, e.name, os.path.join(real, e.name), "file", visit)
      else:
        self._reach(e.path, e.name, None, file_kind(e.stat(follow_symlinks=False).st_mode), visit)

  def follow_links(self):
    while self.links:
      path, name, visit = self.links.popleft()
      try:
        mode = os.stat(path).st_mode  # a dangling or self-referencing symlink fails here
      except OSError as e:
        self.skipped.append((path, f"unreadable ({e.strerror})"))
        continue
      real = os.path.realpath(path)
      owner = self._found_above(real)
      if owner is None:
        self._reach(path, name, real, file_kind(mode), visit)
      elif contains(real, os.path.realpath(os.path.dirname(path))):
        self.skipped.append((path, "symlink loop (links back to a folder above it)"))
      else:
        shown = os.path.normpath(os.path.join(self.found[owner], os.path.relpath(real, owner)))
        self.skipped.append((path, f"symlink to a file or folder scanned elsewhere (as {shown})"))

  def _found_above(self, real):
    """`real` or the nearest folder above it that the walk reached, or None."""
    while real not in self.found:
      parent = os.path.dirname(real)
      if parent == real:
        return None
      real = parent
    return real

  def _reach(self, path, name, real, kind, visit):
    if kind not in ("dir", "file"):
      self.skipped.append((path, f"not a regular file ({kind})"))
      return
    if real in self.found:  # inside a followed link, a folder another link reached first
      self.skipped.append((path, f"file or folder scanned elsewhere (as {self.found[real]})"))
      return
    self.found[real] = path
    visit(path, name, real, kind)


def contains(outer, inner):
  """Whether path `inner` is `outer` or lies under it (both absolute and normalised)."""
  return inner == outer or inner.startswith(outer.rstrip(os.sep) + os.sep)


def find_files(root):
  """(paths, skipped): every regular file under `root` once, sorted, as `scan_tree` walks.

  `skipped` lists (path, reason) for what was not used: symlink loops, links to files or
  folders already reached, dangling links, named pipes and other special files.
  """
  root = os.fspath(root)
  walk, paths = _Walk(root), []

  def visit(path, name, real, kind):
    if kind == "dir":
      walk.folder(path, real, visit)
    else:
      paths.append(path)

  walk.folder(root, os.path.realpath(root), visit)
  walk.follow_links()
  return sorted(paths), walk.skipped


def scan_tree(root, classes, classes_field="config.data.classes"):
  """Lists the image files under `root` with their split and label; see the module docstring.

  `classes_field` names where `classes` came from in the skip reasons.

  The tree has split folders if any top-level folder is a known split name; then every other
  top-level folder is reported as an unknown split. Otherwise top-level folders are classes.
  Every real file is used once, under the folder it lives in (see `_Walk`): a symlink to a
  file or folder the scan reaches anyway is skipped and listed, as is a symlink loop.
  """
  root = os.fspath(root)
  if not os.path.isdir(root):
    what = "is not a folder" if os.path.exists(root) else "does not exist"
    raise FileNotFoundError(f"config.data.root: image folder {root!r} {what}")
  classes = tuple(classes)
  with os.scandir(root) as it:
    split_layout = any(e.is_dir() and normalize_split(e.name) for e in _visible(it))
  walk, files = _Walk(root), []

  def in_class(split, label):
    def visit(path, name, real, kind):
      if kind == "dir":
        walk.folder(path, real, visit)
      elif os.path.splitext(name)[1].lower() not in IMAGE_EXTENSIONS:
        walk.skipped.append((path, "not an image file (extension)"))
      else:
        st = os.stat(path)
        files.append(FileRecord(path, split, label, classes[label], st.st_size, st.st_mtime_ns))

    return visit

  def class_folders(split):
    def visit(path, name, real, kind):
      label = match_class(name, classes)
      if kind != "dir":
        walk.skipped.append((path, "file outside a class folder"))
      elif label is None:
        walk.skipped.append((path, f"class folder {name!r} is not in {classes_field}"))
      else:
        walk.folder(path, real, in_class(split, label))

    return visit

  def split_folders(path, name, real, kind):
    split = normalize_split(name)
    if kind != "dir":
      walk.skipped.append((path, "file outside a split folder"))
    elif split is None:
      walk.skipped.append((path, f"unknown split folder {name!r} (expected train, val or test)"))
    else:
      walk.folder(path, real, class_folders(split))

  walk.folder(root, os.path.realpath(root), split_folders if split_layout else class_folders(None))
  walk.follow_links()
  files.sort(key=lambda f: f.path)
  return ScanResult(root, "split" if split_layout else "flat", files, walk.skipped)


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
  scan = scan_tree(root, classes)
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
