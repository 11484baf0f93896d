"""FER2013 (`emotion,pixels,Usage` CSV) and FER+ (`fer2013new.csv` vote counts) sources.

FER2013: `Usage` gives the split (Training -> train, PublicTest -> val, PrivateTest -> test;
a CSV without a Usage column is all train); the 7 labels (angry, disgust, fear, happy, sad,
surprise, neutral) map to `config.data.classes` by name, and rows of other classes are dropped
(the 4-class default drops angry, disgust and fear). Malformed rows are skipped and listed with
their line numbers.

FER+: `fer2013new.csv` holds, for each row of `fer2013.csv` in the same order, ten annotators'
votes over neutral, happiness, surprise, sadness, anger, disgust, fear, contempt, unknown and
NF (not a face). The label is the majority vote (`ferplus_label`); rows with an empty image
name are faces the FER+ authors removed, and are dropped. Votes that do not follow the pixels
row by row (another row count, a Usage that differs, `fer<N>.png` names out of order) are
refused, naming the first such row. Both CSVs may start with a UTF-8 byte-order mark.
"""

import collections
import csv
import dataclasses
import os
import re

import numpy as np
from PIL import Image

from fer_jax import data
from fer_jax.data import cache
from fer_jax.data.file_tree import match_class
from fer_jax.data.folders import to_array
from fer_jax.data.splits import normalize_split

FER2013_SIDE = (
  48  # every row holds a 48x48 gray face; the loader resizes it to config.data.image_size
)
FER2013_CLASSES = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")
FERPLUS_EMOTIONS = (
  "neutral",
  "happiness",
  "surprise",
  "sadness",
  "anger",
  "disgust",
  "fear",
  "contempt",
)
FERPLUS_NOT_EMOTIONS = ("unknown", "nf")  # lower-cased column names


@dataclasses.dataclass
class Row:
  """One CSV record: its line number, and either its fields or the reason it is malformed."""

  line: int
  fields: dict = None  # lower-cased column name -> text
  error: str = None


def read_csv(path, required):
  """(header, rows) of a CSV; header names are stripped and lower-cased.

  Rows whose field count differs from the header's come back with an error. A missing
  required column is a ValueError naming the file.
  """
  # utf-8-sig: a spreadsheet's "CSV UTF-8" starts with a byte-order mark, glued to the first name.
  with open(path, newline="", encoding="utf-8-sig") as f:
    reader = csv.reader(f)
    header = [h.strip().lower() for h in next(reader, [])]
    missing = [c for c in required if c not in header]
    if missing:
      raise ValueError(
        f"config.data.root: {path} has no column {', '.join(missing)} "
        f"(header: {','.join(header) or 'empty'})"
      )
    rows = []
    for fields in reader:
      if not fields:
        continue  # a blank line, usually the last one
      if len(fields) != len(header):
        rows.append(Row(reader.line_num, error=f"{len(fields)} fields, expected {len(header)}"))
      else:
        rows.append(Row(reader.line_num, dict(zip(header, fields))))
  return header, rows


def parse_fer2013_row(fields):
  """(FER2013 label 0..6, uint8 [side, side] pixels, split or None); ValueError when malformed."""
  emotion = fields["emotion"].strip()
  if not emotion.isdigit() or int(emotion) >= len(FER2013_CLASSES):
    raise ValueError(f"emotion {emotion!r} is not 0..6")
  try:
    pixels = np.fromstring(fields["pixels"], dtype=np.int64, sep=" ")
  except ValueError:
    raise ValueError("pixels are not space-separated integers") from None
  if len(pixels) != FER2013_SIDE * FER2013_SIDE:
    raise ValueError(f"{len(pixels)} pixels is not a {FER2013_SIDE}x{FER2013_SIDE} image")
  side = FER2013_SIDE
  if pixels.min() < 0 or pixels.max() > 255:
    raise ValueError("pixel values outside 0..255")
  split = "train"
  if "usage" in fields:
    split = normalize_split(fields["usage"])
    if split is None:
      raise ValueError(f"Usage {fields['usage']!r} is not Training, PublicTest or PrivateTest")
  return int(emotion), pixels.astype(np.uint8).reshape(side, side), split


