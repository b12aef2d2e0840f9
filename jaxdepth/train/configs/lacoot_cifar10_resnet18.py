"""LaCoOT, ResNet-18 (CIFAR stem, max-pool kept) on CIFAR-10 with λ = 5, the authors' setting.

Run:   python -m jaxdepth lacoot --config lacoot_cifar10_resnet18 --data-dir DIR
       (DIR holds cifar10 prepared as ArrayRecord; see jaxdepth.data)
Takes: one training of 160 epochs of 351 steps (a GPU/TPU job), then 4 evaluations.

The recipe is the ResNet-18 CIFAR-10 one (SGD momentum 0.9, lr 0.1, weight decay
1e-4, batch 128, lr x0.1 at epochs 80 and 120; 45k/5k split, crop + flip,
ImageNet normalisation) with λ = 5 and 50 projections. The regularized blocks
are the official four layerS/1 (pairing "official"; the default "block" pairing
adds layer1/0) and the removal follows the official script's deepest-first path
(layer4/1, then layer3/1, ...); --order ascending ranks by validation
distance instead. The validation distances are means over batches of 128
(eval_batch_size), the official validation loader's batch: a distance between
finite batches depends on their size, so another batch can rank the blocks
differently (the official loader also counts its last partial batch of 8
images; jaxdepth drops it). The official validation split keeps the training
augmentation: --config.val_augment=True reproduces that.
"""

from jaxdepth.train.configs import cifar10_resnet18


def get_config():
  # The recipe is cifar10_resnet18's; LaCoOT adds its own keys.
  config = cifar10_resnet18.get_config()
  config.weight = 5.0
  config.n_projections = 50
  config.pairing = "official"
  config.order = "deepest_first"
  config.score = "sliced"
  config.tolerance = 1.0
  config.eval_batch_size = 128   # the distances' batch: the official validation loader's
  return config
