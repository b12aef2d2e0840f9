"""EASIER, Swin-T (12 GELU sites, one per layer's MLP) on CIFAR-10 at 32x32.

Run:   python -m jaxdepth easier --config easier_cifar10_swin_t --data-dir DIR \
           --pretrained swin_t_imagenet.safetensors
       (the weights file: see cifar10_swin_t; --config.pretrained=None trains from scratch)
Takes: 12 iterations x 160 epochs of 351 steps (a GPU/TPU job).
Reaches (EASIER appendix Table 5, test top-1 % after k = 0, 1, ..., 11 sites removed):
  91.66, 91.95, 91.84, 91.57, 91.73, 91.40, 91.25, 91.41, 90.83, 90.12, 87.79,
  87.96
  The paper fine-tunes torchvision's ImageNet weights, as this config does.

Every iteration: SGD momentum 0.9, lr 0.001, weight decay 1e-4, batch 128, lr x0.1
at epochs 80 and 120, a fresh optimizer; 45k/5k split, crop + flip, ImageNet
normalisation (cifar10_swin_t). The entropy is EASIER's: the GELU input's sign
over the last training epoch in train mode, the neuron being a channel of the
MLP's hidden layer; a removed GELU makes fc1 and fc2 one Dense after surgery.
"""

from jaxdepth.train.configs import cifar10_swin_t, easier_cifar10_resnet18


def get_config():
  # EASIER's ResNet-18 run turned into the Swin-T recipe (cifar10_swin_t).
  return cifar10_swin_t.use_swin_t(easier_cifar10_resnet18.get_config())
