"""data_tools.dedup, .hashing, .verify: the pair search against brute force, and the tool."""

import collections
import csv
import io
import json
import os

import numpy as np
import pytest
from image_trees import (
  CLASSES,
  TRANSFORMS,
  all_files,
  face_like,
  link_class_folders,
  plant_copy,
  read_manifest,
  save,
  shifted,
  tree_digest,
  upsample,
  write_originals,
)
from PIL import Image, ImageDraw

from data_tools import common, dedup, hashing, verify
from fer_jax.data.progress import Progress


def brute_force(a, t, b=None):
  other = a if b is None else b
  d = np.bitwise_count(a[:, None] ^ other[None, :])
  mask = d <= t
  if b is None:
    mask = np.triu(mask, 1)
  return set(zip(*(x.tolist() for x in np.nonzero(mask))))


@pytest.mark.parametrize("threshold", [0, 3, 6, 10])
def test_near_pairs_equals_brute_force(threshold):
  rng = np.random.default_rng(threshold)
  base = rng.integers(0, 2**64, 300, dtype=np.uint64, endpoint=False)
  copies = base[:150].copy()
  for k in range(150):  # copies 0..threshold+2 bits away: some within, some just beyond
    for bit in rng.choice(64, rng.integers(0, threshold + 3), replace=False):
      copies[k] ^= np.uint64(1) << np.uint64(bit)
  codes = np.concatenate([base, copies, base[:5]])  # plus exact repeats
  i, j, d = hashing.near_pairs(codes, threshold)
  assert set(zip(i.tolist(), j.tolist())) == brute_force(codes, threshold)
  assert np.all(i < j) and np.array_equal(d, np.bitwise_count(codes[i] ^ codes[j]))
  other = rng.permutation(codes)
  ci, cj, _ = hashing.near_pairs(codes, threshold, other)
  assert set(zip(ci.tolist(), cj.tolist())) == brute_force(codes, threshold, other)


def test_every_transform_is_matched_and_distinct_images_are_not():
  rng = np.random.default_rng(1)
  originals = np.stack([face_like(rng) for _ in range(40)])
  settings = hashing.default_settings()
  assert verify.find_groups(originals, settings)[1] == []
  for name, (fn, _, _) in TRANSFORMS.items():
    copies = np.stack(
      [
        np.asarray(Image.fromarray(fn(a)).resize((48, 48), Image.Resampling.BILINEAR))
        for a in originals
      ]
    )
    _, groups = verify.find_groups(np.concatenate([originals, copies]), settings)
    assert sorted(groups) == [[k, k + 40] for k in range(40)], name


def test_similarity_finds_shifted_zoomed_and_mirrored_copies_but_not_other_images():
  rng = np.random.default_rng(2)
  a = np.stack([face_like(rng) for _ in range(6)])
  settings = hashing.default_settings()
  copies = {
    "shifted 3 px": np.stack([shifted(x, 3, -2) for x in a]),
    "zoomed": np.stack([hashing._zoom(x, 1.08) for x in a]),
    "zoomed between the hash's scales": np.stack([hashing._zoom(x, 1.04) for x in a]),
    "mirrored": a[:, :, ::-1],
    "darker, less contrast": (a * 0.6 + 10).astype(np.uint8),
  }
  k = np.arange(6)
  for name, b in copies.items():
    sim = verify.similarity(np.concatenate([a, b]), k, k + 6, settings)
    assert np.all(sim >= settings.min_similarity), (name, sim)
  others = verify.similarity(a, k, (k + 1) % 6, settings)
  assert np.all(others < settings.min_similarity - 0.1), others
  settings.mirror = False
  assert np.all(
    verify.similarity(np.concatenate([a, copies["mirrored"]]), k, k + 6, settings)
    < settings.min_similarity
  )


