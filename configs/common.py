"""Defaults shared by every study config; each model file changes only what the study changed.

A config is a nested ConfigDict with the sections `data`, `model`, `loss`, `optim`,
`train`, `eval`, `evals`. Every field carries a short comment; docs/study.md tells the
study's values.
"""

import ml_collections

from fer_jax.config_loading import Rule, above, at_least, each, fraction, one_of, valid
from fer_jax.data import FER4, SPLITS

# Each section's valid values follow its fields; config_loading.check_values tests them all
# before a run creates anything.


def data_config():
  d = ml_collections.ConfigDict()
  # 'auto': built-in faces when `root` is empty, image folders for a directory,
  # FER2013 for a .csv file; or 'builtin' | 'folder' | 'fer2013' | 'ferplus' | 'tfds:<name>'.
  d.source = "auto"
  d.root = ""  # dataset root (folder, CSV file or TFDS data_dir); empty = built-in faces
  d.classes = FER4  # class names, in label order (4 by default; FER2013's 7 or FER+'s 8 also work)
  d.image_size = 48  # side of the square input, pixels
  d.channels = 1  # 1 = grayscale, 3 = RGB (colour-mode study)
  d.resize_filter = (
    "bilinear"  # Pillow filter used when decoding: nearest|bilinear|bicubic|lanczos|box|hamming
  )
  d.val_fraction = 0.1  # moved from train to val (stratified) when the data has no val split
  d.split_seed = 42  # seed of that stratified val split
  d.cache_dir = ".cache/fer_jax"  # per-dataset .npz caches (keyed by a fingerprint of the source)
  d.num_workers = (
    0  # decode workers (processes; threads once JAX is imported); 0 = one per CPU core
  )
  d.ferplus_ties = "drop"  # FER+ vote ties: drop | first (first class in `classes` order)
  d.ferplus_min_votes = 0  # FER+: drop faces whose winning class has fewer votes
  d.ferplus_unknown = (
    "drop"  # FER+: drop faces that unknown / not-a-face (NF) win | ignore those columns
  )
  d.tfds_splits = (
    ""  # TFDS: '' = normalise TFDS split names; or 'train=train[:90%],val=train[90%:],test=test'
  )
  d.tfds_image_key = "image"  # TFDS: the image feature
  d.tfds_label_key = "label"  # TFDS: the ClassLabel feature
  d.builtin_per_class = 600  # built-in faces: train images per class (val, test get 1/8 each)
  d.builtin_seed = 0  # built-in faces: generator seed
  return d


valid(
  "data",
  source=Rule(
    lambda v: v in ("auto", "builtin", "folder", "fer2013", "ferplus") or v.startswith("tfds:"),
    "auto | builtin | folder | fer2013 | ferplus | tfds:<name>",
  ),
  classes=Rule(lambda v: len(set(v)) == len(v) >= 2, "at least 2 distinct class names"),
  image_size=at_least(8),
  channels=one_of(1, 3),
  resize_filter=one_of("nearest", "bilinear", "bicubic", "lanczos", "box", "hamming"),
  val_fraction=Rule(lambda v: 0 < v < 1, "in (0, 1)"),
  split_seed=at_least(0),
  num_workers=at_least(0),
  ferplus_ties=one_of("drop", "first"),
  ferplus_min_votes=at_least(0),
  ferplus_unknown=one_of("drop", "ignore"),
  builtin_per_class=at_least(1),
  builtin_seed=at_least(0),
)


def model_config():
  m = ml_collections.ConfigDict()
  m.name = "cnn"  # registry name: cnn | vgg16 | resnet50v2 | efficientnet_b0 | mini_xception
  m.widths = (64, 128, 256)  # conv filters per block
  m.convs_per_block = 2  # 3x3 'same' convs in each block
  # where BatchNorm goes: conv_bn_relu (Model 0) | conv_relu_bn (after every conv, Model A/B)
  # | block_end (one BN after the block's convs, Model D / colour-mode) | none
  m.bn_placement = "conv_relu_bn"
  m.pool_after = (True, True, True)  # 2x2 max-pool after each block?
  m.block_dropouts = (0.25, 0.30, 0.40)  # dropout after each block (0 = none)
  m.head_pool = "flatten"  # flatten | gap (global average pool)
  m.head_pre_dropout = 0.0  # dropout between the pooled features and the first Dense
  m.dense_widths = (256,)  # hidden Dense layers (ReLU)
  m.dense_bn = True  # BatchNorm after each hidden Dense
  m.dense_dropouts = (0.5,)  # dropout after each hidden Dense
  m.bn_momentum = 0.99  # Keras BatchNormalization defaults
  m.bn_epsilon = 1e-3
  # auto: on CPU each conv layer runs the implementation measured fastest for its shape on this CPU
  # (cached in ~/.cache/fer_jax/conv_choice.json; docs/performance.md), XLA's elsewhere | xla | im2col | winograd
  m.conv_impl = "auto"
  m.dtype = "float32"  # compute dtype: float32 | bfloat16 (params stay float32)
  m.init_from = ""  # pretrained weights file (transfer models)
  return m


