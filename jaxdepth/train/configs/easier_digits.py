"""EASIER on the offline default: digits_plain (5 sites) on scikit-learn's 8x8 digits.

Run:   python -m jaxdepth easier                  (the same as --config easier_digits)
Takes: 37 s wall on an idle 2-core CPU (imports and compilation included, with an
       empty compilation cache).
Reaches (seed 0, on the 2-core AMD EPYC the README's figures come from; other
  processors round differently and print other figures, see the README):
  dense 98.61 % test (99.31 % validation); the chosen model has 4 of 5
  sites removed (non-linear depth 5 -> 1) at 99.16 % test (99.31 % validation).
  Test % after k = 0..4 removals: 98.61, 98.61, 98.33, 98.33, 99.16 (on the CPU,
  with jaxdepth.cpu_ops's convolutions and BatchNorm).
  Merged by exact surgery: weight depth 6 -> 2, MACs 282k -> 21.9k, params 79.1k
  -> 11.9k, equal to the chosen model to 1e-6 relative; see report.md for the
  edits and the dense / chosen / merged latencies.

Why digits_plain: its convs are unpadded, so every site EASIER removes leaves two
convs that compose exactly into one smaller-than-both conv (no zero-padded border
to disagree on), and the merged model is really shallower and cheaper. With
digits_cnn (``--model digits_cnn``, residual, padded 3x3 convs) the removed sites
sit next to residual blocks or between padded 3x3 convs, which exact surgery
cannot merge: the report lists those merges as skipped, with the reason.

Every iteration trains 20 epochs with a fresh Adam (lr 3e-3, x0.1 at epoch 15,
batch 64, one-pixel shifts), then the site with the lowest entropy (EASIER's
estimator: last training epoch, train mode) becomes the identity. The chosen
model is the deepest cut within 1 point of the dense model's validation
accuracy. An iteration lasts seconds, so the run checkpoints after each
iteration only (``checkpoint_epochs=False``; a killed run resumes from the last
finished iteration and ends bit-identical).

5 iterations, one per site, is all there can be: iteration 4 trains the network
with one rectifier left and then removes it, and the fully linear network that
leaves is never trained (the papers' tables stop one removal short too).
"""

import ml_collections


def get_config():
  config = ml_collections.ConfigDict()
  config.model = "digits_plain"
  config.dataset = "digits"
  config.epochs = 20
  config.batch_size = 64
  config.optimizer = "adam"
  config.lr = 3e-3
  config.weight_decay = 0.0
  config.milestones = (15,)
  config.gamma = 0.1
  config.eval_batch_size = 512
  config.iterations = 5
  config.tolerance = 1.0
  config.estimator = "easier"
  config.checkpoint_epochs = False
  return config
