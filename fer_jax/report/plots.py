"""PNG plots for run and study reports (matplotlib, Agg; no pyplot state).

Each `draw_*` function draws on a given Axes so the study report can tile them; the
file-writing functions build a figure, draw, and save it.
"""

import matplotlib

matplotlib.use("Agg")
import numpy as np  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402 (the backend is chosen first)
from matplotlib.ticker import MaxNLocator  # noqa: E402

from fer_jax.evals import metrics  # noqa: E402

# Shading of the train - val gap (points), bottom to top: the bands of metrics.gap_diagnosis.
_BANDS = sorted(metrics.OVERFIT_BANDS)  # (5, moderate), (10, high), (15, severe)
GAP_SHADES = tuple(
  zip(
    [-100.0, 0.0] + [b for b, _ in _BANDS],
    [0.0] + [b for b, _ in _BANDS] + [200.0],
    ("#9ecae1", "#c7e9c0", "#fff3b0", "#fdd0a2", "#fcbba1"),
    ["negative", "healthy"] + [name.split()[0] for _, name in _BANDS],
  )
)


def short(label, width=32):
  """Long sweep group names cut in the middle, keeping the config name and the last override."""
  if len(label) <= width:
    return label
  keep = (width - 1) // 2
  return label[:keep] + "…" + label[-(width - 1 - keep) :]


def _save(fig, path):
  # tight_layout, not bbox_inches="tight": the latter draws the figure twice, and plotting
  # is a visible share of a short run's time on a small CPU.
  fig.tight_layout()
  fig.savefig(path, dpi=100)


def sample_grid(images, labels, classes, path, per_row=8, seed=None, title=""):
  """One row of `per_row` images per class, labelled with the class and its count: the first
  images of each class, or a random pick with `seed`."""
  fig = Figure(figsize=(per_row * 1.1, len(classes) * 1.25))
  axes = fig.subplots(len(classes), per_row, squeeze=False)
  rng = None if seed is None else np.random.default_rng(seed)
  for row, name in enumerate(classes):
    idx = np.flatnonzero(labels == row)
    pick = (
      idx[:per_row]
      if rng is None or not len(idx)
      else rng.choice(idx, min(per_row, len(idx)), replace=False)
    )
    for col, ax in enumerate(axes[row]):
      ax.axis("off")
      if col < len(pick):
        image = images[pick[col]]
        ax.imshow(
          image[..., 0] if image.shape[-1] == 1 else image,
          cmap="gray",
          vmin=0,
          vmax=255,
          interpolation="nearest",
        )
    axes[row, 0].set_title(f"{name} ({len(idx):,})", fontsize=8, loc="left")
  if title:
    fig.suptitle(title, fontsize=9)
  _save(fig, path)


def draw_gap_bands(ax, gaps):
  """Shades the study's over/under-fitting bands behind gap curves, framed on the data."""
  for lo, hi, colour, name in GAP_SHADES:
    ax.axhspan(lo, hi, color=colour, alpha=0.6, lw=0, label=name)
  finite = [g for g in gaps if g is not None and np.isfinite(g)] or [0.0]
  ax.set_ylim(min(-2.0, min(finite) - 2.0), max(17.0, max(finite) + 2.0))
  ax.axhline(0.0, color="grey", lw=0.8)
  ax.set_ylabel("train - val accuracy (points)")


def _epochs(history):
  return [h["epoch"] for h in history]


