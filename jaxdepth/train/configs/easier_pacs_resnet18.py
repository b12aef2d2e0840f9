"""EASIER, ResNet-18 (CIFAR-style 3x3 stem, as EASIER uses) on PACS at 224 px.

Run:   python -m jaxdepth easier --config easier_pacs_resnet18 --dataset folder:/path/to/PACS
       (PACS/<domain>/<class>/<image>; the four domains pooled and split 80/10/10)
Takes: 17 iterations x 30 epochs of ~500 steps at batch 16 (a GPU job).
Reaches (EASIER appendix Table 7, test top-1 % after k = 0, 1, ..., 16 sites removed):
  79.70, 86.60, 86.40, 88.30, 89.00, 87.90, 87.70, 88.30, 87.30, 88.30, 87.70,
  86.80, 87.10, 84.30, 80.90, 75.10, 52.00
  (the dense model is undertrained after 30 epochs from scratch; later
  iterations keep training the same weights)

Every iteration: SGD momentum 0.9, lr 1e-3, weight decay 5e-4, batch 16, lr x0.1
at epoch 24, a fresh optimizer; random resized crop 224 (80-100 %), flip,
colour jitter 0.4.

The official code builds one training transform for the whole dataset, so its
validation and test images are both randomly augmented: the accuracies quoted
above were measured on augmented test images. jaxdepth tests with the
evaluation transform; --config.val_augment=True augments validation only.
"""

from jaxdepth.train.configs import pacs


def get_config():
  # The recipe is pacs's (the same Table 4 row); EASIER adds its own keys.
  config = pacs.get_config()
  config.iterations = None
  config.tolerance = 1.0
  config.estimator = "easier"
  return config
