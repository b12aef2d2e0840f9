"""Bring your own Flax model: a Linen or NNX module as a spec, by tracing it.

:func:`from_flax` (Linen) and :func:`from_nnx` (NNX) run the user's module once on
a sample batch under ``jax.make_jaxpr`` and read the network off the trace; the
user's source is never parsed. Two sources of truth are combined:

* **layer calls**: every call of a Flax layer (``Conv``, ``Dense``/``Linear``,
  ``BatchNorm``, ``LayerNorm``, ``Dropout``) is intercepted (Linen:
  ``nn.intercept_methods``; NNX: the layer classes' ``__call__`` for the time of
  the trace), its attributes, path and variables recorded, and its output
  replaced in the trace by one opaque equation ``module(x)``;
* **glue**: everything between the layer calls is the traced program itself (a
  jaxpr). Additions of two tensors become residual :class:`~jaxdepth.spec.Block`
  s, concatenations on the channel axis :class:`~jaxdepth.spec.Concat` s,
  ``reshape`` to ``(B, -1)`` a Flatten, ``reduce_window`` and ``mean`` over
  ``(H, W)`` pooling. A chain of element-wise operations of one tensor is
  identified *numerically*: it is evaluated on a grid of values and compared
  with every site kind of :data:`jaxdepth.spec.ACTIVATIONS` (so ``nn.relu``,
  ``jnp.maximum(x, 0)`` and ``x * jax.nn.sigmoid(x)`` are all recognised for
  what they compute, whatever their spelling).

The value graph is then cut into the spec's series-parallel shape: the fork
of a join (an addition or concatenation) is its immediate dominator, and the
paths from the fork to each operand become the block's branches.

Anything else is refused with a :class:`ConversionError` naming the operation,
the module path, the user's source line and what to do; nothing is converted
halfway. Finally the spec is run on the sample and compared with the module
(``check=True``), so a conversion that returns agrees with the module there.

Example::

    spec, variables, paths = jaxdepth.from_flax(MyNet(), variables, x[:8])
    jaxdepth.forward(spec, variables, x).logits      # == MyNet().apply(variables, x)
    paths["BasicBlock_0/Conv_0"]    # the user's path of that spec node
"""
from __future__ import annotations

import dataclasses
import inspect
import math
import os
import traceback
import warnings
from collections.abc import Mapping
from typing import Any, NamedTuple

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from flax.linen import linear as linen_linear
from jax._src import source_info_util  # the user's source line of a traced equation
from jax.extend import core as jcore

from jaxdepth import network
from jaxdepth import spec as S

__all__ = ["from_flax", "from_nnx", "ConversionError", "Converted", "to_user_variables"]


class ConversionError(ValueError):
  """A module that cannot be converted; the message says what, where and what to do."""


class Converted(NamedTuple):
  """What :func:`from_flax` returns.

  Attributes:
    spec: the architecture.
    variables: ``{"params": ..., "batch_stats": ...}`` keyed by the spec's paths.
    paths: ``{spec node path: user module path}`` for every layer node (the
      user's path joins the Linen scope names or NNX attribute names with ``/``).
  """
  spec: S.Spec
  variables: dict[str, Any]
  paths: dict[str, str]


# ------------------------------------------------------------------ the trace


@dataclasses.dataclass
class _Leaf:
  """One intercepted layer call."""
  kind: str              # conv, dense, batch_norm, layer_norm, dropout
  path: tuple            # the user's module path
  module: Any            # the Linen or NNX layer object
  in_shape: tuple
  out_shape: tuple
  line: str


_leaf_p = jcore.Primitive("jaxdepth_layer")
_leaf_p.def_abstract_eval(lambda x, *, index, shape, dtype: jax.core.ShapedArray(shape, dtype))
_leaf_p.def_impl(lambda x, *, index, shape, dtype: jnp.zeros(shape, dtype))

_LINEN_LEAVES = ((nn.Conv, "conv"), (nn.Dense, "dense"), (nn.BatchNorm, "batch_norm"),
                 (nn.LayerNorm, "layer_norm"), (nn.Dropout, "dropout"))
_NNX_LEAVES = ((nnx.Conv, "conv"), (nnx.Linear, "dense"), (nnx.BatchNorm, "batch_norm"),
               (nnx.LayerNorm, "layer_norm"), (nnx.Dropout, "dropout"))
_CONTAINERS = ("Sequential", "List", "Dict")
_HERE = os.path.dirname(os.path.abspath(__file__))
_LIBS = tuple(os.path.dirname(os.path.abspath(m.__file__)) for m in (jax, flax)) + (_HERE,)


def _user_line() -> str:
  """``file:line (function)`` of the innermost frame outside jax, flax and jaxdepth."""
  for frame in reversed(traceback.extract_stack()):
    f = os.path.abspath(frame.filename)
    if not f.startswith(_LIBS) and "site-packages" not in f and not f.startswith("<frozen"):
      return f"{frame.filename}:{frame.lineno} ({frame.name})"
  return "unknown source line"


def _kind(obj, table) -> str | None:
  for cls, kind in table:
    if type(obj) is cls:
      return kind
  return None


def _where(path) -> str:
  return "/".join(str(p) for p in path) or "(the top module)"


def _record(leaves, kind, path, module, x, y):
  if not isinstance(x, jax.Array) or not isinstance(y, jax.Array):
    raise ConversionError(
        f"layer {_where(path)} ({type(module).__name__}) at {_user_line()}: called on "
        f"{type(x).__name__}, returned {type(y).__name__}; jaxdepth converts layers called on "
        f"one array that return one array")
  index = len(leaves)
  leaves.append(_Leaf(kind, tuple(path), module, tuple(x.shape), tuple(y.shape), _user_line()))
  return _leaf_p.bind(x, index=index, shape=tuple(y.shape), dtype=y.dtype)


def _refuse_layer(path, module):
  raise ConversionError(
      f"layer {_where(path)} is a {type(module).__module__}.{type(module).__name__} (called at "
      f"{_user_line()}), which jaxdepth cannot represent; supported layers: Conv, Dense/Linear, "
      f"BatchNorm, LayerNorm, Dropout. Replace it, or keep that part outside the converted module")


