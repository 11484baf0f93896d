"""Candidate pairs verified on the pixels (step 2 of `data_tools.dedup`), groups, and review.

similarity: the correlation of two images' band-passed pixels at their best alignment (small
translations and zooms refined to sub-pixel, the mirror image), on the pixels that agree best;
find_pairs: the candidates of data_tools.hashing verified, plus the second hop; the duplicate
groups (connected components of verified pairs); find_groups for callers holding image arrays
(the audit); and a person's review of the pairs closest to the threshold (pairs.png, pairs.csv,
apply_pair_review).
"""

import collections
import csv
import io
import os

import numpy as np
from matplotlib.figure import Figure
from scipy import fft as scipy_fft
from scipy import ndimage
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from fer_jax.data.progress import Progress

from . import common, hashing

# px: the difference of two Gaussian blurs. Under 1 px: JPEG blocks and noise; over 3 px: the
# shading of a face, which different people photographed in one frontal pose share (on FER2013
# their blurred pixels correlate up to 0.955, above many copies).
BAND_PASS = (1.0, 3.0)
# of the compared pixels, the share that agrees best is correlated: a watermark, a caption or a
# blown-out patch covers less of a copy; a different person differs everywhere.
AGREEING_SHARE = 0.7
# rounds of the pattern search: each tries one step (first zoom/4 and 0.5 px) either way on each
# axis, and a pair's steps halve after a round without a move: ~0.02 px at the end
REFINE_ROUNDS = 8

VERIFY_CHUNK = 2_048  # pairs verified at once (a few tens of MB of float32)
MAX_HOP_DEGREE = 32  # second-hop candidates only through images with at most this many links


# ---------------------------------------------------------------------------- verification


def _band_passed(images):
  x = images.astype(np.float32)
  lo, hi = BAND_PASS
  return ndimage.gaussian_filter(x, (0, lo, lo)) - ndimage.gaussian_filter(x, (0, hi, hi))


def _coarse_alignment(a, b, max_shift, scales, mirror):
  """The best of b[k]'s integer translations, zooms and mirror image against a[k]'s centre, by
  normalised cross-correlation (float32 [P, S, S] each) -> [P, 4]: scale, mirrored, dy, dx."""
  p, size, _ = a.shape
  s = max_shift
  margin = _margin(size, s)
  h = size - 2 * margin  # the central two thirds of a are compared: borders and edge fill vary
  n = h * h
  centre = a[:, margin : size - margin, margin : size - margin]
  centre = centre - centre.mean((1, 2), keepdims=True)
  centre /= np.maximum(np.sqrt((centre**2).sum((1, 2), keepdims=True)), 1e-3)
  shape = (h + 2 * s,) * 2
  conj_centre = np.conj(scipy_fft.rfft2(centre, shape))
  window = lambda c: c[:, h:, h:] - c[:, :-h, h:] - c[:, h:, :-h] + c[:, :-h, :-h]  # noqa: E731
  best = np.full(p, -np.inf, np.float32)
  alignment = np.zeros((p, 4), np.float32)
  for scale in scales:
    m = hashing.zoom_matrix(size, scale)
    zoomed = b if scale == 1 else m @ b @ m.T
    region = np.ascontiguousarray(
      zoomed[:, margin - s : size - margin + s, margin - s : size - margin + s]
    )
    # sums of every h x h window from integral images: the windows' means and norms
    sums = window(np.pad(region, ((0, 0), (1, 0), (1, 0))).cumsum(1).cumsum(2))
    squares = window(np.pad(region * region, ((0, 0), (1, 0), (1, 0))).cumsum(1).cumsum(2))
    norm = np.sqrt(np.maximum(squares - sums * sums / n, 1e-6))
    for flip in (False, True) if mirror else (False,):
      r = region[:, :, ::-1] if flip else region
      # correlation with every translation at once (the centre is zero-mean, unit-norm)
      corr = scipy_fft.irfft2(scipy_fft.rfft2(r) * conj_centre, shape)[:, : 2 * s + 1, : 2 * s + 1]
      corr = (corr / np.maximum(norm[:, :, ::-1] if flip else norm, 1e-3)).reshape(p, -1)
      k = corr.argmax(1)
      value = corr[np.arange(p), k]
      better = value > best
      best[better] = value[better]
      # window (u, v) of the (mirrored) zoomed b starts u - s, v - s px off a's centre
      dy, dx = np.divmod(k[better], 2 * s + 1)
      alignment[better] = np.stack(
        [np.full(len(dy), scale), np.full(len(dy), flip), dy - s, dx - s], 1
      )
  return alignment


