"""The Flax layers :func:`jaxdepth.from_flax` converts: each as a spec node, with its variables
both ways.

For every layer kind (``conv``, ``dense``, ``batch_norm``, ``layer_norm``,
``group_norm``, ``dropout``, ``attention``) this module says

* which Linen and NNX classes are of that kind (:data:`LINEN`, :data:`NNX`, and
  their subclasses without a ``__call__`` of their own; a subclass with one is
  traced through like any user module, and one defining other methods, such as a
  ``param`` that standardises the kernel, is refused);
* how a call must look to be converted (:func:`call_input`): one input array,
  and for attention self-attention without mask, cache or custom attention
  function;
* the spec node and its variables, read off the layer's attributes, the traced
  input and output shapes and the layer's own variables (:func:`node_of`);
* the layer's variables again from the spec node's (:func:`user_leaves`), so
  trained weights go back into the user's module; so do a ViT's class token and
  position embedding, which :mod:`jaxdepth.trace_graph` reads off the user's
  own parameters and which go back reshaped to the parameter's shape.

Multi-head attention is the one layer whose variables change layout. Flax keeps
``query``, ``key`` and ``value`` kernels of shape ``(C, heads, d)`` and an
``out`` kernel ``(heads, d, C)``; :class:`~jaxdepth.transformer.Attention` keeps
one ``qkv`` kernel ``(C, 3C)`` whose columns are ordered ``(3, heads, d)`` and a
``proj`` kernel ``(C, C)``. So ``qkv = [q | k | v]`` with each reshaped to
``(C, C)``, and ``proj`` is ``out`` reshaped; both compute
``concat_h softmax(q_h k_hᵀ / √d) v_h`` (Vaswani et al., 2017) with the same
numbers.
"""
from __future__ import annotations

import inspect
import os
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from flax.linen import linear as linen_linear

from jaxdepth import spec as S
from jaxdepth.trace_graph import ConversionError
from jaxdepth.transformer import nodes as T

__all__ = ["LINEN", "NNX", "SUPPORTED", "kind_of", "call_input", "mode_of", "node_of",
           "user_leaves", "CannotGoBack"]

LINEN = ((nn.Conv, "conv"), (nn.Dense, "dense"), (nn.BatchNorm, "batch_norm"),
         (nn.LayerNorm, "layer_norm"), (nn.GroupNorm, "group_norm"), (nn.Dropout, "dropout"),
         (nn.MultiHeadDotProductAttention, "attention"), (nn.MultiHeadAttention, "attention"),
         (nn.SelfAttention, "attention"))
NNX = ((nnx.Conv, "conv"), (nnx.Linear, "dense"), (nnx.BatchNorm, "batch_norm"),
       (nnx.LayerNorm, "layer_norm"), (nnx.GroupNorm, "group_norm"), (nnx.Dropout, "dropout"),
       (nnx.MultiHeadAttention, "attention"))
SUPPORTED = ("Conv, Dense/Linear, BatchNorm, LayerNorm, GroupNorm, Dropout, "
             "MultiHeadDotProductAttention/SelfAttention (nnx.MultiHeadAttention)")
_DEFAULT_ATTENTION = (nn.dot_product_attention, nnx.dot_product_attention)


def kind_of(cls, table) -> str | None:
  """The layer kind of class ``cls`` in ``table`` (:data:`LINEN` or :data:`NNX`), if any.

  A subclass is of its layer's kind when it computes what the layer computes: no class
  between it and the layer defines a ``__call__`` (one that only changes defaults, e.g.
  ``class Conv3x3(nn.Conv): kernel_size = (3, 3)``); one with a ``__call__`` of its own is
  user code, traced through. A subclass of a layer's kind that defines other methods is
  refused when it is called (:func:`call_input`).
  """
  for c, kind in table:
    if cls is c or (issubclass(cls, c) and not any(
        "__call__" in k.__dict__ for k in cls.__mro__[:cls.__mro__.index(c)])):
      return kind
  return None


