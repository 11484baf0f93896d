"""FER2013 and FER+ CSVs on disk: splits, label mapping, malformed rows, majority votes."""

import numpy as np
import pytest

from fer_jax import data
from fer_jax.configs import common
from fer_jax.data import fer2013

FER7 = fer2013.FER2013_CLASSES
FERPLUS_HEADER = (
  "Usage,Image name,neutral,happiness,surprise,sadness,anger,disgust,fear,contempt,unknown,NF"
)


def pixels(value, side=48):
  return " ".join([str(value)] * (side * side))


def write_fer2013(path, extra_rows=()):
  """Per split, one row of each of the 7 emotions, pixel value = 10 * emotion + split offset."""
  lines = ["emotion,pixels,Usage"]
  for usage, offset in (("Training", 0), ("PublicTest", 1), ("PrivateTest", 2)):
    for emotion in range(7):
      lines.append(f"{emotion},{pixels(10 * emotion + offset)},{usage}")
  lines += list(extra_rows)
  path.write_text("\n".join(lines) + "\n")
  return path


def config(root, cache_dir, **fields):
  c = common.data_config()
  c.root, c.cache_dir = str(root), str(cache_dir)
  for k, v in fields.items():
    setattr(c, k, v)
  return c


def test_fer2013_splits_labels_and_pixels(tmp_path):
  csv = write_fer2013(tmp_path / "fer2013.csv")
  dataset = data.load(config(csv, tmp_path / "cache"))  # source 'auto' picks fer2013 for a .csv
  assert dataset.name.startswith("fer2013:")
  assert dataset.sizes() == {"train": 4, "val": 4, "test": 4}  # angry, disgust, fear dropped
  assert dataset.report["dropped"] == {f"class {c} not in config": 3 for c in FER7[:3]}
  for split, offset in (("train", 0), ("val", 1), ("test", 2)):
    s = dataset.splits[split]
    assert s.images.shape == (4, 48, 48, 1) and s.images.dtype == np.uint8
    # FER2013 labels happy=3, sad=4, surprise=5, neutral=6 -> happy, neutral, sad, surprise.
    names = [dataset.classes[label] for label in s.labels]
    expected_value = {"happy": 30, "sad": 40, "surprise": 50, "neutral": 60}
    assert [int(im[0, 0, 0]) for im in s.images] == [expected_value[n] + offset for n in names]
    assert sorted(names) == ["happy", "neutral", "sad", "surprise"]
  assert dataset.splits["train"].paths[0] == f"{csv}:5"  # lines 2-4: angry, disgust, fear


def test_fer2013_all_seven_classes_resized_to_rgb(tmp_path):
  csv = write_fer2013(tmp_path / "fer2013.csv")
  dataset = data.load(
    config(tmp_path, tmp_path / "cache", source="fer2013", classes=FER7, image_size=24, channels=3)
  )
  assert dataset.sizes() == {"train": 7, "val": 7, "test": 7}
  train = dataset.splits["train"]
  assert train.images.shape == (7, 24, 24, 3)
  assert train.labels.tolist() == list(range(7))
  assert [int(v) for v in train.images[:, 5, 5, 1]] == [10 * e for e in range(7)]
  assert csv.exists()


def test_fer2013_malformed_rows_are_reported_with_line_numbers(tmp_path):
  csv = write_fer2013(
    tmp_path / "fer2013.csv",
    extra_rows=[
      f"3,{pixels(1, side=47)[:-2]},Training",  # line 23: 2208 pixels is not 48x48
      f"9,{pixels(1)},Training",  # line 24: emotion out of range
      f"4,{pixels(300)},Training",  # line 25: pixel value out of range
      "4,1 2 three 4,Training",  # line 26
      f"5,{pixels(1)},Holdout",  # line 27: unknown Usage
      "6,only two fields",  # line 28
      f"3,{pixels(5)},Training",  # line 29: fine
      "4,7,Training",  # line 30: one pixel is a square, but not a FER2013 face
      f"4,{pixels(2, side=24)},Training",  # line 31: square, but not 48x48
    ],
  )
  dataset = data.load(config(csv, tmp_path / "cache"))
  skipped = {where.rsplit(":", 1)[1]: reason for where, reason in dataset.report["skipped"]}
  assert sorted(skipped) == ["23", "24", "25", "26", "27", "28", "30", "31"]
  assert all("is not a 48x48 image" in skipped[line] for line in ("23", "30", "31"))
  assert "not 0..6" in skipped["24"]
  assert "0..255" in skipped["25"] and "integers" in skipped["26"]
  assert "Holdout" in skipped["27"] and "2 fields" in skipped["28"]
  assert dataset.sizes()["train"] == 5
  assert "skipped: 8" in dataset.summary()


