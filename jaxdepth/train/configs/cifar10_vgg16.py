"""VGG-16-bn from torchvision's ImageNet weights on CIFAR-10 at 32x32: EASIER recipe.

Run:   python -m jaxdepth fit --config cifar10_vgg16 --data-dir DIR \
           --pretrained vgg16_bn_imagenet.safetensors
       (DIR holds cifar10 prepared as ArrayRecord; see jaxdepth.data. The weights file is
       torchvision's vgg16_bn ImageNet weights exported to safetensors, as docs/weights.md
       shows; without --pretrained the run looks for vgg16_bn_imagenet.safetensors in the
       current directory and stops at once, saying so, if it is not there;
       --config.pretrained=None trains from scratch instead)
Takes: 160 epochs of 351 steps (a GPU/TPU job).
Reaches: about 93.5 % test accuracy (EASIER appendix Table 5: dense VGG-16-bn 93.50 %).

SGD momentum 0.9, lr 0.01, weight decay 1e-4, batch 128, lr x0.1 at epochs 80
and 120; 45k/5k split, random crop + flip, ImageNet normalisation; no resize (the
official code feeds 32x32 images, whose 1x1 map the adaptive pool replicates to
7x7). As the official code, on every dataset, it starts from ImageNet weights;
the ImageNet head (1000 classes) is replaced by a freshly initialised one (10).
"""

from jaxdepth.train.configs import cifar10_resnet18


def use_vgg16(config):
  """Makes a recipe (of fit or of a method) start VGG-16-bn from torchvision's ImageNet weights."""
  config.model = "vgg16_bn"
  config.pretrained = "vgg16_bn_imagenet.safetensors"
  config.pretrained_new_head = True
  return config


def get_config():
  # The same Table 4 row as cifar10_resnet18, with this model, its lr and its ImageNet start.
  config = use_vgg16(cifar10_resnet18.get_config())
  config.lr = 0.01
  return config
