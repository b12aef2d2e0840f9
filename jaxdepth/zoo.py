"""The model zoo: functions that return :class:`~jaxdepth.spec.Spec` objects.

Each function builds the architecture the papers' code uses (``docs/models.md``), in
channel-last layout, with names that follow torchvision where that helps a
reader find the module the papers talk about (``layer2/0/relu1``,
``features/7/conv/depthwise/relu6``). Parameter counts equal PyTorch's
``sum(p.numel() for p in model.parameters())`` for the same architecture
(tested), so results can be compared with the papers.

=======================  =======================================  ========  =====
name                     architecture                             input     sites
=======================  =======================================  ========  =====
``resnet18``             ResNet-18, CIFAR stem (3x3 conv, max-pool)  32x32x3   17
``resnet18_imagenet``    torchvision ResNet-18 (7x7/2 stem)       224x224x3   17
``resnet20``             ResNet-20 style, 16-32-64 channels       32x32x3     19
``mobilenet_v2``         MobileNetV2, CIFAR strides               32x32x3     35
``mobilenet_v2_imagenet``  torchvision MobileNetV2                224x224x3   35
``vgg16_bn``             torchvision VGG-16-bn                    32x32x3     15
``digits_cnn``           small residual CNN for sklearn digits    8x8x1        6
``digits_plain``         plain unpadded CNN for sklearn digits    8x8x1        5
``swin_t``               torchvision Swin-T, CIFAR feeding        32x32x3     12
``swin_t_imagenet``      torchvision Swin-T                       224x224x3   12
``vit_b16``              torchvision ViT-B/16                     224x224x3   12
``digits_swin``          tiny Swin for digits (patch 2, window 2)  8x8x1       4
``digits_vit``           tiny ViT for digits (patch 2)             8x8x1       2
``bert_base``            BERT-base (bert-base-uncased)            128 tokens  12
``roberta_base``         RoBERTa-base                             128 tokens  12
``tiny_encoder``         tiny BERT/RoBERTa-style encoder (tests)  16 tokens    2
=======================  =======================================  ========  =====

Use :func:`get` to build one by name and :func:`names` to list them.
"""
from __future__ import annotations

from collections.abc import Callable

from jaxdepth.spec import (
    Act, BatchNorm, Block, Conv, Dense, Dropout, Flatten, Node, Pool, Sequential, Spec)
from jaxdepth.text import models as _text
from jaxdepth.transformer import models as _tf

__all__ = ["resnet18", "resnet20", "mobilenet_v2", "vgg16_bn", "digits_cnn", "digits_plain",
           "swin_t", "vit_b16", "digits_swin", "digits_vit", "bert_base", "roberta_base",
           "tiny_encoder", "get", "names"]


def _check_positive(what: str, value) -> None:
  if not isinstance(value, int) or value <= 0:
    raise ValueError(f"{what} must be a positive int, got {value!r}")


def _input_shape(input_shape, default: tuple[int, ...]) -> tuple[int, ...]:
  if input_shape is None:
    return default
  shape = tuple(input_shape) if isinstance(input_shape, (tuple, list)) else ()
  if len(shape) != 3:
    raise ValueError(f"input_shape must be (height, width, channels), got {input_shape!r}")
  return shape


# --------------------------------------------------------------------------- ResNet


def basic_block(name: str, in_features: int, features: int, stride: int) -> Block:
  """ResNet BasicBlock: ``relu2(bn2(conv2(relu1(bn1(conv1(x))))) + shortcut(x))``.

  The shortcut is the identity when shape is kept, else a 1x1 conv with the
  block's stride followed by BN (He et al., 2016, option B).
  """
  branch = (Conv("conv1", features=features, kernel=3, stride=stride, padding=1),
            BatchNorm("bn1"), Act("relu1"),
            Conv("conv2", features=features, kernel=3, padding=1),
            BatchNorm("bn2"))
  shortcut: tuple[Node, ...] = ()
  if stride != 1 or in_features != features:
    shortcut = (Conv("shortcut_conv", features=features, kernel=1, stride=stride),
                BatchNorm("shortcut_bn"))
  return Block(name, branch=branch, shortcut=shortcut, post=(Act("relu2"),))


