"""Arrays sharded over Explicit mesh axes (``jax.make_mesh``'s default in jax 0.12).

JAX types such an array with its sharding and refuses, while tracing, what it
cannot place: a product that contracts the sharded batch axis, a sort along it, a
reshape that merges it with other axes. Unsharded arrays and arrays sharded over
Auto axes (:func:`jaxdepth.training.make_mesh`) carry no axes in their type: for
them :func:`explicit_mesh` is ``None`` and :func:`replicated` the identity, so the
programs that read them stay as they were.
"""
from __future__ import annotations

import jax
from jax.sharding import NamedSharding, PartitionSpec

__all__ = ["explicit_mesh", "replicated", "batch_sharding"]


def explicit_mesh(*arrays):
  """The mesh whose Explicit axes shard one of ``arrays``, else ``None``."""
  for a in arrays:
    sharding = jax.typeof(a).sharding
    if any(axis is not None for axis in sharding.spec):
      return sharding.mesh
  return None


def replicated(tree):
  """``tree`` with every array that Explicit axes shard made whole on every device of its
  mesh (an all-gather; the values are the same), the others as they are."""
  def one(a):
    mesh = explicit_mesh(a)
    return a if mesh is None else jax.sharding.reshard(a, NamedSharding(mesh, PartitionSpec()))
  return jax.tree.map(one, tree)


def batch_sharding(x, ndim: int):
  """``out_sharding`` of an op on ``x`` whose result of ``ndim`` axes keeps ``x``'s batch
  (its first axis): the batch sharded as ``x``'s, the other axes whole, where Explicit
  axes shard ``x`` (JAX cannot infer it for a reshape that splits or merges several
  axes at once, nor for a parameter broadcast to the batch); else ``None``, JAX's default."""
  mesh = explicit_mesh(x)
  if mesh is None:
    return None
  return NamedSharding(mesh, PartitionSpec(jax.typeof(x).sharding.spec[0], *(None,) * (ndim - 1)))
