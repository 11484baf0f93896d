// Face tracks across frames (the page's own, the same in both modes), each face's last 30 s of
// probabilities drawn as a small chart, and the per-frame answers as CSV.

export const TIMELINE_S = 30;
// One colour per class, in class order (the legend and the timelines use the same).
export const PALETTE = ["#d62728", "#8c564b", "#9467bd", "#2ca02c", "#1f77b4", "#ff7f0e", "#7f7f7f",
  "#e377c2", "#bcbd22", "#17becf"];

function iou([ax, ay, aw, ah], [bx, by, bw, bh]) {
  const iw = Math.max(0, Math.min(ax + aw, bx + bw) - Math.max(ax, bx));
  const ih = Math.max(0, Math.min(ay + ah, by + bh) - Math.max(ay, by));
  const inter = iw * ih, union = aw * ah + bw * bh - inter;
  return union > 0 ? inter / union : 0;
}

// A face takes over the track whose last box overlaps it most (IoU >= minIou, greedy, best pairs
// first), as fer_jax.inference.scoring.Tracker does; a new face gets the next id. With alpha < 1
// each track's probabilities are an exponential moving average (the in-browser mode's smoothing;
// the server smooths its own answers).
export class Tracker {
  constructor(alpha = 1, minIou = 0.3, maxMissed = 10) {
    Object.assign(this, {alpha, minIou, maxMissed, tracks: new Map(), next: 0});
  }

  // faces: [{box, probs: {class: p}}] -> the same faces with `track` set (and probs smoothed).
  update(faces) {
    const pairs = [];
    faces.forEach((f, i) => this.tracks.forEach((t, id) => pairs.push([iou(f.box, t.box), i, id])));
    pairs.sort((a, b) => b[0] - a[0]);
    const ids = faces.map(() => null), taken = new Set();
    for (const [o, i, id] of pairs) {
      if (o < this.minIou) break;
      if (ids[i] === null && !taken.has(id)) { ids[i] = id; taken.add(id); }
    }
    this.tracks.forEach((t, id) => { if (!taken.has(id)) t.missed += 1; });
    const out = faces.map((f, i) => {
      const id = ids[i] ?? this.next++, old = this.tracks.get(id);
      const probs = old && this.alpha < 1
        ? Object.fromEntries(Object.entries(f.probs).map(([c, p]) => [c, this.alpha * p + (1 - this.alpha) * old.probs[c]]))
        : f.probs;
      this.tracks.set(id, {box: f.box, probs, missed: 0});
      return {...f, probs, track: id};
    });
    for (const [id, t] of this.tracks) if (t.missed > this.maxMissed) this.tracks.delete(id);
    return out.sort((a, b) => a.track - b.track);
  }
}

// The answers since Start: one row per face per frame, and each live track's recent history.
export class Recorder {
  constructor(classes) {
    Object.assign(this, {classes, rows: [], history: new Map(), frame: 0});
  }

  add(t, faces) {
    for (const f of faces) {
      this.rows.push([this.frame, t.toFixed(3), f.track, ...f.box.map(v => Math.round(v)),
        ...this.classes.map(c => f.probs[c].toFixed(4)), f.top_class, f.top_probability.toFixed(4), f.answer]);
      const h = this.history.get(f.track) || [];
      h.push([t, this.classes.map(c => f.probs[c])]);
      while (h.length && t - h[0][0] > TIMELINE_S) h.shift();
      this.history.set(f.track, h);
    }
    this.frame += 1;
  }

  csv() {
    const head = ["frame", "time", "track", "x", "y", "w", "h", ...this.classes, "top_class",
      "top_probability", "answer"];
    return [head, ...this.rows].map(r => r.join(",")).join("\n") + "\n";
  }
}

// One line per class over the last TIMELINE_S seconds up to `now`, probability 0..1 bottom to top.
export function drawTimeline(canvas, history, now) {
  const ctx = canvas.getContext("2d"), W = canvas.width, H = canvas.height;
  ctx.fillStyle = "#fff"; ctx.fillRect(0, 0, W, H);
  ctx.strokeStyle = "#ddd"; ctx.lineWidth = 1; ctx.strokeRect(0.5, 0.5, W - 1, H - 1);
  if (!history.length) return;
  const x = t => W - (now - t) / TIMELINE_S * W, y = p => H - 2 - p * (H - 4);
  ctx.lineWidth = 1.5;
  history[0][1].forEach((_, c) => {
    ctx.strokeStyle = PALETTE[c % PALETTE.length];
    ctx.beginPath();
    history.forEach(([t, probs], k) => (k ? ctx.lineTo : ctx.moveTo).call(ctx, x(t), y(probs[c])));
    ctx.stroke();
  });
}
