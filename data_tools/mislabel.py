"""Model-assisted label review: find images whose label a model confidently contradicts.

  python -m data_tools.mislabel SRC --out DST [--config configs/b_p.py:real] [--set f=v ...]
      [--folds 5] [--seed 42] [--sheet 64] [--no_groups]      # 1. train, write the review
  python -m data_tools.mislabel SRC --out DST --review DST/review.csv [--apply]   # 2. apply it

Step 1 pools every image of SRC, splits them into --folds stratified folds and trains the --config
once per fold (fer_jax.train.loop.train_and_evaluate: train = the other folds less a stratified val
hold-out of config.data.val_fraction, test = the fold), so every image gets class probabilities
from a model that never saw it (out-of-fold). Duplicates (exact and verified near copies, as dedup
and the audit find them at their defaults) stay in one fold and on one side of the hold-out, so no
model has trained on a copy of an image it scores (--no_groups: each image on its own). The default
judge is the recipe for real faces (B+, 40 epochs); the summary prints its out-of-fold accuracy
(overall and per fold) and recall per class and warns when it is weak. Confident learning
(Northcutt et al. 2021) then sets a threshold per class, t_j = the mean probability of class j over
the images labelled j; counts the images labelled i whose most probable class above its threshold
is j (the confident joint); calibrates it to the label counts into an estimate Q of the joint
distribution of given and true labels; and flags n * Q[i, j] images labelled i, those with the
largest margin p_j - p_i (prune by noise rate). So the number flagged follows the estimated noise,
the off-diagonal mass of Q, printed next to it. Suspects are ranked by the margin
p_suggested - p_given. Writes DST/review.csv (ranked), DST/suspects.png (contact sheet of the
top --sheet suspects with both labels) and DST/oof_probs.npz; the tree is unchanged. Fold runs
live in DST/.mislabel_runs/<fingerprint>/ and are reused when nothing changed.

Step 2 reads reviewed CSVs (this tool's review.csv, dedup's conflicts.csv; `file` is relative
to SRC) and writes the new tree: decision `relabel` moves the file to suggested_label's class
folder, a class name moves it to that class, `drop` leaves it out, `keep` or empty keeps it.

The judge (out-of-fold training, confident learning) is data_tools.judge; this module holds
the two steps, their outputs and the command line.
"""

import collections
import csv
import hashlib
import io
import json
import os
import sys
import zipfile

import numpy as np
from matplotlib.figure import Figure

from fer_jax import config_loading
from fer_jax.data import file_tree, folders

from . import common, hashing, judge, verify, writing

# The recipe for real faces: its network, trained 12 epochs, reached 73 % val on FER2013 where
# Model 0 reaches 64 % (docs/data_tools.md, "The judge"); the recipe's 40 epochs take 1.3-1.7x
# the time of Model 0's 75 epochs a fold. Model 0's `quick` variant flagged a quarter of FER2013,
# mostly its own bias.
DEFAULT_CONFIG = "configs/b_p.py:real"


# ---------------------------------------------------------------------------- fold runs


def _fingerprint(records, groups, config, folds, seed):
  h = hashlib.sha256()
  for r in records:
    h.update(f"{r.path}\0{r.label}\0{r.size}\0{r.mtime_ns}\n".encode())
  h.update(np.ascontiguousarray(groups, np.int64).tobytes())
  h.update(json.dumps(config.to_dict(), sort_keys=True, default=str).encode())
  h.update(f"{folds} {seed}".encode())
  return h.hexdigest()[:16]


def duplicate_groups(images, args):
  """Group id per image (equal ids: copies of one photograph), or one group per image under
  --no_groups. The images as the model sees them, with dedup's default hash and verifier."""
  if not args.groups:
    return np.arange(len(images))
  pairs, _ = verify.find_groups(images, hashing.default_settings(), args.workers)
  return verify.group_labels(len(images), pairs)


# ---------------------------------------------------------------------------- outputs