# ------------------------------------------------------------------------ calls


def call_input(kind: str, module, args, kwargs, where: str):
  """The one input array of a layer call, or a :class:`ConversionError` saying why not
  (also for a layer subclass defining methods of its own and a normalisation averaging its
  statistics over devices, ``axis_name``, which the trace could not run).

  Args:
    kind: the layer kind.
    module: the layer (Linen or NNX).
    args: positional arguments of the call (without ``self``).
    kwargs: keyword arguments of the call.
    where: the layer's path, class and source line, for messages.
  """
  _refuse_overrides(type(module), where)
  if kind in ("batch_norm", "group_norm") and getattr(module, "axis_name", None) is not None:
    _refuse_axis_name(kind, module, where)
  if kind == "attention":
    return _attention_input(module, args, kwargs, where)
  try:
    bound = inspect.signature(type(module).__call__).bind(module, *args, **kwargs)
  except TypeError as e:
    raise ConversionError(f"layer {where}: {e}") from None
  x, *rest = list(bound.arguments.items())[1:]
  for name, value in rest:
    if value is not None and name not in _CALL_ARGUMENTS:
      raise ConversionError(f"layer {where} is called with {name}=...; jaxdepth converts "
                            f"{kind} layers called on their input alone (the spec's node has "
                            f"no {name}): leave it out, or keep this layer outside the "
                            f"converted module")
  return x[1]


# The folders of jax, flax and jaxdepth, each with its separator, so that a sibling folder
# whose name starts alike (``flax_models/``, ``jaxdepth_x/``) is not taken for one of them.
_LIBRARIES = tuple(os.path.join(os.path.dirname(os.path.abspath(m.__file__)), "")
                   for m in (jax, flax)) + (
    os.path.join(os.path.dirname(os.path.abspath(__file__)), ""),)


def _refuse_overrides(cls, where: str):
  """Refuses a subclass of a Flax layer that defines methods of its own (but ``__init__``,
  which only builds the layer whose attributes are read): the layer may call them (BiT's
  StdConv overrides ``param`` to standardise the kernel), and then computes what the spec's
  node does not."""
  for k in cls.__mro__:
    if k.__module__.startswith("flax."):
      return
    for name, value in k.__dict__.items():
      fn = value.__func__ if isinstance(value, (staticmethod, classmethod)) else value
      if name == "__init__" or not inspect.isfunction(fn):
        continue
      code = inspect.unwrap(fn).__code__
      if (code.co_qualname.startswith("__create_fn__.<locals>.")
          or os.path.abspath(code.co_filename).startswith(_LIBRARIES)):
        continue      # written by dataclasses (a Linen module's __init__, __eq__, __hash__,
                      # made in its __create_fn__), or the layer's own method (the NNX trace
                      # wraps __call__ in the class); not any code from a file named "<...>",
                      # which is also exec, python -c, <stdin> and notebook cells
      raise ConversionError(
          f"layer {where}: {k.__name__} subclasses a Flax layer and defines {name}(), which "
          f"can make it compute something else than the plain layer (e.g. a standardised "
          f"kernel); jaxdepth converts a layer subclass only when it changes "
          f"class-attribute defaults: remove {k.__name__}.{name} (a weight transform can be "
          f"applied to the variables before converting), or keep this layer outside the "
          f"converted module")


def _refuse_axis_name(kind: str, module, where: str):
  if kind == "group_norm":
    raise ConversionError(f"layer {where}: group statistics shared over the devices of axis "
                          f"{module.axis_name!r}; each example is normalised on its own in the "
                          f"spec: construct it with axis_name=None")
  raise ConversionError(f"layer {where}: batch statistics averaged over the devices of axis "
                        f"{module.axis_name!r} (axis_name={module.axis_name!r}, for pmap or "
                        f"shard_map), which the trace has no devices for; jaxdepth computes a "
                        f"BatchNorm's batch statistics over the whole global batch however it "
                        f"is sharded, which is what that averaging gives: construct it with "
                        f"axis_name=None")


