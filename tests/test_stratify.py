"""data_tools.stratify: stratified, group-aware, deterministic re-split."""

import collections
import json
import os

import numpy as np
import pytest
from image_trees import (
  CLASSES,
  all_files,
  link_class_folders,
  plant_copy,
  read_manifest,
  tree_digest,
  write_originals,
)

from data_tools import common, stratify, writing


def test_target_counts_sum_and_round():
  assert list(stratify.target_counts(10, (0.8, 0.1, 0.1))) == [8, 1, 1]
  assert list(stratify.target_counts(7, (0.8, 0.1, 0.1))) == [5, 1, 1]  # largest remainders
  assert stratify.target_counts(123, (0.5, 0.25, 0.25)).sum() == 123


def test_assign_parts_is_stratified_group_aware_and_seeded():
  rng = np.random.default_rng(0)
  labels = np.repeat(np.arange(3), [100, 60, 40])
  groups = np.arange(len(labels))
  groups[10:14] = 10  # a group of four in class 0
  groups[150:152] = 150  # a group of two in class 1
  parts = stratify.assign_parts(labels, groups, (0.8, 0.1, 0.1), seed=1)
  for c, n in zip(range(3), (100, 60, 40)):
    counts = np.bincount(parts[labels == c], minlength=3)
    assert np.abs(counts - np.array([0.8, 0.1, 0.1]) * n).max() <= 4, counts
  assert len(set(parts[10:14])) == 1 and len(set(parts[150:152])) == 1
  assert np.array_equal(parts, stratify.assign_parts(labels, groups, (0.8, 0.1, 0.1), seed=1))
  assert not np.array_equal(parts, stratify.assign_parts(labels, groups, (0.8, 0.1, 0.1), seed=2))
  shuffled = rng.permutation(len(labels))  # no groups: exact counts
  exact = stratify.assign_parts(labels[shuffled], np.arange(len(labels)), (0.8, 0.1, 0.1), seed=0)
  assert [list(np.bincount(exact[labels[shuffled] == c], minlength=3)) for c in range(3)] == [
    [80, 10, 10],
    [48, 6, 6],
    [32, 4, 4],
  ]


def test_parse_ratios():
  assert stratify.parse_ratios("8,1,1") == pytest.approx((0.8, 0.1, 0.1))
  with pytest.raises(Exception, match="--ratios"):
    stratify.parse_ratios("0.8,0.2")


def test_result_table_shows_an_unsplit_tree_as_its_own_column():
  entry = lambda split, c, action="kept": common.Entry(  # noqa: E731
    source_path=f"/src/{c}.png",
    source_split=split,
    source_class=c,
    split=split,
    class_name=c,
    action=action,
  )
  lines = common.split_class_table(
    [entry("", "happy"), entry("", "sad"), entry("", "sad"), entry("", "sad", "dropped")],
    ("happy", "sad"),
    "result:",
  )
  assert lines[1].split() == ["class", "unsplit"]
  assert lines[2].split() == ["happy", "1", "(33.3%)"] and lines[3].split() == [
    "sad",
    "2",
    "(66.7%)",
  ]
  assert lines[4].split() == ["total", "3"]


@pytest.mark.parametrize("layout", ["split", "flat"])
def test_stratify_tree_keeps_duplicates_together(tmp_path, capsys, layout):
  src, dst = tmp_path / "src", tmp_path / "dst"
  counts = {
    "train": {c: 14 for c in CLASSES},
    "val": {c: 3 for c in CLASSES},
    "test": {c: 3 for c in CLASSES},
  }
  paths = write_originals(str(src), counts)
  twins = [
    plant_copy(str(src), paths["train", "sad"][k], "test", "sad", "recompressed", f"t{k}")
    for k in range(3)
  ]
  if layout == "flat":  # <root>/<class>/<file>: move the split folders' content up
    for (_, c), ps in list(paths.items()):
      for p in ps:
        os.renames(p, os.path.join(src, c, os.path.basename(p)))
    for p in twins:
      os.renames(p, os.path.join(src, "sad", os.path.basename(p)))
  before = tree_digest(src)
  argv = [str(src), "--out", str(dst), "--workers", "1", "--seed", "3", "--apply"]
  assert stratify.main(argv) == 0
  out = capsys.readouterr().out
  assert "achieved ratios per class (target 80% / 10% / 10%)" in out
  manifest = read_manifest(str(dst))
  assert sorted(manifest) == all_files(str(src)) and tree_digest(src) == before
  per_class = collections.Counter((r["class"], r["split"]) for r in manifest.values())
  for c in CLASSES:
    n = sum(per_class[c, s] for s in ("train", "val", "test"))
    assert abs(per_class[c, "train"] - 0.8 * n) <= 2
    assert per_class[c, "val"] >= 1 and per_class[c, "test"] >= 1
  groups = collections.defaultdict(set)
  for r in manifest.values():
    if r["group"]:
      groups[r["group"]].add(r["split"])
  assert len(groups) == 3 and all(len(s) == 1 for s in groups.values())
  assert all(os.path.exists(dst / r["new_path"]) for r in manifest.values())
  # the same seed gives the same tree
  snapshot = tree_digest(dst)
  assert stratify.main(argv) == 0 and tree_digest(dst) == snapshot


