"""ResNet-18 (CIFAR stem, max-pool kept) on CIFAR-10: EASIER/LaCoOT/TLC recipe.

Run:   python -m jaxdepth fit --config cifar10_resnet18 --data-dir DIR
       (DIR holds cifar10 prepared as ArrayRecord; see jaxdepth.data)
Takes: 160 epochs of 351 steps; minutes on a GPU/TPU, days on a CPU.
Reaches: about 92.5 % test accuracy (EASIER appendix Table 5: dense ResNet-18 92.47 %).

SGD momentum 0.9, lr 0.1, weight decay 1e-4 (L2, PyTorch style), batch 128,
lr x0.1 at epochs 80 and 120; 45k/5k train/validation split of the training set,
random crop (pad 4) + flip, ImageNet normalisation. The official code's
validation split keeps the training augmentation: add --config.val_augment=True
to reproduce that.
"""

import ml_collections


def get_config():
  config = ml_collections.ConfigDict()
  config.model = "resnet18"
  config.dataset = "cifar10"
  config.val_fraction = 0.1
  config.epochs = 160
  config.batch_size = 128
  config.optimizer = "sgd"
  config.lr = 0.1
  config.momentum = 0.9
  config.weight_decay = 1e-4
  config.milestones = (80, 120)
  config.gamma = 0.1
  config.eval_batch_size = 500
  return config
