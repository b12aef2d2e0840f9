"""ResNet-18 (ImageNet stem) on DTD (47 textures) at 224 px: EASIER recipe.

Run:   python -m train fit --config dtd --data-dir DIR
       (DIR holds dtd prepared as ArrayRecord; see jaxdepth.data)
Takes: 50 epochs of 117 steps at batch 16 (the tfds train split has 1,880 images).
Reaches: the paper fine-tunes ImageNet weights (with mixup 0.8 / cutmix 1.0);
         jaxdepth trains from scratch without them, so expect far less.

Adam, lr 1e-4, no weight decay, no schedule, batch 16; random resized crop 224
and flip; official train/validation/test splits.
"""

from train.configs import flowers102


def get_config():
  # The same recipe as flowers102; only the data differ.
  config = flowers102.get_config()
  config.dataset = "dtd"
  return config
