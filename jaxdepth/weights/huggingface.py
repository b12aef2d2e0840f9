"""Hugging Face BERT and RoBERTa checkpoints from a local folder, without a network.

A model folder as ``save_pretrained`` writes it (or as downloaded from the Hub
by other means) holds ``config.json`` and ``model.safetensors``.
:func:`from_pretrained` reads both: the config sets the spec
(:func:`config_from_hf`, :func:`jaxdepth.text.encoder`), the tensors are
placed by the name map below (:func:`name_map`, applied by
:func:`jaxdepth.weights.state_dict.assign`, which raises one
:class:`~jaxdepth.weights.StateDictError` naming the first missing, unexpected
or mis-shaped tensor). :func:`config_differences` compares a config with a spec
built otherwise (the command line's ``--model``), since weights load onto any
encoder of their shapes, whatever its ``layer_norm_eps`` or padding id.

Name map (``i`` the layer; every Linear ``weight`` is transposed to a kernel,
LayerNorm's ``weight`` becomes ``scale``, an embedding's ``weight`` the table
``embedding``)::

    Hugging Face key                                  jaxdepth variable (params/...)
    embeddings.word_embeddings.weight                 embeddings/word_embeddings/embedding
    embeddings.position_embeddings.weight             embeddings/position_embeddings/embedding
    embeddings.token_type_embeddings.weight           embeddings/token_type_embeddings/embedding
    embeddings.LayerNorm.{weight, bias}               embeddings/norm/{scale, bias}
    encoder.layer.i.attention.self.{query, key, value}.{weight, bias}
                                                      encoder/layer/i/attention/self/qkv/{kernel, bias}
                                                      (the three concatenated: [q | k | v])
    encoder.layer.i.attention.output.dense            encoder/layer/i/attention/self/proj
    encoder.layer.i.attention.output.LayerNorm        encoder/layer/i/attention/norm
    encoder.layer.i.intermediate.dense                encoder/layer/i/mlp/intermediate
    encoder.layer.i.output.dense                      encoder/layer/i/mlp/output
    encoder.layer.i.output.LayerNorm                  encoder/layer/i/mlp/norm
    pooler.dense                                      pooler/dense
    classifier                                        classifier            (BERT)
    classifier.{dense, out_proj}                      classifier/{dense, out_proj}  (RoBERTa)

The encoder's keys carry the model type as a prefix (``bert.``, ``roberta.``)
in the checkpoints of task models (``BertForSequenceClassification``, masked
language models) and none in a bare ``BertModel``; both are read. As Hugging
Face does when loading, ``LayerNorm.gamma`` / ``.beta`` (old checkpoints) are
read as ``.weight`` / ``.bias``. Known tensors that the spec does not use are
skipped: the ``position_ids`` and ``token_type_ids`` buffers, the pre-training
heads (``cls.*``, ``lm_head.*``), for RoBERTa's classifier, which has no
pooler, ``pooler.*``, and for ``head="pooled"`` (no classifier) the file's
classifier (BERT's ``classifier.{weight, bias}``, RoBERTa's
``classifier.{dense, out_proj}.*``), as Hugging Face's ``BertModel`` ignores
it. A checkpoint without a classifier (a pre-trained model) loads with
``new_head=True``: the classifier keeps its fresh initialisation, to be
fine-tuned, and so does the pooler where the file has none (a masked-LM
checkpoint, or RoBERTa's sequence classifier read with ``head="pooled"``).
"""
from __future__ import annotations

import functools
import json
import os
import pathlib
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np

from jaxdepth import network
from jaxdepth import spec as S
from jaxdepth.text import models as text_models
from jaxdepth.text import nodes as X
from jaxdepth.transformer import nodes as T
from jaxdepth.weights import state_dict as sd
from jaxdepth.weights.state_dict import StateDictError, Target

__all__ = ["config_from_hf", "num_labels", "spec_from_hf", "config_differences", "name_map",
           "load", "from_pretrained", "CONFIG_FILE", "WEIGHTS_FILE"]

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"

_FIELDS = {   # EncoderConfig field: Hugging Face config key (required)
    "vocab_size": "vocab_size", "width": "hidden_size", "depth": "num_hidden_layers",
    "heads": "num_attention_heads", "mlp_width": "intermediate_size",
    "max_positions": "max_position_embeddings", "type_vocab_size": "type_vocab_size",
    "layer_norm_eps": "layer_norm_eps"}
