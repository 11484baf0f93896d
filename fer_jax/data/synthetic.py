"""Procedural face drawing: expression geometry + nuisance -> grayscale or tinted RGB images.

Faces are drawn analytically, vectorised over a batch with NumPy: every part is a signed
distance (or a distance to a curve) in face coordinates, turned into anti-aliased coverage
and alpha-composited. No per-image Python loop (docs/performance.md has the cost per face).
Any output size is drawn directly (no resize).

Face coordinates: the face is centred near the origin, u to the viewer's right, v down;
1 unit = half the image side when the face scale is 1. A pixel maps to face coordinates
through the face's position, scale and in-plane tilt (the `look`).

`draw(expression, look, size, channels, rng)` takes two dicts of per-image arrays:
  expression (what a classifier should read; see EXPRESSION_PARAMS):
    mouth_lift   corner lift of the mouth line (+ smile, - frown), face units
    mouth_open   half-height of the mouth opening at its centre, face units (0 = closed)
    mouth_width  half-width of the mouth, face units
    mouth_asym   one-sided corner lift (contempt's smirk), face units
    teeth        fraction of the opening filled by upper teeth, 0..1
    brow_raise   gap between eye top and brow, face units
    brow_slant   rise of the inner brow ends over their outer ends, face units (+ sad, - angry)
    brow_arch    extra height of the brow middle, face units
    eye_open     eye height relative to a relaxed eye (0.1 = nearly shut, 1.3 = wide)
  look (nuisance; drawn by `sample_look`): position, scale, tilt, face shape, skin, hair,
    background texture, lighting, contrast, noise, edge softness and occluders.
"""

import numpy as np

EXPRESSION_PARAMS = (
  "mouth_lift",
  "mouth_open",
  "mouth_width",
  "mouth_asym",
  "teeth",
  "brow_raise",
  "brow_slant",
  "brow_arch",
  "eye_open",
)

# Fixed layout of a face, in face units (the expression moves parts around these).
FACE_CENTER_V = 0.05
EYE_U, EYE_V, EYE_HALF_WIDTH, EYE_HALF_HEIGHT = 0.32, -0.16, 0.14, 0.085
IRIS_RADIUS = 0.06
BROW_HALF_WIDTH, BROW_HALF_THICKNESS = 0.17, 0.038
NOSTRIL_U, NOSTRIL_V, NOSTRIL_RADIUS = 0.07, 0.24, 0.028
MOUTH_V, LIP_HALF_THICKNESS = 0.52, 0.03
LID = 0.022  # thickness of the dark lid line around an eye
LENS_HALF_WIDTH, LENS_HALF_HEIGHT, FRAME = 0.2, 0.15, 0.018  # glasses
HAND_ASPECT = 1.4  # a hand (or any blob occluder) is this much taller than wide

CHUNK = 128  # images drawn at once: keeps temporaries small enough to stay in cache (fastest here)


def sample_look(n, rng):
  """Per-image nuisance: where the face is, how it looks, lighting, noise and occluders."""

  def uniform(lo, hi):
    return rng.uniform(lo, hi, n).astype(np.float32)

  def coin(p):
    return rng.random(n) < p

  look = {
    "scale": uniform(0.8, 1.12),  # FER crops are tight: the face fills most of the frame
    "center_x": uniform(-0.12, 0.12),
    "center_y": uniform(-0.1, 0.12),
    "tilt": np.deg2rad(uniform(-16, 16)),
    "face_width": uniform(0.68, 0.82),
    "face_height": uniform(0.92, 1.08),
    "skin": uniform(85, 205),
    "hair": np.where(coin(0.7), uniform(10, 70), uniform(140, 230)).astype(np.float32),
    "hairline": uniform(-0.95, -0.6),
    "hair_slope": uniform(-0.25, 0.25),
    "background": uniform(20, 235),
    "bg_texture": uniform(0, 35),
    "softness": uniform(0.9, 1.8),  # edge blur, in pixels (focus / compression)
    "light_x": uniform(-0.35, 0.35),
    "light_y": uniform(-0.25, 0.25),
    "contrast": uniform(0.65, 1.3),
    "brightness": uniform(-30, 30),
    "noise": uniform(1, 9),
    "gaze_u": uniform(-0.03, 0.03),
    "gaze_v": uniform(-0.015, 0.015),
    # occluders: a hand or object blob, a bar (microphone, scarf, text strip), glasses
    "hand": coin(0.25),
    "hand_u": uniform(-0.7, 0.7),
    "hand_v": uniform(0.1, 1.0),
    "hand_radius": uniform(0.18, 0.35),
    "hand_tone": uniform(70, 220),
    "bar": coin(0.15),
    "bar_angle": np.deg2rad(uniform(-90, 90)),
    "bar_offset": uniform(-0.9, 0.9),
    "bar_half_width": uniform(0.03, 0.09),
    "bar_tone": uniform(0, 255),
    "glasses": coin(0.2),
    "sunglasses": coin(0.25),  # among faces with glasses: dark lenses hide the eyes
  }
  # texture: a few random low-frequency waves
  look["bg_freq"] = (rng.uniform(2, 9, (n, 3, 2)) * rng.choice([-1, 1], (n, 3, 2))).astype(
    np.float32
  )
  look["bg_phase"] = rng.uniform(0, 2 * np.pi, (n, 3)).astype(np.float32)
  # mild colour casts for RGB output (ignored for grayscale)
  look["skin_tint"] = (
    np.array([1.07, 1.0, 0.88], np.float32) + rng.uniform(-0.04, 0.04, (n, 3))
  ).astype(np.float32)
  look["bg_tint"] = (1 + rng.uniform(-0.1, 0.1, (n, 3))).astype(np.float32)
  return look


