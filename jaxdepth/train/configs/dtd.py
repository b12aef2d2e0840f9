"""ResNet-18 (ImageNet stem) from ImageNet weights on DTD (47 textures) at 224 px: EASIER recipe.

Run:   python -m jaxdepth fit --config dtd --data-dir DIR \
           --pretrained resnet18_imagenet.safetensors
       (DIR holds dtd prepared as ArrayRecord; see jaxdepth.data. The weights file:
       see flowers102; --config.pretrained=None trains from scratch instead)
Takes: 50 epochs of 117 steps at batch 16 (the tfds train split has 1,880 images).
Reaches: the paper's dense model (EASIER appendix Table 10) reaches 60.53 % with the
         official augmentation below; jaxdepth's differs, so expect less.

Adam, lr 1e-4, no weight decay, no schedule, batch 16; official train/validation/test
splits; ImageNet weights with a fresh head (47 classes), as flowers102.

Augmentation (jaxdepth.data.augment.ResizedCrop): training, a random resized crop 224
(area 8-100 %, aspect 3/4-4/3) of the image as it is and a horizontal flip with
probability 0.5; evaluation, the shorter side resized to 256 and the centre 224 crop.
The official DTD loader differs in: Resize(252) before the random resized crop, and a
horizontal and a vertical flip, in training; Resize(252) at evaluation; and a mixup
(alpha 0.8) / cutmix (alpha 1.0) collate on the training and the validation batches
alike. jaxdepth has none of these.
"""

from jaxdepth.train.configs import flowers102


def get_config():
  # The same recipe and weights as flowers102; only the data differ.
  config = flowers102.get_config()
  config.dataset = "dtd"
  return config
