"""TLC on the offline default: digits_cnn (6 sites) on scikit-learn's 8x8 digits.

Run:   python -m jaxdepth tlc                     (the same as --config tlc_digits)
Takes: 44 s wall on an idle 2-core CPU (imports and compilation included, with an
       empty compilation cache).
Reaches (seed 0, on the 2-core AMD EPYC the README's figures come from; other
  processors round differently and print other figures, see the README):
  dense 100.00 % test; the chosen model has 3 of 6 sites
  removed (non-linear depth 6 -> 3) at 99.72 % test (99.31 % validation, dense 99.31 %).
  Validation / test % after 0, 2, 3, 4, 5 removals: 99.31 / 100.00, 99.31 / 100.00,
  99.31 / 99.72, 88.19 / 84.68, 92.36 / 89.14 (one rectifier left: the run stops).

Every iteration trains 10 epochs with a fresh Adam (lr 3e-3, x0.1 at epoch 8,
batch 64, one-pixel shifts); then every live site is ranked by the loss gap of
its collapse on the first 128 validation images, and the official prefix rule
picks what goes. The chosen model is the deepest cut within 1 point of the
dense model's validation accuracy.
"""

import ml_collections


def get_config():
  config = ml_collections.ConfigDict()
  config.model = "digits_cnn"
  config.dataset = "digits"
  config.epochs = 10
  config.batch_size = 64
  config.optimizer = "adam"
  config.lr = 3e-3
  config.weight_decay = 0.0
  config.milestones = (8,)
  config.gamma = 0.1
  config.eval_batch_size = 512
  config.iterations = 6
  config.tolerance = 1.0
  config.rank_batch_size = 128
  return config
