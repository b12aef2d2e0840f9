"""Swin-T from torchvision's ImageNet weights on CIFAR-10 at 32x32 (8x8 tokens): the papers' recipe.

Run:   python -m jaxdepth fit --config cifar10_swin_t --data-dir DIR \
           --pretrained swin_t_imagenet.safetensors
       (DIR holds cifar10 prepared as ArrayRecord; see jaxdepth.data. The weights file is
       torchvision's swin_t ImageNet weights exported to safetensors, as docs/weights.md
       shows; without --pretrained the run looks for swin_t_imagenet.safetensors in the
       current directory and stops at once, saying so, if it is not there;
       --config.pretrained=None trains from scratch instead)
Takes: 160 epochs of 351 steps (a GPU/TPU job; a step at batch 128 takes tens of
  seconds on a 2-core CPU).
Reaches: about 91.7 % test accuracy (EASIER appendix Table 5: dense Swin-T 91.66 %).

SGD momentum 0.9, lr 0.001, weight decay 1e-4 (L2), batch 128, lr x0.1 at epochs
80 and 120; 45k/5k train/validation split, random crop (pad 4) + flip, ImageNet
normalisation; no resize (the images enter at 32x32, as the official code feeds
them); stochastic depth 0.2 (torchvision's Swin-T). The ImageNet head (1000
classes) is replaced by a freshly initialised one (10).
"""

from jaxdepth.train.configs import cifar10_resnet18


def use_swin_t(config):
  """Turns a CIFAR-10 ResNet-18 recipe (of fit or of a method) into the Swin-T one."""
  config.model = "swin_t"
  config.lr = 0.001
  config.pretrained = "swin_t_imagenet.safetensors"
  config.pretrained_new_head = True
  return config


def get_config():
  # The same recipe row as ResNet-18 with Swin-T, its learning rate and its ImageNet start.
  return use_swin_t(cifar10_resnet18.get_config())