def _resnet_stages(widths, blocks_per_stage, in_features) -> tuple[Node, ...]:
  """Stages ``layer1``, ``layer2``, ...; every stage after the first halves the map."""
  stages = []
  for i, (width, n) in enumerate(zip(widths, blocks_per_stage)):
    blocks = []
    for j in range(n):
      stride = 2 if i > 0 and j == 0 else 1
      blocks.append(basic_block(str(j), in_features, width, stride))
      in_features = width
    stages.append(Sequential(f"layer{i + 1}", layers=tuple(blocks)))
  return tuple(stages)


def resnet18(num_classes: int = 10, stem: str = "cifar", input_shape=None) -> Spec:
  """ResNet-18 (He et al., 2016) as used by EASIER, LaCoOT, TLC and EGP.

  ``stem="cifar"``: 3x3 stride-1 pad-1 conv (no bias), BN, ReLU, then the 3x3/2
  max-pool (pad 1) that the papers' CIFAR code keeps, so ``layer1`` runs at 16x16
  on a 32x32 input. ``stem="imagenet"``: torchvision's 7x7/2
  pad-3 conv, BN, ReLU, 3x3/2 max-pool. Then four stages of two BasicBlocks
  (64-128-256-512), global average pool and a Dense head. 17 sites.

  Args:
    num_classes: size of the Dense head.
    stem: ``"cifar"`` or ``"imagenet"``.
    input_shape: ``(H, W, C)``; default 32x32x3 (cifar) or 224x224x3 (imagenet).

  Returns:
    The spec (11,173,962 parameters for CIFAR-10; 11,689,512 for the ImageNet
    stem with 1000 classes, as torchvision).
  """
  _check_positive("num_classes", num_classes)
  if stem == "cifar":
    shape = _input_shape(input_shape, (32, 32, 3))
    conv1 = Conv("conv1", features=64, kernel=3, stride=1, padding=1)
  elif stem == "imagenet":
    shape = _input_shape(input_shape, (224, 224, 3))
    conv1 = Conv("conv1", features=64, kernel=7, stride=2, padding=3)
  else:
    raise ValueError(f"unknown ResNet stem {stem!r}; expected 'cifar' or 'imagenet'")
  layers = (conv1, BatchNorm("bn1"), Act("relu"),
            Pool("maxpool", "max", window=3, stride=2, padding=1),
            *_resnet_stages((64, 128, 256, 512), (2, 2, 2, 2), 64),
            Pool("avgpool", "global_avg"), Dense("fc", features=num_classes))
  return Spec(shape, layers, name=f"resnet18_{stem}")


def resnet20(num_classes: int = 10, width: int = 16, input_shape=(32, 32, 3)) -> Spec:
  """A ResNet-20-style network for CPU work (He et al., 2016, §4.2 CIFAR nets).

  3x3 stem (no max-pool), three stages of three BasicBlocks with ``width``,
  ``2 width``, ``4 width`` channels, strides 1-2-2, 1x1 conv + BN projection
  shortcuts where the shape changes, global average pool, Dense. 19 sites.

  Args:
    num_classes: size of the Dense head.
    width: channels of the first stage (16 in the paper).
    input_shape: ``(H, W, C)``.

  Returns:
    The spec.
  """
  _check_positive("num_classes", num_classes)
  _check_positive("width", width)
  layers = (Conv("conv1", features=width, kernel=3, padding=1), BatchNorm("bn1"), Act("relu"),
            *_resnet_stages((width, 2 * width, 4 * width), (3, 3, 3), width),
            Pool("avgpool", "global_avg"), Dense("fc", features=num_classes))
  return Spec(_input_shape(input_shape, (32, 32, 3)), layers, name="resnet20")


# ---------------------------------------------------------------------- MobileNetV2