# Call arguments that leave what the layer computes as the spec node computes it: the
# mode flags (read by mode_of), dropout's random stream and NNX's output sharding.
_CALL_ARGUMENTS = ("use_running_average", "deterministic", "rng", "rngs", "out_sharding")
_MODE = {"batch_norm": "use_running_average", "dropout": "deterministic",
         "attention": "deterministic"}


def mode_of(kind: str, module, args, kwargs) -> bool | None:
  """The mode flag a layer call runs with: for BatchNorm whether it uses its running
  statistics (``use_running_average``), for dropout and attention whether dropout is off
  (``deterministic``); ``None`` for other kinds or when neither the call nor the layer sets
  it. The call's argument wins over the layer's attribute, as in Flax."""
  name = _MODE.get(kind)
  if name is None:
    return None
  value = inspect.signature(type(module).__call__).bind(module, *args, **kwargs).arguments.get(
      name)
  if value is None:
    value = getattr(module, name, None)
  return None if value is None else bool(value)


def _attention_input(module, args, kwargs, where):
  try:
    bound = inspect.signature(type(module).__call__).bind(module, *args, **kwargs)
  except TypeError as e:
    raise ConversionError(f"layer {where}: {e}") from None
  a = bound.arguments
  q = a.get("inputs_q")
  todo = ("jaxdepth converts self-attention over all tokens (attn(x)), as in a ViT encoder; "
          "keep this layer outside the converted module")
  for name in ("inputs_k", "inputs_v", "inputs_kv"):
    if a.get(name) is not None and a[name] is not q:
      raise ConversionError(f"layer {where} attends from one tensor to another ({name} is not "
                            f"the query input): cross-attention has no spec node; {todo}")
  if a.get("mask") is not None:
    raise ConversionError(f"layer {where} is called with an attention mask: the spec's "
                          f"Attention attends to every token; {todo}")
  if a.get("is_causal") or a.get("input_positions") is not None:
    raise ConversionError(f"layer {where} is causal or rotary (is_causal / input_positions): "
                          f"the spec's Attention attends to every token with no position "
                          f"term; {todo}")
  decode = a.get("decode") if a.get("decode") is not None else getattr(module, "decode", False)
  if decode:
    raise ConversionError(f"layer {where} decodes with a key/value cache (decode=True), which "
                          f"no spec node keeps; convert the model for training or inference "
                          f"on whole sequences (decode=False)")
  if getattr(module, "normalize_qk", False):
    raise ConversionError(f"layer {where} normalises queries and keys (normalize_qk=True), "
                          f"which the spec's Attention does not; use normalize_qk=False")
  if getattr(module, "attention_fn", None) not in _DEFAULT_ATTENTION:
    raise ConversionError(f"layer {where} uses its own attention_fn "
                          f"({getattr(module.attention_fn, '__name__', module.attention_fn)}); "
                          f"the spec's Attention computes Flax's default dot_product_attention; "
                          f"use it")
  for name in ("qk_attn_weights_einsum_cls", "attn_weights_value_einsum_cls"):
    if getattr(module, name, None) is not None:
      raise ConversionError(f"layer {where} replaces an einsum of the attention ({name}); "
                            f"use Flax's default")
  heads = int(module.num_heads)
  if getattr(module, "num_kv_heads", heads) != heads:
    raise ConversionError(f"layer {where} shares key/value heads (num_kv_heads="
                          f"{module.num_kv_heads} of {heads} heads), which the spec's "
                          f"Attention does not; use num_kv_heads=num_heads")
  shape = tuple(q.shape)
  if len(shape) != 3:
    raise ConversionError(f"layer {where} attends over an input of shape {shape}; the spec's "
                          f"Attention reads token sequences (B, N, C): reshape an image to "
                          f"tokens first, x.reshape((B, H * W, C))")
  c = shape[-1]
  qkv = getattr(module, "qkv_features", None) or c
  out = getattr(module, "out_features", None) or c
  if qkv != c or out != c:
    raise ConversionError(f"layer {where} has qkv_features={qkv} and out_features={out} on "
                          f"{c} input features; the spec's Attention keeps the width "
                          f"(qkv_features = out_features = {c})")
  return q


