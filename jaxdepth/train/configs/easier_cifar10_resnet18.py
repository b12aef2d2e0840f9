"""EASIER, ResNet-18 (CIFAR stem, max-pool kept, 17 sites) on CIFAR-10.

Run:   python -m jaxdepth easier --config easier_cifar10_resnet18 --data-dir DIR
       (DIR holds cifar10 prepared as ArrayRecord; see jaxdepth.data)
Takes: 17 iterations x 160 epochs of 351 steps (a GPU/TPU job; days on a CPU).
Reaches (EASIER appendix Table 5, test top-1 % after k = 0, 1, ..., 16 sites removed):
  92.47, 92.39, 92.82, 92.15, 92.47, 91.97, 92.22, 92.40, 92.10, 90.35, 89.94,
  86.53, 84.52, 80.69, 80.95, 78.98, 77.74

Every iteration: SGD momentum 0.9, lr 0.1, weight decay 1e-4 (L2), batch 128,
lr x0.1 at epochs 80 and 120, a fresh optimizer; 45k/5k train/validation split,
crop (pad 4) + flip, ImageNet normalisation. Entropy: the official code's (last
training epoch, train mode, zeros ON). The official validation split keeps the
training augmentation: --config.val_augment=True reproduces that.
"""

from jaxdepth.train.configs import cifar10_resnet18


def get_config():
  # The recipe is cifar10_resnet18's (the same Table 4 row); EASIER adds its own keys.
  config = cifar10_resnet18.get_config()
  config.iterations = None
  config.tolerance = 1.0
  config.estimator = "easier"
  return config