def _linen_interceptor(leaves):
  def intercept(next_fun, args, kwargs, context):
    module = context.module
    if context.method_name != "__call__":
      return next_fun(*args, **kwargs)
    kind = _kind(module, _LINEN_LEAVES)
    if kind is None:
      if type(module).__module__.startswith("flax.") and type(module).__name__ not in _CONTAINERS:
        _refuse_layer(module.path, module)
      return next_fun(*args, **kwargs)
    if len(args) != 1:
      raise ConversionError(f"layer {_where(module.path)} at {_user_line()} is called with "
                            f"{len(args)} positional arguments; jaxdepth converts one input")
    return _record(leaves, kind, module.path, module, args[0], next_fun(*args, **kwargs))
  return intercept


def _error_of(e: Exception, shape, what: str) -> ConversionError:
  """A tracing failure of the user's module as a ConversionError saying what to do."""
  name = type(e).__name__
  text = str(e).strip().split("\n")[0]
  if "Rng" in name or "rng" in text.lower() and "PRNG" in text:
    return ConversionError(
        f"{what} needs a random number stream that was not passed ({name}: {text}). Pass "
        f"rngs={{'<stream>': jax.random.key(0)}} to from_flax if the module draws random numbers "
        f"only through nn.Dropout; random operations of its own cannot be converted: move them "
        f"out of the module")
  if name in ("ScopeParamShapeError", "ScopeParamNotFoundError", "ScopeCollectionNotFound",
              "TypeError", "ValueError", "IndexError"):
    return ConversionError(
        f"{what} cannot run on a sample input of shape {tuple(shape)} ({name}: {text}). Pass a "
        f"batch shaped like the data the module was built for, with the batch axis first, e.g. "
        f"x[:8] of a (B, H, W, C) dataset")
  return ConversionError(f"tracing {what} on a sample input of shape {tuple(shape)} failed: "
                         f"{name}: {text}")


def _trace_linen(module, variables, x, train_kwarg, rngs):
  leaves: list[_Leaf] = []
  kwargs = {}
  try:
    params = inspect.signature(module.__call__).parameters
  except (TypeError, ValueError):
    params = {}
  if train_kwarg in params:
    kwargs[train_kwarg] = False

  def fn(x):
    return module.apply(variables, x, rngs=rngs, **kwargs)

  try:
    with nn.intercept_methods(_linen_interceptor(leaves)), jax.disable_jit():
      closed = jax.make_jaxpr(fn)(x)
  except ConversionError:
    raise
  except Exception as e:  # pylint: disable=broad-except   # any failure of user code: explained
    raise _error_of(e, x.shape, f"module {type(module).__name__}") from e
  return closed, leaves


def _nnx_patches(model):
  """Temporary ``__call__`` wrappers: layers emit the marker, other modules name a scope."""
  paths = {}
  for path, node in nnx.iter_graph(model):
    if isinstance(node, nnx.Module):
      paths.setdefault(id(node), tuple(path))
  types = {type(node) for _, node in nnx.iter_graph(model) if isinstance(node, nnx.Module)}
  return paths, types


def _trace_nnx(model, x):
  leaves: list[_Leaf] = []
  model = nnx.clone(model)
  model.eval()
  paths, types = _nnx_patches(model)
  saved = {}

  def wrap(cls, original):
    kind = _kind_of_type(cls, _NNX_LEAVES)

    def call(self, *args, **kwargs):
      path = paths.get(id(self), ())
      if kind is not None:
        if len(args) != 1:
          raise ConversionError(f"layer {_where(path)} at {_user_line()} is called with "
                                f"{len(args)} positional arguments; jaxdepth converts one input")
        return _record(leaves, kind, path, self, args[0], original(self, *args, **kwargs))
      if cls.__module__.startswith("flax.") and cls.__name__ not in _CONTAINERS:
        _refuse_layer(path, self)
      if not path:
        return original(self, *args, **kwargs)
      with jax.named_scope(str(path[-1])):
        return original(self, *args, **kwargs)
    return call

  try:
    for cls in types:
      if "__call__" not in dir(cls):
        continue
      saved[cls] = cls.__dict__.get("__call__")
      cls.__call__ = wrap(cls, cls.__call__)
    with jax.disable_jit():
      closed = jax.make_jaxpr(lambda x: model(x))(x)
  except ConversionError:
    raise
  except Exception as e:  # pylint: disable=broad-except
    raise _error_of(e, x.shape, f"module {type(model).__name__}") from e
  finally:
    for cls, original in saved.items():
      if original is None:
        del cls.__call__
      else:
        cls.__call__ = original
  return closed, leaves


def _kind_of_type(cls, table):
  for c, kind in table:
    if cls is c:
      return kind
  return None


# ---------------------------------------------------------------- the glue


_ELEMENTWISE = frozenset({
    "max", "min", "mul", "add", "sub", "div", "neg", "logistic", "tanh", "erf", "erfc", "exp",
    "exp2", "expm1", "log", "log1p", "integer_pow", "pow", "sqrt", "rsqrt", "square", "select_n",
    "ge", "gt", "le", "lt", "eq", "ne", "abs", "sign", "convert_element_type", "copy", "copy_p",
    "clamp", "and", "or", "not", "stop_gradient", "reduce_precision", "sin", "cos", "tan",
    "asin", "acos", "atan", "sinh", "cosh", "asinh", "acosh", "atanh", "atan2", "cbrt",
    "floor", "ceil", "round", "is_finite", "nextafter", "rem", "lgamma", "digamma"})
_CALLS = frozenset({"jit", "pjit", "custom_jvp_call", "custom_vjp_call", "closed_call",
                    "core_call", "remat", "checkpoint"})


def _inner(eqn):
  for key in ("jaxpr", "call_jaxpr", "fun_jaxpr"):
    sub = eqn.params.get(key)
    if sub is not None:
      return getattr(sub, "jaxpr", sub)
  return None