def _margin(size, max_shift):
  return max(max_shift, size // 6)


def _sample_rows(x, coords):
  """x [P, S, W] linearly interpolated between its rows at source coordinates [P, H] (edges
  repeated) -> [P, H, W]."""
  size = x.shape[1]
  source = np.clip(coords, 0, size - 1)
  lo = np.floor(source).astype(np.int64)
  hi = np.minimum(lo + 1, size - 1)
  weight = (source - lo).astype(np.float32)[..., None]
  image = np.arange(len(x))[:, None]
  near = x[image, lo]  # whole rows: contiguous copies
  out = x[image, hi]
  out -= near
  out *= weight
  out += near
  return out


class _Warps:
  """b [P, S, S] sampled at c + (o - c) / scale + (ty, tx) for a's central pixels o, scored
  against a's standardised centre.

  Zoom and translation only, so the warp is separable: rows, then columns, in either order. A
  trial of ty keeps the columns' coordinates, a trial of tx the rows': the pass of the current
  parameters on the other axis (`hold`) serves both trials, each then a gather of H x H instead
  of H x S + H x H (a fifth of the search's gathers saved). Held passes are stored so that the
  trial's gather copies whole rows, the fast way in NumPy."""

  def __init__(self, b, centre, margin):
    self.b, self.bt = b, np.ascontiguousarray(b.transpose(0, 2, 1))
    size = b.shape[1]
    self.c = (size - 1) / 2
    self.offsets = (np.arange(margin, size - margin, dtype=np.float32) - self.c)[None]
    h = size - 2 * margin
    self.centre = centre  # [P, H*H], rows first
    self.centre_t = np.ascontiguousarray(centre.reshape(-1, h, h).transpose(0, 2, 1)).reshape(
      len(b), -1
    )
    self.rows_t = self.cols = None

  def _coords(self, params, axis):
    return self.c + self.offsets / params[:, :1] + params[:, axis : axis + 1]

  def _rows_t(self, params):
    """b's rows at (scale, ty), transposed: [P, S, H]."""
    rows = _sample_rows(self.b, self._coords(params, 1))
    return np.ascontiguousarray(rows.transpose(0, 2, 1))

  def hold(self, params, axis):
    """Keeps the pass of `params` that the trials on translation `axis` (1: ty, 2: tx) reuse."""
    if axis == 1:  # b's columns at (scale, tx): [P, S, H]
      cols = _sample_rows(self.bt, self._coords(params, 2))
      self.cols = np.ascontiguousarray(cols.transpose(0, 2, 1))
    else:
      self.rows_t = self._rows_t(params)

  def warped(self, params):
    """[P, H*H], rows first."""
    both = _sample_rows(self._rows_t(params), self._coords(params, 2))
    return both.transpose(0, 2, 1).reshape(len(self.b), -1)

  def score(self, params, axis=0):
    """Correlation of a's centre with b warped by `params`, which differ from the held ones on
    `axis` only (0: any)."""
    if axis == 1:
      w, centre = _sample_rows(self.cols, self._coords(params, 1)), self.centre
    elif axis == 2:
      w, centre = _sample_rows(self.rows_t, self._coords(params, 2)), self.centre_t
    else:
      w, centre = self.warped(params), self.centre
    w = w.reshape(len(w), -1)
    # the centre is standardised (zero mean), so only w's norm about its mean is needed
    n = w.shape[1]
    sums = w.sum(1)
    norms = np.sqrt(np.maximum(np.einsum("pi,pi->p", w, w) - sums * sums / n, 1e-12))
    return np.einsum("pi,pi->p", centre, w) / np.maximum(norms, 1e-6)


def _standardised(x):
  x = x - x.mean(-1, keepdims=True)
  return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-6)


