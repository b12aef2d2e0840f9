"""Swin and ViT specs with torchvision's topology (built by :mod:`jaxdepth.zoo`).

Node paths follow torchvision's modules where one exists, and name the two
residual halves of every transformer layer::

    Swin   features/1/0/attention/{norm, attn, drop_path}          (features[1][0].norm1, .attn)
           features/1/0/mlp/{norm, fc1, gelu, drop1, fc2, drop2, drop_path}
                                                                   (.norm2, .mlp[0] .. mlp[4])
           features/2/{merge, norm, reduction}                     (PatchMerging)
    ViT    encoder/layers/encoder_layer_0/attention/{norm, self_attention, dropout}
           encoder/layers/encoder_layer_0/mlp/{norm, fc1, gelu, drop1, fc2, drop2}

So the GELU site of a Swin layer is ``features/s/b/mlp/gelu``, the weight layer
feeding it ``features/s/b/mlp/fc1``, the layer's input and output are those of
the ``features/s/b`` Sequential (``network.forward(capture=...)``), and its MLP
branch output before the addition is the output of ``features/s/b/mlp/drop_path``.
"""
from __future__ import annotations

from jaxdepth.spec import (
    Act, Block, Conv, Dense, Dropout, LayerNorm, Node, Pool, Sequential, Spec)
from jaxdepth.transformer.nodes import (
    Attention, ClassToken, PatchMerging, PositionEmbedding, SelectToken, StochasticDepth,
    Tokens, WindowAttention)

__all__ = ["mlp_block", "swin_layer", "swin", "vit_layer", "vit"]


def mlp_block(dim: int, hidden: int, drop_path: float = 0.0, *, epsilon: float = 1e-5,
              dropout: float = 0.0, stochastic_depth: bool = True) -> Block:
  """``x + drop_path(drop2(fc2(drop1(gelu(fc1(norm(x)))))))``: the transformer MLP half."""
  branch: tuple[Node, ...] = (
      LayerNorm("norm", epsilon=epsilon), Dense("fc1", features=hidden), Act("gelu", fn="gelu"),
      Dropout("drop1", rate=dropout), Dense("fc2", features=dim), Dropout("drop2", rate=dropout))
  if stochastic_depth:
    branch += (StochasticDepth("drop_path", rate=drop_path),)
  return Block("mlp", branch=branch)


def swin_layer(name: str, dim: int, heads: int, window, shift, drop_path: float,
               mlp_ratio: float = 4.0, pad: bool = True) -> Sequential:
  """One Swin transformer layer (torchvision's ``SwinTransformerBlock``) on ``(H, W, dim)``."""
  attention = Block("attention", branch=(
      LayerNorm("norm"),
      WindowAttention("attn", heads=heads, window=window, shift=shift, pad=pad),
      StochasticDepth("drop_path", rate=drop_path)))
  return Sequential(name, layers=(attention, mlp_block(dim, int(dim * mlp_ratio), drop_path)))


def swin(input_shape, num_classes: int, *, patch: int, embed_dim: int, depths, heads,
         window: int, stochastic_depth: float, pad: bool = True, name: str = "swin") -> Spec:
  """A Swin transformer (Liu et al., 2021) as torchvision's ``SwinTransformer`` builds it.

  ``features/0``: patch embedding (``proj``, a Conv with kernel = stride =
  ``patch``, then ``norm``); ``features/1, 3, 5, ...``: stages of Swin layers,
  the odd layers shifted by ``window // 2``; ``features/2, 4, ...``: patch
  merging (``merge``, ``norm`` of 4C, ``reduction`` 4C -> 2C without bias);
  then ``norm``, a global average pool and ``head``. Stochastic depth grows
  linearly from 0 to ``stochastic_depth`` over all layers.
  """
  features: list[Node] = [Sequential("0", layers=(
      Conv("proj", features=embed_dim, kernel=patch, stride=patch, bias=True),
      LayerNorm("norm")))]
  total, k = sum(depths), 0
  for i, (depth, h) in enumerate(zip(depths, heads)):
    dim = embed_dim * 2**i
    layers = []
    for j in range(depth):
      rate = stochastic_depth * k / (total - 1) if total > 1 else 0.0
      layers.append(swin_layer(str(j), dim, h, window, 0 if j % 2 == 0 else window // 2,
                               rate, pad=pad))
      k += 1
    features.append(Sequential(str(len(features)), layers=tuple(layers)))
    if i < len(depths) - 1:
      features.append(Sequential(str(len(features)), layers=(
          PatchMerging("merge"), LayerNorm("norm"),
          Dense("reduction", features=2 * dim, bias=False))))
  layers = (Sequential("features", layers=tuple(features)), LayerNorm("norm"),
            Pool("avgpool", "global_avg"), Dense("head", features=num_classes))
  return Spec(tuple(input_shape), layers, name=name)


def vit_layer(name: str, dim: int, heads: int, mlp_dim: int) -> Sequential:
  """One ViT encoder layer (torchvision's ``EncoderBlock``) on ``(N, dim)`` tokens."""
  attention = Block("attention", branch=(
      LayerNorm("norm", epsilon=1e-6), Attention("self_attention", heads=heads),
      Dropout("dropout", rate=0.0)))
  return Sequential(name, layers=(
      attention, mlp_block(dim, mlp_dim, epsilon=1e-6, stochastic_depth=False)))


def vit(input_shape, num_classes: int, *, patch: int, dim: int, depth: int, heads: int,
        mlp_dim: int, name: str = "vit") -> Spec:
  """A Vision Transformer (Dosovitskiy et al., 2021) as torchvision's ``VisionTransformer``.

  ``conv_proj`` (patch embedding), ``tokens`` (map -> sequence),
  ``class_token``; ``encoder``: ``pos_embedding``, ``dropout``,
  ``layers/encoder_layer_i`` (pre-LN attention and MLP halves), ``ln``; then
  ``cls`` (token 0) and ``head``.
  """
  h, w, _ = input_shape
  if h % patch or w % patch:
    raise ValueError(f"a ViT input of {h}x{w} is not a multiple of the patch size {patch}; "
                     f"resize the images or choose a patch size dividing both sides")
  encoder = (PositionEmbedding("pos_embedding"), Dropout("dropout", rate=0.0),
             Sequential("layers", layers=tuple(vit_layer(f"encoder_layer_{i}", dim, heads, mlp_dim)
                                               for i in range(depth))),
             LayerNorm("ln", epsilon=1e-6))
  layers = (Conv("conv_proj", features=dim, kernel=patch, stride=patch, bias=True),
            Tokens("tokens"), ClassToken("class_token"), Sequential("encoder", layers=encoder),
            SelectToken("cls", index=0), Dense("head", features=num_classes))
  return Spec(tuple(input_shape), layers, name=name)
