"""LaCoOT on the offline default: a ResNet-20 of width 8 on scikit-learn's 8x8 digits.

Run:   python -m jaxdepth lacoot                  (the same as --config lacoot_digits)
Takes: see the README's LaCoOT section for the measured wall time on a 2-core CPU.
Reaches (seed 0): see the README's LaCoOT section.

ResNet-20 with 8-16-32 channels has seven identity-shortcut blocks (layer1/0-2,
layer2/1-2, layer3/1-2). One training of 20 epochs with Adam (lr 3e-3, x0.1 at
epoch 15, batch 64, one-pixel shifts) and λ = 1, 50 projections; then the
blocks are replaced by the identity in ascending order of their validation
distance, one more per iteration, with no fine-tuning. The chosen model is the
deepest removal within 2 points of the trained network's validation accuracy:
the validation split has 144 images, so one image is 0.69 points, and with no
fine-tuning after a removal a tolerance of 1 point allows a single image.
"""

import ml_collections


def get_config():
  config = ml_collections.ConfigDict()
  config.model = "resnet20"
  config.model_kwargs = {"width": 8}
  config.dataset = "digits"
  config.epochs = 20
  config.batch_size = 64
  config.optimizer = "adam"
  config.lr = 3e-3
  config.weight_decay = 0.0
  config.milestones = (15,)
  config.gamma = 0.1
  config.eval_batch_size = 512
  config.weight = 1.0
  config.n_projections = 50
  config.tolerance = 2.0   # two validation images of 144
  return config