# ------------------------------------------------------------------------ nodes


def _attr(module, *names, default=None):
  for n in names:
    if hasattr(module, n):
      return getattr(module, n)
  return default


def _pair_of(value, default, what, where):
  if value is None:
    return default
  if isinstance(value, int):
    return (value, value)
  value = tuple(value)
  if len(value) != 2:
    raise ConversionError(f"layer {where}: {what} {value} is not 2-D; jaxdepth converts 2-D "
                          f"convolutions on (B, H, W, C) inputs")
  return value


def _pick(tree, names) -> dict:
  missing = [n for n in names if n not in tree]
  if missing:
    raise ConversionError(f"the variables hold no {missing} for a layer; pass the variables "
                          f"the module was initialised with (module.init(rng, x))")
  return {n: jnp.asarray(tree[n]) for n in names}


def _affine(m, params, c) -> dict:
  """``scale`` and ``bias`` of a normalisation, ones and zeros where the layer has none."""
  return {"scale": jnp.asarray(params["scale"]) if m.use_scale else jnp.ones((c,), jnp.float32),
          "bias": jnp.asarray(params["bias"]) if m.use_bias else jnp.zeros((c,), jnp.float32)}


def node_of(kind: str, module, name: str, in_shape, out_shape, variables: dict, where: str):
  """The spec node of one layer call and its variables ``{collection: {leaf: array}}``.

  Args:
    kind: the layer kind.
    module: the layer.
    name: the node's name.
    in_shape: the traced input shape (batch axis included).
    out_shape: the traced output shape.
    variables: the layer's variables, ``{collection: nested dict}``.
    where: the layer's path, class and source line, for messages.
  """
  m, params = module, variables.get("params", {})
  _refuse_replaced_internals(m, where)
  if kind == "conv":
    return _conv(m, name, in_shape, out_shape, params, where)
  if kind == "dense":
    node = S.Dense(name, features=out_shape[-1], bias=bool(m.use_bias))
    return node, {"params": _pick(params, ("kernel", "bias") if m.use_bias else ("kernel",))}
  c = in_shape[-1]
  if kind in ("batch_norm", "layer_norm"):
    axes = _attr(m, "axis", "reduction_axes", default=-1)
    if axes not in (-1, len(in_shape) - 1, (-1,), (len(in_shape) - 1,)) or (
        kind == "layer_norm" and _attr(m, "feature_axes", default=-1) not in (-1, (-1,))):
      raise ConversionError(f"layer {where}: normalisation over axis {axes}; jaxdepth "
                            f"normalises the last (channel) axis")
    out = {"params": _affine(m, params, c)}
    if kind == "batch_norm":
      out["batch_stats"] = _pick(variables.get("batch_stats", {}), ("mean", "var"))
      return S.BatchNorm(name, momentum=float(m.momentum), epsilon=float(m.epsilon)), out
    return S.LayerNorm(name, epsilon=float(m.epsilon)), out
  if kind == "group_norm":
    return _group_norm(m, name, in_shape, params, where)
  if kind == "attention":
    return _attention(m, name, in_shape, params)
  if tuple(_attr(m, "broadcast_dims", default=()) or ()):
    raise ConversionError(f"layer {where}: dropout with broadcast_dims is not supported; use "
                          f"element-wise dropout")
  return S.Dropout(name, rate=float(m.rate)), {}


