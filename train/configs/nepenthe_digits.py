"""NEPENTHE on the offline default: egp_digits with the dataset-level entropy (zeros discarded).

Run:   python -m train nepenthe                (the same as --config nepenthe_digits)
Takes: FIGURE_TIME
Reaches (seed 0): FIGURE_RESULT

ResNet-20 (width 8) on digits, 5 epochs of Adam per iteration, rho 0.5, the
stem kept out of pruning; see egp_digits for why.
"""

from train.configs import egp_digits


def get_config():
  return dict(egp_digits.get_config(), estimator="dataset")