def _epoch_axis(ax):
  ax.set_xlabel("epoch")
  ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def training_curves(history, path, title=""):
  """Accuracy, loss, train - val gap (with the study's bands) and learning rate per epoch."""
  fig = Figure(figsize=(11, 7.5))
  (acc, loss), (gap, lr) = fig.subplots(2, 2, sharex=True)
  ep = _epochs(history)
  for split, style in (("train", "-"), ("val", "--")):
    acc.plot(ep, [100 * h[f"{split}_accuracy"] for h in history], style, marker=".", label=split)
    loss.plot(ep, [h[f"{split}_loss"] for h in history], style, marker=".", label=split)
  acc.set_ylabel("accuracy (%)")
  loss.set_ylabel("loss")
  gaps = [h["gap"] for h in history]
  draw_gap_bands(gap, gaps)
  gap.plot(ep, gaps, "k-", marker=".", label="gap")
  gap.legend(loc="upper left", fontsize=7, ncol=3)
  lr.plot(ep, [h["lr"] for h in history], "m-", marker=".")
  if all(h["lr"] > 0 for h in history):  # an evaluate-only run (epochs=0) records lr 0
    lr.set_yscale("log")
  lr.set_ylabel("learning rate")
  for ax in (acc, loss):
    ax.legend()
  for ax in (acc, loss, gap, lr):
    ax.grid(alpha=0.3)
  for ax in (gap, lr):
    _epoch_axis(ax)
  fig.suptitle(title)
  _save(fig, path)


def overlaid_curves(groups, path):
  """Validation accuracy, validation loss and gap of many runs, one colour per group.

  groups: [(label, [history of each seed])].
  """
  fig = Figure(figsize=(15, 4.5))
  acc, loss, gap = fig.subplots(1, 3)
  draw_gap_bands(gap, [h["gap"] for _, hists in groups for hist in hists for h in hist])
  colours = matplotlib.colormaps["tab10"]
  for i, (label, hists) in enumerate(groups):
    for j, hist in enumerate(hists):
      ep = _epochs(hist)
      kw = {"color": colours(i % 10), "lw": 1.2, "alpha": 0.85}
      acc.plot(ep, [100 * h["val_accuracy"] for h in hist], label=None if j else short(label), **kw)
      loss.plot(ep, [h["val_loss"] for h in hist], **kw)
      gap.plot(ep, [h["gap"] for h in hist], **kw)
  acc.set_ylabel("val accuracy (%)")
  loss.set_ylabel("val loss")
  for ax in (acc, loss, gap):
    _epoch_axis(ax)
    ax.grid(alpha=0.3)
  acc.legend(fontsize=7)
  fig.suptitle("every run (one colour per config; one line per seed)")
  _save(fig, path)


def draw_confusion(ax, confusion_normalized, classes, title=""):
  """Row-normalised confusion matrix with the percentage in every cell."""
  cm = np.asarray(confusion_normalized, np.float64)
  ax.imshow(cm, cmap="Blues", vmin=0.0, vmax=1.0)
  for t in range(len(classes)):
    for p in range(len(classes)):
      ax.text(
        p,
        t,
        f"{100 * cm[t, p]:.1f}%",
        ha="center",
        va="center",
        fontsize=8,
        color="white" if cm[t, p] > 0.5 else "black",
      )
  ticks = range(len(classes))
  ax.set_xticks(ticks, classes, rotation=45, ha="right")
  ax.set_yticks(ticks, classes)
  ax.set_xlabel("predicted")
  ax.set_ylabel("true")
  ax.set_title(title, fontsize=9)


def confusion(confusion_normalized, classes, path, title=""):
  fig = Figure(figsize=(1.2 * len(classes) + 2, 1.2 * len(classes) + 1.5))
  draw_confusion(fig.subplots(), confusion_normalized, classes, title)
  _save(fig, path)