def _agreeing_correlation(x, y, share):
  """Correlation of standardised x[k], y[k] on the `share` of pixels where they differ least."""
  gap = np.abs(x - y)
  k = max(2, int(share * x.shape[1]))
  kept = gap <= np.partition(gap, k - 1, axis=1)[:, k - 1 : k]
  count = kept.sum(1, keepdims=True)
  x = np.where(kept, x - np.where(kept, x, 0).sum(1, keepdims=True) / count, 0)
  y = np.where(kept, y - np.where(kept, y, 0).sum(1, keepdims=True) / count, 0)
  norms = np.linalg.norm(x, axis=1) * np.linalg.norm(y, axis=1)
  return (x * y).sum(1) / np.maximum(norms, 1e-6)


def _similarity_chunk(a, b, max_shift, zoom, mirror):
  """Similarity of band-passed a[k] and b[k] (uint8 [P, S, S] each) -> float32 [P].

  1. the best integer translation, zoom (1 -/+ zoom) and mirror image (FFT, every translation at
  once); 2. a pattern search from there over a continuous zoom and sub-pixel translation: copies
  rescaled by other factors than the hash's line up only there, different people do not gain;
  3. the correlation on the AGREEING_SHARE of pixels that agree best."""
  size = a.shape[1]
  margin = _margin(size, max_shift)
  fa, fb = _band_passed(a), _band_passed(b)
  alignment = _coarse_alignment(fa, fb, max_shift, hashing.zoom_scales(zoom), mirror)
  fb = np.where(alignment[:, 1, None, None] > 0, fb[:, :, ::-1], fb)
  centre = _standardised(fa[:, margin : size - margin, margin : size - margin].reshape(len(a), -1))
  warps = _Warps(fb, centre, margin)
  scale = alignment[:, 0]
  params = np.stack([scale, alignment[:, 2] / scale, alignment[:, 3] / scale], 1)
  best = warps.score(params)
  steps = np.tile(np.array([[zoom / 4, 0.5, 0.5]], np.float32), (len(a), 1))
  for _ in range(REFINE_ROUNDS):
    moved = np.zeros(len(a), bool)
    for axis in range(3) if zoom else (1, 2):
      if axis:
        warps.hold(params, axis)
      for sign in (1, -1):
        trial = params.copy()
        trial[:, axis] += sign * steps[:, axis]
        value = warps.score(trial, axis)
        better = value > best
        params[better], best[better] = trial[better], value[better]
        moved |= better
    steps[~moved] /= 2
  warped = _standardised(warps.warped(params))
  return _agreeing_correlation(centre, warped, AGREEING_SHARE).astype(np.float32)


def similarity(images, i, j, settings, other=None, progress=None):
  """Verified similarity of the pairs (images[i], other[j]) (other = images by default): float32.

  The correlation (-1..1) of the band-passed images at their best alignment (translations up to
  --max_shift px refined to sub-pixel, zooms around 1 -/+ --zoom, the mirror image when mirrored
  copies are matched), on the pixels that agree best; invariant to brightness and contrast.
  `progress` (fer_jax.data.progress.Progress) counts the pairs done.
  """
  other = images if other is None else other
  out = np.zeros(len(i), np.float32)
  for start in range(0, len(i), VERIFY_CHUNK):
    sl = slice(start, start + VERIFY_CHUNK)
    out[sl] = _similarity_chunk(
      images[i[sl]], other[j[sl]], settings.max_shift, settings.zoom, settings.mirror
    )
    if progress is not None:
      progress.update(len(out[sl]))
  return out


# ---------------------------------------------------------------------- verified pairs and groups


class Pairs:
  """Candidate pairs (i < j) with their hash `distance`, `kind` of match, verified `similarity`
  and `verdict`: 'exact' (same pixels), 'near' (similarity >= --min_similarity, or reviewed as a
  duplicate) or 'distinct'. `review` holds a person's decision ('' if none)."""

  def __init__(self, i, j, distance, kind, similarity, verdict):
    self.i, self.j, self.distance, self.kind = i, j, distance, kind
    self.similarity, self.verdict = similarity, verdict
    self.review = np.full(len(i), "", object)

  def __len__(self):
    return len(self.i)

  @property
  def linked(self):
    return self.verdict != "distinct"

  def __add__(self, other):
    fields = ("i", "j", "distance", "kind", "similarity", "verdict")
    return Pairs(*(np.concatenate([getattr(self, f), getattr(other, f)]) for f in fields))


