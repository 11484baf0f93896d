"""AffectNet as users have it, read and converted for `data_tools.merge`.

read_class_folders: a folder per class anywhere under the root (expression names or ids 0-7);
read_annotations: image files plus the official annotation CSVs (expression, face box), with
the files the CSVs label differently listed as conflicts. convert: one image cropped to its
face box and decoded as the loader decodes (fer_jax.data.folders.to_array), plus its PNG bytes;
convert_many does a list of them in parallel.
"""

import collections
import csv
import functools
import io
import os

from PIL import Image, ImageOps

from fer_jax.data import file_tree, folders

from . import common

# AffectNet's expression ids (Mollahosseini et al. 2017); 8, 9, 10 are None, Uncertain, Non-Face.
AFFECTNET_CLASSES = ("neutral", "happy", "sad", "surprise", "fear", "disgust", "anger", "contempt")
NOT_EMOTIONS = {8: "none", 9: "uncertain", 10: "non-face"}
PATH_COLUMN, EXPRESSION_COLUMN = "subDirectory_filePath", "expression"
BOX_COLUMNS = ("face_x", "face_y", "face_width", "face_height")


# ---------------------------------------------------------------------------- reading AffectNet


class Candidate:
  """An AffectNet image that may be added: its file, AffectNet class and face box (or None)."""

  def __init__(self, path, expression, box=None):
    self.path, self.expression, self.box = path, expression, box


def _is_image(path):
  return os.path.splitext(path)[1].lower() in file_tree.IMAGE_EXTENSIONS


def _folder_class(path, root):
  """The AffectNet class of the nearest folder above `path` named after one (name or id)."""
  for part in reversed(os.path.relpath(os.path.dirname(path), root).split(os.sep)):
    if part.isdigit() and int(part) < len(AFFECTNET_CLASSES):
      return AFFECTNET_CLASSES[int(part)]
    label = file_tree.match_class(part, AFFECTNET_CLASSES)
    if label is not None:
      return AFFECTNET_CLASSES[label]
  return None


def _not_read(skipped):
  """Dropped entries for what `file_tree.find_files` skipped (loops, links, special files)."""
  return [common.Entry(p, "", "", "dropped", reason=f"not read: {reason}") for p, reason in skipped]


def read_class_folders(root):
  """(candidates, dropped entries) of a folder-per-class AffectNet."""
  paths, skipped = file_tree.find_files(root)
  candidates, dropped = [], _not_read(skipped)
  for path in paths:
    expression = _folder_class(path, root)
    if not _is_image(path):
      dropped.append(
        common.Entry(path, "", "", "dropped", reason="not read: not an image file (extension)")
      )
    elif expression is None:
      dropped.append(
        common.Entry(
          path,
          "",
          "",
          "dropped",
          reason="not read: no AffectNet class folder (name or id 0-7) above it",
        )
      )
    else:
      candidates.append(Candidate(path, expression))
  return candidates, dropped


def _box(row, where):
  values = [(row.get(c) or "").strip() for c in BOX_COLUMNS]
  if not any(values):
    return None
  try:
    x, y, w, h = (float(v) for v in values)
  except ValueError:
    raise common.ToolError(f"{where}: face box {values} is not four numbers") from None
  return x, y, w, h


CONFLICT_COLUMNS = ("file", "annotations", "expression", "class")


class _Listing:
  """One annotation row: the file it names, its expression id, face box and CSV line."""

  def __init__(self, path, expression_id, box, where):
    self.path, self.expression_id, self.box, self.where = path, expression_id, box, where


def _read_listings(root, csv_path):
  """The `_Listing` of each row of one annotation CSV; a bad row is a ToolError naming it."""
  try:
    f = open(csv_path, newline="", encoding="utf-8-sig")
  except FileNotFoundError:
    raise common.ToolError(f"--annotations {csv_path}: no such file") from None
  listings = []
  with f:
    reader = csv.DictReader(f)
    missing = {PATH_COLUMN, EXPRESSION_COLUMN} - set(reader.fieldnames or [])
    if missing:
      raise common.ToolError(
        f"--annotations {csv_path}: no column {', '.join(sorted(missing))} "
        f"(expected AffectNet's {PATH_COLUMN}, {EXPRESSION_COLUMN}, face_x, ...)"
      )
    for row in reader:
      where = f"--annotations {csv_path} line {reader.line_num}"
      name = row[PATH_COLUMN].strip()
      path = os.path.normpath(os.path.join(root, name))
      if not file_tree.contains(root, path):  # '../x.jpg' or '/etc/x.jpg': not AffectNet's to read
        raise common.ToolError(
          f"{where}: {PATH_COLUMN} {name!r} lies outside --affectnet {root}; "
          "annotation paths are relative to the AffectNet folder"
        )
      try:
        expression_id = int(row[EXPRESSION_COLUMN])
      except ValueError:
        raise common.ToolError(
          f"{where}: expression {row[EXPRESSION_COLUMN]!r} is not an id 0-10"
        ) from None
      if not (0 <= expression_id < len(AFFECTNET_CLASSES) or expression_id in NOT_EMOTIONS):
        raise common.ToolError(f"{where}: expression {expression_id} is not an AffectNet id 0-10")
      listings.append(_Listing(path, expression_id, _box(row, where), where))
  return listings


