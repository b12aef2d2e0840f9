"""EASIER, ImageNet-pretrained ResNet-18 (torchvision weights) on Oxford Flowers-102 at 224 px.

Run:   python -m jaxdepth easier --config easier_flowers_resnet18 --data-dir DIR \
           --pretrained resnet18_imagenet.safetensors
       (DIR holds oxford_flowers102 prepared as ArrayRecord; see jaxdepth.data. The
       weights file is torchvision's ImageNet ResNet-18 exported to safetensors, as
       docs/weights.md shows; without --pretrained the run looks for
       resnet18_imagenet.safetensors in the current directory and stops at once, saying
       so, if it is not there; --config.pretrained=None trains from scratch instead)
Takes: 17 iterations x 50 epochs of 63 steps at batch 16 (1,020 // 16).
Reaches (EASIER appendix Table 9, test top-1 % after k = 0, 1, ..., 16 sites removed):
  88.88, 88.23, 87.49, 87.53, 87.25, 84.57, 83.43, 63.41, 73.12, 64.58, 70.81,
  72.22, 67.28, 65.33, 28.17, 32.85, 20.15
  The paper fine-tunes the ImageNet weights with the official augmentation, which
  differs from jaxdepth's (see flowers102), so expect less.

Every iteration: Adam, lr 1e-4, no weight decay, no schedule, batch 16, a fresh
optimizer; official train/validation/test splits. The ImageNet head (1000 classes)
is replaced by a freshly initialised one (102). Augmentation: a random resized crop
224 and a horizontal flip (p 0.5) in training, the shorter side to 256 and the centre
224 crop at evaluation. The official Flowers loader adds RandomRotation(30), flips
horizontally with p 0.6 and vertically with p 0.4, evaluates at Resize(255) +
CenterCrop(224), and applies a mixup (alpha 0.8) / cutmix (alpha 1.0) collate to the
training and the validation batches alike; jaxdepth does none of these.
"""

from jaxdepth.train.configs import flowers102


def get_config():
  # The recipe and weights are flowers102's (the same Table 4 row); EASIER adds its own keys.
  config = flowers102.get_config()
  config.iterations = None
  config.tolerance = 1.0
  config.estimator = "easier"
  return config
