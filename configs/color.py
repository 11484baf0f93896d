"""Colour-mode comparison: the same 3-block network on grayscale or RGB input, 30 epochs.

  python launch.py --config=configs/color.py:gray --config.data.root=/path/to/merged
  python launch.py --config=configs/color.py:rgb  --config.data.root=/path/to/merged
Study (+AffectNet, 30 epochs): gray 83.84 % vs RGB 83.25 % best val accuracy.
5,867,204 parameters (gray), 5,868,356 (RGB).
"""

from fer_jax.configs import common


def _rgb(c):
  c.data.channels = 3


def get_config(arg=None):
  c = common.base_config("color")
  c.model.bn_placement = "block_end"
  c.model.block_dropouts = (0.25, 0.30, 0.40)
  c.model.dense_widths = (512,)
  c.model.dense_bn = False
  c.model.dense_dropouts = (0.5,)
  c.loss.l2_conv = 1e-4
  c.loss.l2_hidden_dense = 1e-4
  c.optim.lr = 5e-4
  c.optim.plateau = False  # the study's colour-mode runs used early stopping only
  c.train.epochs = 30
  c.train.early_stopping_patience = 8
  return common.finalize(c, arg, {"gray": lambda c: None, "rgb": _rgb})
