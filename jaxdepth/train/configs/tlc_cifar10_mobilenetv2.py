"""TLC, MobileNetV2 (CIFAR strides, 35 candidates) on CIFAR-10: the official recipe.

Run:   python -m jaxdepth tlc --config tlc_cifar10_mobilenetv2 --data-dir DIR
       add --config.projections=True for the official candidate list (52: the 17
       linear projections too, each linearizing the next block's expansion ReLU6)
Takes: up to 20 iterations x 160 epochs of 351 steps (a GPU/TPU job).
Reaches: the paper's tables were not available to this project.

The ResNet-18 recipe (SGD 0.9, lr 0.1, wd 1e-4, batch 128, x0.1 at 80 and 120,
seed 43), at most 20 iterations as the official MobileNetV2 script.
"""

from jaxdepth.train.configs import tlc_cifar10_resnet18


def get_config():
  config = tlc_cifar10_resnet18.get_config()
  config.model = "mobilenet_v2"
  config.iterations = 20
  config.projections = False
  return config
