"""VGG-16-bn on CIFAR-10 at 32x32: EASIER recipe (METHODS.md §4.3).

Run:   python -m train fit --config cifar10_vgg16 --data-dir DIR
Takes: 160 epochs of 351 steps (a GPU/TPU job).
Reaches: the paper's 93.5 % (EASIER Table 5) starts from ImageNet weights;
         jaxdepth trains from scratch, so expect somewhat less.

SGD momentum 0.9, lr 0.01, weight decay 1e-4, batch 128, lr x0.1 at epochs 80
and 120; 45k/5k split, random crop + flip, ImageNet normalisation.
"""


def get_config():
  return dict(
      model="vgg16_bn",
      dataset="cifar10",
      val_fraction=0.1,
      epochs=160,
      batch_size=128,
      optimizer="sgd",
      lr=0.01,
      momentum=0.9,
      weight_decay=1e-4,
      milestones=(80, 120),
      gamma=0.1,
      eval_batch_size=500,
  )
