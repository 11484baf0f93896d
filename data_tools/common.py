"""What every data tool shares: flags, reading a tree, the plan, applying it, the manifest.

A tool reads `SRC/<split>/<class>/<file>` (stratify also `SRC/<class>/<file>`), decides what
happens to every file (`Entry`), and hands the `Plan` to `finish`:
  - dry run (default): prints the summary and writes `DST/plan.json` (plus the tool's reports);
  - `--apply`: builds the new tree `DST/<split>/<class>/...` from hard links to the source files
    (copies across filesystems or with `--copy`; converted images are new files), then writes
    `DST/manifest.csv` and `DST/plan.json`.
The source is never written to: DST may not be SRC, inside it, or hold it, nor hold a symlink
(a write through one could land in SRC). Files already in DST that the plan would write
identically are left alone, so re-running is idempotent; any other file in DST is foreign, and
the run stops naming it unless `--overwrite`.
Files in DST are replaced by rename, never rewritten in place: a hard-linked file shares its
bytes with the source, and writing into it would change the source.
"""

import argparse
import collections
import csv
import dataclasses
import io
import json
import os
import shutil
import sys

from fer_jax.data import FER4, SPLITS, folders
from fer_jax.data.progress import Progress

ACTIONS = ("kept", "moved", "relabelled", "dropped", "added")
MANIFEST_COLUMNS = (
  "source_path",
  "source_split",
  "source_class",
  "action",
  "split",
  "class",
  "new_path",
  "reason",
  "group",
  "score",
)
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
# Suffix of the temp file `_Writer.place` renames into place.
_WRITER_TMP = ".data_tools.tmp"


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
    if folders.contains(real, real_dst) or folders.contains(real_dst, real):
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
  .tmp files, anywhere the temp files of an interrupted `_Writer.place` (the re-run replaces them).
  """
  for folder, dirs, files in os.walk(root):
    top = folder == root
    dirs[:] = sorted(
      d for d in dirs if not d.startswith(".") and not (skip_outputs and top and d in OUTPUT_DIRS)
    )
    for f in sorted(files):
      if f.startswith(".") or (
        skip_outputs
        and (f.endswith(_WRITER_TMP) or (top and f.removesuffix(".tmp") in OUTPUT_FILES))
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
  files: list  # folders.FileRecord, sorted by path
  not_read: list  # Entry ('dropped') for every file the scan did not use

  def rel(self, record):
    """A record's path inside its class folder (sub-folders kept)."""
    parts = os.path.relpath(record.path, self.root).split(os.sep)
    return os.path.join(*parts[2 if self.layout == "split" else 1 :])

  def tree_path(self, record):
    """A record's path relative to the tree root (how review CSVs name files)."""
    return os.path.relpath(record.path, self.root)


def read_tree(root, classes, allow_flat=False):
  """Scans `root` (fer_jax.data.folders.scan_tree); every unused file becomes a dropped Entry."""
  if not os.path.isdir(root):
    raise ToolError(f"SRC {root}: no such folder")
  scan = folders.scan_tree(os.path.abspath(root), classes, classes_field="--classes")
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


# ---------------------------------------------------------------------------- plan and apply


@dataclasses.dataclass
class Plan:
  tool: str
  sources: dict  # flag -> input path (SRC, --affectnet ...)
  dst: str
  options: dict  # the flags that shaped the plan
  entries: list  # Entry, one per input file
  summary: list  # lines printed at the end
  reports: dict = dataclasses.field(default_factory=dict)  # DST file name -> bytes or str


def action_counts(entries):
  counts = {a: 0 for a in ACTIONS}
  for e in entries:
    counts[e.action] += 1
  return counts


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


def _same_content(entry, path):
  if entry.data is not None:
    if os.path.getsize(path) != len(entry.data):
      return False
    with open(path, "rb") as f:
      return f.read() == entry.data
  if os.path.samefile(entry.source_path, path):
    return True
  if os.path.getsize(entry.source_path) != os.path.getsize(path):
    return False
  with open(entry.source_path, "rb") as a, open(path, "rb") as b:
    return a.read() == b.read()


def _compare_with_dst(targets, dst):
  """(already in place, foreign paths) for DST as it is now."""
  in_place, foreign = set(), []
  if not os.path.isdir(dst):
    return in_place, foreign
  for rel in files_under(dst, skip_outputs=True):
    entry = targets.get(rel)
    if entry is not None and _same_content(entry, os.path.join(dst, rel)):
      in_place.add(rel)
    else:
      foreign.append(rel)
  return in_place, foreign


