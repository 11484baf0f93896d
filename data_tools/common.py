"""What every data tool shares: flags, paths, reading a tree, review CSVs, count tables.

A tool reads `SRC/<split>/<class>/<file>` (stratify also `SRC/<class>/<file>`, read_tree),
decides what happens to every file (`Entry`) and hands the plan to data_tools.writing, which
prints it, writes it, or carries it out. The source is never written to: DST may not be SRC,
inside it, or hold it, nor hold a symlink (check_output: a write through one could land in SRC).
The tools' own files in DST (OUTPUT_FILES, OUTPUT_DIRS) are outputs, not data: a later tool
reading DST as its SRC neither reads nor lists them.
"""

import argparse
import collections
import csv
import dataclasses
import io
import os
import sys

from fer_jax.data import FER4, SPLITS, file_tree, folders

ACTIONS = ("kept", "moved", "relabelled", "dropped", "added")

# Files the tools write at the top of DST. When DST becomes the next tool's SRC
# they are outputs of the previous step, not data: they are neither read nor listed.
OUTPUT_FILES = frozenset(
  {
    "manifest.csv",
    "plan.json",
    "summary.txt",
    "duplicates.csv",
    "conflicts.csv",
    "review.csv",
    "suspects.png",
    "oof_probs.npz",
    "pairs.csv",
    "pairs.png",
  }
)
# Working folders of the tools; dot-named, so scanning a tree skips them.
OUTPUT_DIRS = frozenset({".mislabel_runs"})
# Suffix of the temp file data_tools.writing places a file under before renaming it.
WRITER_TMP = ".data_tools.tmp"


class ToolError(Exception):
  """A problem with the user's input; printed as one line naming the path or flag."""


# ---------------------------------------------------------------------------- flags


def parse_classes(text):
  classes = tuple(c.strip() for c in text.split(",") if c.strip())
  if len(classes) < 2 or len(set(classes)) != len(classes):
    raise argparse.ArgumentTypeError(f"--classes: need two or more distinct names, got {text!r}")
  return classes


def parse_seed(text):
  """--seed: a whole number >= 0 (numpy's generators take no negative seeds)."""
  try:
    seed = int(text)
  except ValueError:
    seed = -1
  if seed < 0:
    raise argparse.ArgumentTypeError(f"must be a whole number >= 0, got {text!r}")
  return seed


def tool_parser(prog, description):
  """The flags every tool has; tools add their own."""
  p = argparse.ArgumentParser(
    prog=f"python -m data_tools.{prog}",
    description=description,
    formatter_class=argparse.ArgumentDefaultsHelpFormatter,
  )
  p.add_argument("src", metavar="SRC", help="dataset tree <SRC>/<split>/<class>/<file> (read only)")
  p.add_argument("--out", required=True, metavar="DST", help="new tree to write; never inside SRC")
  p.add_argument("--apply", action="store_true", help="carry out the plan (default: dry run)")
  p.add_argument(
    "--overwrite",
    action="store_true",
    help="replace or remove files in DST that this plan did not write",
  )
  p.add_argument("--copy", action="store_true", help="copy files instead of hard-linking them")
  p.add_argument(
    "--classes",
    type=parse_classes,
    default=FER4,
    help="class folders to read, comma-separated; others are reported and left out",
  )
  p.add_argument("--workers", type=int, default=0, help="decode processes (0 = one per core)")
  return p


def add_groups_flag(parser):
  """--no_groups, for the tools that keep duplicate groups whole (stratify, mislabel)."""
  parser.add_argument(
    "--no_groups",
    dest="groups",
    action="store_false",
    help="do not look for duplicates (each image is its own group)",
  )