def _rows(arrays, sl):
  """The rows `sl` of every array of a dict."""
  return {k: v[sl] for k, v in arrays.items()}


def draw(expression, look, size, channels, rng):
  """uint8 [N, size, size, channels] faces; `rng` supplies the pixel noise."""
  if channels not in (1, 3):
    raise ValueError(f"config.data.channels: {channels} is not 1 or 3")
  n = len(expression["eye_open"])
  out = np.empty((n, size, size, channels), np.uint8)
  for start in range(0, n, CHUNK):
    sl = slice(start, min(start + CHUNK, n))
    part_look = _rows(look, sl)
    gray, face_alpha = _render(_rows(expression, sl), part_look, size)
    out[sl] = _finish(gray, face_alpha, part_look, channels, rng)
  return out


def _col(a):
  """Per-image scalars [n] -> [n, 1, 1] to broadcast against pixels."""
  return np.asarray(a, np.float32)[:, None, None]


def _coverage(signed_distance, aa):
  """Anti-aliased coverage of the region where the signed distance is negative."""
  return np.clip(0.5 - signed_distance / aa, 0, 1)


def _ellipse_distance(u, v, a, b):
  """Approximate signed distance to an axis-aligned ellipse (first order in its implicit form)."""
  k = np.sqrt((u / a) ** 2 + (v / b) ** 2)
  grad = np.sqrt((u / a**2) ** 2 + (v / b**2) ** 2)
  return k * (k - 1) / np.maximum(grad, 1e-6)


def _curve_band_distance(u, v, center_u, half_width, coeffs, half_thickness):
  """Signed distance to a thick curve v = c0 + c1 t + c2 t^2.

  t = (u - center_u) / half_width, in [-1, 1].
  """
  c0, c1, c2 = coeffs
  t = (u - center_u) / half_width
  slope = (c1 + 2 * c2 * t) / half_width
  across = np.abs(v - (c0 + c1 * t + c2 * t * t)) / np.sqrt(1 + slope * slope) - half_thickness
  along = np.abs(u - center_u) - half_width
  return np.maximum(across, along)


def _over(img, colour, coverage):
  """Alpha-composites `colour` over `img` with `coverage`."""
  return img + (colour - img) * coverage


def _face_coords(x, y, lk):
  """Image coordinates -> face coordinates (undoes position, tilt and scale)."""
  px, py = x - lk["center_x"], y - lk["center_y"]
  cos, sin = np.cos(lk["tilt"]), np.sin(lk["tilt"])
  return (cos * px + sin * py) / lk["scale"], (-sin * px + cos * py) / lk["scale"]


def _paint(img, lk, box, paint):
  """img with `paint(patch, u, v) -> patch` applied around a box of the face, in place.

  `box` = (centre u, centre v, half-width, half-height) in face units; centres may differ per
  image ([n]). Small parts are drawn on a window around them instead of the whole image
  (several times less work); windows have one size across the batch so it stays one array,
  and are shifted inside the image rather than clipped, so no pixel is written twice.
  """
  n, size = img.shape[0], img.shape[1]
  cu, cv, hu, hv = box
  scale, cos, sin = lk["scale"][:, 0, 0], np.cos(lk["tilt"][:, 0, 0]), np.sin(lk["tilt"][:, 0, 0])
  px_per_unit = scale * size / 2
  margin = 3  # pixels: anti-aliasing reaches up to about one blurred pixel beyond an edge
  corners = []
  for centre, offset, reach in (
    (lk["center_x"][:, 0, 0], cos * cu - sin * cv, np.abs(cos) * hu + np.abs(sin) * hv),
    (lk["center_y"][:, 0, 0], sin * cu + cos * cv, np.abs(sin) * hu + np.abs(cos) * hv),
  ):
    mid = (centre + scale * offset + 1) * size / 2 - 0.5  # window centre, in pixel indices
    extent = min(size, int(np.ceil(2 * np.max(reach * px_per_unit))) + 2 * margin + 1)
    first = np.clip(np.rint(mid - (extent - 1) / 2), 0, size - extent).astype(np.int64)
    corners.append(first[:, None] + np.arange(extent))
  rows, cols = corners[1], corners[0]

  def grid(i):
    return ((i + 0.5) / size * 2 - 1).astype(np.float32)

  u, v = _face_coords(grid(cols)[:, None, :], grid(rows)[:, :, None], lk)
  index = (np.arange(n)[:, None, None] * size + rows[:, :, None]) * size + cols[:, None, :]
  np.put(img, index, paint(np.take(img, index), u, v))