class _Writer:
  """Places files in DST atomically: hard link (or copy) / bytes to a temp name, then rename."""

  def __init__(self, copy):
    self.link = not copy

  def place(self, entry, path):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = path + _WRITER_TMP
    if os.path.lexists(tmp):
      os.remove(tmp)
    if entry.data is not None:
      with open(tmp, "wb") as f:
        f.write(entry.data)
    else:
      if self.link:
        try:
          os.link(entry.source_path, tmp)
        except OSError:  # another filesystem, or one without hard links: copy from now on
          self.link = False
      if not self.link:
        shutil.copy2(entry.source_path, tmp)
    os.replace(tmp, path)


def _write_text(path, content):
  """Writes a report atomically; an identical file is left as it is (a re-run changes nothing)."""
  data = content if isinstance(content, bytes) else content.encode()
  if os.path.isfile(path) and os.path.getsize(path) == len(data):
    with open(path, "rb") as f:
      if f.read() == data:
        return
  tmp = f"{path}.tmp"
  with open(tmp, "wb") as f:
    f.write(data)
  os.replace(tmp, path)


def finish(plan, args):
  """Prints the plan's summary, then writes the plan (dry run) or carries it out (--apply)."""
  for e in plan.entries:
    if e.action not in ACTIONS:
      raise AssertionError(f"{plan.tool}: unknown action {e.action!r} for {e.source_path}")
  resolve_name_clashes(plan.entries)
  targets = {e.new_path: e for e in plan.entries if e.new_path}
  in_place, foreign = _compare_with_dst(targets, plan.dst)
  if foreign and not args.overwrite:
    shown = ", ".join(os.path.join(plan.dst, p) for p in foreign[:3])
    more = f" and {len(foreign) - 3} more" if len(foreign) > 3 else ""
    raise ToolError(
      f"--out {plan.dst}: holds {len(foreign)} file(s) this plan would not write "
      f"({shown}{more}); pass --overwrite to replace them or choose an empty folder"
    )
  counts = action_counts(plan.entries)
  to_write = [p for p in sorted(targets) if p not in in_place]
  lines = [
    f"== {plan.tool}: {len(plan.entries):,} input files"
    + "".join(f", {n:,} {a}" for a, n in counts.items() if n)
  ]
  lines += plan.summary
  # What DST held before this run is not part of the plan: kept out of plan.json and summary.txt,
  # so that a re-run leaves them byte for byte as they were.
  status = [
    f"DST {plan.dst}: {len(to_write):,} files to write, {len(in_place):,} already in place"
    + (f", {len(foreign):,} foreign to remove (--overwrite)" if foreign else "")
  ]
  document = {
    "tool": plan.tool,
    "sources": plan.sources,
    "dst": plan.dst,
    "options": plan.options,
    "applied": bool(args.apply),
    "counts": counts,
    "summary": lines,
    "entries": [e.row() for e in plan.entries],
  }
  os.makedirs(plan.dst, exist_ok=True)
  for name, content in plan.reports.items():
    _write_text(os.path.join(plan.dst, name), content)
  plan_path = os.path.join(plan.dst, "plan.json")
  if args.apply:
    if to_write or foreign:
      # Written first, marked not applied: DST is known to be ours if the run is cut off mid-way,
      # and the same command then finishes the tree. (Nothing to do: a re-run changes nothing.)
      _write_text(plan_path, json.dumps({**document, "applied": False}, indent=1) + "\n")
    _apply(plan, args, targets, to_write, foreign)
    _write_text(
      os.path.join(plan.dst, "manifest.csv"),
      csv_text([e.row() for e in plan.entries], MANIFEST_COLUMNS),
    )
    status.append(f"applied: tree, manifest.csv and plan.json in {plan.dst}")
  else:
    status.append(
      f"dry run: nothing changed; plan in {os.path.join(plan.dst, 'plan.json')}; "
      "re-run with --apply to carry it out"
    )
  _write_text(plan_path, json.dumps(document, indent=1) + "\n")
  _write_text(os.path.join(plan.dst, "summary.txt"), "\n".join(lines) + "\n")
  print("\n".join(lines + status))
  return plan


def _apply(plan, args, targets, to_write, foreign):
  for rel in foreign:  # only reached with --overwrite
    os.remove(os.path.join(plan.dst, rel))
  writer = _Writer(args.copy)
  progress = Progress("writing tree", len(to_write))
  for rel in to_write:
    writer.place(targets[rel], os.path.join(plan.dst, rel))
    progress.update(1)
  progress.close()
  for folder, _, _ in os.walk(plan.dst, topdown=False):
    if folder != plan.dst and not os.listdir(folder):
      os.rmdir(folder)  # left empty by removed foreign files
