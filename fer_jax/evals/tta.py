"""Test-time augmentation (`config.eval.tta`): a face's probabilities are the mean of the
model's probabilities on a few views of it.

- `flip`: the face and its mirror image (training flips faces, so both are faces it knows);
- `flip+shifts`: each of those also shifted by SHIFT pixels up, down, left and right, the edge
  rows and columns repeated into the gap (10 views). Shifts stay within what a face detector's
  crop varies by; larger ones cut off a 48-pixel face's chin or brow.

The views are made on the host from the uint8 images, so the evaluators run them through the
same evaluation pass as the plain split. The mean is taken over probabilities (softmax at T = 1),
as in the usual TTA; its logarithm serves as the logits the calibration and classification
evaluators see (softmax ignores a per-row shift, so softmax(log p) = p), and the temperature of
the TTA figures is fitted on these averaged val probabilities: it calibrates what is reported,
softmax(log(mean p) / T). Averaging logits instead would let one overconfident view dominate.
"""

import numpy as np
from scipy import special

from fer_jax import data
from fer_jax.evals import calibration

SHIFT = 2  # pixels
SHIFTS = ((0, 0), (-SHIFT, 0), (SHIFT, 0), (0, -SHIFT), (0, SHIFT))  # (down, right)
VIEWS = {
  "none": ((False, 0, 0),),
  "flip": ((False, 0, 0), (True, 0, 0)),
  "flip+shifts": tuple((flip, dy, dx) for flip in (False, True) for dy, dx in SHIFTS),
}


def view(images, flip, dy, dx):
  """`images` [N, H, W, C] mirrored (when `flip`), then moved `dy` pixels down and `dx` right,
  the edges repeated into the gap."""
  out = images[:, :, ::-1] if flip else images
  if dy or dx:
    h, w = out.shape[1:3]
    pad = ((0, 0), (max(dy, 0), max(-dy, 0)), (max(dx, 0), max(-dx, 0)), (0, 0))
    out = np.pad(out, pad, mode="edge")
    top, left = max(-dy, 0), max(-dx, 0)
    out = out[:, top : top + h, left : left + w]
  return np.ascontiguousarray(out)


def evaluate(evaluate_fn, split, mode):
  """({"accuracy", "views"}, log of the mean probabilities [N, K]) of `split`'s views under
  `mode`; `evaluate_fn` is an evaluation context's `evaluate` (split -> (figures, logits))."""
  views = VIEWS[mode]
  probs = 0.0
  for flip, dy, dx in views:
    _, logits = evaluate_fn(data.Split(view(split.images, flip, dy, dx), split.labels))
    probs = probs + special.softmax(np.asarray(logits, np.float64), axis=-1)
  log_probs = calibration.as_logits(probs / len(views))
  accuracy = float(np.mean(log_probs.argmax(axis=-1) == split.labels))
  return {"accuracy": accuracy, "views": len(views)}, log_probs
