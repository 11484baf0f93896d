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

This module holds the balancing and the tool; reading and converting AffectNet is
data_tools.affectnet.
"""

import collections
import os
import sys

import numpy as np

from fer_jax.data import file_tree, folders
from fer_jax.data.progress import Progress

from . import affectnet, common, hashing, stratify, writing

PREFIX = "affectnet_"


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
    candidates, entries, conflicts = affectnet.read_annotations(affectnet_root, args.annotations)
  else:
    candidates, entries = affectnet.read_class_folders(affectnet_root)
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
    label = file_tree.match_class(cand.expression, classes)
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
      converted = affectnet.convert_many(batch, args)
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
    reports={"conflicts.csv": common.csv_text(conflicts, affectnet.CONFLICT_COLUMNS)}
    if conflicts
    else {},
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
