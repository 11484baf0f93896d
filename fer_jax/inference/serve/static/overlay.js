// Boxes, labels and probability bars on a canvas, each label and bar panel placed where it covers
// no other face's box, no other face's overlay and stays inside the canvas.

export const UNCERTAIN_COLOR = "#ffb000";
export const ANSWER_COLOR = "#28c83c";
const LABEL_H = 20, BAR_ROW = 14, BAR_W = 130, GAP = 4, GRID = 8;

// "happy 0.97", or "uncertain · neutral 0.43": an uncertain answer still says what it leans to.
export function labelOf(f) {
  const p = f.top_probability.toFixed(2);
  return f.answer === "uncertain" ? `uncertain · ${f.top_class} ${p}` : `${f.answer} ${p}`;
}

// What a face's box is labelled with: its track number (webcam) and its answer.
export function faceText(f) {
  return (f.track >= 0 ? `#${f.track} ` : "") + labelOf(f);
}

function overlap(a, b) {
  const w = Math.min(a.x + a.w, b.x + b.w) - Math.max(a.x, b.x);
  const h = Math.min(a.y + a.h, b.y + b.h) - Math.max(a.y, b.y);
  return w > 0 && h > 0 ? w * h : 0;
}

// The first free spot among `preferred` (top-left corners) for a w x h panel, else the free spot
// of a coarse grid nearest to `near`, else the least covering one; always inside the canvas.
function choose(preferred, w, h, W, H, avoid, near) {
  const clamp = (x, y) => ({x: Math.max(0, Math.min(W - w, x)), y: Math.max(0, Math.min(H - h, y)), w, h});
  const cost = r => avoid.reduce((s, a) => s + overlap(r, a), 0);
  for (const [x, y] of preferred) {
    const r = clamp(x, y);
    if (cost(r) === 0) return r;
  }
  let best = null, bestKey = Infinity;
  for (let y = 0; y <= Math.max(0, H - h); y += GRID) {
    for (let x = 0; x <= Math.max(0, W - w); x += GRID) {
      const r = clamp(x, y);
      const key = cost(r) * 1e6 + Math.hypot(r.x - near.x, r.y - near.y);
      if (key < bestKey) { best = r; bestKey = key; }
    }
  }
  return best;
}

// faces: [{box: [x, y, w, h] in canvas pixels, ...}]; labelWidths[i]: the label's text width + padding.
// Returns [{label: rect, bars: rect}] per face.
export function placeOverlays(faces, W, H, labelWidths, barRows) {
  const boxes = faces.map(f => ({x: f.box[0], y: f.box[1], w: f.box[2], h: f.box[3]}));
  const taken = [];
  return faces.map((f, i) => {
    const b = boxes[i], others = boxes.filter((_, j) => j !== i);
    const lw = labelWidths[i], bh = barRows * BAR_ROW;
    const label = choose(
      [[b.x, b.y - LABEL_H], [b.x, b.y + b.h], [b.x, b.y]], lw, LABEL_H, W, H,
      [...others, ...taken], b);
    taken.push(label);
    const bars = choose(
      [[b.x + b.w + GAP, b.y], [b.x - BAR_W - GAP, b.y], [b.x, b.y + b.h + LABEL_H], [b.x, b.y - LABEL_H - bh]],
      BAR_W, bh, W, H, [...others, ...taken, b], {x: b.x + b.w, y: b.y});
    taken.push(bars);
    return {label, bars};
  });
}

// Draws faces ({box, answer, probs, top_class, top_probability}) with boxes scaled by `scale`;
// returns the drawn faces with their overlay rectangles (the browser test checks them).
export function drawFaces(ctx, faces, scale) {
  const W = ctx.canvas.width, H = ctx.canvas.height;
  const scaled = faces.map(f => ({...f, box: f.box.map(v => v * scale)}));
  ctx.font = "16px sans-serif";
  const widths = scaled.map(f => ctx.measureText(faceText(f)).width + 8);
  const rows = faces.length ? Object.keys(faces[0].probs).length : 0;
  const placed = placeOverlays(scaled, W, H, widths, rows);
  ctx.lineWidth = 3; ctx.textBaseline = "top";
  scaled.forEach((f, i) => {
    const [x, y, w, h] = f.box, {label, bars} = placed[i];
    const color = f.answer === "uncertain" ? UNCERTAIN_COLOR : ANSWER_COLOR;
    ctx.strokeStyle = color; ctx.strokeRect(x, y, w, h);
    ctx.fillStyle = color; ctx.fillRect(label.x, label.y, label.w, label.h);
    ctx.font = "16px sans-serif"; ctx.fillStyle = "#000";
    ctx.fillText(faceText(f), label.x + 4, label.y + 2);
    ctx.font = "11px monospace";
    Object.entries(f.probs).forEach(([c, p], r) => {
      const by = bars.y + r * BAR_ROW;
      ctx.fillStyle = "rgba(0,0,0,.6)"; ctx.fillRect(bars.x, by, BAR_W, BAR_ROW - 1);
      ctx.fillStyle = c === f.top_class ? color : "#9cf"; ctx.fillRect(bars.x + 62, by + 2, 66 * p, BAR_ROW - 5);
      ctx.fillStyle = "#fff"; ctx.fillText(c.slice(0, 8), bars.x + 2, by + 1);
    });
    f.overlays = placed[i];
  });
  return scaled;
}