valid(
  "model",
  widths=each(at_least(1), min_len=1),
  convs_per_block=at_least(1),
  bn_placement=one_of("conv_bn_relu", "conv_relu_bn", "block_end", "none"),
  block_dropouts=each(fraction(high_open=True)),
  head_pool=one_of("flatten", "gap"),
  head_pre_dropout=fraction(high_open=True),
  dense_widths=each(at_least(1)),
  dense_dropouts=each(fraction(high_open=True)),
  bn_momentum=fraction(),
  bn_epsilon=above(0),
  conv_impl=one_of("auto", "xla", "im2col", "winograd"),
  dtype=one_of("float32", "bfloat16"),
)


def loss_config():
  l = ml_collections.ConfigDict()
  l.name = "cross_entropy"  # cross_entropy | focal
  l.label_smoothing = 0.1  # targets y(1-eps) + eps/K
  l.focal_gamma = 2.0
  l.focal_alpha = 0.25
  l.class_weights = "balanced"  # balanced (n / (K * count_c)) | none
  l.l2_conv = 0.0  # Keras-style L2 (lambda * sum w^2) on every conv kernel
  l.l2_hidden_dense = 0.0  # ... on the hidden Dense kernels
  l.l2_output_dense = 0.0  # ... on the output Dense kernel
  return l


valid(
  "loss",
  name=one_of("cross_entropy", "focal"),
  label_smoothing=fraction(high_open=True),
  focal_gamma=at_least(0),
  focal_alpha=fraction(),
  class_weights=one_of("balanced", "none"),
  l2_conv=at_least(0),
  l2_hidden_dense=at_least(0),
  l2_output_dense=at_least(0),
)


def optim_config():
  o = ml_collections.ConfigDict()
  # Adam (the study's only optimiser), with per-group learning rates for transfer backbones.
  o.lr = 5e-4  # initial learning rate
  o.b1 = 0.9
  o.b2 = 0.999
  o.eps = 1e-7  # Keras Adam's epsilon
  o.schedule = "constant"  # constant | cosine
  o.cosine_alpha = 0.01  # cosine decays to alpha * lr ...
  o.cosine_epochs = 75  # ... over this many epochs (decay steps = steps/epoch x epochs)
  o.plateau = True  # ReduceLROnPlateau on val_loss (Keras's rule: mode min, min_delta 1e-4)
  o.plateau_factor = 0.5
  o.plateau_patience = 5
  o.plateau_min_lr = 1e-6
  o.finetune_lr = 1e-5  # transfer 'finetune': learning rate of the unfrozen backbone blocks
  return o


valid(
  "optim",
  name=one_of("adam"),
  lr=above(0),
  b1=fraction(high_open=True),
  b2=fraction(high_open=True),
  eps=above(0),
  schedule=one_of("constant", "cosine"),
  cosine_alpha=fraction(),
  cosine_epochs=at_least(1),
  plateau_factor=Rule(lambda v: 0 < v < 1, "in (0, 1)"),
  plateau_patience=at_least(0),
  plateau_min_lr=at_least(0),
  finetune_lr=at_least(0),
)


