"""ResNet-18 (CIFAR-style 3x3 stem, as EASIER uses) on PACS at 224 px (``docs/methods/``).

Run:   python -m train fit --config pacs --dataset folder:/path/to/PACS
       (PACS/<domain>/<class>/<image>; all four domains pooled and split 80/10/10)
Takes: 30 epochs of ~500 steps at batch 16 (a GPU job).
Reaches: about 80 % test accuracy (EASIER appendix Table 7: dense ResNet-18 79.70 %).

SGD momentum 0.9, lr 1e-3, weight decay 5e-4, batch 16, lr x0.1 at epoch 24;
random resized crop 224 (80-100 %), flip, colour jitter 0.4. Other models:
--model mobilenet_v2_imagenet or vgg16_bn (the paper starts those from
ImageNet weights; jaxdepth trains from scratch).
"""


def get_config():
  return dict(
      model="resnet18",
      dataset="folder:data/PACS",
      val_fraction=0.1,
      image_size=224,
      epochs=30,
      batch_size=16,
      optimizer="sgd",
      lr=1e-3,
      momentum=0.9,
      weight_decay=5e-4,
      milestones=(24,),
      gamma=0.1,
      eval_batch_size=64,
  )