# (expansion t, output channels c, repeats n, first stride s), Sandler et al., 2018, Table 2.
_MOBILENET_V2_SETTINGS = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2),
                          (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1))


def _make_divisible(value: float, divisor: int = 8) -> int:
  """Rounds channels to a multiple of ``divisor``, never below 90 % of ``value``
  (the rule of the MobileNet reference code)."""
  new = max(divisor, int(value + divisor / 2) // divisor * divisor)
  if new < 0.9 * value:
    new += divisor
  return new


def _conv_bn_relu6(name: str, features: int, kernel: int, stride: int = 1,
                   groups: int = 1) -> Sequential:
  """A bias-free conv with 'same'-style padding, BN, ReLU6 (torchvision's ConvBNReLU)."""
  return Sequential(name, layers=(
      Conv("conv", features=features, kernel=kernel, stride=stride, padding=kernel // 2,
           groups=groups, bias=False),
      BatchNorm("bn"), Act("relu6", fn="relu6")))


def inverted_residual(name: str, in_features: int, features: int, stride: int,
                      expansion: int) -> Node:
  """MobileNetV2 inverted residual: expand 1x1, depthwise 3x3, linear 1x1 projection.

  ``conv/expand`` (1x1 ConvBNReLU6, absent when ``expansion == 1``),
  ``conv/depthwise`` (3x3 ConvBNReLU6 with one group per channel),
  ``conv/project`` + ``conv/project_bn`` (no activation). With stride 1 and
  ``in_features == features`` the output is added to the input (a :class:`Block`
  with an identity shortcut), otherwise it is a plain :class:`Sequential`.
  """
  hidden = int(round(in_features * expansion))
  layers: list[Node] = []
  if expansion != 1:
    layers.append(_conv_bn_relu6("expand", hidden, 1))
  layers += [_conv_bn_relu6("depthwise", hidden, 3, stride, groups=hidden),
             Conv("project", features=features, kernel=1), BatchNorm("project_bn")]
  conv = Sequential("conv", layers=tuple(layers))
  if stride == 1 and in_features == features:
    return Block(name, branch=(conv,))
  return Sequential(name, layers=(conv,))


def mobilenet_v2(num_classes: int = 10, variant: str = "cifar", width_mult: float = 1.0,
                 input_shape=None) -> Spec:
  """MobileNetV2 (Sandler et al., 2018) with torchvision's layout.

  ``features/0`` is the stem ConvBNReLU6, ``features/1..17`` the inverted residual
  blocks, ``features/18`` the 1x1 ConvBNReLU6 to 1280 (scaled up only when
  ``width_mult > 1``); then a global mean, ``classifier/dropout`` (0.2) and
  ``classifier/fc``. ``variant="cifar"`` uses stride 1 in the stem and in the
  second stage (t=6, c=24, n=2), as the papers' CIFAR code;
  ``variant="imagenet"`` is torchvision's ``mobilenet_v2``. 35 ReLU6 sites.

  Args:
    num_classes: size of the Dense head.
    variant: ``"cifar"`` or ``"imagenet"``.
    width_mult: channel multiplier (channels rounded to multiples of 8).
    input_shape: ``(H, W, C)``; default 32x32x3 (cifar) or 224x224x3 (imagenet).

  Returns:
    The spec (3,504,872 parameters for the ImageNet variant with 1000 classes,
    2,236,682 with 10 classes).
  """
  _check_positive("num_classes", num_classes)
  if not isinstance(width_mult, (int, float)) or width_mult <= 0:
    raise ValueError(f"width_mult must be a positive number, got {width_mult!r}")
  if variant == "cifar":
    shape, stem_stride, strides = _input_shape(input_shape, (32, 32, 3)), 1, {1: 1}
  elif variant == "imagenet":
    shape, stem_stride, strides = _input_shape(input_shape, (224, 224, 3)), 2, {}
  else:
    raise ValueError(f"unknown MobileNetV2 variant {variant!r}; expected 'cifar' or 'imagenet'")
  in_features = _make_divisible(32 * width_mult)
  last = _make_divisible(1280 * max(1.0, width_mult))
  features: list[Node] = [_conv_bn_relu6("0", in_features, 3, stem_stride)]
  for stage, (t, c, n, s) in enumerate(_MOBILENET_V2_SETTINGS):
    out = _make_divisible(c * width_mult)
    for j in range(n):
      stride = strides.get(stage, s) if j == 0 else 1
      features.append(inverted_residual(str(len(features)), in_features, out, stride, t))
      in_features = out
  features.append(_conv_bn_relu6(str(len(features)), last, 1))
  layers = (Sequential("features", layers=tuple(features)), Pool("pool", "global_avg"),
            Sequential("classifier", layers=(Dropout("dropout", rate=0.2),
                                             Dense("fc", features=num_classes))))
  return Spec(shape, layers, name=f"mobilenet_v2_{variant}")


# ----------------------------------------------------------------------------- VGG

_VGG16 = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M",
          512, 512, 512, "M")


