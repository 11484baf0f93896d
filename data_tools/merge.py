"""Adds AffectNet images to the under-represented classes of a dataset (the study's migration).

  python -m data_tools.merge SRC --affectnet DIR [--annotations training.csv ...] --out DST
      [--apply]
      [--share 0.25] [--ratios 0.8,0.1,0.1] [--seed 42] [--hash phash --threshold 6]

AffectNet as users have it, either
  - a folder per class anywhere under DIR (`DIR/happy/x.jpg`, `DIR/train/3/x.jpg`): folder names
    are AffectNet's expression names or ids 0-7 (neutral, happy, sad, surprise, fear, disgust,
    anger, contempt), or
  - image files under DIR plus the official annotation CSVs (--annotations, repeatable) with
    the columns subDirectory_filePath (relative to DIR), expression (0-7; 8-10 = none,
    uncertain, no face are left out) and optionally face_x, face_y, face_width, face_height.
    A path outside DIR is refused. A file the CSVs label differently is left out and its rows
    listed in DST/conflicts.csv.
Each image is cropped to its face box when there is one, converted to the dataset's format
(gray, --image_size, as the loader decodes; fer_jax.data.folders.to_array) and stored as a new
PNG named `affectnet_<path under DIR>.png`. AffectNet classes map to --classes by name
(anger -> angry; classes not configured are left out). Candidates that duplicate a target image
or an earlier candidate (dedup's hashes and threshold) are skipped.

Balancing: a class is under-represented when its train count is below --share of the train
total after the additions (default 1 / number of classes = 25 % for the study's 4). Each such
class receives, in a --seed shuffled order, enough images for train to reach the share, and
val/test receive additions in the --ratios proportion to train's, so the new images spread
across the splits like the rest. The summary shows the class shares before and after.
"""

import collections
import csv
import functools
import io
import os
import sys

import numpy as np
from PIL import Image, ImageOps

from fer_jax.data import folders
from fer_jax.data.progress import Progress

from . import common, hashing, stratify, writing

# AffectNet's expression ids (Mollahosseini et al. 2017); 8, 9, 10 are None, Uncertain, Non-Face.
AFFECTNET_CLASSES = ("neutral", "happy", "sad", "surprise", "fear", "disgust", "anger", "contempt")
NOT_EMOTIONS = {8: "none", 9: "uncertain", 10: "non-face"}
PATH_COLUMN, EXPRESSION_COLUMN = "subDirectory_filePath", "expression"
BOX_COLUMNS = ("face_x", "face_y", "face_width", "face_height")
PREFIX = "affectnet_"


# ---------------------------------------------------------------------------- reading AffectNet


class Candidate:
  """An AffectNet image that may be added: its file, AffectNet class and face box (or None)."""

  def __init__(self, path, expression, box=None):
    self.path, self.expression, self.box = path, expression, box


def _is_image(path):
  return os.path.splitext(path)[1].lower() in folders.IMAGE_EXTENSIONS


def _folder_class(path, root):
  """The AffectNet class of the nearest folder above `path` named after one (name or id)."""
  for part in reversed(os.path.relpath(os.path.dirname(path), root).split(os.sep)):
    if part.isdigit() and int(part) < len(AFFECTNET_CLASSES):
      return AFFECTNET_CLASSES[int(part)]
    label = folders.match_class(part, AFFECTNET_CLASSES)
    if label is not None:
      return AFFECTNET_CLASSES[label]
  return None


def _not_read(skipped):
  """Dropped entries for what `folders.find_files` skipped (loops, links, special files)."""
  return [common.Entry(p, "", "", "dropped", reason=f"not read: {reason}") for p, reason in skipped]


def read_class_folders(root):
  """(candidates, dropped entries) of a folder-per-class AffectNet."""
  paths, skipped = folders.find_files(root)
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
      if not folders.contains(root, path):  # '../x.jpg' or '/etc/x.jpg': not AffectNet's to read
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
    kind = folders.file_kind(os.stat(path).st_mode)
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
  paths, skipped = folders.find_files(root)
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


# ---------------------------------------------------------------------------- balancing


def additions(counts, share):
  """Train images to add per class so each under-represented class reaches `share` of the total.

  The under-represented classes are those below `share` of the total after the additions (a
  fixed point: raising some classes can push another below the share); each is raised to
  ceil(share x final total).
  """
  counts = np.asarray(counts, float)
  under = counts < share * counts.sum()
  for _ in range(len(counts) + 1):
    if share * under.sum() >= 1:
      raise common.ToolError(
        f"--share {share:g}: {under.sum()} classes cannot all reach it "
        f"(at most {1 / share:g} classes can hold {share:.0%} each)"
      )
    final = counts[~under].sum() / (1 - share * under.sum()) if under.any() else counts.sum()
    grown = under | (counts < share * final)
    if (grown == under).all():
      break
    under = grown
  return np.where(under, np.ceil(share * final - counts - 1e-9), 0).clip(0).astype(int)


