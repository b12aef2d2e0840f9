"""NEPENTHE, ResNet-18 (CIFAR stem, 17 sites) on CIFAR-10.

Run:   python -m jaxdepth nepenthe --config nepenthe_cifar10_resnet18 --data-dir DIR
Takes: 10 iterations (dense + 9 pruning rounds) x 160 epochs of 351 steps (a GPU/TPU job).
Reaches: no code or table of NEPENTHE could be read; use it as EGP's loop with
  the dataset-level entropy.

EGP's recipe (egp_cifar10_resnet18) with the dataset-level entropy estimator:
p(ON) = #(z > 0) / #(z != 0) over the whole training pass, zeros discarded.
"""

from jaxdepth.train.configs import egp_cifar10_resnet18


def get_config():
  config = egp_cifar10_resnet18.get_config()
  config.estimator = "dataset"
  return config