def train_config():
  t = ml_collections.ConfigDict()
  t.epochs = 75
  t.batch_size = 64  # global batch, split over all devices
  t.seed = 42
  t.early_stopping = True  # EarlyStopping on val_accuracy (mode max, min_delta 0); the best epoch is tracked either way
  t.early_stopping_patience = 10
  t.restore_best = True  # evaluate on test with the best checkpoint
  t.augment = True  # soft augmentation, on device, training batches only
  t.flip = True  # horizontal flip, p = 0.5
  t.rotation = 0.05  # max rotation, fraction of a full turn (0.05 = 18 degrees)
  t.zoom = 0.05  # max zoom in/out, fraction
  t.contrast = 0.05  # contrast factor uniform in [1 - c, 1 + c] around the image mean
  t.fill_mode = "reflect"  # reflect | nearest | constant | wrap (Keras fill modes)
  t.max_steps_per_epoch = 0  # 0 = a full pass over train; >0 caps it (smoke tests)
  t.log_every_steps = 50  # progress line inside an epoch
  # seeds trained together (sweep --vectorize): vmap (one batched step) | map (the members one after
  # another inside one program: XLA:CPU's batched convolutions are slow) | auto (map on CPU, else vmap)
  t.vectorize = "auto"
  return t


valid(
  "train",
  epochs=at_least(0),
  batch_size=at_least(1),
  seed=at_least(0),
  early_stopping_patience=at_least(0),
  rotation=fraction(),
  zoom=fraction(high_open=True),
  contrast=fraction(),
  fill_mode=one_of("reflect", "nearest", "constant", "wrap"),
  max_steps_per_epoch=at_least(0),
  log_every_steps=at_least(1),
  vectorize=one_of("auto", "vmap", "map"),
)


def eval_config():
  e = ml_collections.ConfigDict()
  e.batch_size = 256
  e.confidence_threshold = (
    0.7  # deployment rule: below this calibrated confidence, answer "uncertain"
  )
  # > 0: instead of confidence_threshold, the lowest threshold whose answered val faces are right
  # at least this often (e.g. 0.9), fitted after temperature scaling; 0 = use confidence_threshold
  e.threshold_target_accuracy = 0.0
  return e


valid(
  "eval",
  batch_size=at_least(1),
  confidence_threshold=fraction(),
  threshold_target_accuracy=fraction(),
)


def evals_config():
  """What runs on the best epoch's weights when training ends (fer_jax/evals/common.py).

  One entry per evaluator: `type` names its module in fer_jax/evals/, the other fields are its
  settings. Entries run in name order, each after the entries it reads.
  """
  e = ml_collections.ConfigDict()
  # temperature and confidence threshold (config.eval) fitted on `split`
  e.calibration = ml_collections.ConfigDict({"type": "calibration", "split": "val"})
  # eval-mode train accuracy on as many train images as val (drawn with `subset_seed`), its gap
  e.train_gap = ml_collections.ConfigDict({"type": "train_gap", "subset_seed": 0})
  # metrics and predictions of `split` with the temperature and threshold of entry `calibration`
  e.test = ml_collections.ConfigDict(
    {"type": "classification", "split": "test", "calibration": "calibration"}
  )
  return e


valid("evals.calibration", split=one_of(*SPLITS))
valid("evals.train_gap", subset_seed=at_least(0))
valid("evals.test", split=one_of(*SPLITS))


def base_config(name):
  c = ml_collections.ConfigDict()
  c.name = name  # config name; the default workdir is runs/<name>[-<variant>]
  c.variant = ""  # set from get_config(arg)
  c.data = data_config()
  c.model = model_config()
  c.loss = loss_config()
  c.optim = optim_config()
  c.train = train_config()
  c.eval = eval_config()
  c.evals = evals_config()
  return c


def apply_quick(c):
  """The `quick` variant: the same network on a small built-in set for a few epochs (minutes on 2 CPU cores)."""
  c.data.builtin_per_class = 300
  c.train.epochs = 5
  c.train.early_stopping_patience = 4
  # ~100 steps are too few for Keras's BN momentum 0.99: the running statistics would still be
  # near their initial values at evaluation time and the model would predict one class.
  c.model.bn_momentum = 0.9
  c.optim.cosine_epochs = 5
  c.optim.plateau_patience = 2
  return c


def finalize(c, arg, variants=None):
  """Applies the variants named in `arg` (comma-separated) and locks the config.

  `variants` maps a config's own variant names to functions of the config; `quick` is common
  to all. Locking makes an unknown or ill-typed `--config.x=y` override fail with its name.
  """
  known = {"quick": apply_quick, **(variants or {})}
  names = [v for v in (arg or "").split(",") if v]
  for v in names:
    if v not in known:
      raise ValueError(f"config {c.name!r} has no variant {v!r}; known: {', '.join(sorted(known))}")
    known[v](c)
  c.variant = ",".join(names)
  c.lock()
  return c
