"""TLC, Swin-T (12 candidates: each MLP's fc1 and its GELU) on CIFAR-10 at 32x32.

Run:   python -m jaxdepth tlc --config tlc_cifar10_swin_t --data-dir DIR \
           --pretrained swin_t_imagenet.safetensors
       (the weights file: see cifar10_swin_t; --config.pretrained=None trains from scratch)
Takes: up to 12 iterations x 160 epochs of 351 steps (a GPU/TPU job).
Reaches: the paper's tables were not available to this project. The paper
  fine-tunes torchvision's ImageNet weights, as this config does.

Every iteration: SGD momentum 0.9, lr 0.001 (the official Swin-T rate), weight
decay 1e-4, batch 128, lr x0.1 at epochs 80 and 120, a fresh optimizer, seed 43;
45k/5k split, crop (pad 4) + flip, ImageNet normalisation. No BatchNorm precedes
a GELU, so each candidate's (γ, β) are the per-channel std and mean of fc1's
output on the ranking batch (the first 128 validation images; tlc.empirical_bn):
channels with mean <= 0 are cut (fc1's output filter and bias masked), the others
linearized, and surgery merges fc1 and fc2 into one Dense.
"""

from jaxdepth.train.configs import cifar10_swin_t, tlc_cifar10_resnet18


def get_config():
  # The official TLC run of ResNet-18 turned into the Swin-T recipe (cifar10_swin_t).
  return cifar10_swin_t.use_swin_t(tlc_cifar10_resnet18.get_config())
