"""NEPENTHE, Swin-T (12 GELU sites; each MLP's fc1 pruned) on CIFAR-10 at 32x32.

Run:   python -m jaxdepth nepenthe --config nepenthe_cifar10_swin_t --data-dir DIR \
           --pretrained swin_t_imagenet.safetensors
       (the weights file: see cifar10_swin_t; --config.pretrained=None trains from scratch)
Takes: 10 iterations (dense + 9 pruning rounds) x 160 epochs of 351 steps (a GPU/TPU job).
Reaches: no code or table of NEPENTHE could be read; use it as EGP's loop with
  the dataset-level entropy.

EGP's Swin-T recipe (egp_cifar10_swin_t: lr 0.001, 160 epochs, seed 43) with the
dataset-level entropy estimator: p(ON) = #(z > 0) / #(z != 0) over the whole
training pass, zeros discarded, the neuron a channel of the GELU input.
"""

from jaxdepth.train.configs import egp_cifar10_swin_t


def get_config():
  config = egp_cifar10_swin_t.get_config()
  config.estimator = "dataset"
  return config