def vgg16_bn(num_classes: int = 10, input_shape=(32, 32, 3)) -> Spec:
  """VGG-16 with batch norm (Simonyan & Zisserman, 2015), torchvision's ``vgg16_bn``.

  Node names are torchvision's module indices (``features/0`` conv,
  ``features/1`` BN, ``features/2`` ReLU, ..., ``classifier/0`` .. ``classifier/6``),
  so the papers' references to ``features[i]`` carry over. 13 conv3x3 (bias) + BN +
  ReLU, 5 max-pools, adaptive average pool to 7x7, flatten, Dense 4096, ReLU,
  Dropout, Dense 4096, ReLU, Dropout, Dense. The papers feed 32x32 CIFAR images
  as they are: the 1x1 map is then replicated to 7x7. 15 sites.

  Flatten is channel-last here, so the first classifier kernel's rows are in
  ``(h, w, c)`` order, not PyTorch's ``(c, h, w)``.

  Args:
    num_classes: size of the last Dense layer.
    input_shape: ``(H, W, C)``.

  Returns:
    The spec (138,365,992 parameters with 1000 classes, as torchvision).
  """
  _check_positive("num_classes", num_classes)
  features: list[Node] = []
  for v in _VGG16:
    i = len(features)
    if v == "M":
      features.append(Pool(str(i), "max", window=2, stride=2))
    else:
      features += [Conv(str(i), features=v, kernel=3, padding=1, bias=True),
                   BatchNorm(str(i + 1)), Act(str(i + 2))]
  classifier = (Dense("0", features=4096), Act("1"), Dropout("2", rate=0.5),
                Dense("3", features=4096), Act("4"), Dropout("5", rate=0.5),
                Dense("6", features=num_classes))
  layers = (Sequential("features", layers=tuple(features)),
            Pool("avgpool", "adaptive_avg", output_size=7), Flatten("flatten"),
            Sequential("classifier", layers=classifier))
  return Spec(_input_shape(input_shape, (32, 32, 3)), layers, name="vgg16_bn")


# ---------------------------------------------------------------------------- digits


def digits_cnn(num_classes: int = 10, width: int = 32, input_shape=(8, 8, 1)) -> Spec:
  """A small residual CNN for scikit-learn's 8x8 digits: the offline demo network.

  Stem 3x3 conv + BN + ReLU, two BasicBlocks at ``width`` channels (sites inside
  the branch and after the addition), 2x2 max-pool, 1x1 conv to ``2 width`` +
  BN + ReLU, global average pool, Dense. Six sites, 40,298 parameters at the
  default width; it reaches > 95 % test accuracy on digits in a few epochs.

  Args:
    num_classes: size of the Dense head.
    width: channels of the stem and of the residual blocks.
    input_shape: ``(H, W, C)``.

  Returns:
    The spec.
  """
  _check_positive("num_classes", num_classes)
  _check_positive("width", width)
  layers = (Conv("conv1", features=width, kernel=3, padding=1), BatchNorm("bn1"), Act("relu"),
            Sequential("layer1", layers=(basic_block("0", width, width, 1),
                                         basic_block("1", width, width, 1))),
            Pool("maxpool", "max", window=2, stride=2),
            Conv("conv2", features=2 * width, kernel=1), BatchNorm("bn2"), Act("relu2"),
            Pool("avgpool", "global_avg"), Dense("fc", features=num_classes))
  return Spec(_input_shape(input_shape, (8, 8, 1)), layers, name="digits_cnn")