# Attributes that change what a layer computes beyond what the spec node keeps: a kernel
# mask, or a convolution / matrix product replaced by the user's own function.
_REPLACED = {"mask": (None,), "conv_general_dilated": (None, jax.lax.conv_general_dilated),
             "dot_general": (None, jax.lax.dot_general), "conv_general_dilated_cls": (None,),
             "dot_general_cls": (None,), "qkv_dot_general": (None,),
             "out_dot_general": (None,), "qkv_dot_general_cls": (None,),
             "out_dot_general_cls": (None,)}


def _refuse_replaced_internals(m, where):
  for name, defaults in _REPLACED.items():
    value = getattr(m, name, None)
    if not any(value is d for d in defaults):
      raise ConversionError(f"layer {where} sets {name}, which changes what it computes "
                            f"beyond the spec node (a plain {type(m).__name__}); leave "
                            f"{name} at its default, or keep this layer outside the "
                            f"converted module")


def _conv(m, name, in_shape, out_shape, params, where):
  if len(in_shape) != 4:
    raise ConversionError(f"layer {where}: a convolution on an input of shape {in_shape}; "
                          f"jaxdepth converts 2-D convolutions on (B, H, W, C) inputs")
  # An int kernel_size is a 1-D convolution to Flax (kernel_size=(k,)), not k x k.
  kernel = _pair_of((m.kernel_size,) if isinstance(m.kernel_size, int) else m.kernel_size,
                    None, "kernel_size", where)
  strides = _pair_of(m.strides, (1, 1), "strides", where)
  for attr in ("input_dilation", "kernel_dilation"):
    if _pair_of(getattr(m, attr, None), (1, 1), attr, where) != (1, 1):
      raise ConversionError(f"layer {where}: {attr}={getattr(m, attr)} is not supported; "
                            f"use an undilated convolution")
  padding = linen_linear.canonicalize_padding(m.padding, 2)
  if isinstance(padding, str):
    if padding not in ("SAME", "VALID"):
      raise ConversionError(f"layer {where}: padding {padding!r} is not supported (zero "
                            f"padding only); use 'SAME', 'VALID' or numbers")
    padding = jax.lax.padtype_to_pads(in_shape[1:3], kernel, strides, padding)
  node = S.Conv(name, features=out_shape[-1], kernel=kernel, stride=strides,
                padding=tuple(tuple(int(a) for a in p) for p in padding),
                groups=int(m.feature_group_count), bias=bool(m.use_bias))
  return node, {"params": _pick(params, ("kernel", "bias") if m.use_bias else ("kernel",))}


def _group_norm(m, name, in_shape, params, where):
  c = in_shape[-1]
  axes = getattr(m, "reduction_axes", None)
  every = tuple(range(1, len(in_shape)))
  if axes is not None and tuple(sorted(a % len(in_shape) for a in np.atleast_1d(axes))) != every:
    raise ConversionError(f"layer {where}: group normalisation over axes {axes}; jaxdepth's "
                          f"GroupNorm reduces over every axis but the batch (reduction_axes="
                          f"None)")
  groups = m.num_groups if m.group_size is None else c // m.group_size
  return S.GroupNorm(name, groups=int(groups), epsilon=float(m.epsilon)), {
      "params": _affine(m, params, c)}


def _attention(m, name, in_shape, params):
  c, heads = in_shape[-1], int(m.num_heads)
  qkv = {"kernel": jnp.concatenate([jnp.reshape(params[p]["kernel"], (c, c))
                                    for p in ("query", "key", "value")], axis=1)}
  if m.use_bias:
    qkv["bias"] = jnp.concatenate([jnp.reshape(params[p]["bias"], (c,))
                                   for p in ("query", "key", "value")])
  proj = {"kernel": jnp.reshape(params["out"]["kernel"], (c, c)),
          "bias": (jnp.asarray(params["out"]["bias"]) if m.use_bias
                   else jnp.zeros((c,), jnp.float32))}
  node = T.Attention(name, heads=heads, qkv_bias=bool(m.use_bias),
                     attn_dropout=float(m.dropout_rate))
  return node, {"params": {"qkv": qkv, "proj": proj}}