def ferplus_label(votes, classes, ties="drop", min_votes=0, unknown="drop"):
  """The majority-vote label of one FER+ face: (index into classes, None) or (None, why dropped).

  `votes` maps lower-cased FER+ column names to counts. Candidates are the eight emotions,
  plus unknown and NF when `unknown='drop'` (a face they win is dropped, as the FER+ authors
  did) — `unknown='ignore'` leaves those two columns out. A tie for the most votes is dropped
  (`ties='drop'`) or goes to the tied class that comes first in `classes` (`ties='first'`).
  A face whose winner is not in `classes`, or has fewer than `min_votes` votes, is dropped.
  """
  if ties not in ("drop", "first"):
    raise ValueError(f"config.data.ferplus_ties: {ties!r} is not drop or first")
  if unknown not in ("drop", "ignore"):
    raise ValueError(f"config.data.ferplus_unknown: {unknown!r} is not drop or ignore")
  candidates = FERPLUS_EMOTIONS + (FERPLUS_NOT_EMOTIONS if unknown == "drop" else ())
  top = max(votes[c] for c in candidates)
  if top == 0:
    return None, "no votes"
  winners = [c for c in candidates if votes[c] == top]
  if top < min_votes:
    return None, f"fewer than {min_votes} votes"
  if len(winners) > 1:
    if ties == "drop":
      return None, "tied vote"
    in_classes = sorted(i for i in (match_class(w, classes) for w in winners) if i is not None)
    return (in_classes[0], None) if in_classes else (None, "tied vote, no class in config")
  if winners[0] in FERPLUS_NOT_EMOTIONS:
    return None, "unknown or not-a-face wins"
  label = match_class(winners[0], classes)
  return (label, None) if label is not None else (None, f"class {winners[0]} not in config")


def _locate(root, ferplus):
  """(fer2013.csv, fer2013new.csv or None) from a root that is either CSV or their folder."""
  root = os.fspath(root)
  if not os.path.exists(root):
    raise FileNotFoundError(f"config.data.root: {root!r} does not exist")
  folder = root if os.path.isdir(root) else os.path.dirname(root)
  if not ferplus:
    path = os.path.join(root, "fer2013.csv") if os.path.isdir(root) else root
    if not os.path.isfile(path):
      raise FileNotFoundError(f"config.data.root: no fer2013.csv in {root!r}")
    return path, None
  pixels_csv, votes_csv = (
    os.path.join(folder, "fer2013.csv"),
    os.path.join(folder, "fer2013new.csv"),
  )
  if os.path.isfile(root) and os.path.basename(root).lower() != "fer2013new.csv":
    pixels_csv = root  # the pixels CSV under another name, fer2013new.csv beside it
  for p in (pixels_csv, votes_csv):
    if not os.path.isfile(p):
      raise FileNotFoundError(f"config.data.root: FER+ needs {os.path.basename(p)} in {folder!r}")
  return pixels_csv, votes_csv


def _to_size(pixels, data_cfg):
  size, channels = data_cfg.image_size, data_cfg.channels
  if pixels.shape == (size, size) and channels == 1:
    return pixels[..., None]
  return to_array(Image.fromarray(pixels, "L"), size, channels, data_cfg.resize_filter)


def _ferplus_options(data_cfg):
  return dict(
    ties=data_cfg.ferplus_ties,
    min_votes=int(data_cfg.ferplus_min_votes),
    unknown=data_cfg.ferplus_unknown,
  )


