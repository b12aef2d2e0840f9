"""VGG-16-bn on CIFAR-10 at 32x32: EASIER recipe.

Run:   python -m train fit --config cifar10_vgg16 --data-dir DIR
Takes: 160 epochs of 351 steps (a GPU/TPU job).
Reaches: the paper's 93.5 % (EASIER Table 5) starts from ImageNet weights;
         jaxdepth trains from scratch, so expect somewhat less.

SGD momentum 0.9, lr 0.01, weight decay 1e-4, batch 128, lr x0.1 at epochs 80
and 120; 45k/5k split, random crop + flip, ImageNet normalisation.
"""

from train.configs import cifar10_resnet18


def get_config():
  # The same Table 4 row as cifar10_resnet18, with this model.
  config = cifar10_resnet18.get_config()
  config.model = "vgg16_bn"
  config.lr = 0.01
  return config
