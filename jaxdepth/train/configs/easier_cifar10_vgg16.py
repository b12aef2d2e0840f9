"""EASIER, VGG-16-bn (15 sites) on CIFAR-10 at 32x32.

Run:   python -m jaxdepth easier --config easier_cifar10_vgg16 --data-dir DIR \
           --pretrained vgg16_bn_imagenet.safetensors
       (the weights file: see cifar10_vgg16; --config.pretrained=None trains from scratch)
Takes: 15 iterations x 160 epochs of 351 steps (a GPU/TPU job).
Reaches (EASIER appendix Table 5, test top-1 % after k = 0, 1, ..., 14 sites removed):
  93.50, 93.54, 93.44, 93.58, 93.51, 93.62, 93.42, 93.12, 93.61, 92.65, 93.04,
  92.44, 91.46, 90.65, 90.38
  As the paper, this config starts from torchvision's ImageNet weights (the head
  replaced by a fresh one of 10 classes).

Every iteration: SGD momentum 0.9, lr 0.01, weight decay 1e-4, batch 128, lr x0.1
at epochs 80 and 120, a fresh optimizer; 45k/5k split, crop + flip, ImageNet
normalisation.
"""

from jaxdepth.train.configs import cifar10_vgg16


def get_config():
  # The recipe is cifar10_vgg16's (the same Table 4 row); EASIER adds its own keys.
  config = cifar10_vgg16.get_config()
  config.iterations = None
  config.tolerance = 1.0
  config.estimator = "easier"
  return config
