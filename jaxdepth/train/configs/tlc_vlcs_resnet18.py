"""TLC, ResNet-18 (CIFAR-style 3x3 stem) on VLCS at 224 px: the official PACS/VLCS recipe.

Run:   python -m jaxdepth tlc --config tlc_vlcs_resnet18 --dataset folder:/path/to/VLCS
Takes: up to 17 iterations x 30 epochs at batch 16 (a GPU job).
Reaches: the paper's tables were not available to this project.

The same recipe and model as tlc_pacs_resnet18; only the data differ. The
official TLC model is the torchvision-stem ResNet-18: --model resnet18_imagenet.
The official code augments the validation and test images too (one training
transform for the whole dataset); jaxdepth tests with the evaluation transform,
and --config.val_augment=True augments validation only.
"""

from jaxdepth.train.configs import tlc_pacs_resnet18


def get_config():
  config = tlc_pacs_resnet18.get_config()
  config.dataset = "folder:data/VLCS"
  return config
