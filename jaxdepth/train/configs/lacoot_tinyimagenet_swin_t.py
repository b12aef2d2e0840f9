"""LaCoOT, Swin-T (12 Swin layers as units) on Tiny-ImageNet-200 at 64x64 with λ = 1, the authors' setting.

Run:   python -m jaxdepth lacoot --config lacoot_tinyimagenet_swin_t \
           --dataset folder:/path/to/tiny-imagenet-200 \
           --pretrained swin_t_imagenet.safetensors
       (a re-organised copy with train/, val/ and test/ each holding
       <class>/<image> folders, as the official loaders need too: the official
       val/ is not in class folders and test/ has no labels; docs/data.md)
Takes: one training of 160 epochs of 781 steps (a GPU/TPU job), then 12 evaluations.
Reference: no figure of this run is in the authors' repository; their λ = 1 for
  Swin-T on Tiny-ImageNet comes from its README example.

SGD momentum 0.9, lr 0.001, weight decay 1e-4, batch 128, lr x0.1 at epochs 80
and 120; horizontal flip only, ImageNet normalisation, no resize (64x64 enters
Swin-T as 16x16 tokens). λ = 1, 50 projections, and the official Swin-T
settings as in lacoot_cifar10_swin_t: layer input against the MLP output
before its addition, max-sliced validation distance in batches of 128,
z-score + percentile removal order. Like the paper, it starts from
torchvision's ImageNet weights (the head replaced by a fresh one of 200
classes; see lacoot_cifar10_swin_t).
"""

from jaxdepth.train.configs import lacoot_cifar10_swin_t


def get_config():
  config = lacoot_cifar10_swin_t.get_config()
  config.dataset = "folder:data/tiny-imagenet-200"
  config.image_size = 64
  config.weight = 1.0
  return config
