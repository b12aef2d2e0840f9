"""NEPENTHE on the offline default: egp_digits with the dataset-level entropy (zeros discarded).

Run:   python -m jaxdepth nepenthe                (the same as --config nepenthe_digits)
Takes: 72 s wall on an idle 2-core CPU (imports and compilation included, with an
       empty compilation cache).
Reaches (seed 0, on the 2-core AMD EPYC the README's figures come from; other
  processors round differently and print other figures, see the README):
  test 94.71 % dense, then 98.33, 95.82, 96.10 % after
  1, 2, 3 rounds; layer2/0/relu1 reaches zero entropy after round 2,
  layer3/2/relu1 after round 3. Chosen: iteration 3, 1 of 19 sites removed
  (non-linear depth 19 -> 18), 10,154 non-zero of 58,238 parameters, 96.10 % test
  (97.22 % validation); merged, the same logits to 5e-6.

ResNet-20 (width 8) on digits, 5 epochs of Adam per iteration, rho 0.5, the
stem kept out of pruning; see egp_digits for why.
"""

from jaxdepth.train.configs import egp_digits


def get_config():
  config = egp_digits.get_config()
  config.estimator = "dataset"
  return config