def _elementwise(eqn) -> bool:
  """Whether ``eqn`` computes each output element from the same element of its inputs."""
  name = eqn.primitive.name
  shapes = [tuple(v.aval.shape) for v in eqn.invars] + [tuple(v.aval.shape) for v in eqn.outvars]
  big = {s for s in shapes if s}
  if len(big) > 1:
    return False
  if name in _CALLS:
    inner = _inner(eqn)
    return inner is not None and all(_elementwise(e) for e in inner.eqns)
  if name == "broadcast_in_dim":
    return all(not v.aval.shape for v in eqn.invars)
  return name in _ELEMENTWISE


# What the site functions are made of; an element-wise chain using anything else (sin, exp
# of its own, ...) is refused without evaluating it.
_ACTIVATION_OPS = frozenset({
    "max", "min", "mul", "add", "sub", "div", "neg", "logistic", "tanh", "erf", "erfc",
    "integer_pow", "pow", "select_n", "ge", "gt", "le", "lt", "eq", "ne", "abs", "sign",
    "convert_element_type", "copy", "copy_p", "clamp", "broadcast_in_dim", "exp", "expm1",
    "log1p", "stop_gradient", "square", "sqrt", "rsqrt"}) | _CALLS
_GRID = np.linspace(-8.0, 8.0, 4001)
_erf = np.vectorize(math.erf, otypes=[np.float64])


def _sigmoid(x):
  return 0.5 * (1.0 + np.tanh(0.5 * x))


# The site kinds of jaxdepth.spec.ACTIVATIONS (but identity and leaky_relu), in float64.
_REFERENCES = {
    "relu": lambda x: np.maximum(x, 0.0),
    "relu6": lambda x: np.clip(x, 0.0, 6.0),
    "gelu": lambda x: 0.5 * x * (1.0 + _erf(x / math.sqrt(2.0))),
    "gelu_tanh": lambda x: 0.5 * x * (1.0 + np.tanh(math.sqrt(2.0 / math.pi)
                                                     * (x + 0.044715 * x**3))),
    "silu": lambda x: x * _sigmoid(x),
    "hard_swish": lambda x: x * np.clip(x + 3.0, 0.0, 6.0) / 6.0,
}

# numpy versions of the element-wise primitives (shapes broadcast: a chain of them is run
# on a 1-D grid whatever the traced shape).
_NUMPY = {
    "max": np.maximum, "min": np.minimum, "mul": np.multiply, "add": np.add,
    "sub": np.subtract, "div": np.divide, "neg": np.negative, "logistic": _sigmoid,
    "tanh": np.tanh, "erf": _erf, "erfc": lambda x: 1.0 - _erf(x), "pow": np.power,
    "ge": np.greater_equal, "gt": np.greater, "le": np.less_equal, "lt": np.less,
    "eq": np.equal, "ne": np.not_equal, "abs": np.abs, "sign": np.sign, "exp": np.exp,
    "expm1": np.expm1, "log1p": np.log1p, "square": np.square, "sqrt": np.sqrt,
    "rsqrt": lambda x: 1.0 / np.sqrt(x), "copy": lambda x: x, "copy_p": lambda x: x,
    "stop_gradient": lambda x: x, "clamp": lambda lo, x, hi: np.clip(x, lo, hi),
}


def _run_numpy(eqns, env, consts, out):
  """Evaluates element-wise equations in float64 numpy (calls are opened)."""
  def read(u):
    if _is_literal(u):
      return np.asarray(u.val, np.float64) if np.issubdtype(
          np.asarray(u.val).dtype, np.floating) else np.asarray(u.val)
    if u in env:
      return env[u]
    return np.asarray(consts[u], np.float64)
  for eqn in eqns:
    name = eqn.primitive.name
    args = [read(u) for u in eqn.invars]
    if name in _CALLS:
      inner = _inner(eqn)
      sub_consts = dict(zip(inner.constvars, getattr(eqn.params.get("jaxpr") or eqn.params.get(
          "call_jaxpr"), "consts", ())))
      sub_env = dict(zip(inner.invars, args))
      outs = [_run_numpy(inner.eqns, sub_env, sub_consts, o) for o in inner.outvars]
    elif name == "integer_pow":
      outs = [np.power(args[0], eqn.params["y"])]
    elif name == "select_n":
      pred, *cases = args
      outs = [np.choose(np.asarray(pred, np.int64), np.broadcast_arrays(*cases))]
    elif name == "convert_element_type":
      dtype = np.dtype(eqn.params["new_dtype"])
      outs = [args[0] if np.issubdtype(dtype, np.floating) else args[0].astype(dtype)]
    elif name == "broadcast_in_dim":
      outs = [args[0]]                       # a scalar: numpy broadcasts it
    else:
      outs = [_NUMPY[name](*args)]
    for var, val in zip(eqn.outvars, outs):
      env[var] = val
  return read(out)


def _primitives(eqn):
  yield eqn.primitive.name
  inner = _inner(eqn) if eqn.primitive.name in _CALLS else None
  for e in inner.eqns if inner is not None else ():
    yield from _primitives(e)


def _is_literal(v) -> bool:
  return isinstance(v, jcore.Literal)


