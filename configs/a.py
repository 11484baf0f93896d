"""Model A: 3 blocks of 2 convs (64/128/256), ReLU then BN after every conv; no augmentation.

  python launch.py --config=configs/a.py --config.data.root=/path/to/stratified
Study (stratified data): best val 85.13 %, train 99.72 %, gap +14.6 (overfit), epoch 39, 2.7 min.
3,509,444 parameters (2,304 non-trainable).
"""

from fer_jax.configs import common


def get_config(arg=None):
  c = common.base_config("a")
  c.model.block_dropouts = (0.20, 0.25, 0.30)
  c.model.dense_dropouts = (0.40,)
  c.optim.lr = 5e-4
  c.optim.plateau_patience = 5
  c.train.early_stopping = False
  c.train.augment = False
  return common.finalize(c, arg)
