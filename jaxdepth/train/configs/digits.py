"""The offline default: digits_cnn on scikit-learn's 8x8 digits (real data, no download).

Run:   python -m jaxdepth fit                      (the same as --config digits)
Takes: about 10 s on a 2-core CPU, imports and compilation included.
Reaches: 99-100 % test accuracy (359 test images; seeds 0-2 gave 99.4-100 %).

The papers' recipe shape at toy scale: SGD momentum 0.9, lr 0.05, weight decay
5e-4 (L2), batch 32, lr x0.1 at epoch 7 of 10; shifts of one pixel as
augmentation (jaxdepth.data.digits); 1,294/144/359 train/val/test images.
"""

import ml_collections


def get_config():
  config = ml_collections.ConfigDict()
  config.model = "digits_cnn"
  config.dataset = "digits"
  config.epochs = 10
  config.batch_size = 32
  config.optimizer = "sgd"
  config.lr = 0.05
  config.momentum = 0.9
  config.weight_decay = 5e-4
  config.milestones = (7,)
  config.gamma = 0.1
  config.eval_batch_size = 512
  return config