class _Graph:
  """The traced program as a value graph; :meth:`node` builds the IR lazily."""

  def __init__(self, closed, leaves, root: str):
    self.jaxpr = closed.jaxpr
    self.consts = dict(zip(self.jaxpr.constvars, closed.consts))
    self.leaves = leaves
    self.root = root
    self.producer = {}
    for i, eqn in enumerate(self.jaxpr.eqns):
      for v in eqn.outvars:
        self.producer[v] = (i, eqn)
    self.input = self.jaxpr.invars[0]
    self.ir: list[dict] = []
    self._memo: dict = {}
    self._src: dict = {}
    self._dep: dict = {}

  # -- where -------------------------------------------------------------------

  def module_of(self, eqn) -> str:
    stack = str(eqn.source_info.name_stack)
    parts = [p for p in stack.split("/") if p]
    if parts and parts[0] == self.root:
      parts = parts[1:]
    return "/".join(parts)

  def refuse(self, eqn, what: str, todo: str):
    where = self.module_of(eqn) or "(the top module)"
    line = source_info_util.summarize(eqn.source_info)
    raise ConversionError(f"{what} (operation {eqn.primitive.name!r}) in module {where} at "
                          f"{line} cannot be converted: {todo}")

  # -- constants and sources ----------------------------------------------------

  def sources(self, v) -> frozenset | None:
    """The non-constant values ``v`` is an element-wise function of (``None``: a constant)."""
    if _is_literal(v):
      return None
    if v in self._src:
      return self._src[v]
    if v is self.input:
      out = frozenset([v])
    elif v in self.consts:
      out = None if not np.shape(self.consts[v]) else frozenset([v])
    else:
      _, eqn = self.producer[v]
      if _elementwise(eqn) and len(eqn.outvars) == 1:
        srcs = [self.sources(u) for u in eqn.invars]
        union = frozenset().union(*(s for s in srcs if s is not None))
        out = None if not union else (union if len(union) == 1 else frozenset([v]))
      else:
        out = frozenset([v])
    self._src[v] = out
    return out

  def region(self, v, s) -> list:
    """The equations computing ``v`` from ``s`` (and constants), in program order."""
    seen: dict[int, Any] = {}

    def rec(u):
      if _is_literal(u) or u is s or u in self.consts or u is self.input:
        return
      i, eqn = self.producer[u]
      if i in seen:
        return
      seen[i] = eqn
      for w in eqn.invars:
        rec(w)
    rec(v)
    return [seen[i] for i in sorted(seen)]

  def evaluate(self, eqns, s, v, values: np.ndarray) -> np.ndarray:
    """Runs the equations ``eqns`` (computing ``v`` from ``s``) on ``values`` in numpy."""
    env = {s: values}
    return _run_numpy(eqns, env, self.consts, v)

  def identify(self, v, s):
    """``(kind, value)`` of the element-wise function from ``s`` to ``v``.

    ``("act", Act fields)``, ``("identity", None)`` or ``("scale", c)``; refuses others.
    """
    eqns = self.region(v, s)
    foreign = sorted({name for e in eqns for name in _primitives(e)} - _ACTIVATION_OPS)
    if foreign:
      self.refuse(next(e for e in eqns if set(_primitives(e)) & set(foreign)),
                  f"an element-wise {', '.join(foreign)} that no activation site uses",
                  f"jaxdepth's sites are "
                  f"{', '.join(a for a in S.ACTIVATIONS if a != 'identity')}; write the "
                  f"activation as one of them (e.g. nn.relu, nn.silu, nn.gelu)")
    shape = tuple(s.aval.shape)
    if tuple(v.aval.shape) != shape:
      self.refuse(eqns[-1], "a broadcast between two tensors of different shapes",
                  "only element-wise functions of one tensor are supported")
    t = _GRID
    y = np.broadcast_to(self.evaluate(eqns, s, v, t), t.shape)
    close = lambda a: np.allclose(y, a, rtol=1e-5, atol=1e-5)  # noqa: E731
    if close(t):
      return "identity", None
    c = float(np.interp(1.0, t, y))
    if close(c * t):
      return "scale", float(c)
    for fn, reference in _REFERENCES.items():
      if close(reference(t)):
        return "act", {"fn": fn}
    slope = float(np.interp(-4.0, t, y) / -4.0)
    if 0 < slope < 1 and close(np.where(t >= 0, t, slope * t)):
      return "act", {"fn": "leaky_relu", "negative_slope": round(slope, 7)}
    ops = sorted({e.primitive.name for e in eqns})
    self.refuse(eqns[-1], f"an element-wise function ({', '.join(ops)}) that is no known "
                "activation",
                f"jaxdepth's sites are {', '.join(a for a in S.ACTIVATIONS if a != 'identity')}; "
                "write the activation as one of them (e.g. nn.relu, nn.silu, nn.gelu)")

  # -- the IR ------------------------------------------------------------------

  def add(self, kind, inputs, eqn=None, **info) -> int:
    self.ir.append({"kind": kind, "inputs": list(inputs),
                    "module": self.module_of(eqn) if eqn is not None else "", **info})
    return len(self.ir) - 1

  def ancestry(self, v) -> list:
    """The equations ``v`` is computed by, innermost last (empty for inputs and constants)."""
    seen, order = set(), []

    def rec(u):
      if _is_literal(u) or u not in self.producer:
        return
      i, eqn = self.producer[u]
      if i in seen:
        return
      seen.add(i)
      for w in eqn.invars:
        rec(w)
      order.append(eqn)
    rec(v)
    return order

  def depends_on_input(self, v) -> bool:
    if _is_literal(v):
      return False
    if v not in self._dep:
      self._dep[v] = v is self.input or (v in self.producer and any(
          self.depends_on_input(u) for u in self.producer[v][1].invars))
    return self._dep[v]

  def value(self, v) -> int:
    """IR node of any value: a source, or an element-wise function of one source."""
    if not self.depends_on_input(v):
      eqns = self.ancestry(v)
      if not eqns:
        raise ConversionError("the module returns a constant or adds a constant array outside "
                              "a layer; keep parameters inside Conv, Dense, BatchNorm or "
                              "LayerNorm")
      random = [e for e in eqns if "random" in e.primitive.name or e.primitive.name in (
          "threefry2x32", "rng_bit_generator", "rng_uniform")]
      if random:
        self.refuse(random[0], "a random operation outside nn.Dropout",
                    "use nn.Dropout for dropout, or move the noise out of the module")
      self.refuse(eqns[-1], "a tensor that does not depend on the input",
                  "constants must live inside supported layers (Conv, Dense, BatchNorm, ...)")
    (s,) = self.sources(v)
    if s is v:
      return self.node(v)
    if v in self._memo:
      return self._memo[v]
    kind, val = self.identify(v, s)
    if kind == "identity":
      out = self.value(s)
    elif kind == "act":
      out = self.add("act", [self.value(s)], self.region(v, s)[-1], **val)
    else:
      out = self.pool_of_scale(v, s, val)
    self._memo[v] = out
    return out

  def pool_of_scale(self, v, s, c) -> int:
    eqn_v = self.region(v, s)[-1]
    if s in self.producer:
      _, eqn = self.producer[s]
      name = eqn.primitive.name
      x = eqn.invars[0]
      if name == "reduce_sum" and len(x.aval.shape) == 4 and tuple(eqn.params["axes"]) == (1, 2):
        if math.isclose(c * x.aval.shape[1] * x.aval.shape[2], 1.0, rel_tol=1e-6):
          return self.add("pool", [self.value(x)], eqn, op="global_avg")
      if name == "reduce_window_sum":
        pool = self.window(eqn, "avg")
        if math.isclose(c * math.prod(pool["window"]), 1.0, rel_tol=1e-6):
          return self.add("pool", [self.value(x)], eqn, **pool)
    self.refuse(eqn_v, f"a multiplication by the constant {c:g}",
                "scale inside a layer (e.g. fold it into the next Dense or Conv), or use "
                "jnp.mean / nn.avg_pool for averages")

  def window(self, eqn, op):
    p = eqn.params
    dims, strides, pads = p["window_dimensions"], p["window_strides"], p["padding"]
    if (len(dims) != 4 or dims[0] != 1 or dims[3] != 1 or strides[0] != 1 or strides[3] != 1
        or any(d != 1 for d in p.get("base_dilation", ()) + p.get("window_dilation", ()))
        or tuple(pads[0]) != (0, 0) or tuple(pads[3]) != (0, 0)):
      self.refuse(eqn, "a pooling window over the batch or channel axis, or dilated",
                  "pool over (H, W) of a (B, H, W, C) tensor (nn.max_pool / nn.avg_pool)")
    return {"op": op, "window": tuple(dims[1:3]), "stride": tuple(strides[1:3]),
            "padding": tuple(tuple(q) for q in pads[1:3])}

  def node(self, v) -> int:
    """IR node of a source value (the input, a layer output, a structural op)."""
    if v in self._memo:
      return self._memo[v]
    if v is self.input:
      out = self.add("input", [])
    elif v in self.consts:
      raise ConversionError(f"the module uses a constant array of shape "
                            f"{np.shape(self.consts[v])} outside a supported layer; keep "
                            f"parameters inside Conv, Dense, BatchNorm or LayerNorm")
    else:
      out = self.structural(self.producer[v][1], v)
    self._memo[v] = out
    return out

  def structural(self, eqn, v) -> int:
    name = eqn.primitive.name
    ins = eqn.invars
    if eqn.primitive is _leaf_p:
      return self.add("leaf", [self.value(ins[0])], eqn, index=eqn.params["index"])
    if name == "add" and len(ins) == 2:
      if any(tuple(u.aval.shape) != tuple(v.aval.shape) for u in ins):
        self.refuse(eqn, "an addition that broadcasts", "add tensors of the same shape")
      return self.add("add", [self.value(u) for u in ins], eqn)
    if name in _ELEMENTWISE or name in _CALLS:
      self.refuse(eqn, f"{name!r} of two tensors (not a residual addition)",
                  "jaxdepth joins branches by addition (residual blocks) or by concatenation "
                  "on the last axis")
    if name == "concatenate":
      if eqn.params["dimension"] != len(v.aval.shape) - 1:
        self.refuse(eqn, "a concatenation on another axis than the last",
                    "concatenate channels: jnp.concatenate([...], axis=-1)")
      return self.add("concat", [self.value(u) for u in ins], eqn)
    if name == "reshape":
      x = ins[0]
      shape, new = tuple(x.aval.shape), tuple(v.aval.shape)
      if new == shape:
        return self.value(x)
      if len(new) == 2 and new[0] == shape[0] and new[1] == math.prod(shape[1:]):
        return self.add("flatten", [self.value(x)], eqn)
      self.refuse(eqn, f"a reshape from {shape} to {new}",
                  "only flattening every axis but the batch, x.reshape((x.shape[0], -1)), "
                  "is supported")
    if name == "reduce_window_max":
      return self.add("pool", [self.value(ins[0])], eqn, **self.window(eqn, "max"))
    if name in ("reduce_sum", "reduce_window_sum"):
      self.refuse(eqn, "a sum that is not an average",
                  "use jnp.mean(x, axis=(1, 2)) or nn.avg_pool")
    if name.startswith("random") or name in ("threefry2x32", "rng_bit_generator"):
      self.refuse(eqn, "a random operation outside nn.Dropout",
                  "use nn.Dropout for dropout, or move the noise out of the module")
    self.refuse(eqn, "an operation jaxdepth has no node for",
                "use the supported layers and glue (Conv, Dense, BatchNorm, LayerNorm, Dropout, "
                "activations, residual additions, channel concatenation, pooling, flatten); "
                "see docs/from_flax.md")