def digits_plain(num_classes: int = 10, width: int = 32, input_shape=(8, 8, 1)) -> Spec:
  """A plain CNN of unpadded convs for scikit-learn's 8x8 digits: the main job's network.

  Every layer is a conv without padding (``'VALID'``), so each map is smaller
  than the last and the network ends on a 1x1 map::

      8x8x1 -conv1 3x3-> 6x6xw -conv2 3x3-> 4x4xw -conv3 3x3-> 2x2x2w
            -conv4 2x2-> 1x1x4w -conv5 1x1-> 1x1x4w -fc 1x1-> 1x1xK -avgpool-> K

  each conv but ``fc`` followed by BatchNorm and a ReLU site (five sites). It
  is built so that **every removed site can be merged exactly**: two unpadded
  convs compose into one conv of kernel ``k1 + k2 - 1`` equal at every
  position (no zero padding of the intermediate map to disagree with, see
  :mod:`jaxdepth.surgery.merge`), and each such merge lowers the
  multiply-accumulates because the maps shrink (conv1∘conv2 as one 5x5 conv:
  12.8k MACs instead of 158k). The classifier is a 1x1 conv on the 1x1 map
  (a Dense layer), so the last site merges too. With ``width=32``: 79,146
  parameters, 282k MACs; about 99 % test accuracy on digits.

  Args:
    num_classes: outputs of ``fc``.
    width: channels of conv1 and conv2 (conv3 has ``2 width``, conv4 and
      conv5 ``4 width``).
    input_shape: ``(H, W, C)``; the convs reduce 8x8 to 1x1 (a larger input
      ends on a larger map, which the global average pool averages).

  Returns:
    The spec.
  """
  _check_positive("num_classes", num_classes)
  _check_positive("width", width)
  layers = []
  for i, (features, kernel) in enumerate(((width, 3), (width, 3), (2 * width, 3),
                                          (4 * width, 2), (4 * width, 1)), 1):
    layers += [Conv(f"conv{i}", features=features, kernel=kernel), BatchNorm(f"bn{i}"),
               Act(f"relu{i}")]
  layers += [Conv("fc", features=num_classes, kernel=1, bias=True),
             Pool("avgpool", "global_avg")]
  return Spec(_input_shape(input_shape, (8, 8, 1)), tuple(layers), name="digits_plain")
# ---------------------------------------------------------------------- transformers


def swin_t(num_classes: int = 10, input_shape=(32, 32, 3), stochastic_depth: float = 0.2) -> Spec:
  """Swin-T (Liu et al., 2021), torchvision's ``swin_t``: the papers' Swin.

  Patch 4, embedding 96, depths (2, 2, 6, 2), heads (3, 6, 12, 24), 7x7 windows
  (odd layers shifted by 3), MLP ratio 4, stochastic depth 0 -> 0.2. The
  papers feed CIFAR-10 at 32x32 without resizing: 8x8 tokens, then 4x4, 2x2 and
  1x1, every window zero-padded to 7x7 as torchvision does
  (:class:`~jaxdepth.transformer.WindowAttention` with ``pad=True``). 12 GELU
  sites, ``features/s/b/mlp/gelu`` (layouts and names:
  :mod:`jaxdepth.transformer.models`).

  Args:
    num_classes: size of the head.
    input_shape: ``(H, W, C)``; 32x32x3 (CIFAR feeding) or 224x224x3 (ImageNet).
    stochastic_depth: the last layer's drop-path rate.

  Returns:
    The spec (28,288,354 parameters with 1000 classes, as torchvision;
    27,527,044 with 10).
  """
  _check_positive("num_classes", num_classes)
  return _tf.swin(_input_shape(input_shape, (32, 32, 3)), num_classes, patch=4, embed_dim=96,
                  depths=(2, 2, 6, 2), heads=(3, 6, 12, 24), window=7,
                  stochastic_depth=stochastic_depth, name="swin_t")