def find_pairs(images, hashes, settings):
  """Candidates by hash, each verified on the pixels -> Pairs. `images`: gray uint8 [N, S, S].

  The hash misses some copies of a photograph (a 3 px shift, a one-sided crop) that it finds
  for another copy of it; two verified pairs A-B and B-C therefore make A-C a candidate as
  well ('second hop'), verified like the others, so a drop can rest on a direct link.
  """
  i, j = hashing.duplicate_pairs(hashes, settings.threshold)
  pairs = verify_pairs(images, hashes, i, j, settings)
  hop_i, hop_j = second_hop(pairs, len(hashes))
  if not len(hop_i):
    return pairs
  hop = verify_pairs(images, hashes, hop_i, hop_j, settings, label="verifying second hops")
  hop.kind[hop.kind != "exact"] = "second hop"
  return pairs + hop


def second_hop(pairs, n):
  """(i, j), i < j: the pairs not yet candidates whose images are linked to a common image.

  Only through images with at most MAX_HOP_DEGREE links: a large group of copies (a frame
  repeated a thousand times) would otherwise ask for a million pairs.
  """
  linked = pairs.linked
  ends = np.concatenate([pairs.i[linked], pairs.j[linked]])
  others = np.concatenate([pairs.j[linked], pairs.i[linked]])
  order = np.argsort(ends, kind="stable")
  ends, others = ends[order], others[order]
  starts = np.searchsorted(ends, np.arange(n + 1))
  known = set((pairs.i * n + pairs.j).tolist())
  found = set()
  for b in np.flatnonzero((np.diff(starts) >= 2) & (np.diff(starts) <= MAX_HOP_DEGREE)):
    twins = np.sort(others[starts[b] : starts[b + 1]])
    a, c = np.triu_indices(len(twins), 1)
    found.update(k for k in (twins[a] * n + twins[c]).tolist() if k not in known)
  keys = np.array(sorted(found), np.int64)
  return keys // n, keys % n


def verify_pairs(images, hashes, i, j, settings, label="verifying"):
  """Candidate pairs (i, j) -> Pairs with their match kind, similarity and verdict."""
  distance, kind = hashing.pair_match(hashes, i, j)
  exact = kind == "exact"
  sim = np.ones(len(i), np.float32)
  progress = Progress(label, int((~exact).sum()))
  sim[~exact] = similarity(images, i[~exact], j[~exact], settings, progress=progress)
  progress.close()
  verdict = np.where(exact, "exact", np.where(sim >= settings.min_similarity, "near", "distinct"))
  return Pairs(i, j, distance, kind, sim, verdict.astype(object))


def group_labels(n, pairs):
  """Connected components of the linked (exact or near) pairs -> group id per image (int64 [n])."""
  keep = pairs.linked
  graph = coo_matrix(
    (np.ones(int(keep.sum()), np.int8), (pairs.i[keep], pairs.j[keep])), shape=(n, n)
  )
  return connected_components(graph, directed=False)[1].astype(np.int64)


def groups_of(n, pairs):
  """Lists of member indices (sorted) of every group with two or more images, in index order."""
  members = collections.defaultdict(list)
  for idx, g in enumerate(group_labels(n, pairs)):
    members[g].append(idx)
  return [m for m in sorted(members.values()) if len(m) > 1]


def find_groups(images, settings, workers=1):
  """Exact and verified near duplicates of an image array -> (Pairs, groups): the definition
  `dedup` applies to files, for callers holding arrays (the audit)."""
  images = hashing.gray(images)
  pairs = find_pairs(images, hashing.hash_images(images, settings, workers), settings)
  return pairs, groups_of(len(images), pairs)


# ---------------------------------------------------------------------------- human review

