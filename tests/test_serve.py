"""fer_jax.inference.serve with FastAPI's TestClient: the page, photo uploads good and bad, and the WebSocket
protocol (answers per frame, errors that keep the connection open, per-connection smoothing)."""

import io

import numpy as np
import pytest
import real_photos
from fastapi.testclient import TestClient
from PIL import Image

from fer_jax.inference import scoring, serve

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")
LIMITS = serve.Limits(max_upload_bytes=300_000, max_frame_bytes=200_000, max_pixels=2_000_000)


@pytest.fixture(scope="module")
def client():
  app = serve.create_app(scoring.Scorer.default(), scoring.Detection(max_faces=3), LIMITS)
  with TestClient(app) as c:
    yield c


def upload(client, data, name="photo.jpg"):
  return client.post("/api/predict", files={"image": (name, data, "application/octet-stream")})


def blank_png(side):
  """A one-bit side x side PNG: a few kB that would decode to side^2 pixels (a decompression bomb)."""
  buf = io.BytesIO()
  Image.new("1", (side, side)).save(buf, "PNG")
  return buf.getvalue()


def test_page_and_info(client):
  page = client.get("/")
  assert page.status_code == 200 and "getUserMedia" in page.text and "/ws" in page.text
  info = client.get("/api/info").json()
  assert info["classes"] == ["angry", "disgust", "fear", "happy", "sad", "surprise", "neutral"]
  assert info["threshold"] == 0.7 and info["max_faces"] == 3


def test_upload_scores_a_real_photo(client):
  r = upload(client, real_photos.jpeg_bytes(real_photos.astronaut()))
  assert r.status_code == 200
  body = r.json()
  assert (body["width"], body["height"]) == (512, 512) and len(body["faces"]) == 1
  face = body["faces"][0]
  assert face["answer"] == "happy" and abs(sum(face["probs"].values()) - 1) < 1e-3
  x, y, w, h = face["box"]
  assert 150 < x + w / 2 < 300 and 50 < y + h / 2 < 200


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
