"""Spec nodes of vision transformers (ViT, Swin), with their shapes and costs.

Layouts between nodes (no batch axis, as everywhere in :mod:`jaxdepth.spec`):

* **maps** ``(H, W, C)``: a patch embedding (a :class:`~jaxdepth.spec.Conv` whose
  kernel equals its stride) makes one; Swin keeps it through every stage, so
  its windowed attention, LayerNorms and MLPs all read ``(H, W, C)``, and the
  MLP's GELU site sees ``(H, W, 4C)`` (the neuron is the last axis);
* **token sequences** ``(N, C)``: :class:`Tokens` turns a map into one
  (row-major, token ``h W + w``), as ViT does after its patch embedding;
  :class:`Attention`, :class:`ClassToken`, :class:`PositionEmbedding` and
  :class:`SelectToken` read sequences.

A pre-LN transformer layer is two residual :class:`~jaxdepth.spec.Block` nodes
with identity shortcuts, ``x + drop_path(attn(norm(x)))`` then
``x + drop_path(fc2(gelu(fc1(norm(x)))))``; the GELU is an ordinary activation
site (``Act(fn="gelu")``), so gates, statistics and every method see it like a
ReLU. :func:`jaxdepth.zoo.swin_t` and :func:`jaxdepth.zoo.vit_b16` build them.

Every node here validates its fields on construction and its input shape in
:meth:`output_shape` (a clear :class:`~jaxdepth.spec.SpecError` naming the
node), round-trips through JSON, and tells :mod:`jaxdepth.costs` its
parameters (:meth:`param_count`) and multiply-accumulates (:meth:`mac_count`).
"""
from __future__ import annotations

import dataclasses
import math
from typing import ClassVar

from jaxdepth import spec as S

__all__ = ["Attention", "WindowAttention", "PatchMerging", "StochasticDepth", "Tokens",
           "ClassToken", "PositionEmbedding", "SelectToken", "padded_size", "effective_shift"]


def _pair(value, what: str, node: str) -> tuple[int, int]:
  if isinstance(value, bool):
    raise S.SpecError(f"node {node!r}: {what} must be an int or a pair of ints, got {value!r}")
  if isinstance(value, int):
    return (value, value)
  if isinstance(value, (tuple, list)) and len(value) == 2 and all(
      isinstance(v, int) and not isinstance(v, bool) for v in value):
    return (int(value[0]), int(value[1]))
  raise S.SpecError(f"node {node!r}: {what} must be an int or a pair of ints, got {value!r}")


def _rate(value, node: str, what: str) -> None:
  if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value < 1.0:
    raise S.SpecError(f"node {node!r}: {what} must be a number in [0, 1), got {value!r}")


def _heads(heads, node: str) -> None:
  if isinstance(heads, bool) or not isinstance(heads, int) or heads <= 0:
    raise S.SpecError(f"node {node!r}: heads must be a positive int, got {heads!r}")


def _check_width(channels: int, heads: int, path: str) -> None:
  if channels % heads:
    raise S.SpecError(f"node {path!r}: {heads} heads do not divide the width {channels}; "
                      f"choose heads dividing {channels} (each head gets width / heads channels)")


def _tokens(shape, path, kind) -> tuple[int, int]:
  if len(shape) != 2:
    raise S.SpecError(f"node {path!r}: {kind} needs a token sequence (N, C), got shape {shape}; "
                      f"insert a Tokens node after the patch embedding")
  return shape


def _map(shape, path, kind) -> tuple[int, int, int]:
  if len(shape) != 3:
    raise S.SpecError(f"node {path!r}: {kind} needs an (H, W, C) map, got shape {shape}")
  return shape