def contact_sheet(images, rows, per_row=8):
  """PNG bytes: the suspects' images with 'given -> suggested' and both probabilities."""
  n = max(len(rows), 1)
  cols = min(per_row, n)
  lines = -(-n // cols)
  fig = Figure(figsize=(cols * 1.6, lines * 1.95))  # no pyplot: no global state, no GUI backend
  axes = fig.subplots(lines, cols, squeeze=False)
  for ax in axes.ravel():
    ax.axis("off")
  for ax, (image_idx, row) in zip(axes.ravel(), rows):
    image = images[image_idx]
    ax.imshow(image[..., 0] if image.shape[-1] == 1 else image, cmap="gray", vmin=0, vmax=255)
    ax.set_title(
      f"#{row['rank']} given {row['given_label']} {float(row['p_given']):.2f}\n"
      f"model: {row['suggested_label']} {float(row['p_suggested']):.2f}",
      fontsize=6.5,
    )
  if not rows:
    axes[0, 0].text(0.5, 0.5, "no suspects", ha="center", va="center")
  fig.suptitle("Label suspects, most confident contradiction first", fontsize=8)
  fig.tight_layout()
  buf = io.BytesIO()
  fig.savefig(buf, format="png", dpi=110)
  return buf.getvalue()


def npz_bytes(**arrays):
  """An .npz file's bytes; unlike np.savez, with fixed zip timestamps, so a re-run is identical."""
  buf = io.BytesIO()
  with zipfile.ZipFile(buf, "w") as archive:
    for name, array in arrays.items():
      with archive.open(zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0)), "w") as f:
        np.lib.format.write_array(f, np.asarray(array), allow_pickle=False)
  return buf.getvalue()


# ---------------------------------------------------------------------------- the two steps


def load_config(args, classes):
  spec = args.config
  try:
    overrides = config_loading.parse_overrides(args.set)
    overrides["data.classes"] = tuple(classes)
    # The judge reads each fold model's plain probabilities: test-time augmentation (the recipe's
    # flip+shifts) would be 10 unused passes over every fold.
    overrides["eval.tta"] = "none"
    return config_loading.load_config(spec, overrides)
  except config_loading.ConfigError as e:
    raise common.ToolError(f"--config {args.config}: {e}") from None


def summary_lines(args, classes, labels, groups, probs, fold_of, found, rows):
  accuracy, recall, per_fold, warning = judge.judge_quality(probs, labels, len(classes), fold_of)
  n = len(labels)
  sizes = np.bincount(groups)
  cells = collections.Counter(f"{row['given_label']}->{row['suggested_label']}" for row in rows)
  estimated = {
    f"{classes[i]}->{classes[j]}": found.joint[i, j] * n
    for i in range(len(classes))
    for j in range(len(classes))
    if i != j and found.joint[i, j] * n >= 0.5
  }
  lines = [
    (
      f"{int(sizes[sizes > 1].sum()):,} images in {int((sizes > 1).sum()):,} duplicate groups, "
      "each group within one fold"
      if args.groups
      else "--no_groups: copies of an image may be in another fold"
    ),
    f"{n:,} images scored out-of-fold by {args.config} ({args.folds} folds); "
    f"out-of-fold accuracy {accuracy:.1%} (per fold: "
    + ", ".join(f"{a:.1%}" for a in per_fold)
    + "); recall per class: "
    + ", ".join(f"{c} {r:.1%}" for c, r in zip(classes, recall)),
  ]
  lines += [warning] if warning else []
  lines += [
    "class thresholds (mean self-confidence): "
    + ", ".join(f"{c} {t:.2f}" for c, t in zip(classes, found.thresholds)),
    f"estimated label noise (confident learning, off-diagonal mass of the estimated joint): "
    f"{found.noise_rate:.1%} = {found.noise_rate * n:,.0f} images; flagged {len(rows):,} "
    f"suspects ({len(rows) / max(n, 1):.1%}); the judge's own confident errors count as noise, "
    "so the weaker the judge, the more the estimate exceeds the true rate",
    "  given->true: "
    + ", ".join(
      f"{k} {cells[k]} (est. {v:.0f})" for k, v in sorted(estimated.items(), key=lambda kv: -kv[1])
    ),
    f"review: DST/review.csv (fill `decision`: {common.DECISIONS}), contact sheet "
    f"DST/suspects.png (top {min(args.sheet, len(rows))}); then re-run with --review "
    "DST/review.csv --apply",
  ]
  return lines


