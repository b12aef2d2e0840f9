"""jaxdepth: make deep networks shallower, as pure transforms over Flax variables.

The architecture is data (:mod:`jaxdepth.spec`), one Flax module executes it
(:mod:`jaxdepth.network`), and every method and surgery pass maps
``(spec, variables) -> (spec, variables)``.
"""
from jaxdepth import entropy, spec, stats, text, transformer
from jaxdepth import costs, zoo
from jaxdepth.network import Forward, Network, forward, gates_by_site, gates_for, init
from jaxdepth.spec import (
    Act, BatchNorm, Block, Concat, Conv, Dense, Dropout, Flatten, GroupNorm, LayerNorm, Pool,
    Sequential, Spec, SpecError, replace_node, with_identity)
from jaxdepth.transformer import (
    Attention, ClassToken, PatchMerging, PositionEmbedding, SelectToken, StochasticDepth,
    Tokens, WindowAttention)
from jaxdepth.stats import SiteStats, accumulate, empty_stats, entropies
from jaxdepth import checkpoint, optim, timing, training
from jaxdepth.checkpoint import load_model, save_model
from jaxdepth.optim import Recipe, make_optimizer
from jaxdepth.training import TrainState, evaluate, fit, make_mesh
from jaxdepth import driver, methods, report
from jaxdepth.methods import Easier, Egp, Nepenthe
from jaxdepth import equivalence, surgery
from jaxdepth import nnx_bridge
from jaxdepth import convert
from jaxdepth.convert import ConversionError, from_flax, from_nnx

__version__ = "0.1.0"