def padded_size(size: tuple[int, int], window: tuple[int, int]) -> tuple[int, int]:
  """``size`` rounded up to a multiple of ``window`` (torchvision pads bottom/right)."""
  return tuple(-(-n // w) * w for n, w in zip(size, window))


def effective_shift(padded: tuple[int, int], window: tuple[int, int],
                    shift: tuple[int, int]) -> tuple[int, int]:
  """The shift torchvision applies: none along an axis the window covers whole."""
  return tuple(0 if w >= p else s for p, w, s in zip(padded, window, shift))


@dataclasses.dataclass(frozen=True)
class Attention(S.Node):
  """Multi-head self-attention over a token sequence ``(N, C) -> (N, C)`` (ViT).

  ``y = proj(concat_h softmax(q_h k_hᵀ / √d) v_h)`` with ``[q, k, v] = qkv(x)``,
  ``d = C / heads`` (Vaswani et al., 2017). Parameters: ``qkv`` (kernel
  ``(C, 3C)``, output order ``(3, heads, d)``), ``proj`` (``(C, C)``).

  Attributes:
    heads: number of heads; must divide ``C``.
    qkv_bias: whether ``qkv`` has a bias (``proj`` always has one).
    attn_dropout: dropout on the attention probabilities (train mode).
    padding_mask: no token attends to a padding token, i.e. a key whose
      ``attention_mask`` input is 0 (text encoders, :mod:`jaxdepth.text`):
      its score is set to the lowest float32 before the softmax, as BERT's
      extended attention mask does. Padding tokens still attend to the real
      ones (their outputs are computed and ignored downstream).
  """
  heads: int = 1
  qkv_bias: bool = True
  attn_dropout: float = 0.0
  padding_mask: bool = False
  kind: ClassVar[str] = "attention"
  weight_layers: ClassVar[int] = 2   # qkv, then proj (for costs.depth)

  def __post_init__(self):
    super().__post_init__()
    _heads(self.heads, self.name)
    _rate(self.attn_dropout, self.name, "attn_dropout")
    if not isinstance(self.padding_mask, bool):
      raise S.SpecError(f"node {self.name!r}: padding_mask must be true or false, got "
                        f"{self.padding_mask!r}")

  def to_dict(self):
    out = super().to_dict()
    if not self.padding_mask:   # keep the JSON of the vision attention nodes as it was
      out.pop("padding_mask")
    return out

  def output_shape(self, shape, path):
    _, c = _tokens(shape, path, "attention")
    _check_width(c, self.heads, path)
    return shape

  def param_count(self, shape_in) -> int:
    c = shape_in[-1]
    return 3 * c * c + (3 * c if self.qkv_bias else 0) + c * c + c

  def mac_count(self, shape_in, shape_out) -> int:
    """``4 N C²`` (qkv and proj) ``+ 2 N² C`` (scores and the weighted sum)."""
    n, c = shape_in
    return 4 * n * c * c + 2 * n * n * c


@dataclasses.dataclass(frozen=True)
class WindowAttention(S.Node):
  """Swin's (shifted-)window multi-head self-attention on a map ``(H, W, C)``.

  Liu et al., "Swin Transformer", ICCV 2021, §3.2, as torchvision computes it:
  the map is rolled by ``-shift``, cut into non-overlapping ``window`` tiles of
  ``M = wh ww`` tokens, and attention runs inside each tile with a learned
  relative position bias ``B[h, i, j] = table[index(i, j), h]`` (table of
  ``(2wh − 1)(2ww − 1)`` rows per head) added to the scores; when shifted,
  tokens from different regions of the rolled map get ``−100`` added to their
  score (the shifted-window mask), then the tiles are put back and rolled by
  ``+shift``. Parameters: ``qkv`` ``(C, 3C)``, ``proj`` ``(C, C)``,
  ``relative_position_bias_table`` ``((2wh−1)(2ww−1), heads)``.

  Attributes:
    heads: number of heads; must divide ``C``.
    window: ``(wh, ww)`` (an int for a square window).
    shift: ``(sh, sw)``, each ``0 <= s < w`` (0: plain windows).
    pad: ``False``: the map must be a multiple of the window (a window larger
      than the map is refused). ``True`` (torchvision's ``swin_t``): the map is
      zero-padded at the bottom/right to a multiple of the window, the padded
      tokens take part in the attention (unmasked, as in torchvision), the
      output is cropped back, and the shift is dropped along an axis whose
      padded size the window covers whole. This is what feeding 32x32 CIFAR
      images to Swin-T means: 8x8 tokens in 7x7 windows.
    qkv_bias: whether ``qkv`` has a bias.
    attn_dropout: dropout on the attention probabilities (train mode).
  """
  heads: int = 1
  window: tuple[int, int] = (7, 7)
  shift: tuple[int, int] = (0, 0)
  pad: bool = False
  qkv_bias: bool = True
  attn_dropout: float = 0.0
  kind: ClassVar[str] = "window_attention"
  weight_layers: ClassVar[int] = 2   # qkv, then proj (for costs.depth)

  def __post_init__(self):
    super().__post_init__()
    _heads(self.heads, self.name)
    S._set(self, window=_pair(self.window, "window", self.name),
           shift=_pair(self.shift, "shift", self.name))
    if min(self.window) <= 0:
      raise S.SpecError(f"node {self.name!r}: window must be positive, got {self.window}")
    if any(not 0 <= s < w for s, w in zip(self.shift, self.window)):
      raise S.SpecError(f"node {self.name!r}: shift {self.shift} must satisfy 0 <= shift < "
                        f"window {self.window} on each axis (Swin uses window // 2)")
    if not isinstance(self.pad, bool):
      raise S.SpecError(f"node {self.name!r}: pad must be true or false, got {self.pad!r}")
    _rate(self.attn_dropout, self.name, "attn_dropout")

  @property
  def tokens(self) -> int:
    """Tokens per window, ``M = wh ww``."""
    return self.window[0] * self.window[1]

  def output_shape(self, shape, path):
    h, w, c = _map(shape, path, "window attention")
    _check_width(c, self.heads, path)
    if not self.pad:
      if self.window[0] > h or self.window[1] > w:
        raise S.SpecError(f"node {path!r}: window {self.window} is larger than the {h}x{w} "
                          f"map; use a smaller window, or pad=True (torchvision's zero padding)")
      if h % self.window[0] or w % self.window[1]:
        raise S.SpecError(f"node {path!r}: the {h}x{w} map is not a multiple of the window "
                          f"{self.window}; use a window dividing it, or pad=True")
      for size, win, s in zip((h, w), self.window, self.shift):
        if s and win == size:
          raise S.SpecError(f"node {path!r}: shift {self.shift} with a window as large as the "
                            f"{h}x{w} map moves nothing but the mask; use shift 0 there")
    return shape

  def param_count(self, shape_in) -> int:
    c = shape_in[-1]
    table = (2 * self.window[0] - 1) * (2 * self.window[1] - 1) * self.heads
    return 3 * c * c + (3 * c if self.qkv_bias else 0) + c * c + c + table

  def mac_count(self, shape_in, shape_out) -> int:
    """On the (padded) map of ``P`` tokens: ``4 P C²`` (qkv and proj) ``+ 2 P M C``
    (scores and weighted sums inside each window of ``M`` tokens)."""
    h, w, c = shape_in
    p = math.prod(padded_size((h, w), self.window) if self.pad else (h, w))
    return 4 * p * c * c + 2 * p * self.tokens * c


@dataclasses.dataclass(frozen=True)
class PatchMerging(S.Node):
  """Swin's patch merging rearrangement ``(H, W, C) -> (⌈H/2⌉, ⌈W/2⌉, 4C)``.

  Each 2x2 neighbourhood becomes one token, channels in torchvision's order
  ``[x[0::2, 0::2], x[1::2, 0::2], x[0::2, 1::2], x[1::2, 1::2]]`` (an odd map
  is zero-padded at the bottom/right first). Parameter-free: torchvision's
  ``norm`` (LayerNorm of 4C) and ``reduction`` (Dense 4C -> 2C, no bias)
  follow as ordinary nodes (:func:`jaxdepth.zoo.swin_t`).
  """
  kind: ClassVar[str] = "patch_merging"

  def output_shape(self, shape, path):
    h, w, c = _map(shape, path, "patch merging")
    return (-(-h // 2), -(-w // 2), 4 * c)


@dataclasses.dataclass(frozen=True)
class StochasticDepth(S.Dropout):
  """Stochastic depth (Huang et al., 2016), torchvision's ``"row"`` mode.

  In train mode each example's input is zeroed with probability ``rate`` and
  the others are scaled by ``1 / (1 − rate)``; placed last in a residual
  branch, it drops the whole branch for that example. The identity in eval
  mode, so every eval-mode pass (surgery included) treats it as a Dropout.
  """
  rate: float = 0.0
  kind: ClassVar[str] = "stochastic_depth"


@dataclasses.dataclass(frozen=True)
class Tokens(S.Node):
  """A map ``(H, W, C)`` as a token sequence ``(H W, C)`` (token ``h W + w``)."""
  kind: ClassVar[str] = "tokens"

  def output_shape(self, shape, path):
    h, w, c = _map(shape, path, "tokens")
    return (h * w, c)


@dataclasses.dataclass(frozen=True)
class ClassToken(S.Node):
  """Prepends a learned class token: ``(N, C) -> (N + 1, C)`` (ViT).

  Parameter ``token`` of shape ``(1, 1, C)`` (torchvision's ``class_token``),
  initialised to zeros.
  """
  kind: ClassVar[str] = "class_token"

  def output_shape(self, shape, path):
    n, c = _tokens(shape, path, "class token")
    return (n + 1, c)

  def param_count(self, shape_in) -> int:
    return shape_in[-1]


@dataclasses.dataclass(frozen=True)
class PositionEmbedding(S.Node):
  """Adds a learned position embedding ``(1, N, C)`` to a token sequence (ViT).

  Parameter ``embedding`` (torchvision's ``pos_embedding``), initialised
  N(0, 0.02²).
  """
  kind: ClassVar[str] = "position_embedding"

  def output_shape(self, shape, path):
    _tokens(shape, path, "position embedding")
    return shape

  def param_count(self, shape_in) -> int:
    return math.prod(shape_in)


@dataclasses.dataclass(frozen=True)
class SelectToken(S.Node):
  """One token of a sequence, ``(N, C) -> (C,)`` (ViT's class token: ``index=0``)."""
  index: int = 0
  kind: ClassVar[str] = "select_token"

  def __post_init__(self):
    super().__post_init__()
    if isinstance(self.index, bool) or not isinstance(self.index, int) or self.index < 0:
      raise S.SpecError(f"node {self.name!r}: index must be an int >= 0, got {self.index!r}")

  def output_shape(self, shape, path):
    n, c = _tokens(shape, path, "select token")
    if self.index >= n:
      raise S.SpecError(f"node {path!r}: token {self.index} of a sequence of {n} tokens")
    return (c,)
