"""Model B++: the B+ network trained with focal loss (gamma 2, alpha 0.25).

  python launch.py --config=configs/b_pp.py --workdir=runs/b_pp --config.data.root=/path/to/merged
  python launch.py --config=configs/b_pp.py:quick   # built-in faces, minutes on 2 CPU cores
Study (+AffectNet): best val 85.30 %, train 87.35 %, gap +2.0, epoch 51 of 71, 6.0 min.
3,509,444 parameters.
"""

from fer_jax.configs import b_p, common


def get_config(arg=None):
  c = common.base_config("b_pp")
  b_p.b_plus(c)
  c.loss.name = "focal"
  return common.finalize(c, arg)
