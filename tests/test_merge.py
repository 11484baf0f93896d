"""data_tools.merge: AffectNet folders and annotations -> 48x48 gray, mapped, deduped, balanced."""

import collections
import csv
import json
import os

import numpy as np
import pytest
from image_trees import (
  CLASSES,
  all_files,
  face_like,
  read_manifest,
  save,
  tree_digest,
  write_originals,
)
from PIL import Image

from data_tools import affectnet, merge

TRAIN = {"happy": 16, "neutral": 16, "sad": 16, "surprise": 6}


def colour(gray, rng):
  """A gray face as an RGB image with a random tint (AffectNet is colour)."""
  tint = rng.uniform(0.7, 1.2, 3)
  return np.clip(gray[..., None] * tint, 0, 255).astype(np.uint8)


def affectnet_image(rng, size=128, box=None):
  """A colour image; with a box (x, y, w, h), the face fills the box and the rest is noise."""
  if box is None:
    return colour(face_like(rng, size), rng)
  image = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
  x, y, w, h = box
  image[y : y + h, x : x + w] = colour(
    np.asarray(Image.fromarray(face_like(rng, 96)).resize((w, h))), rng
  )
  return image


def expected_conversion(path, box=None):
  """What the dataset's loader would make of the face: gray, 48x48, bilinear."""
  im = Image.open(path)
  if box is not None:
    x, y, w, h = box
    im = im.crop((x, y, x + w, y + h))
  return np.asarray(im.convert("L").resize((48, 48), Image.Resampling.BILINEAR))


def make_target(root):
  counts = {"train": TRAIN, "val": {c: 2 for c in CLASSES}, "test": {c: 2 for c in CLASSES}}
  return write_originals(root, counts, seed=5)


def test_additions_reach_the_share():
  add = merge.additions([40, 30, 20, 10], 0.25)
  grown = np.array([40, 30, 20, 10]) + add
  assert list(add) == [0, 10, 20, 30] and np.allclose(grown / grown.sum(), 0.25)
  assert list(merge.additions([50, 50, 50, 20], 0.25)) == [0, 0, 0, 30]
  assert list(merge.additions([25, 25, 25, 25], 0.25)) == [0, 0, 0, 0]
  with pytest.raises(Exception, match="--share"):
    merge.additions([10] * 7, 0.25)


def test_crop_box_clips_to_the_image():
  assert affectnet.crop_box((100, 80), (-5, 10, 50, 200)) == (0, 10, 45, 80)
  assert affectnet.crop_box((100, 80), (150, 10, 20, 20)) is None


def test_merge_class_folders(tmp_path, capsys):
  src, affectnet, dst = tmp_path / "src", tmp_path / "affectnet", tmp_path / "dst"
  target = make_target(str(src))
  rng = np.random.default_rng(7)
  made = collections.defaultdict(list)
  for folder, n in (("surprise", 16), ("3", 4), ("contempt", 3), ("Anger", 3), ("happy", 3)):
    for k in range(
      n
    ):  # '3' is AffectNet's id of surprise; class folders may sit under split folders
      made[folder].append(
        save(
          str(affectnet / "train_set" / folder / f"{folder}{k:02d}.jpg"),
          affectnet_image(rng, size=96 + 8 * (k % 4)),
          quality=95,
        )
      )
  # a resized colour copy of a target surprise image must not be added
  copy = np.asarray(Image.open(target["train", "surprise"][0]).convert("RGB").resize((160, 160)))
  twin = save(str(affectnet / "train_set" / "surprise" / "zz_twin.png"), copy)
  (affectnet / "README.txt").write_text("not an image")
  before = (tree_digest(src), tree_digest(affectnet))

  argv = [str(src), "--affectnet", str(affectnet), "--out", str(dst), "--workers", "1", "--apply"]
  assert merge.main(argv) == 0
  out = capsys.readouterr().out
  assert "before (images per class and split):" in out and "after:" in out
  manifest = read_manifest(str(dst))
  assert sorted(manifest) == sorted(all_files(str(src)) + all_files(str(affectnet)))
  assert (tree_digest(src), tree_digest(affectnet)) == before
  added = [r for r in manifest.values() if r["action"] == "added"]
  assert {r["class"] for r in added} == {"surprise"}
  split_counts = collections.Counter(r["split"] for r in added)
  assert split_counts == {"train": 10, "val": 1, "test": 1}  # train 6 + 10 = 16 = 25 % of 64
  assert manifest[twin]["action"] == "dropped" and "near-duplicate" in manifest[twin]["reason"]
  for folder in ("contempt", "Anger"):
    assert all("is not in --classes" in manifest[p]["reason"] for p in made[folder])
  assert all("already >= 25.0% of train" in manifest[p]["reason"] for p in made["happy"])
  assert "not read" in manifest[str(affectnet / "README.txt")]["reason"]
  for r in added:
    path = dst / r["new_path"]
    assert os.path.basename(path).startswith("affectnet_train_set_") and path.suffix == ".png"
    with Image.open(path) as im:
      assert im.mode == "L" and im.size == (48, 48)
      assert np.abs(np.asarray(im).astype(int) - expected_conversion(r["source_path"])).max() <= 1
  train = collections.Counter(
    r["class"]
    for r in manifest.values()
    if r["split"] == "train" and r["action"] in ("kept", "added")
  )
  assert train["surprise"] / sum(train.values()) == pytest.approx(0.25)
  # idempotent: converted files are byte-identical on a re-run
  snapshot = tree_digest(dst)
  assert merge.main(argv) == 0 and tree_digest(dst) == snapshot