def plan_review(args, tree):
  """Step 1: out-of-fold probabilities -> review.csv, suspects.png; every file kept."""
  classes = list(args.classes)
  config = load_config(args, classes)
  records = tree.files
  images, ok, errors = folders.decode_many(
    [r.path for r in records],
    config.data.image_size,
    config.data.channels,
    config.data.resize_filter,
    args.workers,
  )
  records, unreadable = common.split_readable(tree, records, ok, errors)
  entries = list(tree.not_read) + unreadable
  images = images[ok]
  labels = np.array([r.label for r in records], np.int64)
  if np.bincount(labels, minlength=len(classes)).min() < args.folds:
    raise common.ToolError(
      f"SRC {args.src}: every class needs at least --folds={args.folds} images"
    )
  groups = duplicate_groups(images, args)
  workdir = os.path.join(
    os.path.abspath(args.out),
    ".mislabel_runs",
    _fingerprint(records, groups, config, args.folds, args.seed),
  )
  probs, fold_of = judge.out_of_fold_probs(
    images, labels, groups, classes, config, args.folds, args.seed, workdir
  )

  found = judge.find_suspects(probs, labels)
  rows = []
  for rank, i in enumerate(found.ranked, 1):
    r, s = records[i], found.suggested[i]
    rows.append(
      {
        "rank": rank,
        "file": tree.tree_path(r),
        "split": r.split or "",
        "given_label": r.class_name,
        "suggested_label": classes[s],
        "score": f"{found.margin[i]:.4f}",
        "p_given": f"{probs[i, r.label]:.4f}",
        "p_suggested": f"{probs[i, s]:.4f}",
        "threshold": f"{found.thresholds[s]:.4f}",
        "reason": f"p({classes[s]}) {probs[i, s]:.2f} vs "
        f"p({r.class_name}) {probs[i, r.label]:.2f}; "
        f"{r.class_name}->{classes[s]} estimated for {found.joint[r.label, s]:.1%} "
        "of the data",
        "decision": "",
      }
    )
  for r in records:
    entries.append(common.entry_for(tree, r, "kept"))
  summary = summary_lines(args, classes, labels, groups, probs, fold_of, found, rows)
  reports = {
    "review.csv": common.review_csv(rows, ["p_given", "p_suggested", "threshold"]),
    "suspects.png": contact_sheet(images, list(zip(found.ranked, rows))[: args.sheet]),
    "oof_probs.npz": npz_bytes(
      files=np.array([tree.tree_path(r) for r in records]),
      labels=labels.astype(np.int32),
      probs=probs,
      fold=fold_of.astype(np.int32),
    ),
  }
  return entries, summary, reports


def read_decisions(paths, tree, classes):
  """{record path: (action, new class or '', reason, rank, score)} from reviewed CSVs."""
  by_file = {tree.tree_path(r): r for r in tree.files}
  decided = {}
  for path in paths:
    try:
      with open(path, newline="", encoding="utf-8-sig") as f:  # -sig: a CSV saved by a spreadsheet
        reader = csv.DictReader(f)
        missing = {"file", "decision"} - set(reader.fieldnames or [])
        if missing:
          raise common.ToolError(f"--review {path}: no column {', '.join(sorted(missing))}")
        for row in reader:
          where = f"--review {path} line {reader.line_num}"
          decision = (row.get("decision") or "").strip()
          record = by_file.get(os.path.normpath(row["file"]))
          if record is None:
            raise common.ToolError(f"{where}: {row['file']!r} is not an image of SRC {tree.root}")
          outcome = _decision(decision, row, classes, where)
          if outcome is None:
            continue
          previous = decided.get(record.path)
          if previous is not None and previous[:2] != outcome[:2]:
            raise common.ToolError(f"{where}: {row['file']} has another decision in an earlier row")
          decided[record.path] = outcome
    except FileNotFoundError:
      raise common.ToolError(f"--review {path}: no such file") from None
  return decided


