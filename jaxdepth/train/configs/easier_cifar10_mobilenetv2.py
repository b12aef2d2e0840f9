"""EASIER, MobileNetV2 (CIFAR strides, 35 ReLU6 sites) on CIFAR-10.

Run:   python -m jaxdepth easier --config easier_cifar10_mobilenetv2 --data-dir DIR
Takes: 35 iterations x 160 epochs of 351 steps (a GPU/TPU job).
Reaches (EASIER appendix Table 5, test top-1 % after k = 0, 1, ..., 34 sites removed):
  93.65, 93.60, 93.76, 93.67, 93.26, 93.14, 93.22, 92.99, 93.16, 92.91, 92.79,
  93.03, 93.16, 92.79, 92.79, 92.77, 92.45, 92.05, 91.80, 90.89, 90.79, 90.84,
  89.92, 90.33, 90.44, 89.42, 88.98, 89.56, 88.74, 88.43, 87.19, 87.67, 86.88,
  84.97, 62.56

Every iteration: SGD momentum 0.9, lr 0.1, weight decay 1e-4, batch 128, lr x0.1
at epochs 80 and 120, a fresh optimizer; 45k/5k split, crop + flip, ImageNet
normalisation; trained from scratch, as in the paper.
"""

from jaxdepth.train.configs import cifar10_mobilenetv2


def get_config():
  # The recipe is cifar10_mobilenetv2's (the same Table 4 row); EASIER adds its own keys.
  config = cifar10_mobilenetv2.get_config()
  config.iterations = None
  config.tolerance = 1.0
  config.estimator = "easier"
  return config
