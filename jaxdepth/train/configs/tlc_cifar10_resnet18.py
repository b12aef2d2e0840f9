"""TLC, ResNet-18 (CIFAR stem, max-pool kept, 17 candidates) on CIFAR-10: the official recipe.

Run:   python -m jaxdepth tlc --config tlc_cifar10_resnet18 --data-dir DIR
       (DIR holds cifar10 prepared as ArrayRecord; see jaxdepth.data)
Takes: up to 17 iterations x 160 epochs of 351 steps (a GPU/TPU job; days on a CPU).
Reaches: the paper's tables were not available to this project; the official code
  writes only a per-iteration table of layers removed and accuracies.

Every iteration: SGD momentum 0.9, lr 0.1, weight decay 1e-4 (L2), batch 128,
lr x0.1 at epochs 80 and 120, a fresh optimizer (seed 43 as the official
scripts); 45k/5k train/validation split, crop (pad 4) + flip, ImageNet
normalisation. Candidates are ranked on the first 128 validation images; the
official prefix rule. --config.val_augment=True reproduces the official
validation split, which keeps the training augmentation; the ranking batch is
then augmented, but with the same fixed draw at every iteration and run (the
official code draws a new augmentation at every call).
"""

from jaxdepth.train.configs import cifar10_resnet18


def get_config():
  # The recipe is cifar10_resnet18's (the official TLC scripts use the same row); TLC adds its keys.
  config = cifar10_resnet18.get_config()
  config.seed = 43
  config.iterations = None
  config.tolerance = 1.0
  config.rule = "first_harmful"
  config.accuracy_threshold = 20.0
  config.rank_batch_size = 128
  return config
