"""TLC, VGG-16-bn (15 candidates; the classifier's two from data) on CIFAR-10 at 32x32.

Run:   python -m jaxdepth tlc --config tlc_cifar10_vgg16 --data-dir DIR \
           --pretrained vgg16_bn_imagenet.safetensors
       (the weights file: see cifar10_vgg16; --config.pretrained=None trains from scratch)
Takes: up to 15 iterations x 160 epochs of 351 steps (a GPU/TPU job).
Reaches: the paper's tables were not available to this project. As the official
  code, it starts from torchvision's ImageNet weights (the head replaced by a
  fresh one of 10 classes).

The official CIFAR recipe is the ResNet-18 one (lr 0.1; 0.01 only on ImageNet).
The two classifier sites have no BatchNorm: their (γ, β) are the std and mean of
the pre-activation on the ranking batch.
"""

from jaxdepth.train.configs import cifar10_vgg16, tlc_cifar10_resnet18


def get_config():
  # TLC's ResNet-18 run (its lr 0.1) with VGG-16-bn from ImageNet weights.
  return cifar10_vgg16.use_vgg16(tlc_cifar10_resnet18.get_config())