# ---------------------------------------------------------------- structure


def _dominators(ir) -> list:
  idom: list = [None] * len(ir)
  depth = [0] * len(ir)

  def lca(a, b):
    while a != b:
      if depth[a] < depth[b]:
        a, b = b, a
      a = idom[a]
    return a
  for i, n in enumerate(ir):
    if not n["inputs"]:
      continue
    d = n["inputs"][0]
    for j in n["inputs"][1:]:
      d = lca(d, j)
    idom[i], depth[i] = d, depth[d] + 1
  return idom


def _series(ir, idom, frm, to, used) -> list:
  """The items computing node ``to`` from node ``frm`` (which dominates it)."""
  items = []
  cur = to
  while cur != frm:
    n = ir[cur]
    if n["kind"] == "input":
      raise ConversionError("internal: a branch does not start at its fork (please report)")
    if cur in used:
      raise ConversionError(
          f"a value is used by two branches that join later (near module "
          f"{n['module'] or '(the top module)'}): jaxdepth converts series-parallel networks, "
          f"where each branch of a residual addition or concatenation is its own chain")
    used.add(cur)
    if n["kind"] in ("add", "concat"):
      fork = idom[cur]
      items.append((n, [_series(ir, idom, fork, i, used) for i in n["inputs"]]))
      cur = fork
    else:
      items.append((n, None))
      cur = n["inputs"][0]
  return items[::-1]


def _leaf_count(items) -> int:
  return sum(1 if parts is None and n["kind"] in ("leaf", "act") else
             sum(_leaf_count(p) for p in parts or ()) for n, parts in items)


