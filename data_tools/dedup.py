"""Finds exact and near-duplicate images, reports leakage between splits, and removes it.

  python -m data_tools.dedup SRC --out DST [--apply] [--review DST/pairs.csv]
      [--hash phash --threshold 6 --shift 2 --zoom 0.08 --min_similarity 0.97]
      [--leaks drop|keep] [--within keep-one|keep-all] [--conflicts review|drop|keep]

Every image is decoded as the loader decodes it (gray, --image_size, so "exact" means the model
sees identical pixels). Two steps decide whether two images are copies of one photograph:

1. Candidates (fast): a digest of the pixels (exact copies) and a 64-bit perceptual hash
   (imagehash: pHash by default). A pair is a candidate when the hashes differ in at most
   --threshold bits, or one image's hash is that close to the hash of a transformed copy of the
   other: its mirror image, the image moved by --shift px in each of 8 directions, zoomed in and
   out by --zoom. (pHash alone misses 2-3 px shifts and small crops; the transformed copies
   catch them.) The all-pairs search is multi-index hashing, no loop over pairs.
2. Verification (decides): the correlation of the two images' band-passed pixels (fine detail:
   the shading of a face, which different people in one pose share, is filtered out), the
   central two thirds of one against the other at their best alignment: moved by up to
   --max_shift px, zoomed by 1 -/+ --zoom, mirrored when mirrored copies are matched, then
   refined to a continuous zoom and sub-pixel shift; counted on the 70 % of pixels that agree
   best (a watermark or a blown-out patch covers less of a copy). A candidate pair is a near
   duplicate when it reaches --min_similarity. Two verified pairs A-B and B-C make A-C a
   candidate too (the second hop), verified likewise.

No chaining: an image is only ever dropped for a kept image it was verified against directly.
Groups (the `group` column) are the connected components of verified pairs, for reporting.
Findings: an image in val/test verified against one in train (or test against val) is a leak;
verified copies within a split are within-split copies; verified pairs whose labels differ are
label conflicts. Policies: --leaks drop drops an image with a kept verified twin in an earlier
split (train, then val, then test); --within keep-one drops an image with a kept verified twin
in its split (the largest file of a group is considered first and kept); --conflicts review
keeps one per label and lists them in DST/conflicts.csv (apply decisions with
`data_tools.mislabel --review`), drop drops every image of a conflicting pair, keep ignores
labels. DST/duplicates.csv lists every candidate pair with its hash distance, similarity and
verdict; DST/pairs.csv and DST/pairs.png show the near pairs closest to --min_similarity for a
person to confirm: fill `decision` (duplicate | distinct) and re-run with --review DST/pairs.csv.

This module holds the policies, the report and the command line; step 1 lives in
data_tools.hashing, step 2 and the pair review in data_tools.verify.
"""

import collections
import os
import sys

import numpy as np

from . import common, hashing, verify, writing

SPLIT_ORDER = {"train": 0, "val": 1, "test": 2}  # which copy of a leaked pair survives


# ---------------------------------------------------------------------------- policies


def _best_copy_first(records, members):
  """Members in the order they are considered for keeping: earliest split, then the largest
  file (least compressed / largest original), then path."""
  return sorted(
    members, key=lambda m: (SPLIT_ORDER[records[m].split], -records[m].size, records[m].path)
  )


