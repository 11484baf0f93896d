"""The web demo: a FastAPI app serving one HTML page, a photo upload endpoint and a WebSocket for
webcam frames.

  python -m fer_jax.serve            # http://127.0.0.1:8000 (also `make demo`)

The page (static/index.html) takes the webcam with getUserMedia and sends one JPEG frame at a time
over the WebSocket; it sends the next only when the answer for the last has come back, so a slow
machine lowers the frame rate instead of building a queue. Each connection has its own face
tracker, so webcam answers are smoothed over frames as predict.py smooths videos.

Bad input never takes the server down: oversized uploads and frames, images over the pixel cap
(decompression bombs) get 413 (an upload as soon as its bytes pass the limit, whether it declared
its length or not, so nothing oversized is buffered or written to disk); non-images, truncated
and empty images get 400 (upload) or an {"error": ...} message (WebSocket, which stays open);
frames with more faces than the cap are scored on the largest ones and say how many were dropped.
"""

import dataclasses
import io
import os
import time

from fastapi import FastAPI, HTTPException, Request, WebSocket, WebSocketDisconnect
from fastapi.responses import FileResponse
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile

from fer_jax.data import folders
from fer_jax.inference import detectors, scoring

STATIC = os.path.join(os.path.dirname(os.path.abspath(__file__)), "static")


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


def create_app(scorer, detection=DEFAULT_DETECTION, limits=DEFAULT_LIMITS, smoothing=0.5):
  """The demo app around a ready scoring.Scorer."""
  app = FastAPI(title="fer_jax demo", docs_url=None, redoc_url=None)

  def score(data, name, max_bytes, tracker=None):
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
      "max_faces": detection.max_faces,
      **dataclasses.asdict(limits),
    }

  @app.post("/api/predict")
  async def predict(request: Request):
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
    return await run_in_threadpool(score, data, image.filename or "upload", limits.max_upload_bytes)

  @app.websocket("/ws")
  async def frames(ws: WebSocket):
    await ws.accept()
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
            await run_in_threadpool(score, data, "frame", limits.max_frame_bytes, tracker)
          )
        except HTTPException as e:
          await ws.send_json({"error": e.detail, "status": e.status_code})
    except WebSocketDisconnect:
      pass

  return app
