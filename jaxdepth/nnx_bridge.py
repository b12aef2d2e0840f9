"""A thin bridge for Flax NNX users: a spec and its variables as an ``nnx.Module``.

jaxdepth's transforms work on ``(spec, variables)`` with Linen-style variable
dicts; NNX users train stateful modules. :func:`to_nnx` wraps
:class:`jaxdepth.Network` with ``nnx.bridge.ToNNX`` and loads the variables into
it (``nnx.Param`` for ``params``, ``nnx.BatchStat`` for ``batch_stats``);
:func:`variables_of` reads them back, so a module trained with
``nnx.Optimizer`` can go straight into a method or a surgery pass::

    model = nnx_bridge.to_nnx(spec, variables)
    logits = model(x, train=False, gates=None)          # train mode updates batch_stats
    optimizer = nnx.Optimizer(model, optax.adam(1e-3), wrt=nnx.Param)
    ...
    shallow = surgery.collapse(spec, nnx_bridge.variables_of(model))
"""
from __future__ import annotations

from typing import Any

from flax import nnx

from jaxdepth import network
from jaxdepth.network import Network
from jaxdepth.spec import Spec

__all__ = ["NNXNetwork", "to_nnx", "variables_of"]

_COLLECTIONS = (("params", nnx.Param), ("batch_stats", nnx.BatchStat))


class NNXNetwork(nnx.Module):
  """``Network(spec)`` as an NNX module; train mode updates BatchNorm statistics in place."""

  def __init__(self, spec: Spec, *, dtype=None, rngs: nnx.Rngs):
    self.spec = spec
    self.net = nnx.bridge.ToNNX(Network(spec, dtype=dtype), rngs=rngs)
    nnx.bridge.lazy_init(self.net, network.example_input(spec))

  def __call__(self, x, *, train: bool = False, gates=None):
    """Runs the network; ``gates`` as for :class:`~jaxdepth.network.Network`.

    Site statistics are a functional affair: use :func:`jaxdepth.forward` with
    ``collect_stats=True`` on :func:`variables_of` (inside ``nnx.jit``, or after).
    """
    return self.net(x, train=train, gates=gates,
                    mutable=["batch_stats"] if train else False)


def to_nnx(spec: Spec, variables: dict[str, Any], *, dtype=None, rngs: nnx.Rngs | None = None
           ) -> NNXNetwork:
  """An NNX module running ``spec`` with ``variables`` loaded.

  Args:
    spec: the architecture.
    variables: ``{"params": ..., "batch_stats": ...}`` as from :func:`jaxdepth.init`.
    dtype: compute dtype, as for :class:`~jaxdepth.network.Network`.
    rngs: NNX rngs with a ``dropout`` stream for train mode; defaults to
      ``nnx.Rngs(params=0, dropout=0)``.

  Returns:
    The module; call it with ``train=`` and ``gates=`` as ``Network``. In train mode
    its BatchNorm statistics update in place.
  """
  model = NNXNetwork(spec, dtype=dtype, rngs=rngs or nnx.Rngs(params=0, dropout=0))
  for collection, kind in _COLLECTIONS:
    if collection in variables:
      state = nnx.state(model.net, kind)
      nnx.replace_by_pure_dict(state, variables[collection])
      nnx.update(model.net, state)
  return model


def variables_of(model: NNXNetwork) -> dict[str, Any]:
  """The ``{"params", "batch_stats"}`` dict of a module made by :func:`to_nnx`."""
  out = {}
  for collection, kind in _COLLECTIONS:
    pure = nnx.to_pure_dict(nnx.state(model.net, kind))
    if pure:
      out[collection] = pure
  return out
