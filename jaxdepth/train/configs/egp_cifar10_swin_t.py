"""EGP, Swin-T (12 GELU sites; each MLP's fc1 pruned) on CIFAR-10 at 32x32: the paper's recipe.

Run:   python -m jaxdepth egp --config egp_cifar10_swin_t --data-dir DIR \
           --pretrained swin_t_imagenet.safetensors
       (DIR holds cifar10 prepared as ArrayRecord; see jaxdepth.data)
       (the weights file: see cifar10_swin_t; --config.pretrained=None trains from scratch)
       add --config.neurons=rows for the official Swin-T script's token-row entropy
Takes: 10 iterations (dense + 9 pruning rounds) x 160 epochs of 351 steps (a GPU/TPU job).
Reaches: the official code's re-initialisation ablation loads this model's
  checkpoint at sparsity 1 - 0.5^4 = 93.75 % of the fc1 weights (4 rounds); its
  accuracy table could not be read here, so no target figure is given. The paper
  fine-tunes torchvision's ImageNet weights, as this config does.

Every iteration: SGD momentum 0.9, lr 0.001 (the Swin-T rate of the official
per-experiment script), weight decay 1e-4, batch 128, lr x0.1 at epochs 80 and
120, a fresh optimizer, seed 43; random crop (pad 4) + flip, CIFAR mean/std
normalisation (EGP's). Pruned: fc1 of every MLP (the Dense feeding the GELU;
egp.layer_map), never attention, patch merging or the head. Entropy: one
eval-mode pass over the augmented training split, batches of 128, the neuron a
channel of the GELU input (the paper's description); rho 0.5. The official
code trains on all 50k images; jaxdepth holds out 10 % to pick the operating point.
"""

from jaxdepth.train.configs import cifar10_swin_t, egp_cifar10_resnet18


def get_config():
  # EGP's ResNet-18 run (seed 43, CIFAR normalisation, rho 0.5, 10 iterations, the entropy
  # pass of 128) turned into the Swin-T recipe (cifar10_swin_t).
  config = cifar10_swin_t.use_swin_t(egp_cifar10_resnet18.get_config())
  config.neurons = "channels"   # "rows": the official Swin-T script's token rows
  return config
