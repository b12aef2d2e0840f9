"""Vision transformers: spec nodes (:mod:`~jaxdepth.transformer.nodes`), their
array math (:mod:`~jaxdepth.transformer.ops`) and how the executor runs them
(:mod:`~jaxdepth.transformer.executor`). The zoo builds ``swin_t`` and
``vit_b16`` from them."""
from jaxdepth.transformer.nodes import (
    Attention, ClassToken, PatchMerging, PositionEmbedding, SelectToken, StochasticDepth,
    Tokens, WindowAttention)

__all__ = ["Attention", "WindowAttention", "PatchMerging", "StochasticDepth", "Tokens",
           "ClassToken", "PositionEmbedding", "SelectToken"]
