"""How :class:`jaxdepth.network.Network` runs the text nodes.

Each ``run_*`` function has the executor's per-node signature
``(module, node, path, x, ctx) -> y`` (see :mod:`jaxdepth.transformer.executor`);
the per-token inputs of the call (``input_ids``, ``attention_mask``,
``token_type_ids``) are in ``ctx.inputs``. Embedding tables are initialised
N(0, 0.02²), as BERT does.
"""
from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp

from jaxdepth.explicit_axes import batch_sharding
from jaxdepth.text import nodes as N

__all__ = ["EXECUTORS", "position_ids"]


class _Table(nn.Module):
  """A learned ``(rows, features)`` table, read by integer ids; an id outside
  ``[0, rows)`` reads a row of NaNs."""
  rows: int
  features: int

  @nn.compact
  def __call__(self, ids):
    table = self.param("embedding", nn.initializers.normal(0.02), (self.rows, self.features))
    ids = jnp.where(ids < 0, self.rows, ids)   # take wraps negative ids onto real rows
    sharding = batch_sharding(ids, ids.ndim + 1)
    if sharding is None:
      return jnp.take(table, ids, axis=0, mode="fill", fill_value=jnp.nan)
    # On a batch sharded over Explicit mesh axes the rows read are sharded as the ids.
    return table.at[ids].get(mode="fill", fill_value=jnp.nan, out_sharding=sharding)


def position_ids(node: N.TokenPositionEmbedding, input_ids) -> jnp.ndarray:
  """``(B, L)`` position of each token (see :class:`~jaxdepth.text.TokenPositionEmbedding`)."""
  if node.padding_idx is None:
    return jnp.broadcast_to(jnp.arange(input_ids.shape[1]), input_ids.shape)
  real = (input_ids != node.padding_idx).astype(jnp.int32)
  return jnp.cumsum(real, axis=1) * real + node.padding_idx


def run_token_embedding(module, n, path, x, ctx):
  if not jnp.issubdtype(x.dtype, jnp.integer):
    raise TypeError(f"node {path!r}: a token embedding reads integer token ids, got "
                    f"{x.dtype}; it must be the first node of the spec")
  y = _Table(n.vocab_size, n.features, name=n.name)(x)
  return y if ctx.dtype is None else y.astype(ctx.dtype)


def run_token_position_embedding(module, n, path, x, ctx):
  ids = ctx.inputs.get("input_ids")
  if ids is None:
    raise ValueError(f"node {path!r}: position embeddings need the token ids of the call; "
                     f"run a spec that starts with a TokenEmbedding")
  table = _Table(n.max_positions, x.shape[-1], name=n.name)
  return x + table(position_ids(n, ids)).astype(x.dtype)


def run_token_type_embedding(module, n, path, x, ctx):
  types = ctx.inputs.get("token_type_ids")
  if types is None:
    types = jnp.zeros(x.shape[:-1], jnp.int32)
  return x + _Table(n.type_vocab_size, x.shape[-1], name=n.name)(types).astype(x.dtype)


def run_tanh(module, n, path, x, ctx):
  return jnp.tanh(x)


EXECUTORS = {
    N.TokenEmbedding: run_token_embedding,
    N.TokenPositionEmbedding: run_token_position_embedding,
    N.TokenTypeEmbedding: run_token_type_embedding,
    N.Tanh: run_tanh,
}
