"""EfficientNetB0 transfer: Keras's EfficientNetB0 (ImageNet, frozen) at 224x224 with the study's
head.

  python launch.py --config=configs/efficientnet_b0.py --config.data.root=/path/to/merged \
      --config.model.init_from=/path/to/efficientnetb0_notop.h5
  # block7a and the top conv train, at optim.finetune_lr:
  python launch.py --config=configs/efficientnet_b0.py:finetune ...
  # a random backbone at 64x64 on the built-in faces:
  python launch.py --config=configs/efficientnet_b0.py:quick
Study (+AffectNet, frozen, 0-255 input): best val 74.81 %, train 78.33 %, epoch 49, 548 s on an
A100.
Weights: docs/transfer.md.
4,379,559 parameters; 329,476 trainable (4 classes).
"""

from fer_jax.config_loading import add_fields
from fer_jax.configs import common, transfer_common


def get_config(arg=None):
  c = common.base_config("efficientnet_b0")
  c.model.name = "efficientnet_b0"
  transfer_common.configure(
    c, head_widths=(256,), head_bn=(True,), head_dropouts=(0.5,), finetune_blocks=1
  )
  add_fields(c.model, common.EFFICIENTNET)
  return common.finalize(c, arg, transfer_common.VARIANTS)
