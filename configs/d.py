"""Model D: 5 blocks of 2 convs then one BN (32..512), pools after blocks 1 and 3, GAP head.

  python launch.py --config=configs/d.py --config.data.root=/path/to/merged
Study (+AffectNet): best val 85.39 %, gap +0.1, epoch 23 of 33.
4,980,324 parameters (1,984 non-trainable).
The study lists four dropout rates for five blocks; block 2 (no pool) has none here.
"""

from fer_jax.configs import common


def get_config(arg=None):
  c = common.base_config("d")
  c.model.widths = (32, 64, 128, 256, 512)
  c.model.bn_placement = "block_end"
  c.model.pool_after = (True, False, True, False, False)
  c.model.block_dropouts = (0.25, 0.0, 0.30, 0.35, 0.40)
  c.model.head_pool = "gap"
  c.model.head_pre_dropout = 0.5
  c.model.dense_widths = (512,)
  c.model.dense_bn = False
  c.model.dense_dropouts = (0.5,)
  c.loss.l2_conv = 1e-4
  c.loss.l2_hidden_dense = 1e-4
  c.optim.lr = 5e-4
  c.optim.plateau_patience = 5
  c.optim.plateau_min_lr = 1e-7
  c.train.early_stopping_patience = 10
  return common.finalize(c, arg)
