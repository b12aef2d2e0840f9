"""EGP, MobileNetV2 (CIFAR strides, 35 ReLU6 sites, each fed by its ConvBNReLU6's conv) on CIFAR-10.

Run:   python -m jaxdepth egp --config egp_cifar10_mobilenetv2 --data-dir DIR
Takes: 10 iterations (dense + 9 pruning rounds) x 160 epochs of 351 steps (a GPU/TPU job).
Reaches: no published figure could be read for this pair; NEPENTHE reports it.

The recipe of egp_cifar10_resnet18 with this model (SGD 0.1, momentum 0.9,
weight decay 1e-4, batch 128, milestones 80/120, EGP's entropy pass, rho 0.5).
"""

from jaxdepth.train.configs import egp_cifar10_resnet18


def get_config():
  config = egp_cifar10_resnet18.get_config()
  config.model = "mobilenet_v2"
  return config