def _decision(decision, row, classes, where):
  """(action, class, reason, rank, score) for a reviewed row; None for keep/empty."""
  text = decision.lower()
  suggested = (row.get("suggested_label") or "").strip()
  reason = row.get("reason") or "reviewed"
  rank, score = row.get("rank") or "", row.get("score") or ""
  if text in ("", "keep"):
    return None
  if text == "drop":
    return ("dropped", "", f"review: drop ({reason})", rank, score)
  target = suggested if text == "relabel" else decision
  label = file_tree.match_class(target, classes)
  if label is None:
    raise common.ToolError(
      f"{where}: decision {decision!r} is not one of {common.DECISIONS} "
      f"(classes: {', '.join(classes)})"
    )
  return (
    "relabelled",
    classes[label],
    f"review: relabel to {classes[label]} ({reason})",
    rank,
    score,
  )


def plan_apply_review(args, tree):
  """Step 2: the reviewed decisions -> relabelled / dropped / kept entries."""
  classes = list(args.classes)
  decided = read_decisions(args.review, tree, classes)
  entries = list(tree.not_read)
  for r in tree.files:
    action, new_class, reason, rank, score = decided.get(r.path, ("kept", "", "", "", ""))
    if action == "relabelled" and new_class == r.class_name:
      action, reason = "kept", f"review confirmed {new_class}"
    entries.append(
      common.entry_for(
        tree,
        r,
        action,
        class_name=new_class or None,
        reason=reason,
        group=f"rank {rank}" if rank else "",
        score=score,
      )
    )
  counts = writing.action_counts(entries)
  moves = {}
  for e in entries:
    if e.action == "relabelled":
      moves[f"{e.source_class}->{e.class_name}"] = (
        moves.get(f"{e.source_class}->{e.class_name}", 0) + 1
      )
  summary = [
    f"reviewed decisions from {', '.join(args.review)}: {counts['relabelled']} relabelled"
    + "".join(f" ({k} {n})" for k, n in sorted(moves.items()))
    + f", {counts['dropped']} dropped"
  ]
  return entries, summary, {}


def plan_mislabel(args):
  if args.folds < 2:
    raise common.ToolError(f"--folds: need at least 2, got {args.folds}")
  if args.apply and not args.review:
    raise common.ToolError(
      "--apply needs --review CSV: run without --apply first, fill the "
      "`decision` column of DST/review.csv, then apply it"
    )
  common.check_output(args.out, args.overwrite, SRC=args.src)
  tree = common.read_tree(args.src, args.classes, allow_flat=True)
  step = plan_apply_review if args.review else plan_review
  entries, summary, reports = step(args, tree)
  entries.sort(key=lambda e: e.source_path)
  summary += common.split_class_table(entries, args.classes, "result (images per class and split):")
  options = {
    "config": args.config,
    "set": args.set,
    "folds": args.folds,
    "seed": args.seed,
    "groups": args.groups,
    "review": args.review,
    "classes": args.classes,
  }
  return writing.Plan(
    "mislabel", {"SRC": tree.root}, os.path.abspath(args.out), options, entries, summary, reports
  )


def build_parser():
  p = common.tool_parser("mislabel", __doc__.split("\n")[0])
  p.add_argument(
    "--config", default=DEFAULT_CONFIG, help="model config file[:variant] trained per fold"
  )
  p.add_argument(
    "--set",
    action="append",
    default=[],
    metavar="FIELD=VALUE",
    help="config override, e.g. --set train.epochs=10 (repeatable)",
  )
  p.add_argument("--folds", type=int, default=5, help="cross-validation folds")
  p.add_argument("--seed", type=common.parse_seed, default=42, help="fold assignment seed")
  p.add_argument("--sheet", type=int, default=64, help="suspects shown in suspects.png")
  common.add_groups_flag(p)
  p.add_argument(
    "--review",
    action="append",
    default=[],
    metavar="CSV",
    help="reviewed review.csv / conflicts.csv to apply (repeatable); no training then",
  )
  return p


def main(argv=None):
  return common.run_main(
    lambda args: writing.finish(plan_mislabel(args), args), build_parser(), argv
  )


if __name__ == "__main__":
  sys.exit(main())