def split_quota(train_add, ratios):
  """Per split additions for `train_add` train images: val/test in the --ratios proportion."""
  return np.array([train_add] + [int(round(train_add * r / ratios[0])) for r in ratios[1:]])


# ---------------------------------------------------------------------------- the tool


def _duplicate_of(batch, reference, threshold):
  """For each image of `batch`: whether it duplicates any image of `reference` (Hashes)."""
  found = np.zeros(len(batch), bool)
  if len(reference) and len(batch):
    found[hashing.duplicate_pairs(batch, threshold, reference)[0]] = True
  return found


def _earlier_twins(batch, threshold):
  """{j: [i < j, ...]}: the earlier images of `batch` each image duplicates."""
  twins = collections.defaultdict(list)
  for i, j in zip(*hashing.duplicate_pairs(batch, threshold)):
    twins[int(j)].append(int(i))
  return twins


def _select(batch, need, reference, threshold):
  """Accepts the images of a hashed batch in order until `need` are accepted.

  An image is rejected when it duplicates `reference` (the dataset and earlier additions) or
  an image accepted before it. Returns ({batch index: reason} for the rejected, accepted indices).
  """
  against_reference = _duplicate_of(batch, reference, threshold)
  twins = _earlier_twins(batch, threshold)
  rejected, accepted = {}, []
  for i in range(len(batch)):
    if len(accepted) >= need:
      rejected[i] = "not needed: class quota filled"
    elif against_reference[i] or any(t in accepted for t in twins.get(i, ())):
      rejected[i] = "near-duplicate of an image already in the dataset or added"
    else:
      accepted.append(i)
  return rejected, accepted


def _take(hashes, idx):
  idx = np.asarray(idx, int)
  return hashing.Hashes(hashes.digest[idx], hashes.code[idx], hashes.variants[idx], hashes.kinds)


def _concat(parts, kinds):
  parts = [p for p in parts if len(p)]
  if not parts:
    return hashing.Hashes(
      np.zeros(0, np.uint64), np.zeros(0, np.uint64), np.zeros((0, len(kinds)), np.uint64), kinds
    )
  fields = ("digest", "code", "variants")
  return hashing.Hashes(*(np.concatenate([getattr(p, f) for p in parts]) for f in fields), kinds)