def test_similarity_passes_a_watermarked_copy_and_rejects_another_face_in_the_same_pose():
  """FER2013's two failures of a correlation of blurred pixels: different people in one frontal
  pose and light (the shared shading correlates: 0.94-0.96 here) and a copy under a stock-photo
  watermark (0.83-0.92). Fine detail decides both."""
  rng = np.random.default_rng(3)
  y, x = np.mgrid[0:48, 0:48]
  a, b = [], []
  for _ in range(6):
    cy, cx = rng.uniform(18, 30, 2)
    ry, rx = rng.uniform(10, 18, 2)
    shading = 80 + 60 * (((y - cy) / ry) ** 2 + ((x - cx) / rx) ** 2 < 1)
    shading = shading + upsample(rng.normal(0, 25, (8, 8)), 48)
    for person in (a, b):  # the same pose and light, a face of their own
      detail = upsample(rng.normal(0, 15, (24, 24)), 48)
      person.append(np.clip(shading + detail, 0, 255).astype(np.uint8))
  a, b = np.stack(a), np.stack(b)

  def watermarked(image):
    marked = Image.fromarray(image)
    ImageDraw.Draw(marked).text((6, 32), "stock", fill=255)
    return np.asarray(marked)

  settings = hashing.default_settings()
  k = np.arange(6)
  same_pose = verify.similarity(np.concatenate([a, b]), k, k + 6, settings)
  assert np.all(same_pose < settings.min_similarity), same_pose
  marks = np.stack([watermarked(image) for image in a])
  assert np.all(verify.similarity(np.concatenate([a, marks]), k, k + 6, settings) >= 0.98)


def test_a_trial_on_one_translation_reuses_the_pass_on_the_other_and_scores_as_a_full_warp():
  """The refinement's shortcut (verify._Warps): a trial that moves only ty (or tx) is scored from
  the held pass along the other axis; it must score exactly what warping b afresh scores."""
  rng = np.random.default_rng(5)
  b = rng.normal(size=(5, 48, 48)).astype(np.float32)
  margin = 8
  centre = verify._standardised(rng.normal(size=(5, 32 * 32)).astype(np.float32))
  warps = verify._Warps(b, centre, margin)
  held = np.stack([rng.uniform(0.9, 1.1, 5), rng.uniform(-3, 3, 5), rng.uniform(-3, 3, 5)], 1)
  held = held.astype(np.float32)
  for axis in (1, 2):
    warps.hold(held, axis)
    trial = held.copy()
    trial[:, axis] += rng.uniform(-0.7, 0.7, 5)
    full = (centre * verify._standardised(warps.warped(trial))).sum(1)
    np.testing.assert_allclose(warps.score(trial, axis), full, atol=1e-5)
    np.testing.assert_allclose(warps.score(trial), full, atol=1e-5)
  # and the full warp is the separable zoom + translation: a whole-pixel shift moves the pixels
  shifted = warps.warped(np.array([[1.0, 2.0, -1.0]] * 5, np.float32)).reshape(5, 32, 32)
  np.testing.assert_allclose(shifted, b[:, margin + 2 : 40 + 2, margin - 1 : 40 - 1], atol=1e-5)


def test_verification_reports_progress_chunk_by_chunk(monkeypatch):
  """FER2013 at --threshold 10: 70,601 pairs, minutes of verification on 2 cores (274 s before
  the refinement reused its passes, ~2 minutes after)."""
  monkeypatch.setattr(verify, "VERIFY_CHUNK", 2)
  rng = np.random.default_rng(4)
  images = np.stack([face_like(rng) for _ in range(6)])
  log = io.StringIO()
  progress = Progress("verifying", 5, stream=log)
  verify.similarity(
    images, np.arange(5), np.arange(5) + 1, hashing.default_settings(), None, progress
  )
  assert log.getvalue().splitlines() == ["verifying: 2/5", "verifying: 4/5"]
  assert progress.done == 5


