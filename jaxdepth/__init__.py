"""jaxdepth: make deep networks shallower, as pure transforms over Flax variables.

The architecture is data (:mod:`jaxdepth.spec`), one Flax module executes it
(:mod:`jaxdepth.network`), and every method and surgery pass maps
``(spec, variables) -> (spec, variables)``.

The names below and the submodules load on first use (PEP 562), so ``import
jaxdepth`` takes milliseconds and a program loads what it uses (importing
everything, JAX, Flax and ott-jax included, took 3.6-4.9 s on a 2-core CPU;
``python -m jaxdepth list`` now takes 1.1-1.4 s against 3.6-4.4 s).
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

__version__ = "0.1.0"

# The package's names, by the module that defines them.
_EXPORTS = {
    "jaxdepth.network": ("Forward", "Network", "forward", "gates_by_site", "gates_for", "init"),
    "jaxdepth.spec": ("Act", "BatchNorm", "Block", "Concat", "Conv", "Dense", "Dropout", "Flatten",
                      "GroupNorm", "LayerNorm", "Pool", "Sequential", "Spec", "SpecError",
                      "replace_node", "with_identity"),
    "jaxdepth.transformer": ("Attention", "ClassToken", "PatchMerging", "PositionEmbedding",
                             "SelectToken", "StochasticDepth", "Tokens", "WindowAttention"),
    "jaxdepth.stats": ("SiteStats", "accumulate", "empty_stats", "entropies"),
    "jaxdepth.checkpoint": ("load_model", "save_model"),
    "jaxdepth.optim": ("Recipe", "make_optimizer"),
    "jaxdepth.training": ("TrainState", "evaluate", "fit", "make_mesh"),
    "jaxdepth.methods": ("Easier", "Egp", "Nepenthe"),
    "jaxdepth.convert": ("ConversionError", "from_flax", "from_nnx"),
}
_DEFINED_IN = {name: module for module, names in _EXPORTS.items() for name in names}


def __getattr__(name: str):
  """An exported name or a submodule (``jaxdepth.training``), imported on first use."""
  if name in _DEFINED_IN:
    value = getattr(importlib.import_module(_DEFINED_IN[name]), name)
  else:
    try:
      value = importlib.import_module(f"{__name__}.{name}")
    except ModuleNotFoundError as error:
      if error.name != f"{__name__}.{name}":
        raise   # the submodule exists and misses something of its own
      raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None
  globals()[name] = value
  return value


def __dir__() -> list[str]:
  return sorted(set(globals()) | set(_DEFINED_IN))


if TYPE_CHECKING:   # the same names, for type checkers and editors
  from jaxdepth import (checkpoint, convert, costs, driver, entropy, equivalence, methods,
                        nnx_bridge, optim, report, spec, stats, surgery, text, timing, training,
                        transformer, zoo)
  from jaxdepth.checkpoint import load_model, save_model
  from jaxdepth.convert import ConversionError, from_flax, from_nnx
  from jaxdepth.methods import Easier, Egp, Nepenthe
  from jaxdepth.network import Forward, Network, forward, gates_by_site, gates_for, init
  from jaxdepth.optim import Recipe, make_optimizer
  from jaxdepth.spec import (
      Act, BatchNorm, Block, Concat, Conv, Dense, Dropout, Flatten, GroupNorm, LayerNorm, Pool,
      Sequential, Spec, SpecError, replace_node, with_identity)
  from jaxdepth.stats import SiteStats, accumulate, empty_stats, entropies
  from jaxdepth.training import TrainState, evaluate, fit, make_mesh
  from jaxdepth.transformer import (
      Attention, ClassToken, PatchMerging, PositionEmbedding, SelectToken, StochasticDepth,
      Tokens, WindowAttention)