def decide(records, pairs, args, classes):
  """Applies the policies to the linked pairs.

  Returns ({image: (action, reason, pair index)}, {image: [findings]}, review rows). An image is
  dropped only for a kept image it is linked to directly, so links never chain into drops.
  """
  neighbours = collections.defaultdict(list)
  for k in np.flatnonzero(pairs.linked):
    a, b = int(pairs.i[k]), int(pairs.j[k])
    neighbours[a].append((b, k))
    neighbours[b].append((a, k))
  split = lambda m: records[m].split  # noqa: E731
  label = lambda m: records[m].class_name  # noqa: E731
  outcome, findings, kept = {}, {}, set()
  for m in _best_copy_first(records, list(neighbours)):
    found = []
    for o, _ in neighbours[m]:
      if SPLIT_ORDER[split(o)] < SPLIT_ORDER[split(m)]:
        found.append(f"leak {split(m)}<-{split(o)}")
      if split(o) == split(m):
        found.append(f"within-split copy ({split(m)})")
      if label(o) != label(m):
        found.append("label conflict")
    findings[m] = list(dict.fromkeys(found))
    conflicting = [(o, k) for o, k in neighbours[m] if label(o) != label(m)]
    earlier = [
      (o, k)
      for o, k in neighbours[m]
      if o in kept and SPLIT_ORDER[split(o)] < SPLIT_ORDER[split(m)]
    ]
    same = [
      (o, k)
      for o, k in neighbours[m]
      if o in kept and split(o) == split(m) and (args.conflicts != "review" or label(o) == label(m))
    ]
    most_similar = lambda twins: max(twins, key=lambda t: (pairs.similarity[t[1]], -t[0]))  # noqa: E731
    if args.conflicts == "drop" and conflicting:
      o, k = most_similar(conflicting)
      outcome[m] = (
        "dropped",
        f"label conflict: {pairs.kind[k]} copy of {records[o].path} ({label(o)})",
        k,
      )
    elif args.leaks == "drop" and earlier:
      o, k = most_similar(earlier)
      outcome[m] = ("dropped", f"leak: {pairs.kind[k]} copy of {records[o].path} ({split(o)})", k)
    elif args.within == "keep-one" and same:
      o, k = most_similar(same)
      outcome[m] = ("dropped", f"within-split {pairs.kind[k]} copy of {records[o].path}", k)
    else:
      outcome[m] = (
        "kept",
        "kept: linked to "
        + ", ".join(f"{records[o].path} ({pairs.kind[k]})" for o, k in neighbours[m][:3])
        + (f" and {len(neighbours[m]) - 3} more" if len(neighbours[m]) > 3 else ""),
        None,
      )
      kept.add(m)
  review = []
  if args.conflicts == "review":
    for m in sorted(kept):
      others = collections.Counter(
        label(o) for o, _ in neighbours[m] if o in kept and label(o) != label(m)
      )
      if others:
        suggested = max(others, key=lambda c: (others[c], -classes.index(c)))
        review.append(
          {
            "record": m,
            "given_label": label(m),
            "suggested_label": suggested,
            "reason": f"verified duplicate of an image labelled {suggested}",
          }
        )
  return outcome, findings, review


# ---------------------------------------------------------------------------- the tool


def summarise(pairs, outcome, findings, records, args, groups, classes):
  verdicts = collections.Counter(pairs.verdict)
  reviewed = collections.Counter(pairs.review[pairs.review != ""])
  lines = [
    f"hash {args.hash}, threshold {args.threshold}, mirrored copies "
    f"{'matched' if args.mirror else 'ignored'}, shifted {args.shift} px, zoomed {args.zoom}: "
    f"{len(pairs):,} candidate pairs; verified (similarity >= {args.min_similarity}): "
    f"{verdicts['exact']:,} exact, {verdicts['near']:,} near, {verdicts['distinct']:,} distinct"
    + ("; reviewed: " + ", ".join(f"{d} {n}" for d, n in reviewed.items()) if reviewed else "")
  ]
  if groups:
    lines.append(
      f"  {len(groups):,} duplicate groups, {sum(map(len, groups)):,} images; largest "
      f"{max(map(len, groups))} images (no image is dropped for one it was not verified against)"
    )
  leaks = collections.Counter(
    f.split()[1] for fs in findings.values() for f in fs if f.startswith("leak")
  )
  lines.append(
    f"cross-split leakage: {sum(leaks.values()):,} images"
    + "".join(f", {d} {n:,}" for d, n in sorted(leaks.items()))
    + f" (--leaks {args.leaks})"
  )
  within = collections.Counter(
    records[m].split for m, fs in findings.items() if any(f.startswith("within") for f in fs)
  )
  lines.append(
    "within-split copies: "
    + (", ".join(f"{s} {within[s]:,} images" for s in common.SPLITS if within[s]) or "none")
    + f" (--within {args.within})"
  )
  conflicts = collections.Counter()
  for k in np.flatnonzero(pairs.linked):
    a, b = records[pairs.i[k]].class_name, records[pairs.j[k]].class_name
    if a != b:
      conflicts["/".join(sorted((a, b), key=classes.index))] += 1
  lines.append(
    f"label conflicts: {sum(conflicts.values()):,} pairs"
    + "".join(f", {p} {n:,}" for p, n in conflicts.most_common())
    + f" (--conflicts {args.conflicts})"
  )
  dropped = sum(action == "dropped" for action, _, _ in outcome.values())
  lines.append(f"dropped {dropped:,} images, each for a kept image it was verified against")
  return lines


def pair_rows(pairs, records, groups, outcome, tree):
  group_of = {m: f"g{n}" for n, members in enumerate(groups, 1) for m in members}
  linked = pairs.linked  # once: the property compares every verdict (70,601 pairs on FER2013)
  rows = []
  for k in range(len(pairs)):
    a, b = int(pairs.i[k]), int(pairs.j[k])
    dropped = [
      side
      for side, m in (("a", a), ("b", b))
      if m in outcome and outcome[m][0] == "dropped" and outcome[m][2] == k
    ]
    rows.append(
      {
        "group": group_of.get(a, "") if linked[k] else "",
        "file_a": tree.tree_path(records[a]),
        "split_a": records[a].split,
        "class_a": records[a].class_name,
        "file_b": tree.tree_path(records[b]),
        "split_b": records[b].split,
        "class_b": records[b].class_name,
        "hash_distance": int(pairs.distance[k]),
        "match": pairs.kind[k],
        "similarity": f"{pairs.similarity[k]:.4f}",
        "verdict": pairs.verdict[k],
        "review": pairs.review[k],
        "decision": "",
        "outcome": f"{dropped[0]} dropped" if dropped else "",
      }
    )
  return rows