class _Builder:
  """Turns IR items into spec nodes with unique names per scope; collects variables."""

  def __init__(self, leaves, read_vars):
    self.leaves, self.read_vars = leaves, read_vars
    self.variables: dict[str, dict] = {}
    self.paths: dict[str, str] = {}

  def nodes(self, items, prefix, taken, scope_module) -> tuple:
    out = []
    items = list(items)
    while items:
      n, parts = items.pop(0)
      if parts is None:
        node = self.leaf(n, prefix, taken, scope_module)
      else:
        hint = (n["module"].split("/")[-1] if n["module"] else "") or (
            "block" if n["kind"] == "add" else "concat")
        name = _unique(_clean(hint), taken)
        inner: set = set()
        lists = [self.nodes(p, prefix + name + S.SEP, inner, n["module"]) for p in parts]
        post = []     # activations the same module applies after the join (ResNet's relu2)
        while items and items[0][1] is None and items[0][0]["kind"] == "act" and (
            items[0][0]["module"] == n["module"]):
          post.append(items.pop(0))
        post = self.nodes(post, prefix + name + S.SEP, inner, n["module"])
        if n["kind"] == "add":
          if not lists[0] and not lists[1]:
            raise ConversionError(f"module {n['module'] or '(the top module)'} adds a tensor "
                                  f"to itself; write 2 * x inside a layer instead")
          a, b = sorted(range(2), key=lambda i: (-_leaf_count(parts[i]), i))
          node = S.Block(name, branch=lists[a], shortcut=lists[b], post=post)
        else:
          node = S.Concat(name, branches=tuple(lists), post=post)
      out.append(node)
    return tuple(out)

  def leaf(self, n, prefix, taken, scope_module):
    kind = n["kind"]
    if kind == "act":
      name = _unique(_clean(_relative(n["module"], scope_module) + "_" + n["fn"]
                            if _relative(n["module"], scope_module) else n["fn"]), taken)
      return S.Act(name, fn=n["fn"], negative_slope=n.get("negative_slope", 0.01))
    if kind == "flatten":
      return S.Flatten(_unique("flatten", taken))
    if kind == "pool":
      name = _unique(f"{n['op']}_pool", taken)
      fields = {k: n[k] for k in ("window", "stride", "padding") if k in n}
      return S.Pool(name, op=n["op"], **fields)
    leaf = self.leaves[n["index"]]
    user = "/".join(str(p) for p in leaf.path)
    name = _unique(_clean(_relative(user, scope_module) or type(leaf.module).__name__), taken)
    node, variables = _layer(leaf, name, self.read_vars(leaf))
    path = prefix + name
    self.paths[path] = user
    if variables:
      self.variables[path] = variables
    return node


def _relative(path: str, scope: str) -> str:
  if scope and path == scope:
    return ""
  if scope and path.startswith(scope + "/"):
    return path[len(scope) + 1:]
  return path


def _clean(name: str) -> str:
  return name.replace(S.SEP, "_") or "node"


def _unique(name, taken) -> str:
  out, i = name, 1
  while out in taken:
    i += 1
    out = f"{name}_{i}"
  taken.add(out)
  return out


# ------------------------------------------------------------------ layers


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


def _layer(leaf: _Leaf, name: str, vars_: dict):
  """The spec node of one layer and its variables ``{collection: {leaf: array}}``."""
  m, where = leaf.module, f"{_where(leaf.path)} ({type(leaf.module).__name__}, {leaf.line})"
  params = vars_.get("params", {})
  if leaf.kind == "conv":
    if len(leaf.in_shape) != 4:
      raise ConversionError(f"layer {where}: a convolution on an input of shape "
                            f"{leaf.in_shape}; jaxdepth converts 2-D convolutions on "
                            f"(B, H, W, C) inputs")
    kernel = _pair_of(m.kernel_size, None, "kernel_size", where)
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
      padding = jax.lax.padtype_to_pads(leaf.in_shape[1:3], kernel, strides, padding)
    groups = int(m.feature_group_count)
    features = leaf.out_shape[-1]
    node = S.Conv(name, features=features, kernel=kernel, stride=strides,
                  padding=tuple(tuple(int(a) for a in p) for p in padding), groups=groups,
                  bias=bool(m.use_bias))
    return node, {"params": _pick(params, ("kernel", "bias") if m.use_bias else ("kernel",))}
  if leaf.kind == "dense":
    node = S.Dense(name, features=leaf.out_shape[-1], bias=bool(m.use_bias))
    return node, {"params": _pick(params, ("kernel", "bias") if m.use_bias else ("kernel",))}
  if leaf.kind in ("batch_norm", "layer_norm"):
    c = leaf.in_shape[-1]
    axes = _attr(m, "axis", "reduction_axes", default=-1)
    if axes not in (-1, len(leaf.in_shape) - 1, (-1,), (len(leaf.in_shape) - 1,)) or (
        leaf.kind == "layer_norm" and _attr(m, "feature_axes", default=-1) not in (-1, (-1,))):
      raise ConversionError(f"layer {where}: normalisation over axis {axes}; jaxdepth "
                            f"normalises the last (channel) axis")
    dtype = jnp.float32
    out = {"params": {"scale": params["scale"] if m.use_scale else jnp.ones((c,), dtype),
                      "bias": params["bias"] if m.use_bias else jnp.zeros((c,), dtype)}}
    if leaf.kind == "batch_norm":
      out["batch_stats"] = _pick(vars_.get("batch_stats", {}), ("mean", "var"))
      return S.BatchNorm(name, momentum=float(m.momentum), epsilon=float(m.epsilon)), out
    return S.LayerNorm(name, epsilon=float(m.epsilon)), out
  if tuple(_attr(m, "broadcast_dims", default=()) or ()):
    raise ConversionError(f"layer {where}: dropout with broadcast_dims is not supported; use "
                          f"element-wise dropout")
  return S.Dropout(name, rate=float(m.rate)), {}


def _pick(tree, names) -> dict:
  missing = [n for n in names if n not in tree]
  if missing:
    raise ConversionError(f"the variables hold no {missing} for a layer; pass the variables "
                          f"the module was initialised with (module.init(rng, x))")
  return {n: jnp.asarray(tree[n]) for n in names}


