"""Fields and variants shared by the transfer configs (vgg16, resnet50v2, efficientnet_b0).

A transfer model resizes the data's faces on device to the backbone's input, runs the
backbone (frozen in the study) and the study's head; see docs/transfer.md.
"""

from fer_jax.config_loading import at_least, each, fraction, one_of, valid
from fer_jax.configs import common


def configure(c, *, head_widths, head_bn, head_dropouts, finetune_blocks):
  """Adds the transfer fields to config `c` (before it is locked) with the study's transfer settings."""
  m = c.model
  m.backbone_mode = (
    "freeze"  # freeze (the study) | finetune (top blocks at optim.finetune_lr) | train
  )
  m.finetune_blocks = finetune_blocks  # finetune: how many of the backbone's top blocks train
  m.preprocessing = (
    "native"  # native: the backbone's own preprocessing | study: raw [0, 1] as the study fed
  )
  m.input_size = 224  # side the faces are resized to on device (bilinear, antialiased)
  m.head_widths = head_widths  # hidden Dense layers (ReLU) after global average pooling
  m.head_bn = head_bn  # BatchNorm after each hidden Dense?
  m.head_dropouts = head_dropouts  # dropout after each hidden Dense
  c.optim.lr = 1e-4
  c.optim.plateau_patience = 5
  c.optim.plateau_min_lr = 1e-7
  c.train.early_stopping_patience = 10
  # The study fit cached 224x224 arrays, without augmentation.
  c.train.augment = False
  return c


# Checked with every other field before a run; transfer.check adds the per-backbone limits.
valid(
  "model",
  backbone_mode=one_of("freeze", "finetune", "train"),
  finetune_blocks=at_least(1),
  preprocessing=one_of("native", "study"),
  input_size=at_least(32),
  head_widths=each(at_least(1)),
  head_dropouts=each(fraction(high_open=True)),
)


def quick(c):
  """common.apply_quick, then a random backbone at 64x64, so the variant runs anywhere in minutes."""
  common.apply_quick(c)
  c.model.init_from = "random"
  c.model.input_size = 64
  return c


def finetune(c):
  c.model.backbone_mode = "finetune"
  return c


VARIANTS = {"quick": quick, "finetune": finetune}  # for common.finalize
