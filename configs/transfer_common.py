"""Fields and variants shared by the transfer configs (vgg16, resnet50v2, efficientnet_b0).

The fields are declared in configs/common.py (BACKBONE, TRANSFER_HEAD), as every field is.

A transfer model resizes the data's faces on device to the backbone's input, runs the
backbone (frozen in the study) and the study's head; see docs/transfer.md.
"""

from fer_jax.config_loading import add_fields
from fer_jax.configs import common


def configure(c, *, head_widths, head_bn, head_dropouts, finetune_blocks):
  """Adds the transfer fields to config `c` (before it is locked), with the study's transfer
  settings."""
  m = add_fields(c.model, common.BACKBONE, common.TRANSFER_HEAD)
  m.finetune_blocks = finetune_blocks
  m.head_widths = head_widths
  m.head_bn = head_bn
  m.head_dropouts = head_dropouts
  c.optim.lr = 1e-4
  c.optim.plateau_patience = 5
  c.optim.plateau_min_lr = 1e-7
  c.train.early_stopping_patience = 10
  # The study fit cached 224x224 arrays, without augmentation.
  c.train.augment = False
  return c


def quick(c):
  """common.apply_quick, then a random backbone at 64x64: the variant runs anywhere in minutes."""
  common.apply_quick(c)
  c.model.init_from = "random"
  c.model.input_size = 64
  return c


def finetune(c):
  c.model.backbone_mode = "finetune"
  return c


VARIANTS = {"quick": quick, "finetune": finetune}  # for common.finalize
