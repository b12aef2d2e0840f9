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

from collections.abc import Mapping
from typing import Any

import numpy as np
from flax import nnx, traverse_util

from jaxdepth import network
from jaxdepth.network import Network
from jaxdepth.spec import Spec, check_spec

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

  Raises:
    TypeError: ``spec`` is not a Spec (a zoo name, a zoo function not called, the
      arguments swapped) or ``variables`` is not a dict of collections.
    ValueError: ``variables`` lacks a collection the spec has (e.g. ``batch_stats``
      of a spec with BatchNorm: the module would run on freshly initialised
      statistics), or its entries are not those of ``spec`` (other names or
      shapes: variables made for another spec).
  """
  check_spec(spec, "to_nnx(spec, variables)")
  if not isinstance(variables, Mapping):
    raise TypeError(f"variables must be a dict {{'params': ..., 'batch_stats': ...}} as from "
                    f"jaxdepth.init(spec, rng), got {type(variables).__name__}")
  model = NNXNetwork(spec, dtype=dtype, rngs=rngs or nnx.Rngs(params=0, dropout=0))
  states = {}
  for collection, kind in _COLLECTIONS:
    state = nnx.state(model.net, kind)
    expected = traverse_util.flatten_dict(nnx.to_pure_dict(state))
    if not expected:
      continue
    if collection not in variables:
      raise ValueError(f"the variables do not fit spec {spec.name!r}: they have no "
                       f"{collection!r} collection (keys {sorted(variables)}), which the spec "
                       f"needs; pass {{'params': ..., 'batch_stats': ...}} as jaxdepth.init(spec, "
                       f"rng) makes (or as saved with the model)")
    _check_collection(spec, collection, expected, variables[collection])
    states[collection] = state
  for collection, state in states.items():
    nnx.replace_by_pure_dict(state, variables[collection])
    nnx.update(model.net, state)
  return model


def _check_collection(spec: Spec, collection: str, expected: dict, given) -> None:
  """Raises a clear error unless ``given`` has the names and shapes of ``expected``.

  Args:
    spec: the architecture (for the message).
    collection: the collection's name (``"params"``, ``"batch_stats"``).
    expected: the module's ``{path tuple: array}`` of that collection.
    given: the caller's nested dict of that collection.
  """
  hint = "were they made for another spec? (jaxdepth.init(spec, rng) makes matching ones)"
  if not isinstance(given, Mapping):
    raise ValueError(f"the variables do not fit spec {spec.name!r}: their {collection!r} is a "
                     f"{type(given).__name__}, not a dict of arrays; {hint}")
  flat = traverse_util.flatten_dict(given)
  missing = sorted("/".join(map(str, k)) for k in set(expected) - set(flat))
  extra = sorted("/".join(map(str, k)) for k in set(flat) - set(expected))
  wrong = [f"{'/'.join(map(str, k))} is {tuple(np.shape(flat[k]))}, not {tuple(v.shape)}"
           for k, v in expected.items() if k in flat and np.shape(flat[k]) != tuple(v.shape)]
  problems = [f"{what} {_few(names)}" for what, names in (
      ("lacks", missing), ("has entries the spec does not:", extra),
      ("holds other shapes:", wrong)) if names]
  if problems:
    raise ValueError(f"the variables do not fit spec {spec.name!r}: their {collection!r} "
                     f"{'; '.join(problems)}; {hint}")


def _few(names: list[str], n: int = 5) -> str:
  """The first ``n`` of ``names`` as a list, with how many more there are."""
  more = f" and {len(names) - n} more" if len(names) > n else ""
  return f"{names[:n]}{more}"


def variables_of(model: NNXNetwork) -> dict[str, Any]:
  """The ``{"params", "batch_stats"}`` dict of a module made by :func:`to_nnx`.

  Raises:
    TypeError: ``model`` is not such a module (e.g. already a variables dict).
  """
  if not isinstance(model, NNXNetwork):
    hint = ("; it is already the variables: use it as it is" if isinstance(model, Mapping) else
            "; of another NNX module, nnx.state(model) gives its state, and "
            "jaxdepth.from_nnx(model, x) converts it" if isinstance(model, nnx.Module) else "")
    raise TypeError(f"variables_of(model): model must be a module made by "
                    f"nnx_bridge.to_nnx(spec, variables), got a {type(model).__name__}{hint}")
  out = {}
  for collection, kind in _COLLECTIONS:
    pure = nnx.to_pure_dict(nnx.state(model.net, kind))
    if pure:
      out[collection] = pure
  return out