_OPTIONAL = {"dropout": ("hidden_dropout_prob", 0.1),
             "attention_dropout": ("attention_probs_dropout_prob", 0.1),
             "classifier_dropout": ("classifier_dropout", None)}


def config_from_hf(config: Mapping[str, Any], *, where: str = "config.json"
                   ) -> text_models.EncoderConfig:
  """The :class:`~jaxdepth.text.EncoderConfig` of a Hugging Face BERT/RoBERTa config.

  Args:
    config: the parsed ``config.json``.
    where: how errors name it.

  Raises:
    ValueError: another model type, an activation other than exact GELU, a
      position embedding other than absolute, or a missing field, each named.
  """
  model_type = config.get("model_type")
  if model_type not in text_models.FAMILIES:
    raise ValueError(f"{where}: model_type {model_type!r} is not supported; jaxdepth imports "
                     f"{' and '.join(text_models.FAMILIES)} encoders")
  act = config.get("hidden_act", "gelu")
  if act != "gelu":
    raise ValueError(f"{where}: hidden_act {act!r} is not supported; the encoder's sites are "
                     f"exact (erf) GELUs, hidden_act 'gelu'")
  positions = config.get("position_embedding_type", "absolute")
  if positions != "absolute":
    raise ValueError(f"{where}: position_embedding_type {positions!r} is not supported; only "
                     f"'absolute' (learned) position embeddings are")
  missing = [k for k in _FIELDS.values() if k not in config]
  if missing:
    raise ValueError(f"{where} lacks {missing}; a BERT/RoBERTa config.json names them all")
  kw = {ours: config[theirs] for ours, theirs in _FIELDS.items()}
  kw.update({ours: config.get(theirs, default) for ours, (theirs, default) in _OPTIONAL.items()})
  pad = config.get("pad_token_id", 1 if model_type == "roberta" else 0)
  try:
    return text_models.EncoderConfig(family=model_type, pad_token_id=pad, **kw)
  except ValueError as e:
    raise ValueError(f"{where}: {e}") from None


def num_labels(config: Mapping[str, Any]) -> int:
  """Classes of a Hugging Face config: ``num_labels``, else ``len(id2label)``, else 2."""
  if "num_labels" in config:
    return int(config["num_labels"])
  if isinstance(config.get("id2label"), Mapping):
    return len(config["id2label"])
  return 2


def spec_from_hf(config: Mapping[str, Any], *, max_length: int = 128,
                 head: str = "classifier", num_classes: int | None = None,
                 where: str = "config.json") -> S.Spec:
  """The spec of a Hugging Face BERT/RoBERTa config (see :func:`jaxdepth.text.encoder`).

  ``num_classes`` defaults to the config's :func:`num_labels`.
  """
  encoder_config = config_from_hf(config, where=where)
  classes = num_labels(config) if num_classes is None else num_classes
  return text_models.encoder(encoder_config, max_length=max_length, head=head,
                             num_classes=classes, name=config["model_type"])


def _encoder_fields(spec: S.Spec) -> dict[str, Any]:
  """The Hugging Face config fields of an encoder spec that set what its weights compute
  (not its dropouts); a field that differs between layers is the tuple of its values."""
  nodes = dict(spec.walk())
  family = _family(spec)

  def one(values):
    values = tuple(sorted(set(values)))
    return values[0] if len(values) == 1 else values

  words = nodes.get("embeddings/word_embeddings")
  positions = nodes["embeddings/position_embeddings"]
  types = nodes.get("embeddings/token_type_embeddings")
  layers = nodes.get("encoder/layer")
  out = {"model_type": family,
         "vocab_size": getattr(words, "vocab_size", None),
         "hidden_size": getattr(words, "features", None),
         "num_hidden_layers": len(layers.children()) if layers is not None else 0,
         "num_attention_heads": one(n.heads for n in nodes.values()
                                    if isinstance(n, T.Attention)),
         "intermediate_size": one(n.features for p, n in nodes.items()
                                  if p.endswith("/mlp/intermediate")),
         "hidden_act": one(n.fn for p, n in nodes.items() if p.endswith("/mlp/gelu")),
         "max_position_embeddings": positions.max_positions,
         "type_vocab_size": getattr(types, "type_vocab_size", None),
         "layer_norm_eps": one(n.epsilon for n in nodes.values() if isinstance(n, S.LayerNorm))}
  if family == "roberta":   # BERT's positions do not depend on the padding id
    out["pad_token_id"] = positions.padding_idx
  return out


