"""VGG16 transfer: Keras's VGG16 (ImageNet, frozen) at 224x224 with the study's head.

  python launch.py --config=configs/vgg16.py --config.data.root=/path/to/merged \
      --config.model.init_from=/path/to/vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5
  python launch.py --config=configs/vgg16.py:finetune ...   # block5 trains at optim.finetune_lr
  python launch.py --config=configs/vgg16.py:quick   # random backbone at 64x64, built-in faces
Study (+AffectNet, frozen, raw [0, 1] input = preprocessing 'study'): best val 65.08 %,
train 59.12 %, epoch 10, 256 s on an A100. Weights: docs/transfer.md.
15,111,748 parameters; 396,036 trainable (4 classes).
"""

from fer_jax.configs import common, transfer_common


def get_config(arg=None):
  c = common.base_config("vgg16")
  c.model.name = "vgg16"
  transfer_common.configure(
    c, head_widths=(512, 256), head_bn=(True, False), head_dropouts=(0.5, 0.3), finetune_blocks=1
  )
  return common.finalize(c, arg, transfer_common.VARIANTS)
