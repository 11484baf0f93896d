"""End to end in a real browser: Debian's Chromium, driven by Playwright, its fake camera playing a
clip made from a real face photo, against `python -m fer_jax.serve`; a box and an answer must
appear.

Chromium comes from the test set-up (`apt-get install -y chromium`, see the Makefile); Playwright's
own browser download is never used. The screenshot lands in .cache/browser/demo.png (docs/demo.png
is a copy of one).
"""

import os
import socket
import subprocess
import sys
import time
import urllib.request

import numpy as np
import pytest
import real_photos
from conftest import ROOT
from playwright.sync_api import sync_playwright

CHROMIUM = "/usr/bin/chromium"
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


def write_y4m(path, frames, fps=10):
  """frames (RGB uint8, even sides) -> a YUV4MPEG2 4:2:0 file, as Chromium's fake camera plays."""
  import cv2

  h, w = frames[0].shape[:2]
  with open(path, "wb") as f:
    f.write(f"YUV4MPEG2 W{w} H{h} F{fps}:1 Ip A1:1 C420jpeg\n".encode())
    for rgb in frames:
      f.write(b"FRAME\n" + cv2.cvtColor(rgb, cv2.COLOR_RGB2YUV_I420).tobytes())


def free_port():
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


@pytest.fixture
def server(tmp_path):
  port = free_port()
  log = open(tmp_path / "server.log", "w+")
  proc = subprocess.Popen(
    [sys.executable, "-m", "fer_jax.serve", f"--port={port}"],
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
        urllib.request.urlopen(f"{url}/api/info", timeout=2)
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


def test_webcam_and_upload_show_boxes_and_answers(server, tmp_path):
  assert os.path.exists(CHROMIUM), (
    f"{CHROMIUM} is missing: `apt-get install -y chromium` (make test does it)"
  )
  clip = tmp_path / "clip.y4m"
  write_y4m(clip, real_photos.held_expression_clip(real_photos.astronaut(), 20, size=(640, 480)))
  with sync_playwright() as p:
    browser = p.chromium.launch(
      executable_path=CHROMIUM,
      headless=True,
      args=[*FLAGS, f"--use-file-for-fake-video-capture={clip}"],
    )
    try:
      page = browser.new_page(viewport={"width": 1280, "height": 820})
      page.goto(f"{server}/?autostart=1")
      page.wait_for_selector("#faces li.face", timeout=60_000)
      page.wait_for_function(
        "document.getElementById('stats').textContent.startsWith('fps ') && "
        "!document.getElementById('stats').textContent.includes('–')",
        timeout=30_000,
      )
      time.sleep(1.0)  # a few more frames, so the screenshot shows a steady, smoothed answer
      answer = page.locator("#faces li.face").first.get_attribute("data-answer")
      # The box is on the canvas: read a strip of pixels across the middle of the last answer's top
      # edge (a newer answer may have moved the drawn box by a few pixels since).
      box, strip = page.evaluate("""() => {
          const [x, y, w, h] = last.faces[0].box;
          const ctx = document.getElementById('live').getContext('2d');
          const strip = ctx.getImageData(x + Math.round(w / 2), Math.max(0, y - 6), 1, 13);
          return [[x, y, w, h], Array.from(strip.data)];
      }""")
      photo = tmp_path / "astronaut.jpg"
      photo.write_bytes(real_photos.jpeg_bytes(real_photos.astronaut()))
      page.set_input_files("#file", str(photo))
      page.click("#upload button")
      page.wait_for_selector("#photofaces li.face", timeout=30_000)
      uploaded = page.locator("#photofaces li.face").first.get_attribute("data-answer")
      os.makedirs(os.path.dirname(SCREENSHOT), exist_ok=True)
      page.screenshot(path=SCREENSHOT)
      stats = page.locator("#stats").text_content()
    finally:
      browser.close()
  print(f"browser: {answer} at {box}; {stats}")
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
