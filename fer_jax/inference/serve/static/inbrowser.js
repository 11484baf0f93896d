// The in-browser mode: faces found by MediaPipe's BlazeFace (short range, 128x128) and scored by the
// exported model, both run by onnxruntime-web's WebAssembly backend. The page fetches the runtime
// and the models from the demo server once; frames and photos never leave the browser.

const DETECT_SIDE = 128, MIN_SCORE = 0.75, NMS_IOU = 0.3;
const LAYERS = [ // BlazeFace's two heads: cells per row, anchors per cell, score and box outputs
  {cells: 16, anchors: 2, scores: "Identity:0", boxes: "Identity_2:0"},
  {cells: 8, anchors: 6, scores: "Identity_1:0", boxes: "Identity_3:0"},
];
const FER_MARGIN = 0.1; // as fer_jax.inference.detectors.FER_MARGIN: the crop's margin per side

function loadScript(src) {
  return new Promise((ok, fail) => {
    const s = document.createElement("script");
    s.src = src; s.onload = ok; s.onerror = () => fail(new Error(`cannot load ${src}`));
    document.head.append(s);
  });
}

function iou(a, b) {
  const w = Math.min(a.x + a.w, b.x + b.w) - Math.max(a.x, b.x);
  const h = Math.min(a.y + a.h, b.y + b.h) - Math.max(a.y, b.y);
  const inter = Math.max(0, w) * Math.max(0, h);
  return inter / (a.w * a.h + b.w * b.h - inter);
}

// The boxes of overlapping detections blended, weighted by score (BlazeFace's own post-processing).
function blend(found) {
  found.sort((a, b) => b.score - a.score);
  const out = [], used = found.map(() => false);
  found.forEach((d, i) => {
    if (used[i]) return;
    const group = found.filter((e, j) => !used[j] && iou(d, e) >= NMS_IOU);
    found.forEach((e, j) => { if (!used[j] && iou(d, e) >= NMS_IOU) used[j] = true; });
    const s = group.reduce((a, e) => a + e.score, 0);
    const avg = k => group.reduce((a, e) => a + e[k] * e.score, 0) / s;
    out.push({x: avg("x"), y: avg("y"), w: avg("w"), h: avg("h"), score: d.score});
  });
  return out;
}

// Grayscale as Pillow's "L" (ITU-R 601-2 luma), the conversion the training data went through.
function grayOf(image) {
  const {data, width, height} = image, g = new Float32Array(width * height);
  for (let i = 0; i < g.length; i++) g[i] = (data[4 * i] * 299 + data[4 * i + 1] * 587 + data[4 * i + 2] * 114) / 1000;
  return {g, width, height};
}

// size x size crop of the square around the box (FER_MARGIN added per side, edges replicated
// past the border, as detectors.crop does), box-filtered down: raw 0..255 as the model expects.
function crop({g, width, height}, box, size, out, offset) {
  const side = Math.max(box.w, box.h) * (1 + 2 * FER_MARGIN);
  const left = box.x + box.w / 2 - side / 2, top = box.y + box.h / 2 - side / 2;
  const step = side / size, k = Math.max(1, Math.ceil(step));
  for (let oy = 0; oy < size; oy++) {
    for (let ox = 0; ox < size; ox++) {
      let sum = 0;
      for (let a = 0; a < k; a++) {
        const sy = Math.min(height - 1, Math.max(0, Math.floor(top + (oy + (a + 0.5) / k) * step)));
        for (let b = 0; b < k; b++) {
          const sx = Math.min(width - 1, Math.max(0, Math.floor(left + (ox + (b + 0.5) / k) * step)));
          sum += g[sy * width + sx];
        }
      }
      out[offset + oy * size + ox] = sum / (k * k);
    }
  }
}

export class InBrowser {
  // info: the model's model.json ({class_names, input_size, ...}).
  static async load() {
    if (!window.ort) await loadScript("/web/ort.wasm.min.js");
    ort.env.wasm.wasmPaths = "/web/";
    ort.env.wasm.numThreads = 1; // threads need a cross-origin-isolated page; one is enough here
    ort.env.logLevel = "error"; // BlazeFace's file has unused initialisers, warned about on load
    const options = {executionProviders: ["wasm"], logSeverityLevel: 3};
    const [info, detector, model] = await Promise.all([
      fetch("/model/model.json").then(r => { if (!r.ok) throw new Error(`model.json: ${r.status}`); return r.json(); }),
      ort.InferenceSession.create("/web/blazeface.onnx", options),
      ort.InferenceSession.create("/model/model.onnx", options),
    ]);
    return new InBrowser(info, detector, model);
  }

  constructor(info, detector, model) {
    Object.assign(this, {info, detector, model, classes: info.class_names, size: info.input_size});
    this.square = document.createElement("canvas");
    this.square.width = this.square.height = DETECT_SIDE;
  }

  // Faces in an ImageData frame: [{x, y, w, h, score}] in its pixels.
  async detect(image, source) {
    const side = Math.max(image.width, image.height);
    const ox = (side - image.width) / 2, oy = (side - image.height) / 2, k = DETECT_SIDE / side;
    const ctx = this.square.getContext("2d", {willReadFrequently: true});
    ctx.fillStyle = "#000"; ctx.fillRect(0, 0, DETECT_SIDE, DETECT_SIDE);
    ctx.drawImage(source, ox * k, oy * k, image.width * k, image.height * k);
    const px = ctx.getImageData(0, 0, DETECT_SIDE, DETECT_SIDE).data;
    const input = new Float32Array(DETECT_SIDE * DETECT_SIDE * 3);
    for (let i = 0, j = 0; i < px.length; i += 4) {
      input[j++] = px[i] / 127.5 - 1; input[j++] = px[i + 1] / 127.5 - 1; input[j++] = px[i + 2] / 127.5 - 1;
    }
    const out = await this.detector.run({"input:0": new ort.Tensor("float32", input, [1, DETECT_SIDE, DETECT_SIDE, 3])});
    const found = [];
    for (const {cells, anchors, scores, boxes} of LAYERS) {
      const s = out[scores].data, b = out[boxes].data;
      for (let i = 0; i < s.length; i++) {
        const score = 1 / (1 + Math.exp(-Math.max(-80, Math.min(80, s[i]))));
        if (score < MIN_SCORE) continue;
        const cell = Math.floor(i / anchors);
        const cx = ((cell % cells) + 0.5) / cells + b[16 * i] / DETECT_SIDE;
        const cy = (Math.floor(cell / cells) + 0.5) / cells + b[16 * i + 1] / DETECT_SIDE;
        const w = b[16 * i + 2] / DETECT_SIDE, h = b[16 * i + 3] / DETECT_SIDE;
        found.push({x: (cx - w / 2) * side - ox, y: (cy - h / 2) * side - oy, w: w * side, h: h * side, score});
      }
    }
    return blend(found);
  }

  // Calibrated probabilities per box, one batched model call: [[p per class]].
  async classify(image, boxes) {
    if (!boxes.length) return [];
    const n = this.size * this.size, batch = new Float32Array(boxes.length * n), gray = grayOf(image);
    boxes.forEach((box, i) => crop(gray, box, this.size, batch, i * n));
    const out = await this.model.run({faces: new ort.Tensor("float32", batch, [boxes.length, this.size, this.size, 1])});
    const p = out.probabilities.data, c = this.classes.length;
    return boxes.map((_, i) => Array.from(p.slice(i * c, (i + 1) * c)));
  }
}
