"""ResNet50V2 transfer: Keras's ResNet50V2 (ImageNet, frozen) at 224x224 with the study's head.

  python launch.py --config=configs/resnet50v2.py --config.data.root=/path/to/merged \
      --config.model.init_from=/path/to/resnet50v2_weights_tf_dim_ordering_tf_kernels_notop.h5
  python launch.py --config=configs/resnet50v2.py:finetune ...   # conv5 trains at optim.finetune_lr
  python launch.py --config=configs/resnet50v2.py:quick   # random backbone at 64x64, built-in faces
Study (+AffectNet, frozen, raw [0, 1] input = preprocessing 'study'): best val 71.84 %,
train 73.20 %, epoch 14, 256 s on an A100. Weights: docs/transfer.md.
24,091,396 parameters; 526,084 trainable (4 classes).
"""

from fer_jax.configs import common, transfer_common


def get_config(arg=None):
  c = common.base_config("resnet50v2")
  c.model.name = "resnet50v2"
  transfer_common.configure(
    c, head_widths=(256,), head_bn=(True,), head_dropouts=(0.5,), finetune_blocks=3
  )
  return common.finalize(c, arg, transfer_common.VARIANTS)