def vit_b16(num_classes: int = 10, input_shape=(224, 224, 3)) -> Spec:
  """ViT-B/16 (Dosovitskiy et al., 2021), torchvision's ``vit_b_16``.

  16x16 patches, width 768, 12 layers of 12 heads, MLP 3072, LayerNorm eps 1e-6,
  class token, learned position embedding. 12 GELU sites.

  Args:
    num_classes: size of the head.
    input_shape: ``(H, W, C)`` with sides multiple of 16.

  Returns:
    The spec (86,567,656 parameters with 1000 classes at 224x224, as torchvision).
  """
  _check_positive("num_classes", num_classes)
  return _tf.vit(_input_shape(input_shape, (224, 224, 3)), num_classes, patch=16, dim=768,
                 depth=12, heads=12, mlp_dim=3072, name="vit_b16")


def digits_swin(num_classes: int = 10, width: int = 16, input_shape=(8, 8, 1)) -> Spec:
  """A tiny Swin for scikit-learn's 8x8 digits (CPU tests and demos).

  Patch 2 (4x4 tokens), embedding ``width``, depths (2, 2), heads (2, 4), 2x2
  windows (the second layer of each stage shifted by 1; at the 2x2 stage the
  window covers the map and the shift is dropped), no stochastic depth. 4 GELU
  sites.
  """
  _check_positive("num_classes", num_classes)
  _check_positive("width", width)
  return _tf.swin(_input_shape(input_shape, (8, 8, 1)), num_classes, patch=2, embed_dim=width,
                  depths=(2, 2), heads=(2, 4), window=2, stochastic_depth=0.0,
                  name="digits_swin")


def digits_vit(num_classes: int = 10, width: int = 16, input_shape=(8, 8, 1)) -> Spec:
  """A tiny ViT for scikit-learn's 8x8 digits: patch 2 (16 tokens + class
  token), width ``width``, 2 layers of 2 heads, MLP ``2 width``. 2 GELU sites."""
  _check_positive("num_classes", num_classes)
  _check_positive("width", width)
  return _tf.vit(_input_shape(input_shape, (8, 8, 1)), num_classes, patch=2, dim=width,
                 depth=2, heads=2, mlp_dim=2 * width, name="digits_vit")


# ------------------------------------------------------------------------- text


def _sequence_length(max_length: int, input_shape) -> int:
  """``max_length``, or the length an ``input_shape`` of ``(L,)`` gives (the training
  command passes the dataset's input shape)."""
  if input_shape is None:
    return max_length
  shape = tuple(input_shape)
  if len(shape) != 1:
    raise ValueError(f"a text encoder's input_shape is (sequence length,), got {input_shape!r}; "
                     f"train it on a text dataset (glue/sst2, glue/rte, glue/qnli)")
  return shape[0]


def bert_base(num_classes: int = 2, max_length: int = 128, head: str = "classifier",
              input_shape=None) -> Spec:
  """BERT-base (Devlin et al., 2019) with bert-base-uncased's configuration.

  Vocabulary 30,522, width 768, 12 post-LN layers of 12 heads, MLP 3072 with
  exact GELU, 512 positions, 2 token types, LayerNorm eps 1e-12; input token ids
  padded to ``max_length`` (GLUE recipes use 128). 12 GELU sites
  ``encoder/layer/i/mlp/gelu`` (names: :mod:`jaxdepth.text.models`).

  Args:
    num_classes: logits of the classifier (2 for SST-2, RTE, QNLI).
    max_length: tokens per sequence, at most 512.
    head: ``"classifier"`` (``BertForSequenceClassification``) or ``"pooled"``
      (``BertModel``'s pooler output).
    input_shape: ``(L,)``, another way to give ``max_length``.

  Returns:
    The spec (109,482,240 parameters with ``head="pooled"``, as Hugging Face's
    ``BertModel``; the classifier adds ``768 num_classes + num_classes``).
  """
  return _text.encoder(_text.BERT_BASE, max_length=_sequence_length(max_length, input_shape),
                       head=head,
                       num_classes=num_classes, name="bert_base")