def test_merge_annotations_crop_faces_and_map_labels(tmp_path, capsys):
  src, affectnet, dst = tmp_path / "src", tmp_path / "affectnet", tmp_path / "dst"
  make_target(str(src))
  rng = np.random.default_rng(3)
  rows, boxes = [], {}
  for k, expression in enumerate([3] * 14 + [6] * 3 + [9, 10]):
    box = (int(rng.integers(5, 40)), int(rng.integers(5, 40)), 64 + k, 70)
    rel = f"{k % 3}/img{k:02d}.png"
    save(str(affectnet / rel), affectnet_image(rng, size=140, box=box))
    boxes[str(affectnet / rel)] = box
    rows.append(
      {
        "subDirectory_filePath": rel,
        "face_x": box[0],
        "face_y": box[1],
        "face_width": box[2],
        "face_height": box[3],
        "facial_landmarks": "",
        "expression": expression,
        "valence": 0.1,
        "arousal": 0.2,
      }
    )
  save(str(affectnet / "9" / "unlisted.png"), affectnet_image(rng))
  annotations = tmp_path / "training.csv"
  with open(annotations, "w", newline="") as f:
    writer = csv.DictWriter(f, list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
  classes = "happy,neutral,sad,surprise,angry"
  assert (
    merge.main(
      [
        str(src),
        "--affectnet",
        str(affectnet),
        "--annotations",
        str(annotations),
        "--classes",
        classes,
        "--share",
        "0.2",
        "--out",
        str(dst),
        "--workers",
        "1",
        "--apply",
      ]
    )
    == 0
  )
  manifest = read_manifest(str(dst))
  added = [r for r in manifest.values() if r["action"] == "added"]
  # angry (AffectNet 'anger', id 6) has no target images: all 3 go in, short of the 20 % share;
  # surprise is raised to 16 = 20 % of the planned 80 train images (+ 1 val, 1 test)
  assert collections.Counter(r["class"] for r in added) == {"surprise": 12, "angry": 3}
  assert "short: angry: 3 of 20 wanted" in capsys.readouterr().out
  for r in added:
    with Image.open(dst / r["new_path"]) as im:
      got = np.asarray(im).astype(int)
    assert np.abs(got - expected_conversion(r["source_path"], boxes[r["source_path"]])).max() <= 1
  reasons = collections.Counter(
    r["reason"].split(" (")[0] for r in manifest.values() if r["action"] == "dropped"
  )
  assert reasons["AffectNet expression 9"] == 1 and reasons["AffectNet expression 10"] == 1
  assert (
    manifest[str(affectnet / "9" / "unlisted.png")]["reason"] == "not read: not in the annotations"
  )


def test_merge_refuses_output_inside_affectnet(tmp_path, capsys):
  src, affectnet = tmp_path / "src", tmp_path / "affectnet"
  make_target(str(src))
  save(str(affectnet / "surprise" / "a.png"), affectnet_image(np.random.default_rng(0)))
  assert merge.main([str(src), "--affectnet", str(affectnet), "--out", str(affectnet / "out")]) == 2
  assert "overlaps --affectnet" in capsys.readouterr().err


def write_annotations(path, rows):
  """An annotation CSV of (subDirectory_filePath, expression) rows."""
  with open(path, "w", newline="") as f:
    writer = csv.writer(f)
    writer.writerow(["subDirectory_filePath", "expression"])
    writer.writerows(rows)
  return path


def test_annotations_that_disagree_are_reported_and_the_file_left_out(tmp_path, capsys):
  src, affectnet, dst = tmp_path / "src", tmp_path / "affectnet", tmp_path / "dst"
  make_target(str(src))
  rng = np.random.default_rng(4)
  for k in range(4):
    save(str(affectnet / "1" / f"{k}.png"), affectnet_image(rng))
  os.mkfifo(affectnet / "1" / "pipe.png")  # listed: never opened
  first = write_annotations(
    tmp_path / "a.csv", [(f"1/{k}.png", 3) for k in range(4)] + [("1/pipe.png", 3)]
  )
  # 1.png: surprise in a.csv, happy here; 2.png: surprise in both (spelt another way): no conflict
  second = write_annotations(tmp_path / "b.csv", [("1/1.png", 1), ("1/../1/2.png", 3)])
  args = [str(src), "--affectnet", str(affectnet), "--out", str(dst), "--workers", "1"]
  assert merge.main([*args, "--annotations", str(first), "--annotations", str(second)]) == 0
  out = capsys.readouterr().out
  assert "warning: 1 files are labelled differently by the annotation CSVs" in out
  with open(dst / "conflicts.csv") as f:
    assert list(csv.DictReader(f)) == [
      {"file": "1/1.png", "annotations": f"{first} line 3", "expression": "3", "class": "surprise"},
      {"file": "1/1.png", "annotations": f"{second} line 2", "expression": "1", "class": "happy"},
    ]
  with open(dst / "plan.json") as f:
    entries = json.load(f)["entries"]
  paths = collections.Counter(e["source_path"] for e in entries)
  assert max(paths.values()) == 1  # each file once, however the rows spell its path
  assert sorted(p for p in paths if p.startswith(str(affectnet))) == [
    str(affectnet / "1" / name) for name in ("0.png", "1.png", "2.png", "3.png", "pipe.png")
  ]
  conflict = next(e for e in entries if e["source_path"] == str(affectnet / "1" / "1.png"))
  assert conflict["action"] == "dropped"
  assert conflict["reason"].startswith("label conflict in the annotations")
  pipe = next(e for e in entries if e["source_path"] == str(affectnet / "1" / "pipe.png"))
  assert pipe["reason"] == "not read: not a regular file (named pipe)"


@pytest.mark.parametrize("name", ["../outside.png", "1/../../outside.png", "ABSOLUTE"])
def test_annotation_paths_outside_the_affectnet_folder_are_refused(tmp_path, capsys, name):
  src, affectnet = tmp_path / "src", tmp_path / "affectnet"
  make_target(str(src))
  rng = np.random.default_rng(5)
  save(str(affectnet / "1" / "0.png"), affectnet_image(rng))
  save(str(tmp_path / "outside.png"), affectnet_image(rng))
  name = str(tmp_path / "outside.png") if name == "ABSOLUTE" else name
  annotations = write_annotations(tmp_path / "a.csv", [("1/0.png", 3), (name, 3)])
  args = [str(src), "--affectnet", str(affectnet), "--out", str(tmp_path / "dst")]
  assert merge.main([*args, "--annotations", str(annotations)]) == 2
  err = capsys.readouterr().err
  assert err == (
    f"error: --annotations {annotations} line 3: subDirectory_filePath {name!r} lies outside "
    f"--affectnet {affectnet}; annotation paths are relative to the AffectNet folder\n"
  )
  assert not (tmp_path / "dst").exists()


def test_affectnet_class_folders_linked_to_each_other_are_read_once_each(tmp_path):
  src, affectnet, dst = tmp_path / "src", tmp_path / "affectnet", tmp_path / "dst"
  make_target(str(src))
  rng = np.random.default_rng(8)
  for folder in ("surprise", "sad"):
    for k in range(3):
      save(str(affectnet / folder / f"{k}.png"), affectnet_image(rng))
  os.symlink("../sad", affectnet / "surprise" / "to_sad")
  os.symlink("../surprise", affectnet / "sad" / "to_surprise")
  os.mkfifo(affectnet / "surprise" / "pipe.png")
  args = [str(src), "--affectnet", str(affectnet), "--out", str(dst), "--workers", "1"]
  assert merge.main(args) == 0
  with open(dst / "plan.json") as f:
    entries = [e for e in json.load(f)["entries"] if e["source_path"].startswith(str(affectnet))]
  assert len(entries) == 9  # 6 images, 2 links, 1 pipe
  added = {
    os.path.basename(os.path.dirname(e["source_path"])) for e in entries if e["action"] == "added"
  }
  assert added == {"surprise"}  # the sad faces never came in as surprise through the link
  reasons = {os.path.basename(e["source_path"]): e["reason"] for e in entries}
  assert reasons["pipe.png"] == "not read: not a regular file (named pipe)"
  assert reasons["to_sad"].startswith("not read: symlink to a file or folder scanned elsewhere")
