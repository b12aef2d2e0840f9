"""LaCoOT, Swin-T (12 Swin layers as units) on CIFAR-10 at 32x32 with λ = 0.1, the authors' setting.

Run:   python -m jaxdepth lacoot --config lacoot_cifar10_swin_t --data-dir DIR \
           --pretrained swin_t_imagenet.safetensors
       (DIR holds cifar10 prepared as ArrayRecord; see jaxdepth.data)
       (the weights file: see cifar10_swin_t; --config.pretrained=None trains from scratch)
Takes: one training of 160 epochs of 351 steps (a GPU/TPU job), then 12 evaluations.
Reference: the authors' logged run (λ = 0.1, from ImageNet weights) reached
  91.38 % test (91.60 % validation) before removal, with per-layer validation
  distances 0.575, 0.591, 0.375, 0.482, 0.435, 0.534, 0.588, 0.595, 0.595,
  0.548, 0.496, 0.518. This config starts from the same torchvision weights.

The recipe is the Swin-T CIFAR-10 one (cifar10_swin_t: SGD momentum 0.9, lr 0.001,
weight decay 1e-4, batch 128, lr x0.1 at epochs 80 and 120; 45k/5k split, crop +
flip, ImageNet normalisation) with λ = 0.1 and 50 projections. The settings
reproduce the official code: each unit is a whole Swin layer (features/s/b,
attention and MLP halves), its input compared with the output of its MLP
before the stochastic depth and the residual addition (pairing "official"); the
ranking distance is the max-sliced one on the validation split, averaged over
batches of 128 as the official validation loader's (eval_batch_size), and the
removal order the official script's z-score + percentile rule (order "zscore",
under which a layer far below the mean distance goes late). --pairing block compares
each layer's input with its output; --order ascending removes the smallest
distance first.
"""

from jaxdepth.train.configs import cifar10_swin_t, lacoot_cifar10_resnet18


def get_config():
  # LaCoOT's ResNet-18 run turned into the Swin-T recipe (cifar10_swin_t), with its λ
  # and the official Swin-T settings.
  config = cifar10_swin_t.use_swin_t(lacoot_cifar10_resnet18.get_config())
  config.weight = 0.1
  config.order = "zscore"
  config.score = "max_sliced"
  return config