def test_fer2013_without_usage_column_is_train_only(tmp_path):
  lines = ["emotion,pixels"] + [f"{e},{pixels(e)}" for e in (3, 4, 5, 6) * 5]
  (tmp_path / "train.csv").write_text("\n".join(lines) + "\n")
  cfg = config(tmp_path / "train.csv", tmp_path / "cache")
  assert set(data.load(cfg, as_found=True).splits) == {"train"}
  with pytest.raises(ValueError, match="no test images.*train.csv"):
    data.load(cfg)


def test_fer2013_missing_column_names_the_file(tmp_path):
  (tmp_path / "fer2013.csv").write_text("label,image\n1,2\n")
  with pytest.raises(ValueError, match="fer2013.csv has no column emotion, pixels"):
    data.load(config(tmp_path / "fer2013.csv", tmp_path / "cache"))


def votes(
  neutral=0,
  happiness=0,
  surprise=0,
  sadness=0,
  anger=0,
  disgust=0,
  fear=0,
  contempt=0,
  unknown=0,
  nf=0,
):
  return dict(
    neutral=neutral,
    happiness=happiness,
    surprise=surprise,
    sadness=sadness,
    anger=anger,
    disgust=disgust,
    fear=fear,
    contempt=contempt,
    unknown=unknown,
    nf=nf,
  )


FER4 = common.FER4


@pytest.mark.parametrize(
  "row, options, expected",
  [
    (votes(happiness=7, neutral=3), {}, (0, None)),
    (votes(sadness=5, neutral=5), {}, (None, "tied vote")),
    (votes(sadness=5, neutral=5), {"ties": "first"}, (1, None)),  # neutral before sad in FER4
    (votes(anger=5, contempt=5), {"ties": "first"}, (None, "tied vote, no class in config")),
    (votes(anger=6, sadness=4), {}, (None, "class anger not in config")),
    (votes(unknown=6, surprise=4), {}, (None, "unknown or not-a-face wins")),
    (votes(nf=6, surprise=4), {"unknown": "ignore"}, (3, None)),
    (votes(happiness=3, neutral=2), {"min_votes": 4}, (None, "fewer than 4 votes")),
    (votes(), {}, (None, "no votes")),
  ],
)
def test_ferplus_label(row, options, expected):
  assert fer2013.ferplus_label(row, FER4, **options) == expected


def test_ferplus_label_rejects_unknown_options():
  with pytest.raises(ValueError, match="config.data.ferplus_ties"):
    fer2013.ferplus_label(votes(happiness=1), FER4, ties="random")


def write_ferplus(folder):
  """fer2013.csv (21 rows) and fer2013new.csv with majorities, ties, unknown, removed rows."""
  write_fer2013(folder / "fer2013.csv")
  rows = []
  for usage in ("Training", "PublicTest", "PrivateTest"):
    rows += [
      (usage, "a.png", votes(happiness=8, neutral=2)),  # happy
      (usage, "b.png", votes(neutral=6, sadness=4)),  # neutral
      (usage, "c.png", votes(sadness=5, neutral=5)),  # tie sad/neutral
      (usage, "d.png", votes(surprise=9, fear=1)),  # surprise
      (usage, "e.png", votes(sadness=7, anger=3)),  # sad
      (usage, "f.png", votes(unknown=6, sadness=4)),  # unknown wins
      (usage, "", votes(happiness=10)),  # removed by FER+
    ]
  lines = [FERPLUS_HEADER] + [
    f"{u},{name}," + ",".join(str(v) for v in r.values()) for u, name, r in rows
  ]
  (folder / "fer2013new.csv").write_text("\n".join(lines) + "\n")


