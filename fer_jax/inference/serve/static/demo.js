// The demo page: webcam answers from the server (one JPEG frame in flight over the WebSocket) or
// from the browser itself (inbrowser.js), drawn with placed overlays, tracked faces with their
// 30 s timelines, a CSV of every answer since Start, and photo uploads.

import {InBrowser} from "./inbrowser.js";
import {drawFaces, faceText, placeOverlays} from "./overlay.js";
import {PALETTE, Recorder, Tracker, drawTimeline} from "./track.js";

const $ = id => document.getElementById(id);
const IDLE_STATS = "fps – · latency – ms · server – ms";
const video = document.createElement("video");
video.muted = true; video.playsInline = true;
const live = $("live"), liveCtx = live.getContext("2d");
const grab = document.createElement("canvas"), grabCtx = grab.getContext("2d", {willReadFrequently: true});
let info = null, inBrowser = null, session = null, recorder = null;
// What the browser test reads: the faces as last drawn (with their overlay rectangles).
const demo = window.demo = {drawn: [], placeOverlays, get recorder() { return recorder; }};

function esc(s) { return String(s).replace(/[&<>"']/g, c => `&#${c.charCodeAt(0)};`); }
const sleep = ms => new Promise(r => setTimeout(r, ms));

async function loadInBrowser() {
  inBrowser = inBrowser || await InBrowser.load();
  return inBrowser;
}

// The in-browser model's probabilities -> answers as the server gives them.
function answered(f, threshold) {
  const [top_class, top_probability] = Object.entries(f.probs).reduce((a, b) => (b[1] > a[1] ? b : a));
  return {...f, top_class, top_probability, answer: top_probability >= threshold ? top_class : "uncertain"};
}

function threshold() { return inBrowser?.info.threshold ?? info.threshold; }

async function scoreInBrowser(image, source) {
  const ib = await loadInBrowser();
  const boxes = (await ib.detect(image, source)).sort((a, b) => b.w * b.h - a.w * a.h);
  const kept = boxes.slice(0, info.max_faces), probs = await ib.classify(image, kept);
  const faces = kept.map((b, i) => ({
    box: [b.x, b.y, b.w, b.h].map(Math.round),
    probs: Object.fromEntries(ib.classes.map((c, k) => [c, probs[i][k]])),
  }));
  return {faces, dropped: boxes.length - kept.length};
}

// ---- webcam ----
async function start() {
  if (session) return;
  $("start").disabled = true; $("camerr").textContent = "";
  const mode = $("mode").value, detector = $("detector").value;
  let stream;
  try {
    if (mode === "browser") { $("stats").textContent = "loading the in-browser model…"; await loadInBrowser(); }
    stream = await navigator.mediaDevices.getUserMedia({video: {width: 640, height: 480}, audio: false});
  } catch (e) {
    $("camerr").textContent = `${mode === "browser" ? "in-browser mode" : "camera"}: ${e.name}: ${e.message}`;
    $("stats").textContent = IDLE_STATS; $("start").disabled = false;
    return;
  }
  const s = session = {
    mode, detector, stream, ws: null, inFlight: false, started: performance.now(), times: [], last: null,
    items: new Map(), tracker: new Tracker(mode === "browser" ? info.smoothing : 1),
  };
  recorder = new Recorder(mode === "browser" ? inBrowser.classes : info.classes);
  showLegend(recorder.classes);
  video.srcObject = stream; await video.play();
  $("stop").disabled = false; $("csv").disabled = false;
  requestAnimationFrame(() => render(s));
  if (mode === "server") openSocket(s); else browserLoop(s);
}

function openSocket(s) {
  const proto = location.protocol === "https:" ? "wss" : "ws";
  const ws = s.ws = new WebSocket(`${proto}://${location.host}/ws?detector=${encodeURIComponent(s.detector)}`);
  ws.binaryType = "arraybuffer";
  ws.onopen = () => sendFrame(s);
  ws.onmessage = ev => {
    if (session !== s) return;
    s.inFlight = false;
    const msg = JSON.parse(ev.data);
    if (msg.error) $("camerr").textContent = msg.error;
    else {
      const latency = performance.now() - s.sentAt;
      show(s, msg.faces, msg.dropped_faces, s.capturedAt, `latency ${latency.toFixed(0)} ms · server ${msg.server_ms} ms`);
    }
    sendFrame(s);
  };
  ws.onclose = ev => {
    if (session !== s) return;
    $("camerr").textContent = `connection closed (${ev.code}); press Start again`;
    stop();
  };
}

function sendFrame(s) {
  if (session !== s || s.inFlight || s.ws.readyState !== WebSocket.OPEN) return;
  if (!video.videoWidth) { setTimeout(() => sendFrame(s), 50); return; }
  grab.width = video.videoWidth; grab.height = video.videoHeight;
  grabCtx.drawImage(video, 0, 0);
  s.inFlight = true;
  const capturedAt = performance.now();
  grab.toBlob(blob => blob.arrayBuffer().then(bytes => {
    // Stop may have come while the frame was being encoded: then nothing is sent.
    if (session !== s || s.ws.readyState !== WebSocket.OPEN) return;
    s.capturedAt = capturedAt; s.sentAt = performance.now();
    s.ws.send(bytes);
  }), "image/jpeg", 0.85);
}

async function browserLoop(s) {
  try {
    while (session === s) {
      if (!video.videoWidth) { await sleep(50); continue; }
      grab.width = video.videoWidth; grab.height = video.videoHeight;
      grabCtx.drawImage(video, 0, 0);
      const t0 = performance.now(), image = grabCtx.getImageData(0, 0, grab.width, grab.height);
      const {faces, dropped} = await scoreInBrowser(image, grab);
      if (session !== s) return;
      show(s, faces, dropped, t0, `in-browser ${(performance.now() - t0).toFixed(0)} ms/frame`);
      await sleep(0); // lets the page draw between frames
    }
  } catch (e) {
    if (session !== s) return;
    $("camerr").textContent = `in-browser mode: ${e.message}`;
    stop();
  }
}

// One answered frame: tracked, recorded, listed with timelines; drawn by render().
function show(s, faces, dropped, capturedAt, timing) {
  let tracked = s.tracker.update(faces);
  if (s.mode === "browser") tracked = tracked.map(f => answered(f, threshold()));
  s.last = tracked;
  const now = performance.now(), t = (capturedAt - s.started) / 1000;
  recorder.add(t, tracked);
  s.times.push(now);
  while (now - s.times[0] > 2000) s.times.shift();
  const fps = s.times.length > 1 ? (s.times.length - 1) * 1000 / (now - s.times[0]) : 0;
  $("stats").textContent = `fps ${fps.toFixed(1)} · ${timing}`;
  listTracks(s, tracked, dropped, t);
}

function listTracks(s, faces, dropped, t) {
  const list = $("faces");
  for (const [track, li] of s.items) {
    if (!s.tracker.tracks.has(track)) { li.remove(); s.items.delete(track); }
  }
  for (const f of faces) {
    let li = s.items.get(f.track);
    if (!li) {
      li = document.createElement("li");
      li.className = "face"; li.dataset.track = f.track;
      li.innerHTML = '<span class="label"></span><canvas class="timeline" width="300" height="48"></canvas>';
      s.items.set(f.track, li);
    }
    li.dataset.answer = f.answer;
    li.querySelector(".label").textContent = `${faceText(f)} · box ${f.box.join(",")}`;
    drawTimeline(li.querySelector("canvas"), recorder.history.get(f.track), t);
  }
  // Track order: a face keeps its place in the list while it is seen.
  [...s.items.keys()].sort((a, b) => a - b).forEach(k => list.append(s.items.get(k)));
  list.querySelector(".dropped")?.remove();
  if (dropped) list.insertAdjacentHTML("beforeend", `<li class="dropped">${dropped} more faces not scored (cap per frame)</li>`);
}

function render(s) {
  if (session !== s) return;
  if (video.videoWidth) {
    if (live.width !== video.videoWidth) { live.width = video.videoWidth; live.height = video.videoHeight; }
    liveCtx.drawImage(video, 0, 0);
    if (s.last) demo.drawn = drawFaces(liveCtx, s.last, 1);
  }
  requestAnimationFrame(() => render(s));
}

// Stops the camera and clears the frame, the figures and the overlays; the CSV stays downloadable.
function stop() {
  const s = session;
  if (!s) return;
  session = null;
  if (s.ws) { s.ws.onclose = null; s.ws.close(); }
  s.stream.getTracks().forEach(t => t.stop());
  video.srcObject = null;
  liveCtx.clearRect(0, 0, live.width, live.height);
  demo.drawn = [];
  $("stats").textContent = IDLE_STATS;
  $("faces").replaceChildren();
  $("start").disabled = false; $("stop").disabled = true;
}

function showLegend(classes) {
  $("legend").innerHTML = classes.map((c, i) =>
    `<span style="color:${PALETTE[i % PALETTE.length]}">━ ${esc(c)}</span>`).join("");
}

function downloadCsv() {
  const a = document.createElement("a");
  a.href = URL.createObjectURL(new Blob([recorder.csv()], {type: "text/csv"}));
  a.download = "fer_jax-answers.csv";
  a.click();
  setTimeout(() => URL.revokeObjectURL(a.href), 10_000);
}

// ---- photo upload (scored where the webcam is: on the server or in the browser) ----
async function scorePhoto(ev) {
  ev.preventDefault();
  const file = $("file").files[0], err = $("uperr");
  err.textContent = "";
  if (!file) { err.textContent = "choose a photo first"; return; }
  let msg, img;
  try {
    img = await createImageBitmap(file, {imageOrientation: "from-image"});
    if ($("mode").value === "browser") {
      const c = new OffscreenCanvas(img.width, img.height), ctx = c.getContext("2d");
      ctx.drawImage(img, 0, 0);
      const {faces, dropped} = await scoreInBrowser(ctx.getImageData(0, 0, c.width, c.height), c);
      msg = {width: img.width, height: img.height, faces: faces.map(f => answered(f, threshold())), dropped_faces: dropped};
    } else {
      const body = new FormData(); body.append("image", file);
      const resp = await fetch(`/api/predict?detector=${encodeURIComponent($("detector").value)}`, {method: "POST", body});
      msg = await resp.json();
      if (!resp.ok) { err.textContent = `${resp.status}: ${msg.detail}`; return; }
    }
  } catch (e) {
    err.textContent = `${file.name}: ${e.message}`;
    return;
  }
  const canvas = $("photo"), ctx = canvas.getContext("2d"), scale = Math.min(1, 640 / msg.width);
  canvas.width = msg.width * scale; canvas.height = msg.height * scale;
  ctx.drawImage(img, 0, 0, canvas.width, canvas.height);
  drawFaces(ctx, msg.faces, scale);
  $("photofaces").innerHTML = msg.faces.map(f =>
    `<li class="face" data-answer="${esc(f.answer)}">${esc(faceText(f))} · box ${f.box.join(",")}</li>`).join("") +
    (msg.dropped_faces ? `<li>${msg.dropped_faces} more faces not scored (cap per frame)</li>` : "");
}

// The detector list (the server's backends, or BlazeFace alone in the browser) and the model line.
function syncMode() {
  const sel = $("detector"), browser = $("mode").value === "browser";
  const names = browser ? ["blazeface"] : info.detectors;
  const keep = sel.dataset.server || info.detector;
  sel.innerHTML = names.map(n => `<option>${esc(n)}</option>`).join("");
  sel.value = browser ? "blazeface" : keep;
  sel.disabled = browser;
  $("model").innerHTML = browser
    ? "<small>model: the exported ONNX model (/model/model.onnx), run in this page</small>"
    : `<small>model: ${esc(info.model)} · uncertain below ${info.threshold}</small>`;
}

function restartIfRunning() {
  if (session) { stop(); start(); }
}

async function init() {
  info = await (await fetch("/api/info")).json();
  const params = new URLSearchParams(location.search), ib = info.in_browser;
  $("mode").querySelector('[value="browser"]').disabled = !ib.available;
  $("modenote").textContent = ib.available ? "" : `in-browser mode off: ${ib.why_not}`;
  if (params.get("mode") === "browser" && ib.available) $("mode").value = "browser";
  $("detector").dataset.server = params.get("detector") || info.detector;
  syncMode();
  $("mode").onchange = () => { syncMode(); restartIfRunning(); };
  $("detector").onchange = () => { $("detector").dataset.server = $("detector").value; restartIfRunning(); };
  $("start").onclick = start;
  $("stop").onclick = stop;
  $("csv").onclick = downloadCsv;
  $("upload").onsubmit = scorePhoto;
  if (params.has("autostart")) start();
}

init();
