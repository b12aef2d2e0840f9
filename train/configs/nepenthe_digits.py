"""NEPENTHE on the offline default: egp_digits with the dataset-level entropy (zeros discarded).

Run:   python -m train nepenthe                (the same as --config nepenthe_digits)
Takes: 72 s wall on an idle 2-core CPU (imports and compilation included, with an
       empty compilation cache).
Reaches (seed 0, on the CPU): test 93.87 % dense, then 98.61, 94.43, 96.66 % after
  1, 2, 3 rounds; layer2/0/relu1 and layer2/1/relu1 reach zero entropy after round
  2, layer3/2/relu1 after round 3. Chosen: iteration 3, 2 of 19 sites removed
  (non-linear depth 19 -> 17), 10,156 non-zero of 59,394 parameters, 96.66 % test
  (96.53 % validation); merged, the same logits to 7e-6.

ResNet-20 (width 8) on digits, 5 epochs of Adam per iteration, rho 0.5, the
stem kept out of pruning; see egp_digits for why.
"""

from train.configs import egp_digits


def get_config():
  config = egp_digits.get_config()
  config.estimator = "dataset"
  return config
