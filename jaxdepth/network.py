"""One Flax (Linen) module that executes any :class:`~jaxdepth.spec.Spec`.

``Network(spec)`` builds its submodules from the spec, so its variables are the
usual Flax dict keyed by the spec's hierarchical names::

    variables = {"params":      {"layer1": {"0": {"conv1": {"kernel": ...}}}, ...},
                 "batch_stats": {"layer1": {"0": {"bn1": {"mean": ..., "var": ...}}}, ...}}

Call-time options (all usable inside ``jax.jit``):

* ``train``: batch statistics and dropout (BatchNorm updates ``batch_stats``).
* ``gates``: a float array of shape ``(len(spec.sites()),)``; a site whose gate is
  0 behaves as the identity, 1 as its activation. Gates are data, so switching
  sites never recompiles. Sites baked to ``identity`` in the spec are not gated.
* ``collect_stats``: every live site sows its per-channel sign counts of the
  pre-activation into the ``site_stats`` collection (see :mod:`jaxdepth.stats`).
* ``node_gates``: ``{node path: scalar}`` for whole nodes whose input and output
  shapes are equal (residual blocks with an identity shortcut, a depthwise
  sub-layer, ...); a node whose gate is 0 passes its input through unchanged
  (``y = x``), 1 runs it. Like site gates these are data: the dict's keys are
  part of the compiled function, its values are not, so a method that always
  passes the same paths (e.g. every removable block, LaCoOT) compiles once for
  every pattern of removed nodes.

* text: a spec that starts with a :class:`~jaxdepth.text.TokenEmbedding` reads
  token ids, or a dict with their ``attention_mask`` and ``token_type_ids``
  (:mod:`jaxdepth.text.inputs`); ``token_inputs`` gives that dict to a part of
  an encoder that starts after the embedding. Padding tokens are left out of
  the site counts.

:func:`init` and :func:`forward` are the pure-function front door most code uses.
"""
from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any, NamedTuple

import flax.errors
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from jaxdepth import cpu_ops
from jaxdepth import spec as S
from jaxdepth.text import executor as text_executor
from jaxdepth.text import inputs as text_inputs
from jaxdepth.text.nodes import takes_token_ids
from jaxdepth.transformer import executor as transformer_executor

__all__ = ["Network", "init", "forward", "Forward", "gates_for", "gates_by_site",
           "site_stats_by_path", "check_node_gates", "example_input", "random_input",
           "batch_inputs", "not_a_key"]

STATS = "site_stats"

# PyTorch's default initialisations, which the papers' code relies on:
# Kaiming normal (fan_out) for convolutions as in torchvision ResNet/MobileNetV2,
# U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for Linear weights and biases.
_conv_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")
_dense_init = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")


def _uniform(bound: float):
  def init(key, shape, dtype=jnp.float32):
    return jax.random.uniform(key, shape, dtype, -bound, bound)
  return init


def activation(fn: str, z, negative_slope: float = 0.01):
  """The site function ``fn`` (one of :data:`jaxdepth.spec.ACTIVATIONS`) applied to ``z``."""
  if fn == "relu":
    return jax.nn.relu(z)
  if fn == "relu6":
    return jax.nn.relu6(z)
  if fn == "gelu":
    return jax.nn.gelu(z, approximate=False)
  if fn == "gelu_tanh":
    return jax.nn.gelu(z, approximate=True)
  if fn == "silu":
    return jax.nn.silu(z)
  if fn == "leaky_relu":
    return jax.nn.leaky_relu(z, negative_slope)
  if fn == "hard_swish":
    return jax.nn.hard_swish(z)
  if fn == "identity":
    return z
  raise ValueError(f"unknown activation {fn!r}")


# One packed count: bits 0-15 count ``z > 0``, bits 16-30 count ``z < 0``, so a sum
# over at most _PACKED_ROWS positions cannot carry from one half into the other or
# into the int32 sign bit (32767 + 32767 * 2**16 < 2**31).
_PACKED_SHIFT = 16
_PACKED_ROWS = 2**15 - 1


def _packed_rows(rows: int) -> int:
  """The largest divisor of ``rows`` that is at most ``_PACKED_ROWS``."""
  if rows <= _PACKED_ROWS:
    return rows
  return next(d for d in range(_PACKED_ROWS, 0, -1) if rows % d == 0)


