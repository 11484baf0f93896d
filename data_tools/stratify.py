"""Re-splits a dataset by class into train/val/test (80/10/10 by default), duplicates together.

  python -m data_tools.stratify SRC --out DST [--apply] [--ratios 0.8,0.1,0.1] [--seed 42]
      [--hash phash --threshold 6 | --no_groups]

SRC is `<SRC>/<split>/<class>/<file>` (the old splits are pooled) or unsplit `<SRC>/<class>/<file>`.
Near-duplicate groups (found as `data_tools.dedup` finds them) are assigned as a whole, so no
group straddles two splits and the new splits cannot leak. Within each class (a group counts
for its most common label), groups are shuffled by --seed, the largest placed first, and each
goes to the split furthest below its target count; without duplicates this gives every class
exactly round(count x ratio) images per split. The summary prints the achieved ratios per class.
"""

import argparse
import collections
import os
import sys

import numpy as np

from . import common, hashing, verify, writing


def parse_ratios(text):
  try:
    ratios = [float(r) for r in text.split(",")]
  except ValueError:
    raise argparse.ArgumentTypeError(
      f"--ratios: expected three numbers like 0.8,0.1,0.1, got {text!r}"
    ) from None
  if len(ratios) != 3 or min(ratios) < 0 or ratios[0] <= 0:
    raise argparse.ArgumentTypeError(
      f"--ratios: need train,val,test shares >= 0 with train > 0, got {text!r}"
    )
  return tuple(r / sum(ratios) for r in ratios)


def add_ratio_flag(parser):
  parser.add_argument(
    "--ratios",
    type=parse_ratios,
    default=(0.8, 0.1, 0.1),
    help="train,val,test shares (normalised to sum to 1)",
  )


def target_counts(n, ratios):
  """n split by `ratios` into integers summing to n (largest remainder; ties to the earlier)."""
  exact = np.asarray(ratios, float) * n
  counts = np.floor(exact).astype(int)
  rest = n - counts.sum()
  order = sorted(range(len(ratios)), key=lambda p: (-(exact[p] - counts[p]), p))
  for p in order[:rest]:
    counts[p] += 1
  return counts


def assign_parts(labels, groups, ratios, seed):
  """Part index (0..len(ratios)-1) per image: stratified by label, whole groups per part.

  `labels` int [N]; `groups` int [N] (equal ids stay together; np.arange(N) = no groups).
  Deterministic for the same inputs and seed. Also used for cross-validation folds.
  """
  labels, groups = np.asarray(labels), np.asarray(groups)
  members = collections.defaultdict(list)
  for idx, g in enumerate(groups):
    members[g].append(idx)
  by_class = collections.defaultdict(list)
  for idx in members.values():
    votes = collections.Counter(labels[idx].tolist())
    by_class[max(votes, key=lambda c: (votes[c], -c))].append(idx)
  rng = np.random.default_rng(seed)
  parts = np.zeros(len(labels), np.int64)
  for c in sorted(by_class):
    class_groups = [by_class[c][k] for k in rng.permutation(len(by_class[c]))]
    class_groups.sort(key=len, reverse=True)  # stable: equal sizes keep the shuffled order
    target = target_counts(sum(map(len, class_groups)), ratios)
    placed = np.zeros(len(ratios), int)
    for idx in class_groups:
      p = int(np.argmax(target - placed))  # the part furthest below its target; ties -> earlier
      parts[idx] = p
      placed[p] += len(idx)
  return parts


def achieved_table(entries, classes, ratios):
  """Lines: per class, images per split and the achieved ratio next to the target."""
  lines = [f"achieved ratios per class (target {' / '.join(f'{r:.0%}' for r in ratios)}):"]
  counts = collections.Counter((e.class_name, e.split) for e in entries if e.action != "dropped")
  width = max(len(c) for c in list(classes) + ["total"])
  for c in list(classes) + ["total"]:
    row = [
      counts[c, s] if c != "total" else sum(counts[k, s] for k in classes) for s in common.SPLITS
    ]
    total = sum(row)
    cells = "  ".join(
      f"{s} {n:>6,} ({n / total if total else 0:6.1%})" for s, n in zip(common.SPLITS, row)
    )
    lines.append(f"  {c:<{width}} {total:>7,}   {cells}")
  return lines


def plan_stratify(args):
  hashing.check_hash_flags(args)
  common.check_output(args.out, args.overwrite, SRC=args.src)
  classes = list(args.classes)
  tree = common.read_tree(args.src, args.classes, allow_flat=True)
  records = tree.files
  entries = list(tree.not_read)
  if args.groups:
    images, hashes, ok, errors = hashing.decode_and_hash([r.path for r in records], args)
    records, unreadable = common.split_readable(tree, records, ok, errors)
    entries += unreadable
    groups = verify.group_labels(len(records), verify.find_pairs(images, hashes, args))
  else:
    groups = np.arange(len(records))
  labels = np.array([r.label for r in records])
  parts = assign_parts(labels, groups, args.ratios, args.seed)
  sizes = collections.Counter(groups.tolist())
  group_name = {g: f"g{k}" for k, g in enumerate(sorted(g for g in sizes if sizes[g] > 1), 1)}
  for r, p, g in zip(records, parts, groups):
    split = common.SPLITS[p]
    action = "kept" if r.split == split else "moved"
    reason = f"assigned to {split}" + (
      f" with its duplicate group of {sizes[g]}" if sizes[g] > 1 else ""
    )
    entries.append(
      common.entry_for(tree, r, action, split=split, reason=reason, group=group_name.get(g, ""))
    )
  entries.sort(key=lambda e: e.source_path)
  how = (
    f"hash {args.hash}, threshold {args.threshold}, verified at {args.min_similarity}"
    if args.groups
    else "--no_groups"
  )
  summary = [
    f"{len(records):,} images pooled from the {tree.layout} tree; "
    f"{len(group_name):,} duplicate groups kept whole ({how}), seed {args.seed}"
  ]
  summary += achieved_table(entries, classes, args.ratios)
  options = {
    **{k: getattr(args, k) for k in ("ratios", "seed", "groups")},
    **hashing.hash_flag_values(args),
    "classes": args.classes,
  }
  return writing.Plan(
    "stratify", {"SRC": tree.root}, os.path.abspath(args.out), options, entries, summary
  )


def build_parser():
  p = common.tool_parser("stratify", __doc__.split("\n")[0])
  add_ratio_flag(p)
  p.add_argument(
    "--seed",
    type=common.parse_seed,
    default=42,
    help="shuffling seed (the same seed gives the same split)",
  )
  common.add_groups_flag(p)
  hashing.add_hash_flags(p)
  return p


def main(argv=None):
  return common.run_main(
    lambda args: writing.finish(plan_stratify(args), args), build_parser(), argv
  )


if __name__ == "__main__":
  sys.exit(main())