def _linen_reader(variables):
  def read(leaf):
    out = {}
    for col, tree in variables.items():
      sub = tree
      for part in leaf.path:
        sub = sub.get(part) if isinstance(sub, Mapping) else None
        if sub is None:
          break
      if isinstance(sub, Mapping):
        out[col] = dict(sub)
    return out
  return read


def _nnx_read(leaf):
  m = leaf.module
  out: dict[str, dict] = {}
  for attr in ("kernel", "bias", "scale", "mean", "var"):
    v = getattr(m, attr, None)
    if isinstance(v, nnx.Variable) and v.get_value() is not None:
      col = "batch_stats" if isinstance(v, nnx.BatchStat) else "params"
      out.setdefault(col, {})[attr] = v.get_value()
  return out


# ------------------------------------------------------------------ front door


def _check_input(sample_input):
  if not hasattr(sample_input, "shape") or not hasattr(sample_input, "dtype"):
    raise ConversionError(f"sample_input must be an array (a batch of inputs), got "
                          f"{type(sample_input).__name__}")
  x = jnp.asarray(sample_input)
  if x.ndim < 2 or x.shape[0] < 1:
    raise ConversionError(f"sample_input of shape {tuple(x.shape)} has no batch axis; pass a "
                          f"batch, e.g. x[None] for one example of shape {tuple(x.shape)}")
  if not jnp.issubdtype(x.dtype, jnp.floating):
    x = x.astype(jnp.float32)
  return x


def _convert(closed, leaves, read_vars, x, root, name) -> Converted:
  jaxpr = closed.jaxpr
  if len(jaxpr.outvars) != 1:
    raise ConversionError(f"the module returns {len(jaxpr.outvars)} arrays; jaxdepth converts "
                          f"modules returning one array (the logits)")
  calls: dict[tuple, int] = {}
  for leaf in leaves:
    calls[leaf.path] = calls.get(leaf.path, 0) + 1
    if calls[leaf.path] == 2:
      raise ConversionError(
          f"layer {_where(leaf.path)} ({type(leaf.module).__name__}) is called more than once "
          f"(again at {leaf.line}): a spec node owns its weights, so shared layers cannot be "
          f"converted; give each call its own layer")
  graph = _Graph(closed, leaves, root)
  out = graph.value(jaxpr.outvars[0])
  ir = graph.ir
  start = next(i for i, n in enumerate(ir) if n["kind"] == "input")
  idom = _dominators(ir)
  items = _series(ir, idom, start, out, set())
  builder = _Builder(leaves, read_vars)
  layers = builder.nodes(items, "", set(), "")
  if not layers:
    raise ConversionError("the module computes the identity; nothing to convert")
  try:
    spec = S.Spec(tuple(x.shape[1:]), layers, name=name)
  except S.SpecError as e:
    raise ConversionError(f"the converted network is not a valid spec ({e}); please report "
                          f"this with the module") from e
  variables: dict[str, dict] = {}
  for path, entry in builder.variables.items():
    for col, leaves_ in entry.items():
      d = variables.setdefault(col, {})
      *parents, last = path.split(S.SEP)
      for part in parents:
        d = d.setdefault(part, {})
      d[last] = leaves_
  return Converted(spec, variables, builder.paths)


def _verify(conv: Converted, expected, x, tolerance):
  got = network.forward(conv.spec, conv.variables, x).logits
  expected = np.asarray(expected, np.float64)
  err = float(np.max(np.abs(np.asarray(got, np.float64) - expected))) if expected.size else 0.0
  scale = max(1.0, float(np.max(np.abs(expected))) if expected.size else 1.0)
  if not err <= tolerance * scale:
    raise ConversionError(
        f"the converted network differs from the module by {err:.3g} on the sample input "
        f"(tolerance {tolerance * scale:.3g}): the module does something the trace did not "
        f"capture (e.g. a layer called with non-default arguments); please report it with the "
        f"module")


def from_flax(module, variables=None, sample_input=None, *, train_kwarg: str = "train",
              rngs=None, name: str | None = None, check: bool = True,
              tolerance: float = 1e-5) -> Converted:
  """A Linen module (or an NNX module: see :func:`from_nnx`) as ``(spec, variables, paths)``.

  Args:
    module: a ``flax.linen.Module`` whose ``__call__(x[, train])`` returns one array.
    variables: its variables (``module.init(rng, x)``: ``params``, ``batch_stats``).
      ``None`` for an NNX module.
    sample_input: a batch ``(B, *input_shape)``; the spec's input shape is its
      shape without the batch axis.
    train_kwarg: the name of the module's train-mode argument, passed ``False``
      while tracing if ``__call__`` has it (BatchNorm running statistics,
      deterministic dropout).
    rngs: rng streams the module needs in eval mode (rarely any).
    name: the spec's name (default: the module's class name).
    check: run the spec on ``sample_input`` and refuse a result that differs
      from the module by more than ``tolerance`` (relative to ``max(1, max|y|)``).
    tolerance: see ``check``.

  Returns:
    :class:`Converted` ``(spec, variables, paths)``: the spec equals the module
    in eval and train mode (BatchNorm statistics included; dropout masks are
    drawn from other streams), ``variables`` are keyed by the spec's paths and
    ``paths`` maps each layer node's spec path to the user's module path
    (:func:`to_user_variables` uses it to hand weights back).

  Raises:
    ConversionError: an operation or layer that cannot be represented (with the
      module path, the source line and what to do), a module that needs an rng
      stream not passed, or a sample input the module cannot run on.
  """
  if isinstance(module, nnx.Module):
    if variables is not None and sample_input is None:
      variables, sample_input = None, variables
    if variables is not None:
      raise ConversionError("an NNX module holds its own variables: call "
                            "from_flax(model, sample_input) or from_nnx(model, sample_input)")
    return from_nnx(module, sample_input, name=name, check=check, tolerance=tolerance)
  if not isinstance(module, nn.Module):
    raise ConversionError(f"from_flax converts flax.linen or flax.nnx modules, got "
                          f"{type(module).__name__}")
  if not isinstance(variables, Mapping) or "params" not in variables:
    raise ConversionError("variables must be the module's variables dict, module.init(rng, x) "
                          "({'params': ..., 'batch_stats': ...})")
  x = _check_input(sample_input)
  closed, leaves = _trace_linen(module, variables, x, train_kwarg, rngs)
  root = type(module).__name__
  conv = _convert(closed, leaves, _linen_reader(variables), x, root, name or root)
  if check:
    kwargs = {}
    params = inspect.signature(module.__call__).parameters
    if train_kwarg in params:
      kwargs[train_kwarg] = False
    _verify(conv, module.apply(variables, x, rngs=rngs, **kwargs), x, tolerance)
  return conv