def config_differences(spec: S.Spec, config: Mapping[str, Any], *, where: str = "config.json"
                       ) -> list[str]:
  """How the encoder a Hugging Face config describes differs from the encoder ``spec``.

  Weights of one load onto the other when only fields that change no shape
  differ (``layer_norm_eps``, RoBERTa's ``pad_token_id``), and then compute
  another function: a caller that builds its spec otherwise than
  :func:`spec_from_hf` checks with this. Dropout rates are not compared (they
  are training settings), nor the head.

  Args:
    spec: an encoder spec (:func:`jaxdepth.text.encoder`).
    config: the parsed ``config.json``.
    where: how messages name it.

  Returns:
    One ``"<field> <value> in <where>, <value> in the model"`` per differing
    field, by Hugging Face's names; empty when they agree.

  Raises:
    ValueError: an unsupported config (:func:`config_from_hf`).
    StateDictError: ``spec`` is not a BERT/RoBERTa encoder.
  """
  theirs = _encoder_fields(text_models.encoder(config_from_hf(config, where=where),
                                               max_length=1, head="pooled"))
  ours = _encoder_fields(spec)
  return [f"{k} {theirs[k]!r} in {where}, {ours.get(k)!r} in the model"
          for k in theirs if theirs[k] != ours.get(k)]


# ------------------------------------------------------------------ name map


def _qkv_kernel(q, k, v):
  return np.concatenate([sd.dense_kernel(q), sd.dense_kernel(k), sd.dense_kernel(v)], axis=1)


def _qkv_bias(q, k, v):
  return np.concatenate([q, k, v])


def _module(path: str) -> str:
  """The Hugging Face module of a node path (without the model-type prefix)."""
  parts = path.split(S.SEP)
  if parts[0] == "encoder" and len(parts) == 5:
    _, _, i, half, name = parts
    layer = f"encoder.layer.{i}"
    return {("attention", "self"): f"{layer}.attention.self",
            ("attention", "norm"): f"{layer}.attention.output.LayerNorm",
            ("mlp", "intermediate"): f"{layer}.intermediate.dense",
            ("mlp", "output"): f"{layer}.output.dense",
            ("mlp", "norm"): f"{layer}.output.LayerNorm"}.get((half, name), "")
  if path == "embeddings/norm":
    return "embeddings.LayerNorm"
  return path.replace(S.SEP, ".")


def _entries(node: S.Node, ours: str, theirs: str, base: str) -> dict:
  p = f"params/{ours}"
  if isinstance(node, (X.TokenEmbedding, X.TokenPositionEmbedding, X.TokenTypeEmbedding)):
    return {f"{base}{theirs}.weight": Target(f"{p}/embedding")}
  if isinstance(node, S.LayerNorm):
    return sd.layer_norm_entries(f"{base}{theirs}", p)
  if isinstance(node, S.Dense):
    return sd.linear_entries(f"{base}{theirs}", p, bias=node.bias)
  if isinstance(node, T.Attention):
    layer = theirs.rsplit(".attention.self", 1)[0]
    names = [f"{base}{layer}.attention.self.{n}" for n in ("query", "key", "value")]
    out = {tuple(f"{n}.weight" for n in names): Target(f"{p}/qkv/kernel", _qkv_kernel)}
    if node.qkv_bias:
      out[tuple(f"{n}.bias" for n in names)] = Target(f"{p}/qkv/bias", _qkv_bias)
    dense = f"{base}{layer}.attention.output.dense"
    out[f"{dense}.weight"] = Target(f"{p}/proj/kernel", sd.dense_kernel)
    out[f"{dense}.bias"] = Target(f"{p}/proj/bias")
    return out
  return {}


def name_map(spec: S.Spec, *, prefix: str = "") -> dict[str | tuple[str, ...], Target | None]:
  """``{Hugging Face key: Target}`` for an encoder spec (see the module's table).

  Args:
    spec: a spec of :func:`jaxdepth.text.encoder` (the zoo's ``bert_base``,
      ``roberta_base``, ``tiny_encoder`` or :func:`spec_from_hf`).
    prefix: the encoder keys' prefix in the file (``"bert."``, ``"roberta."`` or
      ``""``); the classifier's keys never have one.

  Raises:
    StateDictError: a node holding variables that Hugging Face's encoders do
      not have.
  """
  shapes = spec.shapes()
  out: dict[str | tuple[str, ...], Target | None] = {}
  for path, node in spec.walk():
    base = "" if path.split(S.SEP)[0] == "classifier" else prefix
    entries = _entries(node, path, _module(path), base)
    if not entries and getattr(node, "param_count", lambda _: 0)(shapes[path][0]) > 0:
      raise StateDictError(f"node {path!r} ({node.kind}) has no counterpart in Hugging Face's "
                           f"BERT/RoBERTa; its variables cannot be imported")
    out.update(entries)
  return out


