"""data_tools.mislabel: confident learning, out-of-fold training with fer_jax, review application."""
import csv
import os

import numpy as np
import pytest

from data_tools import mislabel
from image_trees import CLASSES, all_files, read_manifest, save, tree_digest

# A tiny CNN that learns the quadrant task below in a few dozen steps.
TINY = ["data.image_size=24", "model.widths=(8,16,16)", "model.dense_widths=(32,)", "train.epochs=6",
        "train.batch_size=8", "optim.lr=0.005", "optim.plateau=false", "train.restore_best=false",
        "loss.label_smoothing=0.0", "loss.class_weights=none", "train.log_every_steps=1000"]


def quadrant_image(rng, label, size=24):
  """Noise with a bright quadrant: class c lights quadrant c, so a small CNN separates them."""
  image = rng.normal(100, 25, (size, size))
  y, x = divmod(label, 2)
  half = size // 2
  image[y * half:(y + 1) * half, x * half:(x + 1) * half] += 70
  return np.clip(image, 0, 255).astype(np.uint8)


def write_quadrant_tree(root, per_class, flips, seed=0, split="train"):
  """per_class images of each class; `flips` of them saved under a wrong class. Returns the flipped paths."""
  rng = np.random.default_rng(seed)
  flipped = []
  for c in range(len(CLASSES)):
    for k in range(per_class):
      flip = k < flips // len(CLASSES) + (c < flips % len(CLASSES))
      folder = CLASSES[(c + 1 + k % 3) % 4] if flip else CLASSES[c]
      path = save(os.path.join(root, split, folder, f"q{c}_{k:03d}.png"), quadrant_image(rng, c))
      if folder != CLASSES[c]:
        flipped.append(os.path.relpath(path, root))
  return flipped


def test_find_suspects_uses_per_class_thresholds():
  labels = np.array([0, 0, 0, 1, 1, 1, 1])
  probs = np.array([[0.9, 0.1], [0.8, 0.2], [0.3, 0.7],  # the third image, labelled 0, looks like 1
                    [0.2, 0.8], [0.45, 0.55], [0.6, 0.4], [0.1, 0.9]])
  ranked, suggested, margin, thresholds = mislabel.find_suspects(probs, labels)
  assert thresholds == pytest.approx([(0.9 + 0.8 + 0.3) / 3, (0.8 + 0.55 + 0.4 + 0.9) / 4])
  # image 2: p1 0.7 >= t1 0.6625; image 5: p0 0.6 < t0 0.667 -> not flagged (not confident enough)
  assert list(ranked) == [2]
  assert suggested[2] == 1 and margin[2] == pytest.approx(0.4)
  probs[5] = [0.7, 0.3]
  ranked, _, margin, _ = mislabel.find_suspects(probs, labels)
  assert list(ranked) == [2, 5] or margin[5] <= margin[2]


def test_mislabel_ranks_planted_flips_first(tmp_path, capsys):
  src, dst = tmp_path / "src", tmp_path / "dst"
  flipped = write_quadrant_tree(str(src), per_class=30, flips=8)
  before = tree_digest(src)
  argv = [str(src), "--out", str(dst), "--folds", "2", "--workers", "1"] + [
      a for s in TINY for a in ("--set", s)]
  assert mislabel.main(argv) == 0
  out = capsys.readouterr().out
  assert "scored out-of-fold" in out and tree_digest(src) == before
  with open(dst / "review.csv") as f:
    rows = list(csv.DictReader(f))
  top = [r["file"] for r in rows[:len(flipped) + 2]]
  assert sum(f in top for f in flipped) >= 6, (flipped, rows[:12])
  assert [int(r["rank"]) for r in rows] == list(range(1, len(rows) + 1))
  assert all(float(r["p_suggested"]) > float(r["p_given"]) for r in rows)
  with np.load(dst / "oof_probs.npz", allow_pickle=False) as z:
    assert z["probs"].shape == (120, 4) and np.allclose(z["probs"].sum(1), 1, atol=1e-4)
  assert (dst / "suspects.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
  assert not (dst / "train").exists()  # step 1 writes no tree
  snapshot = tree_digest(dst)  # a re-run reuses the finished fold runs and changes nothing
  assert mislabel.main(argv) == 0 and tree_digest(dst) == snapshot

  # step 2: accept the top suggestions; the fold models are not needed again
  for r in rows[:5]:
    r["decision"] = "relabel"
  with open(tmp_path / "reviewed.csv", "w", newline="") as f:
    writer = csv.DictWriter(f, list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
  assert mislabel.main([str(src), "--out", str(dst), "--review", str(tmp_path / "reviewed.csv"),
                        "--workers", "1", "--apply"]) == 0
  manifest = read_manifest(str(dst))
  for r in rows[:5]:
    row = manifest[str(src / r["file"])]
    assert row["action"] == "relabelled" and row["class"] == r["suggested_label"]
    assert os.path.exists(dst / "train" / r["suggested_label"] / os.path.basename(r["file"]))


def test_mislabel_applies_decisions_and_rejects_bad_reviews(tmp_path, capsys):
  src, dst = tmp_path / "src", tmp_path / "dst"
  for split in ("train", "val"):
    write_quadrant_tree(str(src), per_class=2, flips=0, split=split)
  review = tmp_path / "review.csv"

  def write_review(*rows):
    with open(review, "w", newline="", encoding="utf-8-sig") as f:  # as a spreadsheet saves it
      f.write("rank,file,split,given_label,suggested_label,score,reason,decision\n")
      f.writelines(",".join(map(str, r)) + "\n" for r in rows)

  write_review((1, "train/happy/q0_000.png", "train", "happy", "sad", 0.5, "model", "relabel"),
               (2, "val/neutral/q1_000.png", "val", "neutral", "sad", 0.4, "model", "Surprise"),
               (3, "train/sad/q2_001.png", "train", "sad", "happy", 0.3, "model", "drop"),
               (4, "train/surprise/q3_000.png", "train", "surprise", "happy", 0.2, "model", ""))
  assert mislabel.main([str(src), "--out", str(dst), "--review", str(review), "--apply"]) == 0
  manifest = read_manifest(str(dst))
  assert sorted(manifest) == all_files(str(src))
  row = lambda rel: manifest[str(src / rel)]
  relabelled = row("train/happy/q0_000.png")
  assert (relabelled["action"], relabelled["class"]) == ("relabelled", "sad")
  assert row("val/neutral/q1_000.png")["new_path"] == os.path.join("val", "surprise", "q1_000.png")
  assert row("train/sad/q2_001.png")["action"] == "dropped"
  assert row("train/surprise/q3_000.png")["action"] == "kept"
  assert (dst / "train" / "sad" / "q0_000.png").exists()
  assert not (dst / "train" / "happy" / "q0_000.png").exists()

  write_review((1, "train/happy/q0_000.png", "train", "happy", "sad", 0.5, "model", "maybe"))
  assert mislabel.main([str(src), "--out", str(tmp_path / "x"), "--review", str(review)]) == 2
  assert "line 2: decision 'maybe'" in capsys.readouterr().err
  write_review((1, "train/happy/gone.png", "train", "happy", "sad", 0.5, "model", "drop"))
  assert mislabel.main([str(src), "--out", str(tmp_path / "x"), "--review", str(review)]) == 2
  assert "'train/happy/gone.png' is not an image of SRC" in capsys.readouterr().err
  assert mislabel.main([str(src), "--out", str(tmp_path / "x"), "--apply"]) == 2
  assert "--apply needs --review" in capsys.readouterr().err