# ------------------------------------------------------------------------ back


class CannotGoBack(ValueError):
  """A spec node's variables have no exact place in the user's layer (the message says why)."""


_DEFAULTS = {"scale": 1.0, "bias": 0.0}


def user_leaves(node: S.Node, spec_leaves: dict[tuple, Any], user_leaves_: dict[tuple, Any]
                ) -> dict[tuple, Any]:
  """The user's layer variables computed from the spec node's.

  Args:
    node: the spec node.
    spec_leaves: its variables as ``{relative path tuple: array}`` (collections merged).
    user_leaves_: the user's layer variables in the same form (for names and shapes).

  Returns:
    ``{relative path tuple: array}`` to write into the user's layer.

  Raises:
    CannotGoBack: a variable has no place of the right shape, or a parameter the
      user's layer lacks is not at its neutral value (a bias the layer has no room
      for became non-zero in training).
  """
  if isinstance(node, T.Attention):
    return _attention_back(spec_leaves, user_leaves_)
  if isinstance(node, (T.ClassToken, T.PositionEmbedding)):
    return _parameter_back(spec_leaves, user_leaves_)
  out = {}
  for key, value in spec_leaves.items():
    if key in user_leaves_:
      if np.shape(user_leaves_[key]) != np.shape(value):
        raise CannotGoBack(f"{'/'.join(key)} has shape {np.shape(value)}, the layer's "
                           f"{np.shape(user_leaves_[key])}")
      out[key] = value
    elif not (key[-1] in _DEFAULTS and np.allclose(value, _DEFAULTS[key[-1]])):
      raise CannotGoBack(f"the layer has no {'/'.join(key)}, and the spec's is not "
                         f"{_DEFAULTS.get(key[-1], 'neutral')}")
  return out


def _parameter_back(spec_leaves, user):
  """A class token or position embedding: the user's parameter (key ``()``) takes the
  spec's numbers in its own shape (the conversion checked that it holds them row-major)."""
  ((_, value),) = spec_leaves.items()
  if set(user) != {()} or np.size(user[()]) != np.size(value):
    raise CannotGoBack(f"the user's parameter does not hold the {np.size(value)} numbers of "
                       f"shape {np.shape(value)}")
  return {(): jnp.reshape(value, np.shape(user[()]))}


def _attention_back(spec_leaves, user):
  qkv = np.asarray(spec_leaves[("qkv", "kernel")])
  c = qkv.shape[0]
  out = {}
  for i, part in enumerate(("query", "key", "value")):
    if np.size(user.get((part, "kernel"))) != c * c:
      raise CannotGoBack(f"{part}/kernel of the layer does not hold {c} x {c} numbers")
    out[(part, "kernel")] = qkv[:, i * c:(i + 1) * c].reshape(np.shape(user[(part, "kernel")]))
    if ("qkv", "bias") in spec_leaves:
      if (part, "bias") not in user:
        raise CannotGoBack("the spec's qkv has a bias, the layer's projections have none")
      bias = np.asarray(spec_leaves[("qkv", "bias")])[i * c:(i + 1) * c]
      out[(part, "bias")] = bias.reshape(np.shape(user[(part, "bias")]))
  if np.size(user.get(("out", "kernel"))) != c * c:
    raise CannotGoBack(f"out/kernel of the layer does not hold {c} x {c} numbers")
  out[("out", "kernel")] = np.asarray(spec_leaves[("proj", "kernel")]).reshape(
      np.shape(user[("out", "kernel")]))
  bias = np.asarray(spec_leaves[("proj", "bias")])
  if ("out", "bias") in user:
    out[("out", "bias")] = bias
  elif not np.allclose(bias, 0.0):
    raise CannotGoBack("the spec's proj bias is not 0 and the layer (use_bias=False) has none")
  return out