def sign_counts(z: jax.Array, example_mask: jax.Array | None = None,
                token_mask: jax.Array | None = None) -> jax.Array:
  """Per-channel counts of ``z > 0``, ``z < 0``, ``z == 0`` as an int32 ``(3, C)`` array.

  Counts run over every axis but the last (batch, spatial positions or tokens).
  ``example_mask`` (shape ``(B,)``) leaves padded examples out, ``token_mask``
  (shape ``z.shape[:-1]``, a text batch's ``attention_mask``) padding tokens.
  A NaN counts as zero.

  Computed with a single pass over ``z``: each element is coded as ``1`` (positive),
  ``2**16`` (negative) or ``0``, the codes are summed per example over its
  positions (in rows of at most ``2**15 - 1``, so neither half overflows), the two
  halves are split off with a mask and a shift and summed over examples, and
  ``zero = n - positive - negative``. On XLA:CPU this is about 15x faster than three
  boolean sums over the batch and spatial axes at once, and it keeps the cost of
  collecting statistics in a ResNet-20 training step within a few percent
  (``benchmarks/site_stats_overhead.py``).
  """
  if z.ndim == 1:
    z = z[None]
  channels, batch = z.shape[-1], z.shape[0]
  positions = math.prod(z.shape[1:-1])
  rows = _packed_rows(positions)
  code = jnp.where(z > 0, 1, jnp.where(z < 0, 1 << _PACKED_SHIFT, 0)).astype(jnp.int32)
  if token_mask is not None:
    kept = (token_mask != 0).reshape(batch, positions)
    if example_mask is not None:
      kept = kept & (example_mask != 0).reshape(batch, 1)
    code = code * kept.astype(jnp.int32).reshape(*z.shape[:-1], 1)
    example_mask = None
  packed = jnp.sum(code.reshape(batch, positions // rows, rows, channels), axis=2)
  pos = packed & ((1 << _PACKED_SHIFT) - 1)
  neg = packed >> _PACKED_SHIFT
  n = batch * positions if token_mask is None else jnp.sum(kept.astype(jnp.int32))
  if example_mask is not None:
    keep = example_mask.astype(jnp.int32).reshape(batch, 1, 1)
    pos, neg = pos * keep, neg * keep
    n = jnp.sum(keep) * positions
  pos, neg = jnp.sum(pos, axis=(0, 1)), jnp.sum(neg, axis=(0, 1))
  return jnp.stack([pos, neg, n - pos - neg]).astype(jnp.int32)


def adaptive_avg_pool(x: jax.Array, output_size: tuple[int, int]) -> jax.Array:
  """PyTorch ``AdaptiveAvgPool2d``: bin ``i`` covers ``[floor(i*H/o), ceil((i+1)*H/o))``.

  Written as two averaging matrices, ``y = A_h x A_w^T`` per channel, so it is
  linear and exact for any input size (including upsampling a 1x1 map).
  """
  def matrix(n_in, n_out):
    a = [[0.0] * n_in for _ in range(n_out)]
    for i in range(n_out):
      lo, hi = (i * n_in) // n_out, math.ceil((i + 1) * n_in / n_out)
      for j in range(lo, hi):
        a[i][j] = 1.0 / (hi - lo)
    return jnp.asarray(a, x.dtype)
  ah, aw = matrix(x.shape[1], output_size[0]), matrix(x.shape[2], output_size[1])
  return jnp.einsum("oh,bhwc,pw->bopc", ah, x, aw)


def conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation=None, rhs_dilation=None,
                         dimension_numbers=None, feature_group_count=1, precision=None, **kw):
  """``lax.conv_general_dilated``, run by :func:`jaxdepth.cpu_ops.conv` on the CPU.

  On the CPU, a float32, channel-last 2-D convolution without dilation, with
  explicit non-negative padding, goes to :func:`jaxdepth.cpu_ops.conv`: the same
  function, with its forward and backward passes written as the convolutions and
  matrix products XLA:CPU runs fast (a tiny map as one matrix product, depthwise as
  shifted multiply-adds, weight gradients as matrix products, no naive
  loops). Anything else, every other backend, and ``JAXDEPTH_CPU_OPS=xla``
  (for forward-mode differentiation, which the custom VJPs do not support) go to
  ``lax.conv_general_dilated``, bfloat16 included: XLA:CPU miscompiles a bfloat16
  matrix product followed by a bias, a residual add, a ReLU and a mean (NaN, inf
  or values off by 1e37 from a batch of about 64), which is what the matrix-product
  plans make of a biased residual block before global average pooling.
  """
  spatial = lhs.shape[1:-1]
  nhwc = ("NHWC", "HWIO", "NHWC")
  if (kw == {} and precision is None and len(spatial) == 2 and cpu_ops.wanted()
      and lhs.dtype == rhs.dtype == jnp.float32
      and not isinstance(padding, str) and all(p >= 0 for pair in padding for p in pair)
      and jax.lax.conv_dimension_numbers(lhs.shape, rhs.shape, nhwc) in (
          dimension_numbers, jax.lax.conv_dimension_numbers(lhs.shape, rhs.shape,
                                                             dimension_numbers))
      and all(d is None or tuple(d) == (1,) * len(spatial) for d in (lhs_dilation,
                                                                      rhs_dilation))):
    return cpu_ops.conv(lhs, rhs, window_strides, padding, feature_group_count)
  return jax.lax.conv_general_dilated(
      lhs, rhs, window_strides, padding, lhs_dilation=lhs_dilation, rhs_dilation=rhs_dilation,
      dimension_numbers=dimension_numbers, feature_group_count=feature_group_count,
      precision=precision, **kw)


def pool(node: S.Pool, x: jax.Array) -> jax.Array:
  if node.op == "global_avg":
    return jnp.mean(x, axis=tuple(range(1, x.ndim - 1)))
  if node.op == "adaptive_avg":
    return adaptive_avg_pool(x, node.output_size)
  if node.op == "max":
    if cpu_ops.wanted():
      return cpu_ops.max_pool(x, node.window, node.stride, node.padding)
    return nn.max_pool(x, node.window, node.stride, node.padding)
  return nn.avg_pool(x, node.window, node.stride, node.padding, count_include_pad=True)


@dataclasses.dataclass
class _Context:
  """Per-call state shared by every scope (not a module attribute: never hashed)."""
  train: bool
  gates: jax.Array | None
  site_index: dict[str, int]
  collect_stats: bool
  example_mask: jax.Array | None
  dtype: Any
  capture: frozenset = frozenset()
  captured: dict = dataclasses.field(default_factory=dict)
  node_gates: dict | None = None
  inputs: dict = dataclasses.field(default_factory=dict)   # a text call's per-token inputs

  def token_mask(self, z: jax.Array) -> jax.Array | None:
    """The call's ``attention_mask`` if ``z`` holds one vector per token, else ``None``."""
    mask = self.inputs.get("attention_mask")
    return mask if mask is not None and z.shape[:-1] == mask.shape else None


def _run(module: nn.Module, nodes, x, ctx: _Context, prefix: str):
  """Runs ``nodes`` inside ``module``'s compact scope."""
  nodes, i = tuple(nodes), 0
  while i < len(nodes):
    n = nodes[i]
    if _fuses_with_batch_norm(nodes[i:i + 2], x, ctx, prefix):
      x = _pointwise_conv_batch_norm(n, nodes[i + 1], x)
      i += 2
      continue
    i += 1
    path = prefix + n.name
    x_in = x
    x = _run_node(module, n, path, x, ctx)
    gated = ctx.node_gates is not None and path in ctx.node_gates
    if gated:
      x = jnp.where(ctx.node_gates[path] != 0, x, x_in)
    if path in ctx.capture:   # what the node passes on: a gated-off node's input
      # In training, materialised as the ungated output was: fused into the regularizer's
      # projections, the select changed their rounding (a LaCoOT digits run moved 0.3
      # points); the eval-mode distances read it bit-identically without the barrier.
      ctx.captured[path] = (x_in, jax.lax.optimization_barrier(x) if gated and ctx.train
                            else x)
  return x


def _conv(module, n: S.Conv, path, x, ctx):
  return nn.Conv(n.features, n.kernel, n.stride, n.padding, feature_group_count=n.groups,
                 use_bias=n.bias, kernel_init=_conv_init, dtype=ctx.dtype,
                 conv_general_dilated=conv_general_dilated, name=n.name)(x)


class _TrainBatchNorm(nn.Module):
  """``nn.BatchNorm`` in training mode, float32, as :func:`jaxdepth.cpu_ops.batch_norm`.

  The same variables (``scale``, ``bias``; ``batch_stats`` ``mean``, ``var``),
  initial values and running-average update as Flax's.
  """
  momentum: float
  epsilon: float

  @nn.compact
  def __call__(self, x, pointwise_kernel=None):
    """BatchNorm of ``x``, or of the 1x1 convolution ``x @ pointwise_kernel`` (``(C, O)``)."""
    features = (x.shape[-1] if pointwise_kernel is None else pointwise_kernel.shape[-1],)
    ra_mean = self.variable("batch_stats", "mean", lambda: jnp.zeros(features, jnp.float32))
    ra_var = self.variable("batch_stats", "var", lambda: jnp.ones(features, jnp.float32))
    scale = self.param("scale", nn.initializers.ones, features, jnp.float32)
    bias = self.param("bias", nn.initializers.zeros, features, jnp.float32)
    if pointwise_kernel is None:
      y, mean, var = cpu_ops.batch_norm(x, scale, bias, self.epsilon)
    else:
      y, mean, var = cpu_ops.pointwise_conv_batch_norm(x, pointwise_kernel, scale, bias,
                                                       self.epsilon)
    if not self.is_initializing():
      ra_mean.value = self.momentum * ra_mean.value + (1 - self.momentum) * mean
      ra_var.value = self.momentum * ra_var.value + (1 - self.momentum) * var
    return y


def _fuses_with_batch_norm(pair, x, ctx: _Context, prefix: str) -> bool:
  """Whether ``pair`` (a 1x1 conv, then a BatchNorm) trains as one fused CPU op.

  That op is :func:`~jaxdepth.cpu_ops.pointwise_conv_batch_norm`: used on the CPU
  in float32 training, for a bias-free, stride-1, unpadded 1x1 convolution whose
  shapes make it pay, when neither node is captured or gated (both need the
  convolution's own output).
  """
  if len(pair) != 2 or type(pair[0]) is not S.Conv or type(pair[1]) is not S.BatchNorm:
    return False
  conv = pair[0]
  paths = {prefix + n.name for n in pair}
  return (ctx.train and x.dtype == jnp.float32
          and conv.kernel == (1, 1) and conv.stride == (1, 1) and conv.groups == 1
          and conv.padding == ((0, 0), (0, 0)) and not conv.bias
          and not paths & ctx.capture and not paths & set(ctx.node_gates or ())
          and cpu_ops.wanted() and cpu_ops.pointwise_batch_norm_pays(x.shape[-1], conv.features))


class _PointwiseKernel(nn.Module):
  """The kernel of a 1x1 ``nn.Conv`` (same name, shape and initialiser), for a fused pass to use."""
  in_features: int
  features: int

  @nn.compact
  def __call__(self):
    return self.param("kernel", _conv_init, (1, 1, self.in_features, self.features), jnp.float32)


def _pointwise_conv_batch_norm(conv: S.Conv, bn: S.BatchNorm, x):
  """``conv`` then ``bn`` in training, as one op; their variables are those of the two nodes."""
  kernel = _PointwiseKernel(x.shape[-1], conv.features, name=conv.name)()
  return _TrainBatchNorm(bn.momentum, bn.epsilon, name=bn.name)(x, kernel[0, 0])


def _batch_norm(module, n: S.BatchNorm, path, x, ctx):
  if ctx.train and x.dtype == jnp.float32 and cpu_ops.wanted():
    return _TrainBatchNorm(n.momentum, n.epsilon, name=n.name)(x)
  return nn.BatchNorm(use_running_average=not ctx.train, momentum=n.momentum,
                      epsilon=n.epsilon, dtype=ctx.dtype, name=n.name)(x)


def _layer_norm(module, n: S.LayerNorm, path, x, ctx):
  return nn.LayerNorm(epsilon=n.epsilon, dtype=ctx.dtype, name=n.name)(x)


def _group_norm(module, n: S.GroupNorm, path, x, ctx):
  return nn.GroupNorm(num_groups=n.groups, epsilon=n.epsilon, dtype=ctx.dtype, name=n.name)(x)


def _dense(module, n: S.Dense, path, x, ctx):
  bound = 1.0 / math.sqrt(x.shape[-1])
  return nn.Dense(n.features, use_bias=n.bias, kernel_init=_dense_init,
                  bias_init=_uniform(bound), dtype=ctx.dtype, name=n.name)(x)


def _act(module, n: S.Act, path, x, ctx):
  if n.fn == "identity":
    return x
  if ctx.collect_stats:
    module.sow(STATS, n.name, sign_counts(x, ctx.example_mask, ctx.token_mask(x)),
               init_fn=lambda: None, reduce_fn=lambda _, b: b)
  y = activation(n.fn, x, n.negative_slope)
  if ctx.gates is not None:
    y = jnp.where(ctx.gates[ctx.site_index[path]] != 0, y, x)
  return y


def _pool(module, n: S.Pool, path, x, ctx):
  return pool(n, x)


def _flatten(module, n: S.Flatten, path, x, ctx):
  return x.reshape((x.shape[0], -1))


def _dropout(module, n: S.Dropout, path, x, ctx):
  return nn.Dropout(n.rate, deterministic=not ctx.train, name=n.name)(x)


def _sequential(module, n: S.Sequential, path, x, ctx):
  return _Scope(n.layers, path + S.SEP, name=n.name)(x, ctx)


def _block(module, n: S.Block, path, x, ctx):
  return _BlockScope(n, path + S.SEP, name=n.name)(x, ctx)


def _concat(module, n: S.Concat, path, x, ctx):
  return _ConcatScope(n, path + S.SEP, name=n.name)(x, ctx)


# One function per node class, ``(module, node, path, x, ctx) -> y``, run inside
# ``module``'s compact scope; a node runs the entry of the first class of its MRO
# found here (so a subclass may have its own). New node kinds add an entry.
_EXECUTORS = {
    S.Conv: _conv, S.BatchNorm: _batch_norm, S.LayerNorm: _layer_norm,
    S.GroupNorm: _group_norm, S.Dense: _dense,
    S.Act: _act, S.Pool: _pool, S.Flatten: _flatten, S.Dropout: _dropout,
    S.Sequential: _sequential, S.Block: _block, S.Concat: _concat,
    **transformer_executor.EXECUTORS, **text_executor.EXECUTORS,
}


def _run_node(module: nn.Module, n: S.Node, path: str, x, ctx: _Context):
  """Runs one node ``n`` (at ``path``) on ``x`` inside ``module``'s compact scope."""
  for cls in type(n).__mro__:
    run = _EXECUTORS.get(cls)
    if run is not None:
      return run(module, n, path, x, ctx)
  raise TypeError(f"node {path!r}: the executor does not know {type(n).__name__}")


class _Scope(nn.Module):
  nodes: tuple[S.Node, ...]
  prefix: str

  @nn.compact
  def __call__(self, x, ctx):
    return _run(self, self.nodes, x, ctx, self.prefix)


class _BlockScope(nn.Module):
  block: S.Block
  prefix: str

  @nn.compact
  def __call__(self, x, ctx):
    y = _run(self, self.block.branch, x, ctx, self.prefix)
    y = y + _run(self, self.block.shortcut, x, ctx, self.prefix)
    return _run(self, self.block.post, y, ctx, self.prefix)


class _ConcatScope(nn.Module):
  node: S.Concat
  prefix: str

  @nn.compact
  def __call__(self, x, ctx):
    y = jnp.concatenate([_run(self, b, x, ctx, self.prefix) for b in self.node.branches], -1)
    return _run(self, self.node.post, y, ctx, self.prefix)


class Network(nn.Module):
  """Executes ``spec`` on channel-last inputs ``(B, *spec.input_shape)``.

  A text spec (one that starts with a
  :class:`~jaxdepth.text.TokenEmbedding`) takes integer token ids ``(B, L)`` or
  a dict ``{"input_ids", "attention_mask", "token_type_ids"}`` of such arrays
  (:mod:`jaxdepth.text.inputs`); its sites count real tokens only.

  Attributes:
    spec: the architecture.
    dtype: compute dtype (``jnp.bfloat16`` on GPU/TPU); parameters stay float32
      and the output is cast back to float32.
  """
  spec: S.Spec
  dtype: Any = None

  @nn.compact
  def __call__(self, x, *, train: bool = False, gates: jax.Array | None = None,
               collect_stats: bool = False, example_mask: jax.Array | None = None,
               capture: tuple[str, ...] = (), node_gates=None, token_inputs=None):
    sites = self.spec.sites()
    if gates is not None and gates.shape != (len(sites),):
      raise ValueError(_gates_shape_message(self.spec, gates.shape))
    text = takes_token_ids(self.spec)
    inputs = {}
    if text:
      if token_inputs is not None:
        raise ValueError(f"spec {self.spec.name!r} reads token ids: pass its attention_mask and "
                         f"token_type_ids in the input dict, not as token_inputs")
      x, side = text_inputs.split_text_input(self.spec, x)
      inputs = {"input_ids": x, **side}
    elif isinstance(x, Mapping):
      raise ValueError(f"spec {self.spec.name!r} reads one array (B, *{self.spec.input_shape}), "
                       f"got a dict with keys {sorted(x)}; only a spec that starts with a "
                       f"TokenEmbedding reads text inputs")
    elif x.shape[1:] != self.spec.input_shape:
      raise ValueError(f"input of shape {x.shape[1:]} (batch axis dropped) does not match "
                       f"the spec's input_shape {self.spec.input_shape}")
    elif token_inputs is not None:
      inputs = text_inputs.check_token_inputs(token_inputs, x.shape[0])
    if capture:
      paths = {p for p, _ in self.spec.walk()}
      unknown = [c for c in capture if c not in paths]
      if unknown:
        raise KeyError(f"capture names no node of {self.spec.name!r}: {unknown}")
    if node_gates is not None:
      check_node_gates(self.spec, node_gates)
    ctx = _Context(train=train, gates=gates, site_index={s: i for i, s in enumerate(sites)},
                   collect_stats=collect_stats, example_mask=example_mask, dtype=self.dtype,
                   capture=frozenset(capture), node_gates=node_gates, inputs=inputs)
    if self.dtype is not None and not text:   # token ids stay integers
      x = x.astype(self.dtype)
    y = _run(self, self.spec.layers, x, ctx, "").astype(jnp.float32)
    if capture:
      return y, {c: ctx.captured[c] for c in capture}
    return y


class Forward(NamedTuple):
  """What :func:`forward` returns.

  Attributes:
    logits: the network output (float32).
    batch_stats: updated BatchNorm statistics in train mode, else the input ones.
    site_counts: ``{site path: (3, C) int32}`` sign counts when collected, else ``None``.
    captured: ``{node path: (input, output)}`` of the nodes named in ``capture``
      (in the compute dtype; the output after the node's own gate), else ``None``.
  """
  logits: jax.Array
  batch_stats: Any
  site_counts: dict[str, jax.Array] | None
  captured: dict[str, tuple[jax.Array, jax.Array]] | None = None


def check_node_gates(spec: S.Spec, node_gates) -> None:
  """Raises a clear error unless every key of ``node_gates`` is a shape-preserving node.

  Args:
    spec: the architecture.
    node_gates: ``{node path: scalar}`` (see :func:`forward`).

  Raises:
    TypeError: ``node_gates`` is not a mapping.
    KeyError: a path names no node of ``spec``.
    ValueError: a node whose output shape differs from its input shape (it cannot
      become the identity), or a gate that is not a scalar.
  """
  if not hasattr(node_gates, "items"):
    raise TypeError(f"node_gates must be a dict {{node path: gate}}, got "
                    f"{type(node_gates).__name__}")
  shapes = spec.shapes()
  for path, gate in node_gates.items():
    if path not in shapes:
      raise KeyError(f"node_gates names no node of {spec.name!r}: {path!r}")
    if shapes[path][0] != shapes[path][1]:
      raise ValueError(f"node {path!r} of {spec.name!r} maps {shapes[path][0]} to "
                       f"{shapes[path][1]}; only a node whose output shape equals its input "
                       f"shape can be gated into the identity")
    if jnp.ndim(gate) != 0:
      raise ValueError(f"the gate of node {path!r} must be a scalar, got shape "
                       f"{jnp.shape(gate)}")


def _init_key(rng: jax.Array) -> jax.Array:
  """An RBG key made from the words of ``rng`` (a typed key or a raw ``uint32`` key).

  XLA compiles a whole-network initialisation with the RBG generator far faster
  than with threefry (ResNet-20 on CPU: 2.2 s instead of 17.6 s, cold). RBG
  streams are repeatable on one backend but may differ between backends.
  """
  words = jax.random.key_data(rng) if jnp.issubdtype(rng.dtype, jax.dtypes.prng_key) else rng
  words = jnp.ravel(words).astype(jnp.uint32)
  return jax.random.wrap_key_data(jnp.resize(words, (4,)), impl="rbg")


def not_a_key(rng) -> str | None:
  """``None`` for a JAX key (typed, or raw ``uint32`` key data), else what ``rng`` is, in words."""
  dtype = getattr(rng, "dtype", None)
  if isinstance(rng, (jax.Array, np.ndarray)):
    return None if jnp.issubdtype(dtype, jax.dtypes.prng_key) or dtype == jnp.uint32 else (
        f"a {dtype} array")
  return f"the {type(rng).__name__} {rng!r}"


def init(spec: S.Spec, rng, *, dtype=None) -> dict[str, Any]:
  """Initial variables of ``Network(spec)`` (a plain dict: ``params``, ``batch_stats``).

  The draws follow PyTorch's initialisers (see the module constants) from an
  RBG key derived from ``rng`` (:func:`_init_key`), so they differ from
  ``Network(spec).init(rng, x)`` but are repeatable for a given ``rng``.

  Args:
    spec: the architecture.
    rng: a JAX key (``jax.random.key(0)``, or raw ``uint32`` key data), or an int
      seed, taken as ``jax.random.key(seed)`` (as :meth:`TrainState.create
      <jaxdepth.training.TrainState.create>` takes one): ``init(spec, 0)`` equals
      ``init(spec, jax.random.key(0))``.
    dtype: compute dtype, as for :class:`Network`.

  Raises:
    TypeError: ``spec`` is not a Spec (a zoo name, a zoo function not called, the
      arguments swapped) or ``rng`` is neither a key nor an int.
  """
  S.check_spec(spec, "init(spec, rng)")
  if isinstance(rng, (int, np.integer)) and not isinstance(rng, (bool, np.bool_)):
    rng = jax.random.key(int(rng))
  what = not_a_key(rng)
  if what is not None:
    raise TypeError(f"rng must be a JAX key, e.g. jax.random.key(0), or an int seed; got {what}")
  x = example_input(spec)
  return dict(jax.jit(Network(spec, dtype=dtype).init)(_init_key(rng), x))


def example_input(spec: S.Spec, batch: int = 1):
  """An all-zero input of ``batch`` examples that ``spec`` accepts.

  ``(batch, *spec.input_shape)`` float32 zeros, or for a text spec a dict of
  int32 ``input_ids`` (zeros), ``attention_mask`` (ones) and ``token_type_ids``
  (zeros) of shape ``(batch, L)``.
  """
  if takes_token_ids(spec):
    return {k: jnp.asarray(v) for k, v in text_inputs.example_text_input(spec, batch).items()}
  return jnp.zeros((batch, *spec.input_shape), jnp.float32)


def random_input(spec: S.Spec, batch: int, seed: int = 0):
  """A random input of ``batch`` examples for ``spec`` (timings, checks).

  Standard normal images ``(batch, *spec.input_shape)``, or for a text spec
  token ids drawn uniformly from its vocabulary, every token real and of type 0
  (:func:`jaxdepth.text.inputs.random_text_input`).
  """
  if takes_token_ids(spec):
    return {k: jnp.asarray(v) for k, v in text_inputs.random_text_input(spec, batch,
                                                                          seed).items()}
  # numpy's generator: a jax.random draw would compile a threefry program per batch size.
  x = np.random.default_rng(seed).standard_normal((batch, *spec.input_shape), np.float32)
  return jnp.asarray(x)


def batch_inputs(spec: S.Spec, batch):
  """What ``spec`` reads of a data batch: ``batch["image"]``, or for a text spec the
  dict of the batch's ``input_ids``, ``attention_mask`` and ``token_type_ids``.

  Raises:
    KeyError: the batch lacks what ``spec`` reads (the message names both).
  """
  if takes_token_ids(spec):
    if "input_ids" not in batch:
      raise KeyError(f"spec {spec.name!r} reads token ids, but the batch has keys "
                     f"{sorted(batch)}; use a text dataset (input_ids, attention_mask, "
                     f"token_type_ids)")
    return {k: batch[k] for k in text_inputs.TEXT_INPUTS if k in batch}
  if "image" not in batch:
    raise KeyError(f"spec {spec.name!r} reads images, but the batch has keys {sorted(batch)}")
  return batch["image"]


def site_stats_by_path(collection) -> dict[str, jax.Array]:
  """Flattens a sown ``site_stats`` collection to ``{site path: (3, C) counts}``."""
  return traverse_util.flatten_dict(collection, sep=S.SEP)


# What Flax raises when variables lack a node's parameters or hold other shapes.
_VARIABLES_MISFIT = (flax.errors.ScopeParamShapeError, flax.errors.ScopeParamNotFoundError,
                     flax.errors.ScopeVariableNotFoundError, flax.errors.ScopeCollectionNotFound)


def forward(spec: S.Spec, variables, x, *, train: bool = False, gates=None, rng=None,
            collect_stats: bool = False, example_mask=None, dtype=None,
            capture: tuple[str, ...] = (), node_gates=None, token_inputs=None) -> Forward:
  """Runs ``spec`` as a pure function of its variables.

  Inside a transformation (``jax.jit``, ``jax.grad``, ...) it is traced like any
  function. Called on concrete arrays it runs as one compiled program, cached per
  spec, settings and input shapes: run op by op, the executor would compile each of
  its slices, pads and adds on its own (dozens of small programs per network).

  Args:
    spec: the architecture.
    variables: ``{"params": ..., "batch_stats": ...}``.
    x: a batch ``(B, *spec.input_shape)``; for a text spec the token ids
      ``(B, L)`` or a dict with ``input_ids``, ``attention_mask``,
      ``token_type_ids`` (:func:`batch_inputs` picks them out of a data batch).
    token_inputs: for a spec cut out of a text encoder after its token
      embedding (its input is hidden states ``(B, L, D)``): the dict of per-token
      inputs of the batch (``input_ids``, ``attention_mask``,
      ``token_type_ids``, each ``(B, L)``), which its position embeddings,
      masked attention and site counts read.
    train: train mode (batch statistics, dropout; needs ``rng`` if the spec has dropout).
    gates: optional ``(len(spec.sites()),)`` array; 0 turns a site into the identity.
    rng: dropout key.
    collect_stats: return per-site sign counts (of a text spec: over real
      tokens only, those whose ``attention_mask`` is 1).
    example_mask: ``(B,)`` booleans; padded examples are left out of the counts.
    dtype: compute dtype.
    capture: node paths (e.g. residual blocks ``"layer1/1"``) whose input and
      output to return in ``Forward.captured``, inside the same forward pass
      (LaCoOT's regularizer reads them); only those are kept, so memory stays bounded.
      The output is what the node passes on: for a node in ``node_gates`` the
      gated output, its input where the gate is 0 (a removed block's input and
      output are equal, their distance 0 and without gradient). A node inside a
      gated-off node still holds the output it computed, which goes nowhere.
    node_gates: optional ``{node path: scalar}``; a node whose gate is 0 is the
      identity (its input passes through), e.g. a removed residual block. Only
      nodes whose input and output shapes are equal (:func:`check_node_gates`).

  Returns:
    A :class:`Forward`.

  Raises:
    TypeError: ``spec`` is not a Spec or ``variables`` not a dict (arguments swapped),
      ``x`` or ``gates`` is not an array (a list, a dict of gates).
    ValueError: ``x`` of the wrong shape (one example without its batch axis, ...),
      gates of the wrong length, or variables that do not fit ``spec``.
  """
  S.check_spec(spec, "forward(spec, variables, x)")
  if not isinstance(variables, Mapping):
    raise TypeError(f"forward(spec, variables, x): variables must be the dict jaxdepth.init "
                    f"makes ({{'params': ..., 'batch_stats': ...}}), got a "
                    f"{type(variables).__name__}")
  capture = S.site_paths(capture, "capture", "node paths")
  if not isinstance(x, Mapping):         # a dict is a text batch, whose keys Network checks
    if not hasattr(x, "shape"):
      if takes_token_ids(spec):
        raise TypeError(f"x must be an array of token ids (B, L) or a dict of such arrays "
                        f"(jaxdepth.text.inputs), got a {type(x).__name__}")
      raise TypeError(f"x must be an array (B, {', '.join(map(str, spec.input_shape))}), got a "
                      f"{type(x).__name__}; convert it with np.asarray(x, np.float32)")
    if tuple(x.shape) == spec.input_shape and not takes_token_ids(spec):
      raise ValueError(f"x needs a leading batch axis: (B, {', '.join(map(str, x.shape))}), got "
                       f"one example of shape {tuple(x.shape)}; pass x[None] for a batch of one")
  if gates is not None and not hasattr(gates, "shape"):
    hint = ("values={site: gate}" if isinstance(gates, Mapping) else "off=[site, ...]")
    raise TypeError(f"gates must be an array of shape ({len(spec.sites())},), one gate per live "
                    f"site of {spec.name!r} in call order, got a {type(gates).__name__}; build it "
                    f"by name with jaxdepth.gates_for(spec, {hint})")
  arrays = (variables, x, gates, rng, example_mask, node_gates, token_inputs)
  traced = any(isinstance(leaf, jax.core.Tracer) for leaf in jax.tree.leaves(arrays))
  run = _forward if traced else _forward_compiled
  return run(spec, variables, x, train=train, gates=gates, rng=rng,
             collect_stats=collect_stats, example_mask=example_mask, dtype=dtype,
             capture=capture, node_gates=node_gates, token_inputs=token_inputs)


def _forward(spec: S.Spec, variables, x, *, train, gates, rng, collect_stats, example_mask,
             dtype, capture, node_gates, token_inputs) -> Forward:
  """:func:`forward`'s computation."""
  mutable = (["batch_stats"] if train and "batch_stats" in variables else []) + (
      [STATS] if collect_stats else [])
  rngs = {"dropout": rng} if rng is not None else {}
  try:
    out = Network(spec, dtype=dtype).apply(
        variables, x, train=train, gates=gates, collect_stats=collect_stats,
        example_mask=example_mask, capture=capture, node_gates=node_gates,
        token_inputs=token_inputs, rngs=rngs,
        mutable=mutable or False)
  except _VARIABLES_MISFIT as e:
    raise ValueError(f"the variables do not fit spec {spec.name!r}; were they made for another "
                     f"spec? (jaxdepth.init(spec, rng) makes matching ones) {e}") from e
  except flax.errors.InvalidRngError as e:
    raise ValueError(f"spec {spec.name!r} has dropout, which train mode draws from a key: pass "
                     f"rng=jax.random.key(...) (a new one each step), or train=False") from e
  if mutable:
    out, updates = out
  else:
    updates = {}
  logits, captured = out if capture else (out, None)
  counts = None
  if collect_stats:
    counts = site_stats_by_path(updates.get(STATS, {}))
    counts = {s: counts[s] for s in spec.sites()}
  return Forward(logits, updates.get("batch_stats", variables.get("batch_stats")), counts,
                 captured)


_forward_compiled = jax.jit(_forward, static_argnames=("spec", "train", "collect_stats", "dtype",
                                                       "capture"))


def _gates_shape_message(spec: S.Spec, shape) -> str:
  """What a gate array of the wrong ``shape`` for ``spec`` is told."""
  n = len(spec.sites())
  return (f"gates must have shape ({n},), one per site of {spec.name!r} in call order "
          f"({list(spec.sites())}), removed ones at 0, got {shape}; build them with "
          f"jaxdepth.gates_for(spec, off=[...])")


def gates_for(spec: S.Spec, off=(), *, values=None) -> jax.Array:
  """A gate array, one per site of ``spec`` in call order (removed ones at 0), built by name.

  A site whose gate is 0 computes the identity; any other gate keeps its
  activation (1 by convention).

  Args:
    spec: the architecture.
    off: site paths whose gate is 0.
    values: ``{site: gate}`` (e.g. a dict read back with :func:`gates_by_site`);
      sites named in neither are on (1).

  Returns:
    ``(len(spec.sites()),)`` float32.

  Raises:
    KeyError: a name that is not a live site of ``spec``.
    TypeError: ``off`` given as one string instead of a collection of names.
  """
  if isinstance(off, str):
    raise TypeError(f"off must be a collection of site paths, got the string {off!r}; "
                    f"write off=[{off!r}]")
  values = dict(values or {})
  sites = spec.sites()
  unknown = (set(off) | set(values)) - set(sites)
  if unknown:
    raise KeyError(f"not live sites of {spec.name!r}: {sorted(unknown)}; its sites are "
                   f"{list(sites)}")
  both = set(off) & set(values)
  if both:
    raise ValueError(f"sites {sorted(both)} are both in off and in values; name each once")
  return jnp.asarray([0.0 if s in off else float(values.get(s, 1.0)) for s in sites],
                     jnp.float32)


def gates_by_site(spec: S.Spec, gates) -> dict[str, float]:
  """``{site: gate}`` of a gate array, in call order (the inverse of :func:`gates_for`).

  Raises:
    ValueError: ``gates`` does not have one entry per site of ``spec`` (removed ones
      included).
  """
  host = jax.device_get(gates)
  shape = getattr(host, "shape", None)
  if shape != (len(spec.sites()),):
    raise ValueError(_gates_shape_message(spec, shape))
  return {s: float(g) for s, g in zip(spec.sites(), host)}
