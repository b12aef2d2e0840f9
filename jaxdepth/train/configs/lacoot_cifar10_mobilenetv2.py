"""LaCoOT, MobileNetV2 (CIFAR variant) on CIFAR-10 with λ = 9, the authors' setting.

Run:   python -m jaxdepth lacoot --config lacoot_cifar10_mobilenetv2 --data-dir DIR
       (DIR holds cifar10 prepared as ArrayRecord; see jaxdepth.data)
Takes: one training of 160 epochs of 351 steps (a GPU/TPU job), then 13 evaluations.
Reference: the authors' logged run (λ = 9) reached 87.25 % test before removal, with
  most depthwise sub-layers at a validation distance of about 0.

The recipe is the MobileNetV2 CIFAR-10 one (the ResNet-18 row of the same table)
with λ = 9 and 50 projections. The units are the official ones: the depthwise
ConvBN-ReLU6 sub-layer of the 13 stride-1 expansion blocks (pairing "official";
"block" uses the 10 whole inverted residuals with a skip connection), ranked by
the max-sliced validation distance, smallest removed first. --order shifted
reproduces the official script's off-by-one (the last sub-layer is never removed).
The validation distances are means over batches of 128 (eval_batch_size), the
official validation loader's batch; a distance depends on the batch size.
"""

from jaxdepth.train.configs import cifar10_mobilenetv2


def get_config():
  # The recipe is cifar10_mobilenetv2's; LaCoOT adds its own keys.
  config = cifar10_mobilenetv2.get_config()
  config.weight = 9.0
  config.n_projections = 50
  config.pairing = "official"
  config.order = "ascending"
  config.score = "max_sliced"
  config.tolerance = 1.0
  config.eval_batch_size = 128   # the distances' batch: the official validation loader's
  return config
