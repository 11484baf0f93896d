"""The whole study as one sweep: every model on the dataset stage it was trained on, several seeds.

  python -m fer_jax.sweep --spec=configs/study.py --root=runs/study --weights_dir=/data/keras \\
      --original=/data/original --cleaned=/data/stratified --merged=/data/merged
  python -m fer_jax.sweep --spec=configs/study.py:quick --root=runs/quick   # built-in faces
  python -m fer_jax.report runs/study   # (the sweep also runs it)

Stages: `original` = the data as found (Model 0); `cleaned` = after dedup, relabel and the
80/10/10 re-split (A, B, C); `merged` = cleaned + AffectNet (B+, B++, D, colour mode, and the
three frozen ImageNet backbones, whose Keras weight files must be in --weights_dir).
The study ran each model once (seed 42); here every model runs SEEDS so rankings come with a
spread. Variants: (none) the study; `quick` Model 0 and Model B++ at their quick settings on the
built-in faces, two seeds each (the test suite and the docs' example).
"""

SEEDS = (0, 1, 2)


def _entry(config, data, variant="", weights=""):
  return {
    "config": f"configs/{config}.py",
    "variant": variant,
    "data": data,
    "seeds": SEEDS,
    "weights": weights,
  }


def get_sweep(arg=None):
  if arg == "quick":
    return [
      {"config": "configs/model_0.py", "variant": "quick", "seeds": (0, 1)},
      {"config": "configs/b_pp.py", "variant": "quick", "seeds": (0, 1)},
    ]
  if arg:
    raise ValueError(f"configs/study.py has no variant {arg!r}; known: quick")
  # Imported here: the backbones bring JAX in, which `quick` and `--emit` of it do not need.
  from fer_jax.models import efficientnet, resnet_v2, vgg16

  return [
    _entry("model_0", "original"),
    *(_entry(m, "cleaned") for m in ("a", "b", "c")),
    *(_entry(m, "merged") for m in ("b_p", "b_pp", "d")),
    *(_entry("color", "merged", v) for v in ("gray", "rgb")),
    _entry("vgg16", "merged", weights=vgg16.WEIGHTS_FILE),
    _entry("resnet50v2", "merged", weights=resnet_v2.WEIGHTS_FILE),
    _entry("efficientnet_b0", "merged", weights=efficientnet.WEIGHTS_FILE),
  ]