def _expression_name(expression_id):
  return NOT_EMOTIONS.get(expression_id) or AFFECTNET_CLASSES[expression_id]


def _unusable(path):
  """Why the listed file `path` cannot be read, or None for a regular file."""
  try:
    kind = file_tree.file_kind(os.stat(path).st_mode)
  except FileNotFoundError:
    return "listed in the annotations, file missing"
  except OSError as e:  # a link loop, no permission
    return f"not read: unreadable ({e.strerror})"
  return None if kind == "file" else f"not read: not a regular file ({kind})"


def read_annotations(root, csv_paths):
  """(candidates, dropped entries, conflict rows) from the official annotation CSVs.

  A file is one real file, however the rows spell its path. A file listed twice with the same
  expression is read once; with different expressions it is left out, and each of its rows
  becomes a conflict row (CONFLICT_COLUMNS) for DST/conflicts.csv. Files under `root` that no
  row lists are dropped.
  """
  by_file = collections.defaultdict(list)  # real path -> its listings, in CSV order
  for csv_path in csv_paths:
    for listing in _read_listings(root, csv_path):
      by_file[os.path.realpath(listing.path)].append(listing)
  candidates, dropped, conflicts = [], [], []
  for listings in by_file.values():
    first = listings[0]
    if len({li.expression_id for li in listings}) > 1:
      said = "; ".join(f"{li.where}: {_expression_name(li.expression_id)}" for li in listings)
      dropped.append(
        common.Entry(
          first.path, "", "", "dropped", reason=f"label conflict in the annotations ({said})"
        )
      )
      conflicts += [
        {
          "file": os.path.relpath(li.path, root),
          "annotations": li.where.removeprefix("--annotations "),
          "expression": li.expression_id,
          "class": _expression_name(li.expression_id),
        }
        for li in listings
      ]
      continue
    reason = _unusable(first.path)
    if reason is None and first.expression_id in NOT_EMOTIONS:
      reason = (
        f"AffectNet expression {first.expression_id} "
        f"({NOT_EMOTIONS[first.expression_id]}) is not an emotion"
      )
    if reason is None:
      candidates.append(Candidate(first.path, AFFECTNET_CLASSES[first.expression_id], first.box))
      continue
    dropped.append(common.Entry(first.path, "", "", "dropped", reason=reason))
  paths, skipped = file_tree.find_files(root)
  dropped += _not_read((p, r) for p, r in skipped if os.path.realpath(p) not in by_file)
  dropped += [
    common.Entry(path, "", "", "dropped", reason="not read: not in the annotations")
    for path in paths
    if os.path.realpath(path) not in by_file
  ]
  return candidates, dropped, conflicts


# ---------------------------------------------------------------------------- conversion


def crop_box(size, box):
  """A face box (x, y, w, h) clipped to an image of `size` (w, h) -> PIL crop box; None if empty."""
  x, y, w, h = box
  left, top = max(0, int(round(x))), max(0, int(round(y)))
  right, bottom = min(size[0], int(round(x + w))), min(size[1], int(round(y + h)))
  return (left, top, right, bottom) if right - left >= 2 and bottom - top >= 2 else None


def convert(path, box, image_size, resize_filter):
  """One AffectNet file -> (uint8 [S, S, 1] as the loader decodes it, PNG bytes)."""
  try:
    with folders.open_image(path) as im:
      im.load()
      im = ImageOps.exif_transpose(im)
      if box is not None:
        crop = crop_box(im.size, box)
        if crop is None:
          raise folders.BadImage(
            path, f"face box {box} lies outside the {im.size[0]}x{im.size[1]} image"
          )
        im = im.crop(crop)
      pixels = folders.to_array(im, image_size, 1, resize_filter)
  except folders.BadImage:
    raise
  except Exception as e:  # Pillow raises many types for corrupt data
    raise folders.BadImage(path, f"unreadable ({type(e).__name__}: {e})") from None
  buf = io.BytesIO()
  Image.fromarray(pixels[..., 0]).save(buf, format="PNG")
  return pixels, buf.getvalue()


def _convert_chunk(items, image_size, resize_filter):
  out = []
  for path, box in items:
    try:
      out.append(convert(path, box, image_size, resize_filter))
    except folders.BadImage as e:
      out.append(e.reason)
  return out


def convert_many(candidates, args):
  """[(pixels, png) or error reason] for each candidate, in order; in parallel."""
  items = [(c.path, c.box) for c in candidates]
  fn = functools.partial(
    _convert_chunk, image_size=args.image_size, resize_filter=args.resize_filter
  )
  results = dict(folders.map_chunks(fn, items, 64, args.workers))
  return [r for s in sorted(results) for r in results[s]]