def roberta_base(num_classes: int = 2, max_length: int = 128, head: str = "classifier",
                 input_shape=None) -> Spec:
  """RoBERTa-base (Liu et al., 2019) with roberta-base's configuration.

  As :func:`bert_base` but vocabulary 50,265, 514 positions numbered from the
  padding id 1 over real tokens, 1 token type, LayerNorm eps 1e-5; the
  classifier is RoBERTa's own head on the first token (dense 768, tanh,
  out_proj), without the pooler.

  Returns:
    The spec (124,645,632 parameters with ``head="pooled"``, as Hugging Face's
    ``RobertaModel``; with the classifier, the pooler's 590,592 are replaced by
    the head's ``590,592 + 768 num_classes + num_classes``).
  """
  return _text.encoder(_text.ROBERTA_BASE, max_length=_sequence_length(max_length, input_shape),
                       head=head,
                       num_classes=num_classes, name="roberta_base")


def tiny_encoder(num_classes: int = 2, vocab_size: int = 64, max_length: int = 16,
                 width: int = 16, depth: int = 2, family: str = "bert",
                 head: str = "classifier", input_shape=None) -> Spec:
  """A tiny BERT- or RoBERTa-style encoder for tests and demos on the CPU.

  ``width`` hidden, ``depth`` layers of 2 heads, MLP ``2 width``, 64 positions
  (66 for RoBERTa, padding id 1), 2 token types (1 for RoBERTa), no dropout.
  ``depth`` GELU sites.
  """
  roberta = family == "roberta"
  config = _text.EncoderConfig(
      family=family, vocab_size=vocab_size, width=width, depth=depth, heads=2,
      mlp_width=2 * width, max_positions=66 if roberta else 64,
      type_vocab_size=1 if roberta else 2, layer_norm_eps=1e-5 if roberta else 1e-12,
      dropout=0.0, attention_dropout=0.0, pad_token_id=1 if roberta else 0)
  return _text.encoder(config, max_length=_sequence_length(max_length, input_shape), head=head,
                       num_classes=num_classes, name="tiny_encoder")


# -------------------------------------------------------------------------- registry

_MODELS: dict[str, Callable[..., Spec]] = {
    "resnet18": lambda **kw: resnet18(stem="cifar", **kw),
    "resnet18_imagenet": lambda **kw: resnet18(stem="imagenet", **kw),
    "resnet20": resnet20,
    "mobilenet_v2": lambda **kw: mobilenet_v2(variant="cifar", **kw),
    "mobilenet_v2_imagenet": lambda **kw: mobilenet_v2(variant="imagenet", **kw),
    "vgg16_bn": vgg16_bn,
    "digits_cnn": digits_cnn,
    "digits_plain": digits_plain,
    "swin_t": swin_t,
    "swin_t_imagenet": lambda **kw: swin_t(**{"input_shape": (224, 224, 3), **kw}),
    "vit_b16": vit_b16,
    "digits_swin": digits_swin,
    "digits_vit": digits_vit,
    "bert_base": bert_base,
    "roberta_base": roberta_base,
    "tiny_encoder": tiny_encoder,
}


def names() -> tuple[str, ...]:
  """Names accepted by :func:`get`."""
  return tuple(_MODELS)


def get(name: str, **kwargs) -> Spec:
  """Builds the zoo model ``name`` with keyword arguments for its function.

  Example: ``get("resnet18", num_classes=100)``.
  """
  if name not in _MODELS:
    raise KeyError(f"unknown model {name!r}; known models: {', '.join(names())}")
  try:
    return _MODELS[name](**kwargs)
  except TypeError as e:
    raise TypeError(f"model {name!r}: {e}") from None