def plan_merge(args):
  hashing.check_hash_flags(args)
  if args.share is not None and not 0 < args.share < 1:
    raise common.ToolError(f"--share: must be in (0, 1), got {args.share}")
  if not os.path.isdir(args.affectnet):
    raise common.ToolError(f"--affectnet {args.affectnet}: no such folder")
  common.check_output(args.out, args.overwrite, SRC=args.src, **{"--affectnet": args.affectnet})
  classes = list(args.classes)
  share = args.share if args.share is not None else 1 / len(classes)
  tree = common.read_tree(args.src, args.classes)
  affectnet_root = os.path.abspath(args.affectnet)
  conflicts = []
  if args.annotations:
    candidates, entries, conflicts = read_annotations(affectnet_root, args.annotations)
  else:
    candidates, entries = read_class_folders(affectnet_root)
  entries += tree.not_read

  # the target as it is: kept whole; its hashes are what candidates must not duplicate
  _, hashes, ok, errors = hashing.decode_and_hash(
    [r.path for r in tree.files], args, label="hashing the dataset"
  )
  readable, unreadable = common.split_readable(tree, tree.files, ok, errors)
  entries += [common.entry_for(tree, r, "kept") for r in readable] + unreadable
  before = collections.Counter((e.split, e.class_name) for e in entries if e.action == "kept")
  train_counts = [before["train", c] for c in classes]
  if sum(train_counts) == 0:
    raise common.ToolError(f"SRC {args.src}: no train images to balance")
  add_train = additions(train_counts, share)

  by_class = collections.defaultdict(list)
  for cand in candidates:
    label = folders.match_class(cand.expression, classes)
    if label is None:
      entries.append(
        common.Entry(
          cand.path,
          "",
          cand.expression,
          "dropped",
          reason=f"AffectNet class {cand.expression!r} is not in --classes",
        )
      )
    else:
      by_class[classes[label]].append(cand)
  rng = np.random.default_rng(args.seed)
  accepted_hashes, shortfalls = [], []
  for c, train_add in zip(classes, add_train):
    pool = by_class.get(c, [])
    quota = split_quota(train_add, args.ratios)
    if quota.sum() == 0:
      entries += [
        common.Entry(
          p.path,
          "",
          p.expression,
          "dropped",
          reason=f"not needed: {c} already >= {share:.1%} of train",
        )
        for p in pool
      ]
      continue
    pool = [pool[k] for k in rng.permutation(len(pool))]
    chosen = []  # (candidate, png bytes)
    progress = Progress(f"converting AffectNet {c}", int(quota.sum()))
    start = 0
    while len(chosen) < quota.sum() and start < len(pool):
      # a little more than needed: some will be duplicates or unreadable
      batch = pool[start : start + max(32, int((quota.sum() - len(chosen)) * 1.25))]
      start += len(batch)
      converted = convert_many(batch, args)
      usable = [k for k, r in enumerate(converted) if not isinstance(r, str)]
      for k, r in enumerate(converted):
        if isinstance(r, str):
          entries.append(
            common.Entry(
              batch[k].path, "", batch[k].expression, "dropped", reason=f"unreadable image: {r}"
            )
          )
      if not usable:
        continue
      batch_hashes = hashing.hash_images(
        np.stack([converted[k][0] for k in usable]),
        args,
        args.workers,
        label=f"hashing AffectNet {c}",
      )
      reference = _concat([hashes] + accepted_hashes, batch_hashes.kinds)
      rejected, keep = _select(
        batch_hashes, int(quota.sum()) - len(chosen), reference, args.threshold
      )
      for k, reason in rejected.items():
        entries.append(
          common.Entry(
            batch[usable[k]].path, "", batch[usable[k]].expression, "dropped", reason=reason
          )
        )
      chosen += [(batch[usable[k]], converted[usable[k]][1]) for k in keep]
      accepted_hashes.append(_take(batch_hashes, keep))
      progress.update(len(keep))
    progress.close()
    entries += [
      common.Entry(p.path, "", p.expression, "dropped", reason="not needed: class quota filled")
      for p in pool[start:]
    ]
    if len(chosen) < quota.sum():
      shortfalls.append(
        f"{c}: {len(chosen):,} of {int(quota.sum()):,} wanted (AffectNet has no more usable)"
      )
      quota = stratify.target_counts(len(chosen), quota / quota.sum())
    splits = np.repeat(np.arange(3), quota)
    for (cand, png), p in zip(chosen, splits):
      name = PREFIX + os.path.splitext(os.path.relpath(cand.path, affectnet_root))[0].replace(
        os.sep, "_"
      )
      split = common.SPLITS[p]
      entries.append(
        common.Entry(
          cand.path,
          "",
          cand.expression,
          "added",
          split,
          c,
          os.path.join(split, c, name + ".png"),
          f"balance {c} towards {share:.1%} of train",
          data=png,
        )
      )
  entries.sort(key=lambda e: e.source_path)

  added = collections.Counter(e.class_name for e in entries if e.action == "added")
  mapped = collections.Counter(cand.expression for cand in candidates)
  summary = [
    f"AffectNet {affectnet_root} ({'annotations' if args.annotations else 'class folders'}): "
    + ", ".join(f"{k} {n:,}" for k, n in sorted(mapped.items())),
    f"target share of train {share:.1%}; additions (all splits): "
    + (", ".join(f"{c} {added[c]:,}" for c in classes if added[c]) or "none"),
  ]
  summary += [f"  short: {s}" for s in shortfalls]
  if conflicts:
    files = len({row["file"] for row in conflicts})
    summary.append(
      f"warning: {files:,} files are labelled differently by the annotation CSVs: left out, "
      "their rows listed in conflicts.csv (correct the CSVs to use them)"
    )
  summary += common.count_table(dict(before), classes, "before (images per class and split):")
  summary += common.split_class_table(entries, classes, "after:")
  options = {
    "annotations": args.annotations,
    "share": share,
    "ratios": args.ratios,
    "seed": args.seed,
    "hash": args.hash,
    "threshold": args.threshold,
    "mirror": args.mirror,
    "shift": args.shift,
    "image_size": args.image_size,
    "resize_filter": args.resize_filter,
    "classes": args.classes,
  }
  return writing.Plan(
    "merge",
    {"SRC": tree.root, "--affectnet": affectnet_root},
    os.path.abspath(args.out),
    options,
    entries,
    summary,
    reports={"conflicts.csv": common.csv_text(conflicts, CONFLICT_COLUMNS)} if conflicts else {},
  )


def build_parser():
  p = common.tool_parser("merge", __doc__.split("\n")[0])
  p.add_argument("--affectnet", required=True, metavar="DIR", help="AffectNet folder (read only)")
  p.add_argument(
    "--annotations",
    action="append",
    default=[],
    metavar="CSV",
    help="official AffectNet annotation CSV (repeatable); without it DIR has class folders",
  )
  p.add_argument(
    "--share",
    type=float,
    default=None,
    help="share of train each under-represented class is raised to "
    "(%(default)s = 1 / number of classes)",
  )
  stratify.add_ratio_flag(p)
  p.add_argument(
    "--seed", type=common.parse_seed, default=42, help="order in which AffectNet images are taken"
  )
  p.add_argument(
    "--resize_filter",
    default="bilinear",
    choices=sorted(folders.RESIZE_FILTERS),
    help="filter used to shrink AffectNet faces (the loader's config.data.resize_filter)",
  )
  hashing.add_hash_flags(p)
  return p


def main(argv=None):
  return common.run_main(lambda args: writing.finish(plan_merge(args), args), build_parser(), argv)


if __name__ == "__main__":
  sys.exit(main())