def _render(ex, lk, size):
  """Clean grayscale faces (float, 0..255) and the face's alpha, [n, size, size]."""
  ex = {k: _col(v) for k, v in ex.items()}
  lk = {k: (_col(v) if v.ndim == 1 else v) for k, v in lk.items()}
  grid = (np.arange(size, dtype=np.float32) + 0.5) / size * 2 - 1
  x, y = grid[None, None, :], grid[None, :, None]
  u, v = _face_coords(x, y, lk)
  aa = lk["softness"] * (2 / size) / lk["scale"]  # one (blurred) pixel in face units
  s = lk["skin"]

  # background: flat tone plus low-frequency waves in image coordinates, each
  # sin(a x + b y + phase) split into 1-D factors (full-image sines are slow)
  waves = 0
  for i in range(3):
    ax = lk["bg_freq"][:, i, 0, None, None] * x
    by = lk["bg_freq"][:, i, 1, None, None] * y + lk["bg_phase"][:, i, None, None]
    waves = waves + np.sin(ax) * np.cos(by) + np.cos(ax) * np.sin(by)
  img = lk["background"] + lk["bg_texture"] * waves / 3

  # head: skin ellipse, shaded darker towards its rim; hair above a slanted hairline
  fv = v - FACE_CENTER_V
  face_d = _ellipse_distance(u, fv, lk["face_width"], lk["face_height"])
  rim = (u / lk["face_width"]) ** 2 + (fv / lk["face_height"]) ** 2
  face_alpha = _coverage(face_d, aa)
  img = _over(img, s * (1 - 0.18 * np.clip(rim, 0, 1)), face_alpha)
  hair_d = np.maximum(
    _ellipse_distance(u, fv, lk["face_width"] + 0.06, lk["face_height"] + 0.08),
    v - (lk["hairline"] + lk["hair_slope"] * u),
  )
  img = _over(img, lk["hair"], _coverage(hair_d, aa))

  # eyes, brows and glasses: one window per side reaching from the brow top to the lens bottom
  brow_v = (
    EYE_V - EYE_HALF_HEIGHT - ex["brow_raise"] - BROW_HALF_THICKNESS
  )  # brow centre line at rest
  top = (
    np.max(EYE_V - brow_v + ex["brow_arch"] + np.abs(ex["brow_slant"]) / 2) + BROW_HALF_THICKNESS
  )
  bottom = max(np.max(EYE_HALF_HEIGHT * ex["eye_open"]) + LID, LENS_HALF_HEIGHT + FRAME)
  half_u = max(BROW_HALF_WIDTH + BROW_HALF_THICKNESS, LENS_HALF_WIDTH + FRAME)

  def eye_and_brow(side):
    def paint(p, u, v):
      eu, ev = u - side * EYE_U, v - EYE_V
      eye_d = _ellipse_distance(eu, ev, EYE_HALF_WIDTH, EYE_HALF_HEIGHT * ex["eye_open"])
      p = _over(p, 0.3 * s, _coverage(eye_d - LID, aa))  # lids and lashes
      sclera = _coverage(eye_d, aa)
      p = _over(p, np.minimum(255, 1.2 * s + 30), sclera)
      iris = _coverage(np.hypot(eu - lk["gaze_u"], ev - lk["gaze_v"]) - IRIS_RADIUS, aa)
      p = _over(p, 0.18 * s, np.minimum(iris, sclera))
      # the brow's inner end (towards the nose, t = -side) rises by brow_slant
      coeffs = (brow_v - ex["brow_arch"], side * ex["brow_slant"] / 2, ex["brow_arch"])
      brow_d = _curve_band_distance(
        u, v, side * EYE_U, BROW_HALF_WIDTH, coeffs, BROW_HALF_THICKNESS
      )
      p = _over(p, np.minimum(0.35 * s, lk["hair"]), _coverage(brow_d, aa))
      lens_d = _ellipse_distance(eu, ev, LENS_HALF_WIDTH, LENS_HALF_HEIGHT)
      p = _over(p, 20.0, _coverage(lens_d, aa) * (lk["glasses"] * lk["sunglasses"]))
      return _over(p, 25.0, _coverage(np.abs(lens_d) - FRAME, aa) * lk["glasses"])

    return paint

  for side in (-1, 1):
    _paint(
      img,
      lk,
      (side * EYE_U, EYE_V + (bottom - top) / 2, half_u, (bottom + top) / 2),
      eye_and_brow(side),
    )
  bridge_v = EYE_V - 0.04

  def bridge(p, u, v):
    d = _curve_band_distance(u, v, 0, EYE_U - LENS_HALF_WIDTH, (bridge_v, 0, 0), FRAME)
    return _over(p, 25.0, _coverage(d, aa) * lk["glasses"])

  _paint(img, lk, (0, bridge_v, EYE_U - LENS_HALF_WIDTH, FRAME), bridge)

  def nostrils(p, u, v):
    for side in (-1, 1):
      p = _over(
        p, 0.5 * s, _coverage(np.hypot(u - side * NOSTRIL_U, v - NOSTRIL_V) - NOSTRIL_RADIUS, aa)
      )
    return p

  _paint(img, lk, (0, NOSTRIL_V, NOSTRIL_U + NOSTRIL_RADIUS, NOSTRIL_RADIUS), nostrils)

  # mouth: a lip line along v = MOUTH_V - lift t^2 - asym t, opened into an ellipse-like gap
  def mouth(p, u, v):
    t = u / ex["mouth_width"]
    line = MOUTH_V - ex["mouth_lift"] * t * t - ex["mouth_asym"] * t
    slope = (-2 * ex["mouth_lift"] * t - ex["mouth_asym"]) / ex["mouth_width"]
    gap = ex["mouth_open"] * np.sqrt(np.clip(1 - t * t, 0, 1))
    across = (v - line) / np.sqrt(1 + slope * slope)
    along = np.abs(u) - ex["mouth_width"]
    p = _over(
      p, 0.35 * s, _coverage(np.maximum(np.abs(across) - gap - LIP_HALF_THICKNESS, along), aa)
    )
    cavity = _coverage(np.maximum(np.abs(across) - gap, along), aa)
    p = _over(p, 0.12 * s, cavity)
    teeth = _coverage(np.maximum(across - (2 * ex["teeth"] - 1) * gap, along), aa)
    return _over(p, np.minimum(255, 1.15 * s + 40), np.minimum(teeth, cavity))

  corner = np.abs(ex["mouth_asym"])
  up = np.max(np.maximum(ex["mouth_lift"], 0) + corner + ex["mouth_open"]) + LIP_HALF_THICKNESS
  down = np.max(np.maximum(-ex["mouth_lift"], 0) + corner + ex["mouth_open"]) + LIP_HALF_THICKNESS
  _paint(img, lk, (0, MOUTH_V + (down - up) / 2, np.max(ex["mouth_width"]), (up + down) / 2), mouth)

  # occluders, drawn before lighting so they are lit with the face
  def hand(p, u, v):
    d = _ellipse_distance(
      u - lk["hand_u"], v - lk["hand_v"], lk["hand_radius"], HAND_ASPECT * lk["hand_radius"]
    )
    return _over(p, lk["hand_tone"], _coverage(d, aa) * lk["hand"])

  r = lk["hand_radius"][:, 0, 0]
  _paint(
    img,
    lk,
    (lk["hand_u"][:, 0, 0], lk["hand_v"][:, 0, 0], np.max(r), HAND_ASPECT * np.max(r)),
    hand,
  )
  if lk["bar"].any():  # a straight band across the whole image
    across_bar = np.abs(
      np.cos(lk["bar_angle"]) * x + np.sin(lk["bar_angle"]) * y - lk["bar_offset"]
    )
    img = _over(
      img, lk["bar_tone"], _coverage(across_bar - lk["bar_half_width"], 2 / size) * lk["bar"]
    )

  # lighting gradient across the image, then contrast and brightness
  img = img * (1 + lk["light_x"] * x + lk["light_y"] * y)
  mean = img.mean(axis=(1, 2), keepdims=True)
  img = (img - mean) * lk["contrast"] + mean + lk["brightness"]
  return img, face_alpha


def _finish(gray, face_alpha, lk, channels, rng):
  """Tints (RGB only), adds pixel noise and quantises to uint8 [n, H, W, channels]."""
  img = gray[..., None]
  if channels == 3:
    tint = (
      face_alpha[..., None] * lk["skin_tint"][:, None, None, :]
      + (1 - face_alpha[..., None]) * lk["bg_tint"][:, None, None, :]
    )
    img = img * tint
  img = img + rng.standard_normal(img.shape, np.float32) * lk["noise"][:, None, None, None]
  return np.clip(np.rint(img), 0, 255).astype(np.uint8)
