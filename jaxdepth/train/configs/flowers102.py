"""ResNet-18 (ImageNet stem) from ImageNet weights on Oxford Flowers-102 at 224 px: EASIER recipe.

Run:   python -m jaxdepth fit --config flowers102 --data-dir DIR \
           --pretrained resnet18_imagenet.safetensors
       (DIR holds oxford_flowers102 prepared as ArrayRecord; see jaxdepth.data. The
       weights file is torchvision's ImageNet ResNet-18 exported to safetensors, as
       docs/weights.md shows; without --pretrained the run looks for
       resnet18_imagenet.safetensors in the current directory and stops at once, saying
       so, if it is not there; --config.pretrained=None trains from scratch instead)
Takes: 50 epochs of 63 steps at batch 16 (the tfds train split has 1,020 images;
       the last partial batch is dropped).
Reaches: the paper's dense model (EASIER appendix Table 9) reaches 88.88 % with the
         official augmentation below; jaxdepth's differs, so expect less.

Adam, lr 1e-4, no weight decay, no schedule, batch 16; official train/validation/test
splits. As the official code, it fine-tunes ImageNet weights; the ImageNet head (1000
classes) is replaced by a freshly initialised one (102).

Augmentation (jaxdepth.data.augment.ResizedCrop): training, a random resized crop 224
(area 8-100 %, aspect 3/4-4/3) and a horizontal flip with probability 0.5; evaluation,
the shorter side resized to 256 and the centre 224 crop. The official Flowers loader
differs in: RandomRotation(30), a horizontal flip with probability 0.6 and a vertical
flip with probability 0.4 in training; Resize(255) + CenterCrop(224) at evaluation;
and a mixup (alpha 0.8) / cutmix (alpha 1.0) collate on the training and the
validation batches alike. jaxdepth has none of these.
"""

import ml_collections


def get_config():
  config = ml_collections.ConfigDict()
  config.model = "resnet18_imagenet"
  config.dataset = "oxford_flowers102"
  config.image_size = 224
  config.epochs = 50
  config.batch_size = 16
  config.optimizer = "adam"
  config.lr = 1e-4
  config.weight_decay = 0.0
  config.eval_batch_size = 64
  config.pretrained = "resnet18_imagenet.safetensors"
  config.pretrained_new_head = True
  return config
