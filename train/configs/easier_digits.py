"""EASIER on the offline default: digits_cnn (6 sites) on scikit-learn's 8x8 digits.

Run:   python -m train easier                  (the same as --config easier_digits)
Takes: TIMING_PLACEHOLDER
Reaches: RESULT_PLACEHOLDER

Every iteration trains EPOCHS_PLACEHOLDER epochs with a fresh Adam (lr 3e-3, batch 64, one-pixel
shifts), then the site with the lowest entropy (EASIER's estimator: last
training epoch, train mode) becomes the identity; six iterations, one per site
(the removal after the last one is never retrained). The chosen model is the
deepest cut within 1 point of the dense model's validation accuracy.
"""


def get_config():
  return dict(
      model="digits_cnn",
      dataset="digits",
      epochs=10,
      batch_size=64,
      optimizer="adam",
      lr=3e-3,
      weight_decay=0.0,
      eval_batch_size=512,
      iterations=None,
      tolerance=1.0,
      estimator="easier",
  )
