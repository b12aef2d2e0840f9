"""ResNet-18 (CIFAR-style 3x3 stem, as EASIER uses) on PACS at 224 px.

Run:   python -m jaxdepth fit --config pacs --dataset folder:/path/to/PACS
       (PACS/<domain>/<class>/<image>; all four domains pooled and split 80/10/10)
Takes: 30 epochs of ~500 steps at batch 16 (a GPU job).
Reaches: about 80 % test accuracy (EASIER appendix Table 7: dense ResNet-18 79.70 %).

SGD momentum 0.9, lr 1e-3, weight decay 5e-4, batch 16, lr x0.1 at epoch 24;
random resized crop 224 (80-100 %), flip, colour jitter 0.4. ResNet-18 starts
from scratch, as in the official code. Other models: --model
mobilenet_v2_imagenet or vgg16_bn, which the official code starts from ImageNet
weights: add --pretrained FILE (torchvision's mobilenet_v2 or vgg16_bn weights,
docs/weights.md) and --config.pretrained_new_head=true for that; without them
they train from scratch.

The official code builds one training transform for the whole dataset, so its
validation and test images are both randomly augmented: the accuracies quoted
above were measured on augmented test images. jaxdepth tests with the
evaluation transform; --config.val_augment=True augments validation only.
"""

import ml_collections


def get_config():
  config = ml_collections.ConfigDict()
  config.model = "resnet18"
  config.dataset = "folder:data/PACS"
  config.val_fraction = 0.1
  config.image_size = 224
  config.epochs = 30
  config.batch_size = 16
  config.optimizer = "sgd"
  config.lr = 1e-3
  config.momentum = 0.9
  config.weight_decay = 5e-4
  config.milestones = (24,)
  config.gamma = 0.1
  config.eval_batch_size = 64
  return config
