"""The array math of the transformer nodes, as pure functions (no parameters).

Window layout: a padded map ``(B, Hp, Wp, C)`` cut into ``(Hp/wh)(Wp/ww)``
windows of ``M = wh ww`` tokens becomes ``(B, nW, M, C)``, windows in
row-major order and tokens row-major inside a window, as torchvision orders
them (so the relative position index and the shift mask line up with it). On a
batch sharded over Explicit mesh axes, the reshapes that cut and merge windows
keep the batch's sharding (JAX does not infer it for a reshape that splits or
merges several axes at once).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from jaxdepth.explicit_axes import batch_sharding

__all__ = ["relative_position_index", "shift_mask", "window_partition", "window_merge",
           "patch_merge", "multi_head_attention", "padding_bias", "MASK_VALUE"]

MASK_VALUE = -100.0   # torchvision's score offset between tokens of different regions


def relative_position_index(window: tuple[int, int]) -> np.ndarray:
  """``(M, M)`` ints: row of the bias table for the pair (token i, token j) of a window.

  ``index = (Δh + wh − 1)(2 ww − 1) + (Δw + ww − 1)`` with ``Δ = pos_i − pos_j``
  (Swin, §3.2 "relative position bias").
  """
  wh, ww = window
  coords = np.stack(np.meshgrid(np.arange(wh), np.arange(ww), indexing="ij")).reshape(2, -1)
  rel = coords[:, :, None] - coords[:, None, :]
  return (rel[0] + wh - 1) * (2 * ww - 1) + (rel[1] + ww - 1)


def _regions(size: int, window: int, shift: int) -> np.ndarray:
  """Region id per position of a rolled axis: ``[0, P−w)``, ``[P−w, P−s)``, ``[P−s, P)``."""
  ids = np.zeros(size, np.int64)
  if shift:
    ids[size - window:size - shift] = 1
    ids[size - shift:] = 2
  return ids


def shift_mask(padded: tuple[int, int], window: tuple[int, int],
               shift: tuple[int, int]) -> np.ndarray | None:
  """``(nW, M, M)`` float32 score offsets of shifted windows (0 or ``MASK_VALUE``).

  After the roll by ``−shift``, a window at the bottom/right edge holds tokens
  that were far apart in the map; tokens of different regions must not attend
  to each other. ``None`` when there is no shift.
  """
  if not any(shift):
    return None
  hp, wp = padded
  ids = _regions(hp, window[0], shift[0])[:, None] * 3 + _regions(wp, window[1], shift[1])[None]
  win = ids.reshape(hp // window[0], window[0], wp // window[1], window[1])
  win = win.transpose(0, 2, 1, 3).reshape(-1, window[0] * window[1])
  return np.where(win[:, :, None] != win[:, None, :], MASK_VALUE, 0.0).astype(np.float32)


def window_partition(x: jax.Array, window: tuple[int, int]) -> jax.Array:
  """``(B, Hp, Wp, C) -> (B, nW, M, C)``."""
  b, hp, wp, c = x.shape
  wh, ww = window
  x = x.reshape(b, hp // wh, wh, wp // ww, ww, c,
                out_sharding=batch_sharding(x, 6)).transpose(0, 1, 3, 2, 4, 5)
  return x.reshape(b, (hp // wh) * (wp // ww), wh * ww, c, out_sharding=batch_sharding(x, 4))


def window_merge(x: jax.Array, window: tuple[int, int], padded: tuple[int, int]) -> jax.Array:
  """Inverse of :func:`window_partition`: ``(B, nW, M, C) -> (B, Hp, Wp, C)``."""
  b, _, _, c = x.shape
  (wh, ww), (hp, wp) = window, padded
  x = x.reshape(b, hp // wh, wp // ww, wh, ww, c,
                out_sharding=batch_sharding(x, 6)).transpose(0, 1, 3, 2, 4, 5)
  return x.reshape(b, hp, wp, c, out_sharding=batch_sharding(x, 4))


def patch_merge(x: jax.Array) -> jax.Array:
  """``(B, H, W, C) -> (B, ⌈H/2⌉, ⌈W/2⌉, 4C)`` in torchvision's channel order."""
  _, h, w, _ = x.shape
  x = jnp.pad(x, ((0, 0), (0, h % 2), (0, w % 2), (0, 0)))
  return jnp.concatenate([x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2],
                          x[:, 1::2, 1::2]], axis=-1)


def padding_bias(attention_mask: jax.Array) -> jax.Array:
  """``(B, 1, 1, L)`` float32 score offsets: 0 for a real key, the lowest float32 for padding.

  Added to the ``(B, heads, L, L)`` scores, a padding key gets a softmax weight
  of 0 (exactly, unless every key of a row is padding: then the row is uniform,
  never NaN), as BERT's extended attention mask ``(1 - mask) * finfo.min``.
  """
  low = jnp.finfo(jnp.float32).min
  return jnp.where(attention_mask[:, None, None, :] != 0, 0.0, low).astype(jnp.float32)


def multi_head_attention(qkv: jax.Array, heads: int, bias: jax.Array | None = None,
                         dropout=None) -> jax.Array:
  """Scaled dot-product attention of packed projections.

  Args:
    qkv: ``(..., M, 3C)``, last axis ordered ``(3, heads, C / heads)``.
    heads: number of heads.
    bias: added to the scores; broadcasts against ``(..., heads, M, M)``.
    dropout: optional function applied to the attention probabilities.

  Returns:
    ``(..., M, C)``: ``concat_h softmax(q_h k_hᵀ / √d + bias_h) v_h``; the softmax
    runs in float32 whatever the compute dtype.
  """
  *lead, m, c3 = qkv.shape
  c = c3 // 3
  d = c // heads
  qkv = qkv.reshape(*lead, m, 3, heads, d)
  q, k, v = qkv[..., 0, :, :], qkv[..., 1, :, :], qkv[..., 2, :, :]
  scores = jnp.einsum("...qhd,...khd->...hqk", q * (d ** -0.5), k).astype(jnp.float32)
  if bias is not None:
    scores = scores + bias
  probs = jax.nn.softmax(scores, axis=-1).astype(qkv.dtype)
  if dropout is not None:
    probs = dropout(probs)
  return jnp.einsum("...hqk,...khd->...qhd", probs, v).reshape(*lead, m, c)