def test_second_hop_proposes_the_pairs_linked_through_a_common_twin():
  # 0-1 and 1-2 linked, 2-3 distinct, 4-5 linked: only 0-2 is new (1-3 and 3-x are not linked)
  pairs = verify.Pairs(
    np.array([0, 1, 2, 4]),
    np.array([1, 2, 3, 5]),
    np.zeros(4, int),
    np.full(4, "near", object),
    np.array([0.95, 0.95, 0.5, 0.99], np.float32),
    np.array(["near", "near", "distinct", "exact"], object),
  )
  i, j = verify.second_hop(pairs, 6)
  assert list(zip(i.tolist(), j.tolist())) == [(0, 2)]
  pairs.verdict[2] = "near"  # 2-3 linked as well: 1-3 joins, through 2
  assert sorted(zip(*(x.tolist() for x in verify.second_hop(pairs, 6)))) == [(0, 2), (1, 3)]


def records_for(splits, sizes, classes=None):
  """Minimal stand-ins for file_tree.FileRecord: what `decide` reads."""
  Record = collections.namedtuple("Record", "path split class_name size")
  classes = classes or ["happy"] * len(splits)
  return [
    Record(f"/{s}/{c}/{k}.png", s, c, size)
    for k, (s, c, size) in enumerate(zip(splits, classes, sizes))
  ]


def chain(similarities, verdicts):
  """Pairs A-B, B-C, A-C (images 0, 1, 2) with the given similarities and verdicts."""
  n = len(verdicts)
  return verify.Pairs(
    np.array([0, 1, 0][:n]),
    np.array([1, 2, 2][:n]),
    np.full(n, 5),
    np.full(n, "near", object),
    np.array(similarities, np.float32),
    np.array(verdicts, object),
  )


@pytest.mark.parametrize("largest", [0, 1, 2])
@pytest.mark.parametrize(
  "splits", [("train",) * 3, ("train", "val", "test"), ("test", "val", "train")]
)
def test_a_chain_never_drops_an_image_for_one_it_was_not_verified_against(largest, splits):
  """A-B and B-C verified, A-C failed verification (different faces): A and C are never dropped
  for each other, and every drop names a kept image linked to it directly."""
  args = dedup.build_parser().parse_args(["src", "--out", "dst"])
  records = records_for(splits, [2000 if k == largest else 1000 for k in range(3)])
  pairs = chain([0.95, 0.95, 0.5], ["near", "near", "distinct"])
  outcome, findings, _ = dedup.decide(records, pairs, args, ["happy"])
  linked = {(0, 1), (1, 0), (1, 2), (2, 1)}
  for m, (action, _, k) in outcome.items():
    if action == "dropped":
      twin = ({int(pairs.i[k]), int(pairs.j[k])} - {m}).pop()
      assert (m, twin) in linked and outcome[twin][0] == "kept", (m, outcome)
  if outcome[1][0] == "dropped":  # B went for A or C; the other end has no verified twin left
    assert outcome[0][0] == outcome[2][0] == "kept"
  else:
    assert [outcome[m][0] for m in (0, 2)] == ["dropped", "dropped"]  # both for B, directly
  assert not any("leak" in f and splits[m] == "train" for m, fs in findings.items() for f in fs)