PAIR_COLUMNS = (
  "group",
  "file_a",
  "split_a",
  "class_a",
  "file_b",
  "split_b",
  "class_b",
  "hash_distance",
  "match",
  "similarity",
  "verdict",
  "review",
  "outcome",
)
REVIEW_PAIR_COLUMNS = (
  "rank",
  "file_a",
  "file_b",
  "hash_distance",
  "match",
  "similarity",
  "verdict",
  "decision",
)
PAIR_DECISIONS = ("duplicate", "distinct")


def borderline(pairs, min_similarity, count):
  """Indices of the `count` non-exact pairs whose similarity is closest to the threshold."""
  near = np.flatnonzero(pairs.kind != "exact")
  return near[np.argsort(np.abs(pairs.similarity[near] - min_similarity), kind="stable")][:count]


def pairs_sheet(images, pairs, chosen, min_similarity):
  """PNG bytes: each chosen pair side by side with its similarity, hash distance and verdict."""
  cols = 4
  rows = max(1, -(-len(chosen) // cols))
  fig = Figure(figsize=(cols * 2.2, rows * 1.45))  # no pyplot: no global state, no GUI backend
  axes = fig.subplots(rows, cols, squeeze=False)
  for ax in axes.ravel():
    ax.axis("off")
  for ax, (rank, k) in zip(axes.ravel(), enumerate(chosen, 1)):
    a, b = images[pairs.i[k]], images[pairs.j[k]]
    ax.imshow(
      np.concatenate([a, np.full((a.shape[0], 2), 255, np.uint8), b], axis=1),
      cmap="gray",
      vmin=0,
      vmax=255,
    )
    ax.set_title(
      f"#{rank} sim {pairs.similarity[k]:.3f} ({pairs.verdict[k]})\n"
      f"hash {pairs.distance[k]} bits, {pairs.kind[k]}",
      fontsize=6.5,
    )
  if not len(chosen):
    axes[0, 0].text(0.5, 0.5, "no near pairs", ha="center", va="center")
  fig.suptitle(
    f"Pairs closest to --min_similarity {min_similarity} (duplicate at or above)", fontsize=8
  )
  fig.tight_layout()
  buf = io.BytesIO()
  fig.savefig(buf, format="png", dpi=110)
  return buf.getvalue()


def apply_pair_review(paths, pairs, tree, records):
  """Overrides verdicts with a person's decisions from reviewed pairs.csv files.

  Their paths are relative to SRC.
  """
  index = {tree.tree_path(r): n for n, r in enumerate(records)}
  by_pair = {(int(a), int(b)): k for k, (a, b) in enumerate(zip(pairs.i, pairs.j))}
  for path in paths:
    try:
      with open(path, newline="", encoding="utf-8-sig") as f:  # -sig: a CSV saved by a spreadsheet
        reader = csv.DictReader(f)
        missing = {"file_a", "file_b", "decision"} - set(reader.fieldnames or [])
        if missing:
          raise common.ToolError(f"--review {path}: no column {', '.join(sorted(missing))}")
        for row in reader:
          where = f"--review {path} line {reader.line_num}"
          decision = (row["decision"] or "").strip().lower()
          if not decision:
            continue
          if decision not in PAIR_DECISIONS:
            raise common.ToolError(
              f"{where}: decision {row['decision']!r} is not one of "
              f"{' | '.join(PAIR_DECISIONS)} | empty"
            )
          ends = [index.get(os.path.normpath(row[c] or "")) for c in ("file_a", "file_b")]
          if None in ends:
            raise common.ToolError(
              f"{where}: {row['file_a']!r} / {row['file_b']!r} are not images of SRC {tree.root}"
            )
          k = by_pair.get((min(ends), max(ends)))
          if k is None:
            raise common.ToolError(
              f"{where}: {row['file_a']} and {row['file_b']} are not a candidate "
              "pair (duplicates.csv lists them all)"
            )
          if pairs.review[k] and pairs.review[k] != decision:
            raise common.ToolError(f"{where}: the pair has another decision in an earlier row")
          pairs.review[k] = decision
          if pairs.kind[k] != "exact":  # identical pixels stay identical whatever is decided
            pairs.verdict[k] = "near" if decision == "duplicate" else "distinct"
    except FileNotFoundError:
      raise common.ToolError(f"--review {path}: no such file") from None
