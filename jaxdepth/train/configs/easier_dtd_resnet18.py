"""EASIER, ImageNet-pretrained ResNet-18 (torchvision weights) on DTD (47 textures) at 224 px.

Run:   python -m jaxdepth easier --config easier_dtd_resnet18 --data-dir DIR \
           --pretrained resnet18_imagenet.safetensors
       (DIR holds dtd prepared as ArrayRecord; see jaxdepth.data. The weights file is
       torchvision's ImageNet ResNet-18 exported to safetensors, as docs/weights.md
       shows; without --pretrained the run looks for resnet18_imagenet.safetensors in
       the current directory and stops at once, saying so, if it is not there;
       --config.pretrained=None trains from scratch instead)
Takes: 17 iterations x 50 epochs of 117 steps at batch 16.
Reaches (EASIER appendix Table 10, test top-1 % after k = 0, 1, ..., 16 sites removed):
  60.53, 61.97, 61.22, 62.02, 59.73, 58.99, 57.55, 53.40, 49.26, 52.29, 50.48,
  52.61, 49.68, 41.86, 32.55, 33.35, 18.94
  The paper fine-tunes the ImageNet weights with the official augmentation, which
  differs from jaxdepth's (see dtd), so expect less.

Every iteration: Adam, lr 1e-4, no weight decay, no schedule, batch 16, a fresh
optimizer; official train/validation/test splits. The ImageNet head (1000 classes)
is replaced by a freshly initialised one (47). Augmentation: a random resized crop
224 of the image as it is and a horizontal flip (p 0.5) in training, the shorter
side to 256 and the centre 224 crop at evaluation. The official DTD loader resizes
to 252 before its random resized crop, flips horizontally and vertically, evaluates
at Resize(252), and applies a mixup (alpha 0.8) / cutmix (alpha 1.0) collate to the
training and the validation batches alike; jaxdepth does none of these.
"""

from jaxdepth.train.configs import easier_flowers_resnet18


def get_config():
  # The same recipe and weights as easier_flowers_resnet18; only the data differ.
  config = easier_flowers_resnet18.get_config()
  config.dataset = "dtd"
  return config
