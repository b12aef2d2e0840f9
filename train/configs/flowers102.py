"""ResNet-18 (ImageNet stem) on Oxford Flowers-102 at 224 px: EASIER recipe.

Run:   python -m train fit --config flowers102 --data-dir DIR
       (DIR holds oxford_flowers102 prepared as ArrayRecord; see jaxdepth.data)
Takes: 50 epochs of 63 steps at batch 16 (the tfds train split has 1,020 images;
       the last partial batch is dropped).
Reaches: the paper fine-tunes ImageNet weights (with mixup 0.8 / cutmix 1.0);
         jaxdepth trains from scratch without them, so expect far less.

Adam, lr 1e-4, no weight decay, no schedule, batch 16; random resized crop 224
and flip; official train/validation/test splits.
"""

import ml_collections


def get_config():
  config = ml_collections.ConfigDict()
  config.model = "resnet18_imagenet"
  config.dataset = "oxford_flowers102"
  config.image_size = 224
  config.epochs = 50
  config.batch_size = 16
  config.optimizer = "adam"
  config.lr = 1e-4
  config.weight_decay = 0.0
  config.eval_batch_size = 64
  return config
