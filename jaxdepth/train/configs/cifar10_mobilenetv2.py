"""MobileNetV2 (CIFAR variant) on CIFAR-10: EASIER/TLC recipe.

Run:   python -m jaxdepth fit --config cifar10_mobilenetv2 --data-dir DIR
Takes: 160 epochs of 351 steps (a GPU/TPU job).
Reaches: about 93.6 % test accuracy (EASIER appendix Table 5: dense MobileNetV2 93.65 %).

SGD momentum 0.9, lr 0.1, weight decay 1e-4, batch 128, lr x0.1 at epochs 80
and 120; 45k/5k split, random crop + flip, ImageNet normalisation.
"""

from jaxdepth.train.configs import cifar10_resnet18


def get_config():
  # The same Table 4 row as cifar10_resnet18, with this model.
  config = cifar10_resnet18.get_config()
  config.model = "mobilenet_v2"
  return config
