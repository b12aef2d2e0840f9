"""EGP on the offline default: ResNet-20 (width 8, 19 sites) on scikit-learn's 8x8 digits.

Run:   python -m jaxdepth egp                     (the same as --config egp_digits)
Takes: 69 s wall on an idle 2-core CPU (imports and compilation included, with an
       empty compilation cache).
Reaches (seed 0, on the 2-core AMD EPYC the README's figures come from; other
  processors round differently and print other figures, see the README):
  test 94.71 % dense, then 99.16, 94.15, 96.38 % after
  1, 2, 3 pruning rounds (50, 75, 87.5 % of the block convs pruned). layer2/0/relu1
  reaches zero entropy after round 2 and becomes the identity; layer3/2/relu1
  follows after round 3. Chosen: iteration 3, 1 of 19 sites removed (non-linear
  depth 19 -> 18), 10,154 non-zero of 58,238 parameters (dead channels cut),
  96.38 % test (97.22 % validation); merged by surgery it gives the same logits
  to 6e-6.

Every iteration trains 5 epochs with a fresh Adam (lr 3e-3, x0.1 at epoch 4,
batch 64, one-pixel shifts), pruned weights held at 0; then EGP's entropy
pass, the sites at zero entropy become identities, and rho = 0.5 of the
remaining prunable weights are pruned where entropy x magnitude is lowest.

Why ResNet-20 and ``skip=("relu",)``: EGP's softmax over ``S / I_l`` spreads
over about L (the number of layers) units, so on a network of 6 layers
(digits_cnn) it splits the budget almost evenly and no layer empties within a
few rounds; with 19 layers it concentrates and the least relevant block convs
are pruned completely. The stem conv has only 72 weights: any share of the
budget larger than that prunes it completely, which leaves the network
blind, so the stem is kept out of pruning (as a layer map would).
"""


import ml_collections


def get_config():
  config = ml_collections.ConfigDict()
  config.model = "resnet20"
  config.model_kwargs = {"width": 8}
  config.dataset = "digits"
  config.epochs = 5
  config.batch_size = 64
  config.optimizer = "adam"
  config.lr = 3e-3
  config.weight_decay = 0.0
  config.milestones = (4,)
  config.gamma = 0.1
  config.eval_batch_size = 512
  config.iterations = 4
  config.tolerance = 1.0
  config.rho = 0.5
  config.estimator = "egp"
  config.skip = ("relu",)
  return config
