"""How :class:`jaxdepth.network.Network` runs the transformer nodes.

Each ``run_*`` function has the executor's per-node signature
``(module, node, path, x, ctx) -> y``: it runs inside ``module``'s compact
scope, creates its parameters under ``node.name`` and reads ``ctx.train`` (dropout,
stochastic depth) and ``ctx.dtype`` (compute dtype). :data:`EXECUTORS` maps each
node class to its function; :mod:`jaxdepth.network` looks it up by exact type.

Initialisation follows torchvision's Swin: attention projections truncated
normal (std 0.02) with zero biases, relative position bias tables truncated
normal (std 0.02); ViT's class token zeros, position embedding N(0, 0.02²).
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxdepth.explicit_axes import batch_sharding
from jaxdepth.transformer import nodes as T
from jaxdepth.transformer import ops

__all__ = ["EXECUTORS"]

_trunc = nn.initializers.truncated_normal(0.02)


def _dense(features, use_bias, dtype, name):
  return nn.Dense(features, use_bias=use_bias, kernel_init=_trunc,
                  bias_init=nn.initializers.zeros, dtype=dtype, name=name)


class _Attention(nn.Module):
  """Global or windowed multi-head self-attention (see the two nodes)."""
  node: T.Attention | T.WindowAttention
  dtype: Any = None

  @nn.compact
  def __call__(self, x, train: bool, attention_mask=None):
    n = self.node
    c = x.shape[-1]
    dropout = (nn.Dropout(n.attn_dropout, deterministic=not train, name="attn_dropout")
               if n.attn_dropout > 0 else None)
    if isinstance(n, T.Attention):
      qkv = _dense(3 * c, n.qkv_bias, self.dtype, "qkv")(x)
      bias = None if attention_mask is None else ops.padding_bias(attention_mask)
      y = ops.multi_head_attention(qkv, n.heads, bias, dropout)
      return _dense(c, True, self.dtype, "proj")(y)
    _, h, w, _ = x.shape
    padded = T.padded_size((h, w), n.window) if n.pad else (h, w)
    x = jnp.pad(x, ((0, 0), (0, padded[0] - h), (0, padded[1] - w), (0, 0)))
    shift = T.effective_shift(padded, n.window, n.shift)
    if any(shift):
      x = jnp.roll(x, (-shift[0], -shift[1]), axis=(1, 2))
    table = self.param("relative_position_bias_table", _trunc,
                       ((2 * n.window[0] - 1) * (2 * n.window[1] - 1), n.heads))
    bias = table[ops.relative_position_index(n.window)].transpose(2, 0, 1)  # (heads, M, M)
    mask = ops.shift_mask(padded, n.window, shift)
    bias = bias[None] if mask is None else bias[None] + jnp.asarray(mask)[:, None]
    qkv = _dense(3 * c, n.qkv_bias, self.dtype, "qkv")(ops.window_partition(x, n.window))
    y = ops.multi_head_attention(qkv, n.heads, bias.astype(jnp.float32), dropout)
    y = ops.window_merge(_dense(c, True, self.dtype, "proj")(y), n.window, padded)
    if any(shift):
      y = jnp.roll(y, shift, axis=(1, 2))
    return y[:, :h, :w]


class _ClassToken(nn.Module):
  @nn.compact
  def __call__(self, x):
    token = self.param("token", nn.initializers.zeros, (1, 1, x.shape[-1]))
    # On an Explicit mesh the token's copies are sharded as the batch they join.
    token = jnp.broadcast_to(token.astype(x.dtype), (x.shape[0], 1, x.shape[-1]),
                             out_sharding=batch_sharding(x, 3))
    return jnp.concatenate([token, x], axis=1)


class _PositionEmbedding(nn.Module):
  @nn.compact
  def __call__(self, x):
    emb = self.param("embedding", nn.initializers.normal(0.02), (1, *x.shape[1:]))
    return x + emb.astype(x.dtype)


def run_attention(module, n, path, x, ctx):
  """Self-attention; with ``padding_mask``, keys where the call's ``attention_mask``
  is 0 are left out (no mask given: every token is real)."""
  mask = ctx.inputs.get("attention_mask") if getattr(n, "padding_mask", False) else None
  if mask is not None and mask.shape != x.shape[:2]:
    raise ValueError(f"node {path!r}: attention_mask of shape {mask.shape} does not match the "
                     f"{x.shape[1]} tokens of its input (batch {x.shape[0]})")
  return _Attention(n, dtype=ctx.dtype, name=n.name)(x, ctx.train, mask)


def run_stochastic_depth(module, n, path, x, ctx):
  """``x`` zeroed per example with probability ``rate``, survivors scaled (train only)."""
  if not ctx.train or n.rate == 0:
    return x
  keep = 1.0 - n.rate
  alive = jax.random.bernoulli(module.make_rng("dropout"), keep,
                               (x.shape[0],) + (1,) * (x.ndim - 1))
  return jnp.where(alive, x / keep, jnp.zeros_like(x))


def run_patch_merging(module, n, path, x, ctx):
  return ops.patch_merge(x)


def run_tokens(module, n, path, x, ctx):
  return x.reshape(x.shape[0], -1, x.shape[-1])


def run_class_token(module, n, path, x, ctx):
  return _ClassToken(name=n.name)(x)


def run_position_embedding(module, n, path, x, ctx):
  return _PositionEmbedding(name=n.name)(x)


def run_select_token(module, n, path, x, ctx):
  return x[:, n.index]


EXECUTORS = {
    T.Attention: run_attention,
    T.WindowAttention: run_attention,
    T.StochasticDepth: run_stochastic_depth,
    T.PatchMerging: run_patch_merging,
    T.Tokens: run_tokens,
    T.ClassToken: run_class_token,
    T.PositionEmbedding: run_position_embedding,
    T.SelectToken: run_select_token,
}