def test_the_pairs_report_reads_the_verdicts_once_not_once_a_pair(monkeypatch):
  """FER2013 at --threshold 10 has 70,601 candidate pairs: reading `Pairs.linked` (a comparison
  over every verdict) once per row made writing duplicates.csv quadratic: 5 minutes there."""
  reads = []
  linked = verify.Pairs.linked.fget
  monkeypatch.setattr(verify.Pairs, "linked", property(lambda p: reads.append(1) or linked(p)))
  n = 50
  pairs = verify.Pairs(
    np.arange(n),
    np.arange(n) + n,
    np.full(n, 4),
    np.full(n, "near", object),
    np.linspace(0.8, 1.0, n, dtype=np.float32),
    np.array(["near", "distinct"] * (n // 2), object),
  )
  records = records_for(["train"] * 2 * n, [1000] * 2 * n)
  tree = common.Tree("/", "split", records, [])
  groups = verify.groups_of(2 * n, pairs)
  reads.clear()
  rows = dedup.pair_rows(pairs, records, groups, {}, tree)
  assert len(reads) == 1
  assert [r["group"] != "" for r in rows] == [v == "near" for v in pairs.verdict]
  assert rows[0]["file_a"] == "train/happy/0.png" and rows[0]["verdict"] == "near"


def test_translate_moves_the_image_and_fills_with_edges():
  a = np.arange(16, dtype=np.uint8).reshape(4, 4)
  moved = hashing._translate(a, 1, -1)
  assert np.array_equal(moved[1:, :-1], a[:-1, 1:])
  assert np.array_equal(moved[0, :-1], a[0, 1:]) and np.array_equal(moved[:, -1], moved[:, -2])


# ---------------------------------------------------------------------------- the tool


def make_dedup_tree(root):
  """Originals plus planted copies; returns {copy path: expected action}."""
  counts = {
    "train": {c: 6 for c in CLASSES},
    "val": {c: 2 for c in CLASSES},
    "test": {c: 2 for c in CLASSES},
  }
  paths = write_originals(root, counts)
  expected = {}
  for k, (transform, split) in enumerate(
    [
      ("resized", "val"),
      ("recompressed", "test"),
      ("shifted", "val"),
      ("brighter", "test"),
      ("flipped", "val"),
    ]
  ):
    c, first = CLASSES[k % 4], 2 * (k // 4)  # every copy has its own original
    leak = plant_copy(root, paths["train", c][first], split, c, transform, f"leak{k}")
    expected[leak] = ("dropped", "leak")
    within = plant_copy(root, paths["train", c][first + 1], "train", c, transform, f"within{k}")
    expected[within] = ("dropped", "within")  # or its original: the larger file is kept
  conflict = plant_copy(
    root, paths["train", "happy"][4], "train", "sad", "recompressed", "conflict"
  )
  expected[conflict] = ("kept", "conflict")
  return paths, expected


def run(tool, *argv):
  return tool.main([str(a) for a in argv])


def test_dedup_finds_and_resolves_leaks_copies_and_conflicts(tmp_path, capsys):
  src, dst = tmp_path / "src", tmp_path / "dst"
  paths, expected = make_dedup_tree(str(src))
  before = tree_digest(src)
  argv = [src, "--out", dst, "--workers", "1"]

  assert run(dedup, *argv) == 0  # dry run
  out = capsys.readouterr().out
  assert "cross-split leakage: 5 images" in out and "label conflicts: 1 pairs, happy/sad 1" in out
  assert not os.path.exists(dst / "train") and not os.path.exists(dst / "manifest.csv")
  plan = json.loads((dst / "plan.json").read_text())
  assert plan["applied"] is False and len(plan["entries"]) == len(all_files(src))

  assert run(dedup, *argv, "--apply") == 0
  manifest = read_manifest(dst)
  assert sorted(manifest) == all_files(src)  # every input file accounted for
  for path, (action, why) in expected.items():
    row = manifest[path]
    if why == "within":  # one of each within-split pair survives: the larger file
      twin = [r for p, r in manifest.items() if r["group"] == row["group"] and p != path][0]
      assert sorted([row["action"], twin["action"]]) == ["dropped", "kept"], path
      continue
    assert row["action"] == action, (path, row)
    assert row["group"].startswith("g")
  leak_rows = [manifest[p] for p, (_, why) in expected.items() if why == "leak"]
  assert all(r["reason"].startswith("leak:") and float(r["score"]) >= 0.92 for r in leak_rows)
  kinds = {r["reason"].split()[1] for r in leak_rows}
  assert "mirrored" in kinds
  # the originals with no copy in their own split all survive
  originals = [p for ps in paths.values() for p in ps if not manifest[p]["group"]]
  assert len(originals) == 40 - 11 and all(manifest[p]["action"] == "kept" for p in originals)
  assert sum(r["action"] == "dropped" for r in manifest.values()) == 5 + 5
  kept = [r for r in manifest.values() if r["action"] == "kept"]
  assert sorted(
    all_files(dst / "train") + all_files(dst / "val") + all_files(dst / "test")
  ) == sorted(str(dst / r["new_path"]) for r in kept)
  with open(dst / "conflicts.csv") as f:
    review = list(csv.DictReader(f))
  assert {(r["given_label"], r["suggested_label"]) for r in review} == {
    ("happy", "sad"),
    ("sad", "happy"),
  }
  assert all(os.path.exists(dst / r["file"]) for r in review)
  with open(dst / "duplicates.csv") as f:
    pairs = list(csv.DictReader(f))
  linked = [p for p in pairs if p["verdict"] != "distinct"]
  assert sum({p["split_a"], p["split_b"]} == {"train", "val"} for p in linked) == 3
  assert sum({p["split_a"], p["split_b"]} == {"train", "test"} for p in linked) == 2
  assert all(float(p["similarity"]) >= 0.92 and int(p["hash_distance"]) <= 6 for p in linked)
  assert sum(p["outcome"].endswith("dropped") for p in pairs) == 10  # each drop names its pair
  assert (dst / "pairs.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
  assert tree_digest(src) == before  # the source is untouched

  # idempotent: the same run again changes nothing
  snapshot = tree_digest(dst)
  assert run(dedup, *argv, "--apply") == 0
  assert "0 files to write" in capsys.readouterr().out
  assert tree_digest(dst) == snapshot


def test_dedup_policies_keep_and_drop(tmp_path):
  src = tmp_path / "src"
  make_dedup_tree(str(src))
  n = len(all_files(src))
  assert (
    run(
      dedup,
      src,
      "--out",
      tmp_path / "keep",
      "--leaks",
      "keep",
      "--within",
      "keep-all",
      "--conflicts",
      "keep",
      "--workers",
      "1",
      "--apply",
    )
    == 0
  )
  assert (
    len(all_files(tmp_path / "keep" / "train"))
    + len(all_files(tmp_path / "keep" / "val"))
    + len(all_files(tmp_path / "keep" / "test"))
    == n
  )
  assert (
    run(dedup, src, "--out", tmp_path / "drop", "--conflicts", "drop", "--workers", "1", "--apply")
    == 0
  )
  manifest = read_manifest(tmp_path / "drop")
  conflicted = [r for r in manifest.values() if "label conflict" in r["reason"]]
  assert len(conflicted) == 2 and all(r["action"] == "dropped" for r in conflicted)


def test_dedup_refuses_unsafe_outputs_and_foreign_content(tmp_path, capsys):
  src = tmp_path / "src"
  write_originals(str(src), {"train": {c: 2 for c in CLASSES}, "val": {c: 1 for c in CLASSES}})
  assert run(dedup, src, "--out", src / "clean", "--workers", "1") == 2
  assert "overlaps SRC" in capsys.readouterr().err
  assert run(dedup, src, "--out", src, "--workers", "1") == 2
  dst = tmp_path / "dst"
  assert run(dedup, src, "--out", dst, "--workers", "1", "--apply") == 0
  stray = dst / "train" / "happy" / "stray.png"
  save(str(stray), np.zeros((48, 48), np.uint8))
  assert run(dedup, src, "--out", dst, "--workers", "1", "--apply") == 2
  assert str(stray) in capsys.readouterr().err
  assert run(dedup, src, "--out", dst, "--workers", "1", "--apply", "--overwrite") == 0
  assert not stray.exists()
  other = tmp_path / "other"
  save(str(other / "notes" / "a.png"), np.zeros((4, 4), np.uint8))
  assert run(dedup, src, "--out", other, "--workers", "1") == 2
  assert "not written by the data tools" in capsys.readouterr().err


def test_dedup_reports_unreadable_and_unknown_files(tmp_path):
  src, dst = tmp_path / "src", tmp_path / "dst"
  write_originals(str(src), {"train": {c: 2 for c in CLASSES}, "val": {c: 1 for c in CLASSES}})
  (src / "train" / "happy" / "broken.png").write_bytes(b"not a png")
  save(str(src / "train" / "angry" / "a.png"), np.zeros((48, 48), np.uint8))
  assert run(dedup, src, "--out", dst, "--workers", "1", "--apply") == 0
  manifest = read_manifest(dst)
  assert sorted(manifest) == all_files(src)
  assert manifest[str(src / "train" / "happy" / "broken.png")]["reason"].startswith(
    "unreadable image"
  )
  assert "'angry' is not in --classes" in manifest[str(src / "train" / "angry" / "a.png")]["reason"]
  kept = next(r for r in manifest.values() if r["action"] == "kept")
  assert os.path.samefile(kept["source_path"], dst / kept["new_path"])  # a hard link
  assert run(dedup, src, "--out", tmp_path / "copied", "--workers", "1", "--copy", "--apply") == 0
  copied = tmp_path / "copied" / kept["new_path"]
  assert not os.path.samefile(kept["source_path"], copied)
  assert copied.read_bytes() == open(kept["source_path"], "rb").read()


def test_dedup_review_overrides_the_verifier_for_a_pair(tmp_path, capsys):
  src = tmp_path / "src"
  paths, expected = make_dedup_tree(str(src))
  argv = [src, "--workers", "1"]
  assert run(dedup, *argv, "--out", tmp_path / "first") == 0
  with open(tmp_path / "first" / "pairs.csv") as f:
    rows = list(csv.DictReader(f))
  leak = next(r for r in rows if r["verdict"] == "near" and "leak" in r["file_b"] + r["file_a"])
  leak["decision"] = "distinct"  # a person says: different photographs
  with open(tmp_path / "reviewed.csv", "w", newline="") as f:
    writer = csv.DictWriter(f, list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
  assert (
    run(
      dedup, *argv, "--out", tmp_path / "second", "--review", tmp_path / "reviewed.csv", "--apply"
    )
    == 0
  )
  assert "reviewed: distinct 1" in capsys.readouterr().out
  manifest = read_manifest(tmp_path / "second")
  copy = next(str(src / leak[c]) for c in ("file_a", "file_b") if "leak" in leak[c])
  assert manifest[copy]["action"] == "kept"
  with open(tmp_path / "second" / "duplicates.csv") as f:
    reviewed = [r for r in csv.DictReader(f) if r["review"]]
  assert [(r["verdict"], r["review"]) for r in reviewed] == [("distinct", "distinct")]

  leak["decision"] = "maybe"
  with open(tmp_path / "reviewed.csv", "w", newline="") as f:
    writer = csv.DictWriter(f, list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
  assert run(dedup, *argv, "--out", tmp_path / "third", "--review", tmp_path / "reviewed.csv") == 2
  assert "decision 'maybe' is not one of duplicate | distinct" in capsys.readouterr().err


def test_dedup_sees_no_copies_in_class_folders_linked_to_each_other(tmp_path, capsys):
  """Read through `train/happy/to_sad -> ../sad`, every sad face was a happy copy of itself."""
  src, dst = tmp_path / "src", tmp_path / "dst"
  write_originals(str(src), {"train": {c: 3 for c in CLASSES}, "val": {c: 1 for c in CLASSES}})
  links = link_class_folders(str(src))
  os.mkfifo(src / "val" / "sad" / "pipe.png")
  assert run(dedup, src, "--out", dst, "--workers", "1", "--apply") == 0
  assert "label conflicts: 0 pairs" in capsys.readouterr().out
  manifest = read_manifest(dst)
  assert collections.Counter(r["action"] for r in manifest.values()) == {"kept": 16, "dropped": 3}
  for path in [*links, str(src / "val" / "sad" / "pipe.png")]:
    assert manifest[path]["reason"].startswith("not read: ")
  assert not (dst / "train" / "happy" / "to_sad").exists()