def run_main(tool_fn, parser, argv):
  """Parses `argv` (None: the command line), runs the tool, prints user errors as one line.

  Returns the exit status: 0 done, 2 a usage or input error (the message names the path or flag).
  """
  args = parser.parse_args(argv)
  try:
    tool_fn(args)
  except (ToolError, folders.BadImage, FileNotFoundError, NotADirectoryError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  return 0


# ---------------------------------------------------------------------------- paths


def check_output(dst, overwrite, **inputs):
  """Refuses a DST that is, holds or sits inside any input path (flag name -> path)."""
  real_dst = os.path.realpath(dst)
  if os.path.exists(dst) and not os.path.isdir(dst):
    raise ToolError(f"--out {dst}: exists and is not a folder")
  for flag, path in inputs.items():
    real = os.path.realpath(path)
    if file_tree.contains(real, real_dst) or file_tree.contains(real_dst, real):
      raise ToolError(
        f"--out {dst}: overlaps {flag} {path}; the output must be a separate folder "
        "(the source is never written to)"
      )
  link = next(symlinks_under(dst), None)
  if link is not None:  # a write through it could land anywhere, the source included
    raise ToolError(
      f"--out {dst}: holds the symlink {link} -> {os.path.realpath(link)}; the data tools "
      "write only into real folders: remove it or choose another --out"
    )
  if (
    os.path.isdir(dst)
    and not overwrite
    and not any(
      os.path.exists(os.path.join(dst, marker)) for marker in ("plan.json", "manifest.csv")
    )
  ):
    # Cheap early check before any long work; `finish` checks file by file.
    data_file = next(files_under(dst, skip_outputs=True), None)
    if data_file is not None:
      raise ToolError(
        f"--out {dst}: holds files not written by the data tools "
        f"(e.g. {os.path.join(dst, data_file)}); choose an empty folder"
      )


def symlinks_under(root):
  """The symlinks (to files or folders) anywhere under `root`, without following them."""
  for folder, dirs, files in os.walk(root):
    for name in sorted(dirs + files):
      if os.path.islink(os.path.join(folder, name)):
        yield os.path.join(folder, name)


def files_under(root, skip_outputs=False):
  """Relative paths of the files under `root`, sorted; dot-files are skipped as the loader does.

  `skip_outputs`: also skip the tools' own files: at the top OUTPUT_FILES, OUTPUT_DIRS and their
  .tmp files, anywhere the temp files of an interrupted write (the re-run replaces them).
  """
  for folder, dirs, files in os.walk(root):
    top = folder == root
    dirs[:] = sorted(
      d for d in dirs if not d.startswith(".") and not (skip_outputs and top and d in OUTPUT_DIRS)
    )
    for f in sorted(files):
      if f.startswith(".") or (
        skip_outputs
        and (f.endswith(WRITER_TMP) or (top and f.removesuffix(".tmp") in OUTPUT_FILES))
      ):
        continue
      yield os.path.normpath(os.path.relpath(os.path.join(folder, f), root))


# ---------------------------------------------------------------------------- reading a tree


@dataclasses.dataclass
class Entry:
  """What happens to one input file; one manifest row."""

  source_path: str  # absolute
  source_split: str  # '' for an unsplit tree or a file outside the tree's structure
  source_class: str
  action: str  # one of ACTIONS
  split: str = ""  # where it ends up ('' when dropped)
  class_name: str = ""
  new_path: str = ""  # relative to DST ('' when dropped)
  reason: str = ""
  group: str = ""  # duplicate group, review rank...: what the decision rests on
  score: str = ""  # Hamming distance, model margin...
  data: bytes = dataclasses.field(default=None, repr=False)  # a new file's bytes (merge)

  def row(self):
    return {
      "source_path": self.source_path,
      "source_split": self.source_split,
      "source_class": self.source_class,
      "action": self.action,
      "split": self.split,
      "class": self.class_name,
      "new_path": self.new_path,
      "reason": self.reason,
      "group": self.group,
      "score": self.score,
    }


@dataclasses.dataclass
class Tree:
  root: str  # absolute
  layout: str  # 'split' | 'flat'
  files: list  # file_tree.FileRecord, sorted by path
  not_read: list  # Entry ('dropped') for every file the scan did not use

  def rel(self, record):
    """A record's path inside its class folder (sub-folders kept)."""
    parts = os.path.relpath(record.path, self.root).split(os.sep)
    return os.path.join(*parts[2 if self.layout == "split" else 1 :])

  def tree_path(self, record):
    """A record's path relative to the tree root (how review CSVs name files)."""
    return os.path.relpath(record.path, self.root)


def read_tree(root, classes, allow_flat=False):
  """Scans `root` (fer_jax.data.file_tree.scan_tree); every unused file becomes a dropped Entry."""
  if not os.path.isdir(root):
    raise ToolError(f"SRC {root}: no such folder")
  scan = file_tree.scan_tree(os.path.abspath(root), classes, classes_field="--classes")
  if scan.layout == "flat" and not allow_flat:
    raise ToolError(
      f"SRC {root}: no train/val/test folders (an unsplit <root>/<class>/<file> tree); "
      "run `python -m data_tools.stratify` on it first"
    )
  not_read = []
  for path, reason in scan.skipped:
    if os.path.dirname(path) == scan.root and os.path.basename(path) in OUTPUT_FILES:
      continue
    # A skipped class or split folder stands for its files; a skipped link (a loop, or one to
    # files read where they live) is one entry: listing through it would list them again.
    expand = os.path.isdir(path) and not os.path.islink(path)
    paths = [os.path.join(path, rel) for rel in files_under(path)] if expand else [path]
    for p in paths:
      not_read.append(Entry(p, "", "", "dropped", reason=f"not read: {reason}"))
  if not scan.files:
    raise ToolError(
      f"SRC {root}: no images of the classes {', '.join(classes)} found "
      "(expected <SRC>/<split>/<class>/<file>)"
    )
  return Tree(scan.root, scan.layout, scan.files, not_read)


def entry_for(tree, record, action, split=None, class_name=None, reason="", group="", score=""):
  """The Entry of a file going to `split`/`class_name` (default: where it was), or dropped."""
  split = split or record.split or ""
  class_name = class_name or record.class_name
  new_path = "" if action == "dropped" else os.path.join(split, class_name, tree.rel(record))
  if action == "dropped":
    split, class_name = "", ""
  return Entry(
    record.path,
    record.split or "",
    record.class_name,
    action,
    split,
    class_name,
    new_path,
    reason,
    str(group),
    str(score),
  )


def split_readable(tree, records, ok, errors):
  """Decode results -> (the records whose images were read, "dropped" entries for the others).

  `ok` is the mask and `errors` the (path, reason) list of `folders.decode_many`.
  """
  bad = dict(errors)
  readable = [r for r, good in zip(records, ok) if good]
  dropped = [
    entry_for(tree, r, "dropped", reason=f"unreadable image: {bad[r.path]}")
    for r, good in zip(records, ok)
    if not good
  ]
  return readable, dropped


def resolve_name_clashes(entries):
  """Renames `name.ext` to `name_2.ext`, `name_3.ext`... where two entries would land on one path.

  Happens when files from different splits or classes move into one folder. The first entry
  (in source-path order) keeps the name, so the result does not depend on the order of work.
  """
  taken = set()
  for e in sorted((e for e in entries if e.new_path), key=lambda e: e.source_path):
    stem, ext = os.path.splitext(e.new_path)
    candidate, k = e.new_path, 1
    while candidate in taken:
      k += 1
      candidate = f"{stem}_{k}{ext}"
    if candidate != e.new_path:
      e.reason = f"{e.reason}; renamed (name taken)" if e.reason else "renamed (name taken)"
      e.new_path = candidate
    taken.add(candidate)


# ---------------------------------------------------------------------------- review CSVs

REVIEW_COLUMNS = (
  "rank",
  "file",
  "split",
  "given_label",
  "suggested_label",
  "score",
  "reason",
  "decision",
)
DECISIONS = "keep | drop | relabel (to suggested_label) | a class name | empty (= keep)"


def review_csv(rows, extra_columns=()):
  """CSV text of review rows (dicts); the reviewer fills `decision`, see DECISIONS."""
  columns = list(REVIEW_COLUMNS[:-1]) + list(extra_columns) + ["decision"]
  return csv_text(rows, columns)


def csv_text(rows, columns):
  buf = io.StringIO()
  writer = csv.DictWriter(buf, columns, extrasaction="ignore", lineterminator="\n")
  writer.writeheader()
  writer.writerows(rows)
  return buf.getvalue()


# ---------------------------------------------------------------------------- count tables


def split_class_table(entries, classes, title):
  """Lines of a table of result counts per class and split, with each class's share of the split."""
  counts = collections.Counter((e.split, e.class_name) for e in entries if e.action != "dropped")
  return count_table(counts, classes, title)


def count_table(counts, classes, title):
  """counts {(split, class): n} -> table lines: n (share of the split) per class, totals.

  Split '' (an unsplit tree) is the column "unsplit".
  """
  splits = [s for s in SPLITS if any(k[0] == s for k in counts)] + sorted(
    {k[0] for k in counts if k[0] not in SPLITS}
  )
  totals = {s: sum(v for k, v in counts.items() if k[0] == s) for s in splits}
  width = max([len(c) for c in classes] + [8])
  lines = [title, f"  {'class':<{width}}" + "".join(f"{s or 'unsplit':>16}" for s in splits)]
  for c in list(classes) + ["total"]:
    cells = []
    for s in splits:
      n = totals[s] if c == "total" else counts.get((s, c), 0)
      share = n / totals[s] if totals[s] else 0.0
      cells.append(f"{n:>8,} ({share:>5.1%})" if c != "total" else f"{n:>16,}")
    lines.append(f"  {c:<{width}}" + "".join(cells))
  return lines