def confusion_grid(items, path):
  """Confusion matrices side by side; items: [(title, confusion_normalized, classes)]."""
  cols = min(4, len(items))
  rows = -(-len(items) // cols)
  side = 1.0 * max(len(item[2]) for item in items) + 1.5
  fig = Figure(figsize=(side * cols, side * rows))
  axes = np.atleast_1d(fig.subplots(rows, cols)).ravel()
  for ax, (title, cm, classes) in zip(axes, items):
    draw_confusion(ax, cm, classes, short(title))
  for ax in axes[len(items) :]:
    ax.set_axis_off()
  _save(fig, path)


def reliability(items, path):
  """Reliability diagram (accuracy against confidence per bin) and bin counts; items: [(label,
  calibration)]."""
  fig = Figure(figsize=(6, 6.5))
  top, bottom = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 1]})
  top.plot([0, 1], [0, 1], color="grey", ls=":", label="perfect calibration")
  for label, cal in items:
    filled = [b for b in cal["bins"] if b["count"]]
    (line,) = top.plot(
      [b["confidence"] for b in filled],
      [b["accuracy"] for b in filled],
      marker="o",
      label=f"{short(label)} (ECE {cal['ece']:.3f})",
    )
    centres = [(b["lower"] + b["upper"]) / 2 for b in cal["bins"]]
    bottom.plot(centres, [b["count"] for b in cal["bins"]], color=line.get_color(), marker=".")
  top.set_ylabel("accuracy")
  top.set_xlim(0, 1)
  top.set_ylim(0, 1)
  top.legend(fontsize=7, loc="upper left")
  top.grid(alpha=0.3)
  bottom.set_xlabel("confidence (top-class probability)")
  bottom.set_ylabel("faces")
  bottom.grid(alpha=0.3)
  _save(fig, path)


def coverage_accuracy(items, path, threshold):
  """Coverage and accuracy of answered faces against the confidence threshold, marked at the rule's
  `threshold`; items: [(label, curve)]."""
  fig = Figure(figsize=(11, 4.5))
  cov_ax, acc_ax = fig.subplots(1, 2)
  for label, curve in items:
    ts = [c["threshold"] for c in curve]
    (line,) = cov_ax.plot(ts, [100 * c["coverage"] for c in curve], marker=".", label=short(label))
    answered = [c for c in curve if c["accuracy"] is not None]
    acc_ax.plot(
      [100 * c["coverage"] for c in answered],
      [100 * c["accuracy"] for c in answered],
      marker=".",
      color=line.get_color(),
      label=short(label),
    )
    at = min(curve, key=lambda c: abs(c["threshold"] - threshold))
    if at["accuracy"] is not None:
      acc_ax.plot(100 * at["coverage"], 100 * at["accuracy"], "k*", ms=10)
  cov_ax.axvline(threshold, color="k", ls=":", label=f"rule: {threshold}")
  cov_ax.set_xlabel("confidence threshold")
  cov_ax.set_ylabel("faces answered (%)")
  acc_ax.set_xlabel("faces answered (%)")
  acc_ax.set_ylabel("accuracy of answered faces (%)")
  acc_ax.set_title(f"* = threshold {threshold}", fontsize=9)
  for ax in (cov_ax, acc_ax):
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
  _save(fig, path)


def comparison_bars(rows, path):
  """Val accuracy mean +- std over seeds and test accuracy with its bootstrap interval, per group.

  rows: [{"label", "val_mean", "val_std", "test_mean", "test_low", "test_high"}] in percent.
  """
  fig = Figure(figsize=(max(6, 1.3 * len(rows) + 2), 4.5))
  ax = fig.subplots()
  x = np.arange(len(rows))
  w = 0.38
  ax.bar(
    x - w / 2,
    [r["val_mean"] for r in rows],
    w,
    yerr=[r["val_std"] for r in rows],
    capsize=4,
    label="val accuracy (mean ± std over seeds)",
  )
  test = np.array([r["test_mean"] for r in rows])
  err = np.array([test - [r["test_low"] for r in rows], [r["test_high"] for r in rows] - test])
  ax.bar(x + w / 2, test, w, yerr=err, capsize=4, label="test accuracy (bootstrap 95 % CI)")
  ax.set_xticks(x, [short(r["label"]) for r in rows], rotation=30, ha="right")
  ax.set_ylabel("accuracy (%)")
  lo = min([r["val_mean"] - r["val_std"] for r in rows] + [r["test_low"] for r in rows])
  ax.set_ylim(max(0.0, lo - 5), 100)
  ax.legend(fontsize=8, loc="lower left", bbox_to_anchor=(0.0, 1.01))  # above, clear of the bars
  ax.grid(axis="y", alpha=0.3)
  _save(fig, path)
