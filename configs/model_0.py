"""Model 0: the study's baseline, 3 single-conv blocks (32/64/128), conv->BN->ReLU.

  python launch.py --config=configs/model_0.py --config.data.root=/path/to/original
Study (original data, A100): best val 63.97 %, train 58.28 %, gap -5.7, epoch 74, 1.7 min.
1,274,500 parameters (448 non-trainable).
"""

from fer_jax.configs import common


def get_config(arg=None):
  c = common.base_config("model_0")
  c.model.widths = (32, 64, 128)
  c.model.convs_per_block = 1
  c.model.bn_placement = "conv_bn_relu"
  c.model.block_dropouts = (0.25, 0.25, 0.25)
  c.model.dense_widths = (256,)
  c.model.dense_bn = False
  c.model.dense_dropouts = (0.5,)
  c.optim.lr = 1e-3
  c.optim.plateau_patience = 5
  c.train.early_stopping = False
  c.train.augment = False
  return common.finalize(c, arg)
