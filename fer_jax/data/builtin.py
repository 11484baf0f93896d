"""Built-in synthetic faces: the default dataset when no data root is given.

Each class is a distribution over facial geometry (mouth curvature and opening, brow height
and slant, eye opening; see fer_jax/data/synthetic.py) that overlaps its neighbours, neutral and
sad most of all, as in the study's real data. Faces vary in size, position, tilt, lighting,
noise, background and occluders, so a linear classifier on pixels does not solve the task
while a small CNN does. Deterministic from `config.data.builtin_seed`; each split is drawn
from its own sub-seed. See docs/builtin_data.md.
"""

import numpy as np

from fer_jax import data
from fer_jax.data import file_tree, synthetic

# Expression prototypes: class -> {parameter: (mean, std)}; unlisted parameters take NEUTRAL's.
# Values are in face units (see synthetic.py); stds are wide enough that neighbours overlap.
NEUTRAL = {
  "mouth_lift": (0.0, 0.025),
  "mouth_open": (0.0, 0.012),
  "mouth_width": (0.25, 0.03),
  "mouth_asym": (0.0, 0.012),
  "teeth": (0.0, 0.15),
  "brow_raise": (0.08, 0.025),
  "brow_slant": (0.0, 0.035),
  "brow_arch": (0.025, 0.012),
  "eye_open": (0.8, 0.14),
}
PROTOTYPES = {
  "neutral": {},
  "happy": {
    "mouth_lift": (0.11, 0.04),
    "mouth_open": (0.03, 0.04),
    "mouth_width": (0.3, 0.035),
    "teeth": (0.6, 0.3),
    "eye_open": (0.6, 0.15),
  },
  "sad": {
    "mouth_lift": (-0.05, 0.03),
    "mouth_width": (0.23, 0.03),
    "brow_slant": (0.07, 0.04),
    "brow_arch": (0.015, 0.012),
    "eye_open": (0.65, 0.15),
  },
  "surprise": {
    "mouth_open": (0.12, 0.04),
    "mouth_width": (0.16, 0.03),
    "brow_raise": (0.16, 0.035),
    "brow_arch": (0.05, 0.015),
    "eye_open": (1.15, 0.14),
  },
  "angry": {
    "mouth_lift": (-0.02, 0.03),
    "mouth_width": (0.22, 0.03),
    "brow_raise": (0.03, 0.02),
    "brow_slant": (-0.07, 0.035),
    "eye_open": (0.6, 0.15),
  },
  "disgust": {
    "mouth_lift": (-0.035, 0.03),
    "mouth_open": (0.02, 0.02),
    "mouth_asym": (0.02, 0.02),
    "teeth": (0.3, 0.3),
    "brow_raise": (0.04, 0.02),
    "brow_slant": (-0.04, 0.035),
    "eye_open": (0.45, 0.12),
  },
  "fear": {
    "mouth_lift": (-0.015, 0.025),
    "mouth_open": (0.06, 0.03),
    "mouth_width": (0.28, 0.035),
    "teeth": (0.3, 0.3),
    "brow_raise": (0.13, 0.03),
    "brow_slant": (0.045, 0.035),
    "eye_open": (1.1, 0.14),
  },
  "contempt": {"mouth_lift": (0.01, 0.025), "mouth_asym": (0.045, 0.02), "eye_open": (0.7, 0.14)},
}
# Where a parameter stops making sense: mouths cannot open negatively, eyes cannot vanish.
LIMITS = {
  "mouth_open": (0, 0.22),
  "mouth_width": (0.1, 0.4),
  "teeth": (0, 1),
  "brow_raise": (0.0, 0.25),
  "brow_arch": (0, 0.08),
  "eye_open": (0.12, 1.4),
}
SPLIT_SIZE = {
  "train": 1,
  "val": 1 / 8,
  "test": 1 / 8,
}  # images per class, relative to builtin_per_class


def prototype(name):
  """The (mean, std) of every expression parameter for class `name`."""
  key = file_tree.canonical_class(name)  # FER+ and AffectNet spell classes as nouns
  if key not in PROTOTYPES:
    raise ValueError(
      f"config.data.classes: the built-in faces have no class {name!r}; "
      f"known: {', '.join(sorted(PROTOTYPES))}"
    )
  return {**NEUTRAL, **PROTOTYPES[key]}


def sample_expressions(labels, classes, rng):
  """Per-image expression parameters for integer `labels` indexing `classes`."""
  protos = [prototype(c) for c in classes]
  expression = {}
  for p in synthetic.EXPRESSION_PARAMS:
    mean = np.array([proto[p][0] for proto in protos], np.float32)[labels]
    std = np.array([proto[p][1] for proto in protos], np.float32)[labels]
    value = mean + std * rng.standard_normal(len(labels), np.float32)
    expression[p] = np.clip(value, *LIMITS.get(p, (-np.inf, np.inf))).astype(np.float32)
  return expression


def generate(classes, per_class, size=48, channels=1, seed=0):
  """(images uint8 [N, size, size, channels], labels int32 [N], expression dict).

  Class-balanced and shuffled.

  `seed` is anything np.random.default_rng accepts (an int, a SeedSequence).
  """
  rng = np.random.default_rng(seed)
  labels = rng.permutation(np.repeat(np.arange(len(classes), dtype=np.int32), per_class))
  expression = sample_expressions(labels, classes, rng)
  look = synthetic.sample_look(len(labels), rng)
  return synthetic.draw(expression, look, size, channels, rng), labels, expression


def generate_splits(data_cfg):
  """{split: (images, labels, expression)} for config.data; `load` keeps images and labels."""
  classes = tuple(data_cfg.classes)
  for c in classes:
    prototype(c)  # fail on an unknown class before drawing anything
  if data_cfg.builtin_per_class < 1:
    raise ValueError(
      f"config.data.builtin_per_class: must be >= 1, got {data_cfg.builtin_per_class}"
    )
  if data_cfg.image_size < 16:
    raise ValueError(
      "config.data.image_size: the built-in faces need at least 16 pixels, "
      f"got {data_cfg.image_size}"
    )
  splits = {}
  for i, name in enumerate(data.SPLITS):
    per_class = max(1, int(data_cfg.builtin_per_class * SPLIT_SIZE[name]))
    # independent sub-seeds: a split's faces do not depend on the other splits' sizes
    seed = np.random.SeedSequence([data_cfg.builtin_seed, i])
    splits[name] = generate(classes, per_class, data_cfg.image_size, data_cfg.channels, seed)
  return splits


def load(data_cfg):
  """The built-in faces as a `fer_jax.data.Dataset` with splits train, val and test."""
  splits = {
    name: data.Split(images, labels)
    for name, (images, labels, _) in generate_splits(data_cfg).items()
  }
  return data.Dataset(
    name=f"builtin-faces(seed={data_cfg.builtin_seed})",
    classes=tuple(data_cfg.classes),
    splits=splits,
  )
