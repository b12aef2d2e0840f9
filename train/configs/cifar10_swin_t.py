"""Swin-T (torchvision topology, 32x32 input: 8x8 tokens) on CIFAR-10: the papers' Swin-T recipe.

Run:   python -m train fit --config cifar10_swin_t --data-dir DIR
       (DIR holds cifar10 prepared as ArrayRecord; see jaxdepth.data)
Takes: 160 epochs of 351 steps (a GPU/TPU job; a step at batch 128 takes tens of
  seconds on a 2-core CPU).
Reaches: the papers fine-tune ImageNet weights (EASIER appendix Table 5: dense
  Swin-T 91.66 %); jaxdepth trains from scratch (it imports no torchvision
  weights), so expect far less.

SGD momentum 0.9, lr 0.001, weight decay 1e-4 (L2), batch 128, lr x0.1 at epochs
80 and 120; 45k/5k train/validation split, random crop (pad 4) + flip, ImageNet
normalisation; no resize (the images enter at 32x32, as the official code feeds
them); stochastic depth 0.2 (torchvision's Swin-T).
"""

from train.configs import cifar10_resnet18


def get_config():
  # The same recipe row as ResNet-18 with Swin-T's learning rate.
  config = cifar10_resnet18.get_config()
  config.model = "swin_t"
  config.lr = 0.001
  return config
