"""Model B: Model A with stronger dropout and soft augmentation.

  python launch.py --config=configs/b.py --config.data.root=/path/to/stratified
Study (stratified data): best val 83.67 %, train 87.30 %, gap +3.6, epoch 52, 2.9 min.
3,509,444 parameters.
"""

from fer_jax.configs import common


def get_config(arg=None):
  c = common.base_config("b")
  c.model.block_dropouts = (0.25, 0.30, 0.40)
  c.model.dense_dropouts = (0.50,)
  c.optim.lr = 5e-4
  c.optim.plateau_patience = 7
  c.train.early_stopping = False
  return common.finalize(c, arg)
