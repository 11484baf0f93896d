"""Image folder trees: find the files, match their class folders (decoding: data.folders).

Layouts: `<root>/<split>/<class>/<file>` (split names normalised by `splits.normalize_split`)
or, for unsplit data, `<root>/<class>/<file>` (every file gets split=None). Files may sit in
sub-folders of a class folder. Anything that is not used is listed in `ScanResult.skipped`
with a reason, never guessed: unknown split folders, classes not in the list, non-image files.
Every path is resolved and each real file used once, where it lives (links between class
folders, links to what the tree holds anyway and loops are skipped); only regular files are
opened (a named pipe called x.png would block its reader). See `_Walk`.
"""

import collections
import dataclasses
import os
import stat

from PIL import Image

from fer_jax.data.splits import name_key, normalize_split

Image.init()
# Extensions of formats Pillow can open (registered_extensions also lists save-only ones: PDF...).
IMAGE_EXTENSIONS = frozenset(
  ext for ext, fmt in Image.registered_extensions().items() if fmt in Image.OPEN
)


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
