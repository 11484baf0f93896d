"""Model C: Model B with L2 1e-3 on both Dense kernels and cosine decay (lr 1e-3 to 1 % over 75
epochs).

  python launch.py --config=configs/c.py --config.data.root=/path/to/stratified
Study (stratified data): best val 84.19 %, train 82.36 %, gap -1.8.
3,509,444 parameters.
"""

from fer_jax.configs import common


def get_config(arg=None):
  c = common.base_config("c")
  c.model.block_dropouts = (0.25, 0.30, 0.40)
  c.model.dense_dropouts = (0.50,)
  c.loss.l2_hidden_dense = 1e-3
  c.loss.l2_output_dense = 1e-3
  c.optim.lr = 1e-3
  c.optim.schedule = "cosine"
  c.optim.cosine_alpha = 0.01
  c.optim.plateau = False  # Keras cannot reduce the lr of a schedule
  c.train.early_stopping = False
  return common.finalize(c, arg)
