"""Text encoders: spec nodes (:mod:`~jaxdepth.text.nodes`), their inputs
(:mod:`~jaxdepth.text.inputs`), how the executor runs them
(:mod:`~jaxdepth.text.executor`) and BERT / RoBERTa builders
(:mod:`~jaxdepth.text.models`). The zoo builds ``bert_base``, ``roberta_base``
and ``tiny_encoder`` from them."""
from jaxdepth.text.inputs import TEXT_INPUTS
from jaxdepth.text.models import BERT_BASE, ROBERTA_BASE, EncoderConfig, encoder
from jaxdepth.text.nodes import (
    Tanh, TokenEmbedding, TokenPositionEmbedding, TokenTypeEmbedding, takes_token_ids)

__all__ = ["TokenEmbedding", "TokenPositionEmbedding", "TokenTypeEmbedding", "Tanh",
           "takes_token_ids", "TEXT_INPUTS", "EncoderConfig", "encoder", "BERT_BASE",
           "ROBERTA_BASE"]