def test_an_interrupted_apply_is_finished_by_the_same_command(tmp_path, monkeypatch):
  src = tmp_path / "src"
  write_originals(str(src), {"train": {c: 6 for c in CLASSES}})
  argv = [str(src), "--workers", "1", "--apply", "--no_groups"]
  assert stratify.main(argv + ["--out", str(tmp_path / "whole")]) == 0

  place, calls = writing._Writer.place, []

  def place_then_die(self, entry, path):  # the process dies while writing the 6th file
    calls.append(path)
    if len(calls) == 6:
      os.makedirs(os.path.dirname(path), exist_ok=True)
      with open(path + ".data_tools.tmp", "wb") as f:
        f.write(b"half")
      raise KeyboardInterrupt
    place(self, entry, path)

  cut = tmp_path / "cut"
  monkeypatch.setattr(writing._Writer, "place", place_then_die)
  with pytest.raises(KeyboardInterrupt):
    stratify.main(argv + ["--out", str(cut)])
  assert not (cut / "manifest.csv").exists()
  monkeypatch.setattr(writing._Writer, "place", place)
  assert stratify.main(argv + ["--out", str(cut)]) == 0  # no --overwrite needed
  tree = lambda root: sorted(os.path.relpath(p, root) for p in all_files(str(root)))  # noqa: E731
  assert tree(cut) == tree(tmp_path / "whole")
  assert read_manifest(str(cut)).keys() == read_manifest(str(tmp_path / "whole")).keys()


def test_class_folders_linked_to_each_other_are_read_once_each(tmp_path, capsys):
  """The issue's tree: 56 images and `train/happy/to_sad -> ../sad`, `train/sad/to_happy ->
  ../happy`; the plan once held 856 files, sad faces labelled happy."""
  src, dst = tmp_path / "src", tmp_path / "dst"
  counts = {"train": {c: 10 for c in CLASSES}, "val": {c: 2 for c in CLASSES}, "test": {"sad": 8}}
  paths = write_originals(str(src), counts)
  links = link_class_folders(str(src))
  assert stratify.main([str(src), "--out", str(dst), "--workers", "1", "--no_groups"]) == 0
  assert "== stratify: 58 input files, " in capsys.readouterr().out
  with open(dst / "plan.json") as f:
    entries = {e["source_path"]: e for e in json.load(f)["entries"]}
  assert sorted(entries) == sorted([*links, *(p for ps in paths.values() for p in ps)])
  for (_, c), ps in paths.items():
    assert all(entries[p]["class"] == c for p in ps)
  assert [entries[link]["action"] for link in links] == ["dropped", "dropped"]


def test_a_negative_seed_is_refused_in_one_line(tmp_path, capsys):
  write_originals(str(tmp_path / "src"), {"train": {c: 2 for c in CLASSES}})
  with pytest.raises(SystemExit) as exit_:
    stratify.main([str(tmp_path / "src"), "--out", str(tmp_path / "dst"), "--seed", "-5"])
  assert exit_.value.code == 2
  err = capsys.readouterr().err
  assert err.splitlines()[-1].endswith(
    "error: argument --seed: must be a whole number >= 0, got '-5'"
  )
  assert "Traceback" not in err and not (tmp_path / "dst").exists()
