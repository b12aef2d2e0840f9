"""NEPENTHE, MobileNetV2 (CIFAR strides, 35 ReLU6 sites) on CIFAR-10.

Run:   python -m jaxdepth nepenthe --config nepenthe_cifar10_mobilenetv2 --data-dir DIR
Takes: 10 iterations (dense + 9 pruning rounds) x 160 epochs of 351 steps (a GPU/TPU job).
Reaches: no published figure could be read here.

egp_cifar10_mobilenetv2 with the dataset-level entropy estimator.
"""

from jaxdepth.train.configs import egp_cifar10_mobilenetv2


def get_config():
  config = egp_cifar10_mobilenetv2.get_config()
  config.estimator = "dataset"
  return config