def _build(data_cfg, pixels_csv, votes_csv):
  classes = tuple(data_cfg.classes)
  _, rows = read_csv(pixels_csv, ("emotion", "pixels"))
  skipped, dropped = [], collections.Counter()
  if votes_csv:
    _, vote_rows = read_csv(votes_csv, FERPLUS_EMOTIONS + FERPLUS_NOT_EMOTIONS + ("image name",))
    if len(vote_rows) != len(rows):
      raise ValueError(
        f"config.data.root: {votes_csv} has {len(vote_rows)} rows but "
        f"{pixels_csv} has {len(rows)}; FER+ labels must match FER2013 row by row"
      )
    check_votes_follow_pixels(rows, vote_rows, pixels_csv, votes_csv)
    options = _ferplus_options(data_cfg)
  class_of = [match_class(name, classes) for name in FER2013_CLASSES]
  per_split = collections.defaultdict(lambda: ([], [], []))
  for i, row in enumerate(rows):
    where = f"{pixels_csv}:{row.line}"
    try:
      if row.error:
        raise ValueError(row.error)
      emotion, pixels, split = parse_fer2013_row(row.fields)
    except ValueError as e:
      skipped.append((where, f"malformed row ({e})"))
      continue
    if votes_csv:
      label, why = _vote_label(vote_rows[i], votes_csv, classes, options, skipped)
    else:
      label = class_of[emotion]
      why = None if label is not None else f"class {FER2013_CLASSES[emotion]} not in config"
    if label is None:
      if why:
        dropped[why] += 1
      continue
    images, labels, paths = per_split[split]
    images.append(_to_size(pixels, data_cfg))
    labels.append(label)
    paths.append(where)
  shape = (0, data_cfg.image_size, data_cfg.image_size, data_cfg.channels)
  parts = {
    s: (np.stack(v[0]) if v[0] else np.zeros(shape, np.uint8), np.array(v[1], np.int32), v[2])
    for s, v in per_split.items()
  }
  source = "ferplus" if votes_csv else "fer2013"
  report = {
    "source": source,
    "root": os.fspath(data_cfg.root),
    "skipped": skipped,
    "dropped": dict(dropped),
  }
  return data.assemble(f"{source}:{pixels_csv}", classes, parts, report)


def check_votes_follow_pixels(rows, vote_rows, pixels_csv, votes_csv):
  """Refuses FER+ votes that are not row by row those of `pixels_csv`: the first vote row whose
  Usage differs from its pixels row's, or whose image name `fer<N>.png` does not come after the
  previous one (FER+ numbers its faces in the order of fer2013.csv), is a ValueError naming it.
  """
  previous = None  # (number, line) of the last fer<N>.png name
  for row, votes in zip(rows, vote_rows):
    if row.error or votes.error:
      continue  # listed as malformed by the loader
    usage, vote_usage = (r.fields.get("usage", "").strip() for r in (row, votes))
    if usage and vote_usage and usage.lower() != vote_usage.lower():
      problem = f"Usage {vote_usage!r}, but {pixels_csv}:{row.line} is {usage!r}"
    else:
      name = votes.fields["image name"].strip()
      number = re.fullmatch(r"fer(\d+)\.png", name, re.IGNORECASE)
      if number is None:
        continue
      if previous is None or int(number[1]) > previous[0]:
        previous = int(number[1]), votes.line
        continue
      problem = f"image name {name!r} does not come after line {previous[1]}'s"
    raise ValueError(
      f"config.data.root: {votes_csv}:{votes.line}: {problem}; FER+ votes must follow "
      f"{os.path.basename(pixels_csv)} row by row (are both files from the same, unsorted copy?)"
    )


def _vote_label(row, votes_csv, classes, options, skipped):
  """FER+ label of one vote row; a malformed vote row is listed in `skipped` (why=None)."""
  where = f"{votes_csv}:{row.line}"
  if row.error:
    skipped.append((where, f"malformed row ({row.error})"))
    return None, None
  if not row.fields["image name"].strip():
    return None, "removed by FER+ (no image name)"
  try:
    votes = {c: int(row.fields[c]) for c in FERPLUS_EMOTIONS + FERPLUS_NOT_EMOTIONS}
  except ValueError:
    skipped.append((where, "malformed row (vote counts are not integers)"))
    return None, None
  return ferplus_label(votes, classes, **options)


def load(data_cfg, ferplus=False):
  """`config.data.source='fer2013'` or `'ferplus'` as a Dataset, cached."""
  pixels_csv, votes_csv = _locate(data_cfg.root, ferplus)
  csvs = [pixels_csv] + ([votes_csv] if votes_csv else [])
  source = "ferplus" if ferplus else "fer2013"
  params = data.load_params(data_cfg, **(_ferplus_options(data_cfg) if ferplus else {}))
  # Keyed by the pixels CSV, so two CSVs in one folder (train.csv, test.csv) keep their own caches.
  key = cache.cache_key(source, pixels_csv, params)
  fingerprint = cache.files_fingerprint(os.path.dirname(pixels_csv), cache.stat_files(csvs))
  return cache.load_or_build(
    data_cfg.cache_dir, key, fingerprint, lambda: _build(data_cfg, pixels_csv, votes_csv)
  )
