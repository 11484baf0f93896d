"""The plan of a data tool and carrying it out: plan.json, the new tree, manifest.csv.

A tool hands its `Plan` (an `Entry` per input file, see data_tools.common) to `finish`:
  - dry run (default): prints the summary and writes `DST/plan.json` (plus the tool's reports);
  - `--apply`: builds the new tree `DST/<split>/<class>/...` from hard links to the source files
    (copies across filesystems or with `--copy`; converted images are new files), then writes
    `DST/manifest.csv` and `DST/plan.json`.
Files already in DST that the plan would write identically are left alone, so re-running is
idempotent; any other file in DST is foreign, and the run stops naming it unless `--overwrite`.
Files in DST are replaced by rename, never rewritten in place: a hard-linked file shares its
bytes with the source, and writing into it would change the source.
"""

import dataclasses
import json
import os
import shutil

from fer_jax.data.progress import Progress

from . import common

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
  counts = {a: 0 for a in common.ACTIONS}
  for e in entries:
    counts[e.action] += 1
  return counts


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
  for rel in common.files_under(dst, skip_outputs=True):
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
    tmp = path + common.WRITER_TMP
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
    if e.action not in common.ACTIONS:
      raise AssertionError(f"{plan.tool}: unknown action {e.action!r} for {e.source_path}")
  common.resolve_name_clashes(plan.entries)
  targets = {e.new_path: e for e in plan.entries if e.new_path}
  in_place, foreign = _compare_with_dst(targets, plan.dst)
  if foreign and not args.overwrite:
    shown = ", ".join(os.path.join(plan.dst, p) for p in foreign[:3])
    more = f" and {len(foreign) - 3} more" if len(foreign) > 3 else ""
    raise common.ToolError(
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
      common.csv_text([e.row() for e in plan.entries], MANIFEST_COLUMNS),
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
