"""ResNet-18 (CIFAR-style 3x3 stem, as EASIER uses) on VLCS at 224 px.

Run:   python -m jaxdepth fit --config vlcs --dataset folder:/path/to/VLCS
       (VLCS/<domain>/<class>/<image>; all four domains pooled and split 80/10/10)
Takes: 30 epochs at batch 16 (a GPU job).
Reaches: about 68 % test accuracy (EASIER appendix Table 8: dense ResNet-18 68.13 %).

SGD momentum 0.9, lr 1e-3, weight decay 5e-4, batch 16, lr x0.1 at epoch 24;
random resized crop 224 (80-100 %), flip, colour jitter 0.4.

The official code builds one training transform for the whole dataset, so its
validation and test images are both randomly augmented: the accuracies quoted
above were measured on augmented test images. jaxdepth tests with the
evaluation transform; --config.val_augment=True augments validation only.
"""

from jaxdepth.train.configs import pacs


def get_config():
  # The same recipe as pacs; only the data differ.
  config = pacs.get_config()
  config.dataset = "folder:data/VLCS"
  return config