def test_ferplus_majority_vote(tmp_path):
  write_ferplus(tmp_path)
  cfg = config(tmp_path, tmp_path / "cache", source="ferplus")
  dataset = data.load(cfg)
  assert dataset.name.startswith("ferplus:")
  assert dataset.sizes() == {"train": 4, "val": 4, "test": 4}
  for split in data.SPLITS:
    assert [dataset.classes[i] for i in dataset.splits[split].labels] == [
      "happy",
      "neutral",
      "surprise",
      "sad",
    ]
  # The pixels are the fer2013.csv row's: rows 0, 1, 3, 4 of each split (emotion 0, 1, 3, 4).
  assert [int(v) for v in dataset.splits["val"].images[:, 0, 0, 0]] == [1, 11, 31, 41]
  assert dataset.report["dropped"] == {
    "tied vote": 3,
    "unknown or not-a-face wins": 3,
    "removed by FER+ (no image name)": 3,
  }
  cfg.ferplus_ties = "first"
  with_ties = data.load(cfg)
  assert not with_ties.report["cache"]["hit"]  # a FER+ option is part of the cache key
  assert with_ties.sizes()["train"] == 5
  assert dataset.classes[with_ties.splits["train"].labels[2]] == "neutral"
  # Pointing the root at fer2013new.csv selects FER+ by itself.
  assert data.load(config(tmp_path / "fer2013new.csv", tmp_path / "cache")).name.startswith(
    "ferplus:"
  )


def test_ferplus_row_count_mismatch_and_malformed_votes(tmp_path):
  write_ferplus(tmp_path)
  new = tmp_path / "fer2013new.csv"
  lines = new.read_text().splitlines()
  lines[2] = lines[2].replace("b.png,6,", "b.png,six,")  # line 3: votes that are not numbers
  new.write_text("\n".join(lines) + "\n")
  dataset = data.load(config(tmp_path, tmp_path / "cache", source="ferplus"), as_found=True)
  assert [(w.rsplit(":", 1)[1], r) for w, r in dataset.report["skipped"]] == [
    ("3", "malformed row (vote counts are not integers)")
  ]
  assert dataset.sizes()["train"] == 3
  new.write_text("\n".join(lines[:-1]) + "\n")
  with pytest.raises(ValueError, match="FER\\+ labels must match FER2013 row by row"):
    data.load(config(tmp_path, tmp_path / "cache", source="ferplus"))
  (tmp_path / "fer2013new.csv").unlink()
  with pytest.raises(FileNotFoundError, match="FER\\+ needs fer2013new.csv"):
    data.load(config(tmp_path, tmp_path / "cache", source="ferplus"))


def test_a_csv_saved_with_a_byte_order_mark_reads_as_without(tmp_path):
  path = write_fer2013(tmp_path / "fer2013.csv")
  path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes())  # a spreadsheet's "CSV UTF-8"
  assert data.load(config(path, tmp_path / "cache")).sizes() == {"train": 4, "val": 4, "test": 4}


def write_ferplus_numbered(folder):
  """FER+ as its authors wrote it: one fer<N>.png per row, N counting up; the lines of the file."""
  write_fer2013(folder / "fer2013.csv")
  lines = [FERPLUS_HEADER]
  for n, usage in enumerate(["Training"] * 7 + ["PublicTest"] * 7 + ["PrivateTest"] * 7):
    winner = ("happiness", "neutral", "sadness", "surprise")[n % 4]
    lines.append(f"{usage},fer{n:07d}.png," + ",".join(map(str, votes(**{winner: 10}).values())))
  (folder / "fer2013new.csv").write_text("\n".join(lines) + "\n")
  return lines


@pytest.mark.parametrize(
  "change, message",
  [
    ("usage", "fer2013new.csv:8: Usage 'PublicTest', but {pixels}:8 is 'Training'"),
    ("order", "fer2013new.csv:4: image name 'fer0000001.png' does not come after line 3's"),
  ],
)
def test_ferplus_votes_that_do_not_follow_the_pixels_are_refused(tmp_path, change, message):
  lines = write_ferplus_numbered(tmp_path)
  cfg = config(tmp_path, tmp_path / "cache", source="ferplus")
  assert data.load(cfg).sizes() == {"train": 7, "val": 7, "test": 7}  # aligned: accepted
  if change == "usage":  # the last Training row marked PublicTest: the file is not aligned
    lines[7] = lines[7].replace("Training", "PublicTest")
  else:  # two rows swapped
    lines[2:4] = [lines[3], lines[2]]
  (tmp_path / "fer2013new.csv").write_text("\n".join(lines) + "\n")
  with pytest.raises(ValueError) as error:
    data.load(cfg)
  assert message.format(pixels=tmp_path / "fer2013.csv") in str(error.value)
  assert "FER+ votes must follow fer2013.csv row by row" in str(error.value)
