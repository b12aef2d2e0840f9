"""TLC, VGG-16-bn (15 candidates; the classifier's two from data) on CIFAR-10 at 32x32.

Run:   python -m train tlc --config tlc_cifar10_vgg16 --data-dir DIR
Takes: up to 15 iterations x 160 epochs of 351 steps (a GPU/TPU job).
Reaches: the paper starts from ImageNet weights; jaxdepth trains from scratch.

The official CIFAR recipe is the ResNet-18 one (lr 0.1; 0.01 only on ImageNet).
The two classifier sites have no BatchNorm: their (γ, β) are the std and mean of
the pre-activation on the ranking batch.
"""

from train.configs import tlc_cifar10_resnet18


def get_config():
  config = tlc_cifar10_resnet18.get_config()
  config.model = "vgg16_bn"
  return config
