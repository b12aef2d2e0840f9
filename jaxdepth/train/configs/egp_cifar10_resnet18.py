"""EGP, ResNet-18 (CIFAR stem, separate relu1/relu2, 17 sites) on CIFAR-10: the paper's recipe.

Run:   python -m jaxdepth egp --config egp_cifar10_resnet18 --data-dir DIR
       (DIR holds cifar10 prepared as ArrayRecord; see jaxdepth.data)
Takes: 10 iterations (dense + 9 pruning rounds) x 160 epochs of 351 steps (a GPU/TPU job).
Reaches: the official code's checkpoints used for its ablation are at sparsity
  1 - 0.5^8 = 99.6 % of the prunable convs for this model; its accuracy table
  could not be read here, so no target figure is given.

Every iteration: SGD momentum 0.9, lr 0.1, weight decay 1e-4, batch 128, lr x0.1
at epochs 80 and 120, a fresh optimizer, seed 43; random crop (pad 4) + flip,
CIFAR mean/std normalisation (EGP's). Entropy: one eval-mode pass over the
training split with its augmentation, shuffled, batches of 128 (EGP's
estimator); rho 0.5. The official code trains on all 50k images and has no
validation split; jaxdepth holds out 10 % to pick the operating point (set
val_fraction to change it).
"""

from jaxdepth.train.configs import cifar10_resnet18


def get_config():
  # The recipe is cifar10_resnet18's with EGP's seed and normalisation; EGP adds its own keys.
  config = cifar10_resnet18.get_config()
  config.normalization = "cifar"
  config.seed = 43
  config.iterations = 10
  config.tolerance = 1.0
  config.rho = 0.5
  config.estimator = "egp"
  config.entropy_augment = True
  config.entropy_batch_size = 128
  return config
