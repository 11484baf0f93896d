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

from fer_jax import data
from fer_jax.evals import calibration

SHIFT = 2  # pixels
SHIFTS = ((0, 0), (-SHIFT, 0), (SHIFT, 0), (0, -SHIFT), (0, SHIFT))  # (down, right)
VIEWS = {
  "none": ((False, 0, 0),),
  "flip": ((False, 0, 0), (True, 0, 0)),
  "flip+shifts": tuple((flip, dy, dx) for flip in (False, True) for dy, dx in SHIFTS),
}


def view(images, flip, dy, dx, xp=np):
  """`images` [N, H, W, C] mirrored (when `flip`), then moved `dy` pixels down and `dx` right,
  the edges repeated into the gap: on the host (numpy) or inside an exported model's graph
  (xp=jax.numpy)."""
  out = xp.flip(images, axis=2) if flip else images
  return _shifted(_shifted(out, dy, 1, xp), dx, 2, xp)


def _shifted(images, d, axis, xp):
  # Slices and one concatenation: what every export format keeps. JAX's indexing of an export's
  # free batch size (x[:, a:b], x[::-1], jnp.take) is a gather, which TFLite's converter refuses.
  n = images.shape[axis]

  def part(start, stop):
    if xp is np:
      return images[(slice(None),) * axis + (slice(start, stop),)]
    from jax import lax

    return lax.slice_in_dim(images, start, stop, axis=axis)

  if d > 0:
    return xp.concatenate([part(0, 1)] * d + [part(0, n - d)], axis=axis)
  if d < 0:
    return xp.concatenate([part(-d, n)] + [part(n - 1, n)] * -d, axis=axis)
  return images


def mean_of_views(apply, crops, views, xp=np):
  """Log of the mean over `views` of softmax(apply(view)), [N, classes]: the logits a scorer with
  TTA answers with (inference/scoring.py; exported with it: export). One call of `apply` on all
  the views; on the host (numpy, float64: `apply` of any runtime) or traced (xp=jax.numpy)."""
  batch = xp.concatenate([view(crops, *v, xp=xp) for v in views])
  logits = apply(batch)
  # crops.shape[0], not -1: an export's batch is symbolic and this keeps it provably whole
  logits = logits.reshape(len(views), crops.shape[0], logits.shape[-1])
  return calibration.as_logits(calibration.probabilities(logits, xp=xp).mean(axis=0), xp=xp)


def evaluate(evaluate_fn, split, mode):
  """({"accuracy", "views"}, log of the mean probabilities [N, K]) of `split`'s views under
  `mode`; `evaluate_fn` is an evaluation context's `evaluate` (split -> (figures, logits))."""
  views = VIEWS[mode]
  probs = 0.0
  for flip, dy, dx in views:
    images = np.ascontiguousarray(view(split.images, flip, dy, dx))  # a flip is a strided view
    _, logits = evaluate_fn(data.Split(images, split.labels))
    probs = probs + calibration.probabilities(logits)
  log_probs = calibration.as_logits(probs / len(views))
  accuracy = float(np.mean(log_probs.argmax(axis=-1) == split.labels))
  return {"accuracy": accuracy, "views": len(views)}, log_probs
