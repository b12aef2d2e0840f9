"""TLC, ResNet-18 (CIFAR-style 3x3 stem) on PACS at 224 px: the official PACS/VLCS recipe.

Run:   python -m jaxdepth tlc --config tlc_pacs_resnet18 --dataset folder:/path/to/PACS
       (PACS/<domain>/<class>/<image>; the four domains pooled and split 80/10/10)
Takes: up to 17 iterations x 30 epochs at batch 16 (a GPU job).
Reaches: the paper's tables were not available to this project.

SGD momentum 0.9, lr 1e-3, weight decay 5e-4, batch 16, lr x0.1 at epoch 24,
seed 43; the ranking batch is 16 images, as the official code's validation
loader. The recipe is the official one, the model is not: this config keeps
pacs's resnet18 (CIFAR-style 3x3 stem, EASIER's PACS model), while the official
TLC code trains its torchvision-stem ResNet-18 (7x7 conv + max-pool) from
scratch on every non-CIFAR dataset: add --model resnet18_imagenet for it.

The official code builds one training transform for the whole dataset, so its
validation (the ranking batch included) and test images are both randomly
augmented. jaxdepth tests with the evaluation transform;
--config.val_augment=True augments validation only.
"""

from jaxdepth.train.configs import pacs


def get_config():
  config = pacs.get_config()
  config.seed = 43
  config.iterations = None
  config.tolerance = 1.0
  config.rule = "first_harmful"
  config.accuracy_threshold = 20.0
  config.rank_batch_size = 16
  return config
