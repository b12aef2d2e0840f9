"""MobileNetV2 (CIFAR variant) on CIFAR-10: EASIER/TLC recipe (METHODS.md §4.3, §6.3).

Run:   python -m train fit --config cifar10_mobilenetv2 --data-dir DIR
Takes: 160 epochs of 351 steps (a GPU/TPU job).
Reaches: about 93.6 % test accuracy (EASIER appendix Table 5: dense MobileNetV2 93.65 %).

SGD momentum 0.9, lr 0.1, weight decay 1e-4, batch 128, lr x0.1 at epochs 80
and 120; 45k/5k split, random crop + flip, ImageNet normalisation.
"""


def get_config():
  return dict(
      model="mobilenet_v2",
      dataset="cifar10",
      val_fraction=0.1,
      epochs=160,
      batch_size=128,
      optimizer="sgd",
      lr=0.1,
      momentum=0.9,
      weight_decay=1e-4,
      milestones=(80, 120),
      gamma=0.1,
      eval_batch_size=500,
  )
