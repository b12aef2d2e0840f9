"""ResNet-18 (ImageNet stem) on Oxford Flowers-102 at 224 px: EASIER recipe (``docs/methods/easier.md``).

Run:   python -m train fit --config flowers102 --data-dir DIR
       (DIR holds oxford_flowers102 prepared as ArrayRecord; see jaxdepth.data)
Takes: 50 epochs of 64 steps at batch 16 (the tfds train split has 1,020 images).
Reaches: the paper fine-tunes ImageNet weights (with mixup 0.8 / cutmix 1.0);
         jaxdepth trains from scratch without them, so expect far less.

Adam, lr 1e-4, no weight decay, no schedule, batch 16; random resized crop 224
and flip; official train/validation/test splits.
"""


def get_config():
  return dict(
      model="resnet18_imagenet",
      dataset="oxford_flowers102",
      image_size=224,
      epochs=50,
      batch_size=16,
      optimizer="adam",
      lr=1e-4,
      weight_decay=0.0,
      eval_batch_size=64,
  )