def _family(spec: S.Spec) -> str:
  """``"bert"`` or ``"roberta"`` (positions numbered from a padding id) of an encoder spec."""
  nodes = dict(spec.walk())
  positions = nodes.get("embeddings/position_embeddings")
  if not isinstance(positions, X.TokenPositionEmbedding):
    raise StateDictError(f"spec {spec.name!r} is not a BERT/RoBERTa encoder of "
                         f"jaxdepth.text.encoder (no embeddings/position_embeddings); Hugging "
                         f"Face weights load onto those")
  return "bert" if positions.padding_idx is None else "roberta"


def _renamed(tensors: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
  """Old checkpoints' ``LayerNorm.gamma`` / ``.beta`` as ``.weight`` / ``.bias`` (as
  Hugging Face renames them on loading)."""
  out = {}
  for key, value in tensors.items():
    if ".LayerNorm." in key:
      key = key.replace(".LayerNorm.gamma", ".LayerNorm.weight").replace(
          ".LayerNorm.beta", ".LayerNorm.bias")
    out[key] = value
  return out


def _prefix(tensors: Mapping[str, np.ndarray], family: str) -> str:
  """``"bert."`` / ``"roberta."`` if the file's encoder keys carry it, else ``""``."""
  return f"{family}." if any(k.startswith(f"{family}.embeddings.") for k in tensors) else ""


_CLASSIFIER_KEYS = {   # a family's sequence-classifier tensors (never prefixed)
    "bert": ("classifier.weight", "classifier.bias"),
    "roberta": tuple(f"classifier.{m}.{v}" for m in ("dense", "out_proj")
                     for v in ("weight", "bias"))}


def _unused(tensors, spec: S.Spec, prefix: str) -> dict[str, None]:
  """Known tensors that the spec does not use (buffers, pre-training heads, an unused pooler,
  the classifier of the file's family when the spec has none)."""
  paths = {p for p, _ in spec.walk()}
  classifier = () if "classifier" in paths else _CLASSIFIER_KEYS[_family(spec)]
  out = {}
  for key in tensors:
    rest = key[len(prefix):] if key.startswith(prefix) else key
    if (rest in ("embeddings.position_ids", "embeddings.token_type_ids")
        or key.startswith(("cls.", "lm_head."))
        or ("pooler" not in paths and rest.startswith("pooler.") and key.startswith(prefix))
        or key in classifier):
      out[key] = None
  return out


def load(spec: S.Spec, source: str | os.PathLike | Mapping[str, np.ndarray], *,
         template: Mapping[str, Any] | None = None, new_head: bool = False) -> dict[str, Any]:
  """The variables of an encoder ``spec`` from a Hugging Face state dict.

  Args:
    spec: an encoder spec (:func:`spec_from_hf`, or the zoo's).
    source: a safetensors file, or a ``{key: array}`` already read.
    template: variables to fill (default: the shapes of ``network.init(spec)``);
      with ``new_head`` its classifier values are kept, so pass freshly
      initialised variables, arrays rather than a ``jax.eval_shape`` (default:
      ``network.init(spec, key(0))``).
    new_head: keep the template's classifier instead of importing one (a
      pre-trained checkpoint, or another number of classes), and its pooler
      where the file has none.

  Returns:
    ``{"params": ...}`` for :func:`jaxdepth.forward`.

  Raises:
    StateDictError: an unreadable file, or the first missing, unexpected or
      mis-shaped tensor.
  """
  family = _family(spec)
  if isinstance(source, Mapping):
    tensors, what = source, "the state dict"
  else:
    tensors, what = sd.read_state_dict(source), os.fspath(source)
  tensors = _renamed(tensors)
  prefix = _prefix(tensors, family)
  names = {**name_map(spec, prefix=prefix), **_unused(tensors, spec, prefix)}
  if template is None:
    make = functools.partial(network.init, spec, jax.random.key(0))
    template = make() if new_head else jax.eval_shape(make)
  heads = [p for p in ("params/classifier",) if any(
      path == "classifier" for path, _ in spec.walk())]
  # A masked-LM checkpoint has no pooler (Hugging Face saves it without one), nor has RoBERTa's
  # sequence classifier; with new_head the pooler starts fresh, as in Hugging Face's own
  # fine-tuning (and as its RobertaModel does on such a file).
  pooler = [p for p in ("params/pooler",) if any(path == "pooler" for path, _ in spec.walk())
            and not any(k.startswith(f"{prefix}pooler.") for k in tensors)]
  try:
    return sd.assign(template, tensors, names, keep=heads + pooler if new_head else (),
                     what=what)
  except StateDictError as e:
    if not new_head and e.target is not None and sd.under(e.target, pooler):
      saved = ("masked-LM checkpoints and RoBERTa's sequence classifiers"
               if family == "roberta" else "masked-LM checkpoints")
      other = (", or use RoBERTa's classifier head (head=\"classifier\"), which has no pooler"
               if family == "roberta" and not heads else "")
      fresh = "the pooler and the classifier" if heads else "the pooler"
      raise StateDictError(f"{what} has no pooler ({prefix}pooler.*) for {e.target}: "
                           f"Hugging Face saves {saved} without one. "
                           f"Pass new_head=True (on the command line "
                           f"--config.pretrained_new_head=true) to start {fresh} freshly "
                           f"initialised, to be fine-tuned{other}",
                           key=e.key, target=e.target) from None
    if not new_head and e.target is not None and sd.under(e.target, heads):
      if not any(k.startswith("classifier.") for k in tensors):
        raise StateDictError(f"{what} has no tensor {e.key!r} (for {e.target}): the file has "
                             f"no classifier, as a pre-trained checkpoint has none. To "
                             f"fine-tune its encoder, pass new_head=True (on the command line "
                             f"--config.pretrained_new_head=true) to start a freshly "
                             f"initialised classifier", key=e.key, target=e.target) from None
      raise StateDictError(f"{e}. The classifier is what does not fit: to start a freshly "
                           f"initialised one (another number of classes), pass new_head=True "
                           f"(on the command line --config.pretrained_new_head=true)",
                           key=e.key, target=e.target) from None
    raise


def from_pretrained(folder: str | os.PathLike, *, max_length: int = 128,
                    head: str = "classifier", num_classes: int | None = None,
                    new_head: bool = False, seed: int = 0) -> tuple[S.Spec, dict[str, Any]]:
  """The spec and variables of a local Hugging Face BERT/RoBERTa folder.

  Example::

      spec, variables = huggingface.from_pretrained("roberta-base", num_classes=2,
                                                    new_head=True)

  Args:
    folder: a directory holding ``config.json`` and ``model.safetensors``.
    max_length: tokens per sequence of the spec.
    head: ``"classifier"`` or ``"pooled"`` (:func:`jaxdepth.text.encoder`).
    num_classes: classifier size (default: the config's :func:`num_labels`).
    new_head: initialise the classifier (from ``seed``) instead of importing it, and
      the pooler where the file has none.
    seed: initialisation of a new classifier.

  Returns:
    ``(spec, variables)``.

  Raises:
    FileNotFoundError: no such folder, or one without the two files.
    ValueError: a config that is not a supported BERT/RoBERTa.
    StateDictError: the first missing, unexpected or mis-shaped tensor.
  """
  folder = pathlib.Path(folder)
  config_path, weights_path = folder / CONFIG_FILE, folder / WEIGHTS_FILE
  for path in (config_path, weights_path):
    if not path.is_file():
      raise FileNotFoundError(f"{path} not found: a Hugging Face model folder holds "
                              f"{CONFIG_FILE} and {WEIGHTS_FILE} (save_pretrained writes "
                              f"them; export a pytorch_model.bin with {sd.EXPORT_HINT})")
  try:
    config = json.loads(config_path.read_text())
  except json.JSONDecodeError as e:
    raise ValueError(f"{config_path} is not valid JSON: {e}") from None
  spec = spec_from_hf(config, max_length=max_length, head=head, num_classes=num_classes,
                      where=str(config_path))
  template = network.init(spec, jax.random.key(seed)) if new_head else None
  return spec, load(spec, weights_path, template=template, new_head=new_head)