def from_nnx(model, sample_input, *, name: str | None = None, check: bool = True,
             tolerance: float = 1e-5) -> Converted:
  """An ``nnx.Module`` as ``(spec, variables, paths)``; see :func:`from_flax`.

  The model is traced on a copy in eval mode (``model.eval()``), so the user's
  model and its flags are left as they were.
  """
  if not isinstance(model, nnx.Module):
    raise ConversionError(f"from_nnx converts flax.nnx modules, got {type(model).__name__}")
  x = _check_input(sample_input)
  closed, leaves = _trace_nnx(model, x)
  root = type(model).__name__
  conv = _convert(closed, leaves, _nnx_read, x, root, name or root)
  if check:
    copy = nnx.clone(model)
    copy.eval()
    _verify(conv, copy(x), x, tolerance)
  return conv


def to_user_variables(variables, paths: Mapping[str, str], like) -> tuple[dict, list[str]]:
  """Hands spec variables back to the user's layout, where the structure allows.

  Args:
    variables: spec variables (after training, or after surgery).
    paths: :attr:`Converted.paths`.
    like: the user's variables as a nested dict (Linen: ``module.init(...)``;
      NNX: ``nnx.to_pure_dict(nnx.state(model))``, with ``batch_stats`` leaves
      where the model keeps them).

  Returns:
    ``(new, skipped)``: a copy of ``like`` with every leaf the spec still has at
    the same shape replaced, and the spec paths that could not go back (the
    node is gone or changed shape: surgery merged or cut it).
  """
  def to_dict(t):
    return {k: to_dict(v) for k, v in t.items()} if isinstance(t, Mapping) else t
  out = to_dict(like)
  flat = {}
  for col, tree in variables.items():
    stack = [((), tree)]
    while stack:
      key, t = stack.pop()
      if isinstance(t, Mapping):
        stack.extend((key + (k,), v) for k, v in t.items())
      else:
        flat[(col, S.SEP.join(key[:-1]), key[-1])] = t
  skipped = set()
  for (col, spath, leaf), value in flat.items():
    upath = paths.get(spath)
    target = out.get(col, out) if col in out else out
    node = target
    for part in (upath.split("/") if upath else []):
      node = node.get(part) if isinstance(node, dict) else None
      if node is None:
        break
    if upath is None or not isinstance(node, dict) or leaf not in node or np.shape(
        node[leaf]) != np.shape(value):
      skipped.add(spath)
      continue
    node[leaf] = value
  return out, sorted(skipped)


# ---------------------------------------------------------------- from a file


def is_file_reference(name) -> bool:
  """Whether a model name is ``path/to/file.py:ClassName`` (a user's module)."""
  return isinstance(name, str) and ".py:" in name


def load_class(reference: str):
  """The class named by ``path/to/file.py:ClassName`` (the file is imported, not parsed)."""
  import importlib.util  # pylint: disable=import-outside-toplevel
  import pathlib  # pylint: disable=import-outside-toplevel
  path, _, attr = reference.rpartition(":")
  file = pathlib.Path(path)
  if not file.is_file():
    raise ConversionError(f"model {reference!r}: no file {path!r}; give path/to/file.py:ClassName")
  module_spec = importlib.util.spec_from_file_location(f"jaxdepth_user_{file.stem}", file)
  module = importlib.util.module_from_spec(module_spec)
  try:
    module_spec.loader.exec_module(module)
  except Exception as e:  # pylint: disable=broad-except   # the user's file: say which
    raise ConversionError(f"model {reference!r}: importing {path!r} failed: "
                          f"{type(e).__name__}: {e}") from e
  cls = getattr(module, attr, None)
  if not isinstance(cls, type) or not issubclass(cls, (nn.Module, nnx.Module)):
    found = sorted(k for k, v in vars(module).items() if isinstance(v, type) and issubclass(
        v, (nn.Module, nnx.Module)) and v.__module__ == module.__name__)
    raise ConversionError(f"model {reference!r}: {path!r} defines no Flax module class "
                          f"{attr!r}; its module classes: {found or 'none'}")
  return cls


def from_file(reference: str, *, input_shape, num_classes: int, seed: int = 0) -> Converted:
  """Builds, initialises and converts the module class named by ``file.py:ClassName``.

  The class is constructed with ``num_classes=`` when it takes it (a Linen field
  or an NNX ``__init__`` argument), else with no arguments (NNX: ``rngs=``
  too), initialised on zeros of ``(2, *input_shape)`` with ``seed`` and
  converted by :func:`from_flax`.
  """
  cls = load_class(reference)
  kwargs = {}
  if issubclass(cls, nn.Module):
    if "num_classes" in {f.name for f in dataclasses.fields(cls)}:
      kwargs["num_classes"] = num_classes
  else:
    names = inspect.signature(cls.__init__).parameters
    if "num_classes" in names:
      kwargs["num_classes"] = num_classes
    if "rngs" in names:
      kwargs["rngs"] = nnx.Rngs(seed)
  try:
    module = cls(**kwargs)
  except TypeError as e:
    raise ConversionError(f"model {reference!r}: {cls.__name__}({', '.join(kwargs)}) failed "
                          f"({e}); the class must be constructible with no arguments or with "
                          f"num_classes") from e
  x = jnp.zeros((2, *input_shape), jnp.float32)
  if isinstance(module, nnx.Module):
    return from_nnx(module, x)
  keys = dict(zip(("params", "dropout"), jax.random.split(jax.random.key(seed))))
  try:
    variables = module.init(keys, x)
  except Exception as e:  # pylint: disable=broad-except
    raise _error_of(e, x.shape, f"module {cls.__name__}") from e
  return from_flax(module, variables, x)