def plan_dedup(args):
  hashing.check_hash_flags(args)
  common.check_output(args.out, args.overwrite, SRC=args.src)
  classes = list(args.classes)
  tree = common.read_tree(args.src, args.classes)
  images, hashes, ok, errors = hashing.decode_and_hash([r.path for r in tree.files], args)
  readable, unreadable = common.split_readable(tree, tree.files, ok, errors)
  entries = list(tree.not_read) + unreadable

  pairs = verify.find_pairs(images, hashes, args)
  verify.apply_pair_review(args.review, pairs, tree, readable)
  groups = verify.groups_of(len(readable), pairs)
  group_of = {m: f"g{n}" for n, members in enumerate(groups, 1) for m in members}
  outcome, findings, reviews = decide(readable, pairs, args, classes)
  for m, r in enumerate(readable):
    if m in outcome:
      action, reason, k = outcome[m]
      score = "" if k is None else f"{pairs.similarity[k]:.4f}"
      entries.append(
        common.entry_for(tree, r, action, reason=reason, group=group_of[m], score=score)
      )
    else:
      entries.append(common.entry_for(tree, r, "kept"))
  entries.sort(key=lambda e: e.source_path)
  common.resolve_name_clashes(entries)

  new_path = {e.source_path: e.new_path for e in entries}
  review_rows = [
    {
      "rank": k,
      "file": new_path[readable[v["record"]].path],
      "split": readable[v["record"]].split,
      "given_label": v["given_label"],
      "suggested_label": v["suggested_label"],
      "score": "",
      "reason": v["reason"],
      "decision": "",
    }
    for k, v in enumerate(reviews, 1)
  ]
  summary = summarise(pairs, outcome, findings, readable, args, groups, classes)
  if review_rows:
    summary.append(
      f"  {len(review_rows)} conflicting images listed in conflicts.csv for review "
      "(paths relative to DST)"
    )
  rows = pair_rows(pairs, readable, groups, outcome, tree)
  chosen = verify.borderline(pairs, args.min_similarity, args.review_pairs)
  summary.append(
    f"review: DST/pairs.png and DST/pairs.csv show the {len(chosen)} near pairs closest to "
    f"--min_similarity; fill `decision` ({' | '.join(verify.PAIR_DECISIONS)}) and re-run with "
    "--review DST/pairs.csv"
  )
  summary += common.split_class_table(entries, classes, "result (images per class and split):")
  reports_out = {
    "duplicates.csv": common.csv_text(rows, verify.PAIR_COLUMNS),
    "pairs.csv": common.csv_text(
      [{**rows[k], "rank": n} for n, k in enumerate(chosen, 1)], verify.REVIEW_PAIR_COLUMNS
    ),
    "pairs.png": verify.pairs_sheet(images, pairs, chosen, args.min_similarity),
  }
  if args.conflicts == "review":
    reports_out["conflicts.csv"] = common.review_csv(review_rows)
  options = {
    **hashing.hash_flag_values(args),
    **{k: getattr(args, k) for k in ("leaks", "within", "conflicts", "review", "classes")},
  }
  return writing.Plan(
    "dedup", {"SRC": tree.root}, os.path.abspath(args.out), options, entries, summary, reports_out
  )


def build_parser():
  p = common.tool_parser("dedup", __doc__.split("\n")[0])
  hashing.add_hash_flags(p)
  p.add_argument(
    "--leaks",
    choices=("drop", "keep"),
    default="drop",
    help="drop: an image with a kept verified twin in an earlier split (train, val, "
    "test) is dropped",
  )
  p.add_argument(
    "--within",
    choices=("keep-one", "keep-all"),
    default="keep-one",
    help="keep-one: an image with a kept verified twin in its split is dropped "
    "(the largest file is kept)",
  )
  p.add_argument(
    "--conflicts",
    choices=("review", "drop", "keep"),
    default="review",
    help="verified pairs whose labels disagree: review = keep one per label and list "
    "them in conflicts.csv; drop = drop both; keep = ignore the labels",
  )
  p.add_argument(
    "--review",
    action="append",
    default=[],
    metavar="CSV",
    help="reviewed pairs.csv (repeatable): decision duplicate | distinct overrides "
    "the verifier for that pair",
  )
  p.add_argument(
    "--review_pairs",
    type=int,
    default=48,
    help="near pairs closest to --min_similarity shown in pairs.png / pairs.csv",
  )
  return p


def main(argv=None):
  return common.run_main(lambda args: writing.finish(plan_dedup(args), args), build_parser(), argv)


if __name__ == "__main__":
  sys.exit(main())
