"""The traced program of a Flax module as a value graph, cut into a spec's shape.

:mod:`jaxdepth.convert` traces a module with every layer call replaced by one
equation of :data:`layer_p`; this module reads the rest, the glue:

* :class:`Graph` walks back from the output. A value is either a *source* (the
  input, a layer output, a join, a reshape or pooling) or an element-wise
  function of exactly one source; such a chain is evaluated in float64 numpy on
  a grid of 4001 points in ``[-8, 8]`` and matched against the site kinds
  (:data:`jaxdepth.spec.ACTIVATIONS`), or against ``c x`` (the ``1/n`` of an
  average; a chain from a sum that goes on after that division is cut there, the
  rest being an activation of the average; a window sum divided by counts that
  are all the window's size, ``count_include_pad=False`` with nothing padded, is
  that average too). The result is a small IR:
  ``input``, ``leaf``, ``act``, ``add``, ``concat``, ``flatten``, ``tokens``,
  ``pool``, ``position_embedding``, ``class_token`` and ``select_token`` nodes
  with their inputs.
* A module's own parameter (``self.param``, ``nnx.Param``) enters the trace as
  a constant; :meth:`Graph.parameter` names it (by the identity of the array
  the trace closed over) and checks that what the code does to it only copies
  it: it is run on ``arange`` values in place of the parameter, so the result
  must be the parameter's numbers in row-major order, once per example. That
  is what a learned position embedding added to the tokens and a class token
  concatenated in front of them are.
* :func:`dominators` and :func:`series` cut that DAG into nested chains: the
  fork of a join is its immediate dominator (Cooper, Harvey and Kennedy's
  intersection on a DAG in topological order), the paths from the fork to each
  operand are the branches; a node met twice means the network is not
  series-parallel and is refused.

Everything it cannot read raises :class:`ConversionError` with the operation,
the module path (the equation's name stack), the user's source line and what
to do.
"""
from __future__ import annotations

import math
import os
from typing import Any

import flax
import jax
import jax.numpy as jnp
import numpy as np
from jax._src import source_info_util  # the user's source line of a traced equation
from jax.extend import core as jcore

from jaxdepth import spec as S

__all__ = ["ConversionError", "layer_p", "Graph", "dominators", "series", "leaf_count",
           "inline_checkpoints"]


class ConversionError(ValueError):
  """A module that cannot be converted; the message says what, where and what to do."""


# One opaque equation per intercepted layer call: ``layer_p(x, index=i)`` stands for
# layer ``i``'s output, so the layer's own computation is dead code in the trace.
layer_p = jcore.Primitive("jaxdepth_layer")
layer_p.def_abstract_eval(lambda x, *, index, shape, dtype: jax.core.ShapedArray(shape, dtype))
layer_p.def_impl(lambda x, *, index, shape, dtype: jnp.zeros(shape, dtype))


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
# Dense where activations bend, and out to ±1e6, so that a clamp far from 0 (a stability
# clip(x, -10, 10), which is no site) is not taken for the identity or a ReLU.
_FAR = np.logspace(1.0, 6.0, 26)
_GRID = np.concatenate([-_FAR[::-1], np.linspace(-8.0, 8.0, 4001), _FAR])
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


_LIBRARIES = tuple(os.path.dirname(os.path.abspath(m.__file__)) for m in (jax, flax)) + (
    os.path.dirname(os.path.abspath(__file__)),)


def _line(source_info) -> str:
  """``file:line:column (function)`` of the innermost frame of the user's own code (outside
  jax, flax, jaxdepth and installed packages) that made an equation; jax's own guess, which
  stops at Flax (nn.avg_pool's pooling.py), when there is none."""
  for frame in source_info_util.user_frames(source_info.traceback):
    name = os.path.abspath(frame.file_name)
    if not name.startswith(_LIBRARIES) and "site-packages" not in name:
      column = f":{frame.start_column}" if frame.start_column else ""
      return f"{frame.file_name}:{frame.start_line}{column} ({frame.function_name})"
  return source_info_util.summarize(source_info)


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


# Operations that only copy a parameter (the class token broadcast over the batch, a
# (1, N, C) position embedding reshaped or converted), run on a probe in numpy.
_COPIES = frozenset({"broadcast_in_dim", "reshape", "tile", "squeeze", "convert_element_type",
                     "copy", "copy_p"})


def _copy_numpy(eqn, x: np.ndarray) -> np.ndarray:
  name, p = eqn.primitive.name, eqn.params
  if name == "broadcast_in_dim":
    shape = tuple(p["shape"])
    expanded = [1] * len(shape)
    for i, d in enumerate(p["broadcast_dimensions"]):
      expanded[d] = x.shape[i]
    return np.broadcast_to(x.reshape(expanded), shape)
  if name == "reshape":
    return x.reshape(tuple(p["new_sizes"]))
  if name == "tile":
    return np.tile(x, tuple(p["reps"]))
  if name == "squeeze":
    return np.squeeze(x, tuple(p["dimensions"]))
  return x


def _primitives(eqn):
  yield eqn.primitive.name
  inner = _inner(eqn) if eqn.primitive.name in _CALLS else None
  for e in inner.eqns if inner is not None else ():
    yield from _primitives(e)


def _is_literal(v) -> bool:
  return isinstance(v, jcore.Literal)


# What jax.checkpoint (nn.remat) leaves in a trace: a call whose body holds the layers.
_CHECKPOINTS = frozenset({"remat2", "remat", "checkpoint"})


def inline_checkpoints(closed):
  """``closed`` with every ``jax.checkpoint`` call (``nn.remat``) replaced by its body.

  Rematerialisation changes how gradients are computed, not what the network is; the
  body's equations keep their source lines and module paths."""
  if not any(e.primitive.name in _CHECKPOINTS for e in closed.jaxpr.eqns):
    return closed
  env: dict = {}

  def read(a):
    return a if _is_literal(a) else env.get(a, a)

  def emit(eqns, out):
    for eqn in eqns:
      invars = [read(v) for v in eqn.invars]
      body = eqn.params.get("jaxpr") if eqn.primitive.name in _CHECKPOINTS else None
      if body is not None and not body.constvars:
        env.update(zip(body.invars, invars))
        emit(body.eqns, out)
        env.update((o, read(v)) for o, v in zip(eqn.outvars, body.outvars))
        continue
      outvars = [type(v)(v.aval) for v in eqn.outvars]   # fresh: a body may be inlined twice
      env.update(zip(eqn.outvars, outvars))
      out.append(eqn.replace(invars=invars, outvars=outvars))

  eqns: list = []
  emit(closed.jaxpr.eqns, eqns)
  jaxpr = closed.jaxpr.replace(eqns=eqns, outvars=[read(v) for v in closed.jaxpr.outvars])
  return closed.replace(jaxpr=jaxpr)


class Graph:
  """The traced program as a value graph; :meth:`node` builds the IR lazily."""

  def __init__(self, closed, leaves, root: str, params=None):
    """``params``: ``{id(array): (collection, user path)}`` of the module's variables."""
    self.jaxpr = closed.jaxpr
    self.params = params or {}
    self.params_used: dict = {}
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
    self._uses: dict | None = None

  # -- where -------------------------------------------------------------------

  def module_of(self, eqn) -> str:
    stack = str(eqn.source_info.name_stack)
    parts = [p for p in stack.split("/") if p]
    if parts and parts[0] == self.root:
      parts = parts[1:]
    return "/".join(parts)

  def refuse(self, eqn, what: str, todo: str):
    where = self.module_of(eqn) or "(the top module)"
    line = _line(eqn.source_info)
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

  def ancestry(self, v, after_layers: bool = False) -> list:
    """The equations ``v`` is computed by, innermost last (empty for inputs and constants).

    With ``after_layers``, only the glue between the layers' outputs and ``v``: the
    equations that depend on the input and come after every layer they read.
    """
    seen, order = set(), []

    def rec(u):
      if _is_literal(u) or u not in self.producer or (
          after_layers and not self.depends_on_input(u)):
        return
      i, eqn = self.producer[u]
      if i in seen or after_layers and eqn.primitive is layer_p:
        return
      seen.add(i)
      for w in eqn.invars:
        rec(w)
      order.append(eqn)
    rec(v)
    return order

  def refuse_preprocessing(self):
    """Refuses preprocessing of the module's input before any layer: arithmetic with a
    constant (scaling, normalising) and a transposition of the image (NCHW to NHWC)."""
    reached = {self.input}
    for eqn in self.jaxpr.eqns:
      if not any(not _is_literal(u) and u in reached for u in eqn.invars):
        continue
      name = eqn.primitive.name
      if name in ("convert_element_type", "copy", "copy_p"):
        reached.update(eqn.outvars)
      elif name == "transpose" and len(eqn.invars[0].aval.shape) == 4:
        self.refuse(eqn, f"a transposition of the module's input ({tuple(eqn.invars[0].aval.shape)}"
                    f" to {tuple(eqn.outvars[0].aval.shape)}, e.g. NCHW to NHWC)",
                    "jaxdepth's images are (B, H, W, C): convert the module without the "
                    "transposition, with a sample batch of that layout")
      elif name in ("add", "sub", "mul", "div") and not all(
          self.depends_on_input(u) for u in eqn.invars):
        self.refuse(eqn, f"arithmetic on the module's input before its first layer "
                    f"({name!r} with a constant: input scaling or normalisation)",
                    "scale and normalise the inputs outside the module (jaxdepth's image "
                    "datasets already come scaled to [0, 1] and normalised) and convert the "
                    "module without it")

  def refuse_probabilities(self, v):
    """Refuses a softmax, log-softmax or sigmoid applied after the last layer.

    A softmax is ``exp`` next to a reduction (its normaliser); a sigmoid is ``logistic``
    as the very last operation (SiLU, ``x * logistic(x)``, ends in a product).
    """
    eqns = self.ancestry(v, after_layers=True)
    names = {name for eqn in eqns for name in _primitives(eqn)}
    if "exp" in names and names & {"reduce_sum", "reduce_max"}:
      what = "a softmax or log-softmax"
    elif eqns and eqns[-1].primitive.name == "logistic":
      what = "a sigmoid"
    else:
      return
    self.refuse(eqns[-1], f"{what} of the last layer's output",
                "return the logits (the last layer's output): jaxdepth's losses and "
                "accuracies take logits and apply the softmax themselves")

  def depends_on_input(self, v) -> bool:
    if _is_literal(v):
      return False
    if v not in self._dep:
      self._dep[v] = v is self.input or (v in self.producer and any(
          self.depends_on_input(u) for u in self.producer[v][1].invars))
    return self._dep[v]

  def refuse_random(self, eqns):
    """Refuses the first random operation among ``eqns``, if any."""
    random = [e for e in eqns if any("random" in name or name in (
        "threefry2x32", "rng_bit_generator", "rng_uniform") for name in _primitives(e))]
    if random:
      self.refuse(random[0], "a random operation outside nn.Dropout",
                  "use nn.Dropout for dropout, or move the noise out of the module")

  def value(self, v) -> int:
    """IR node of any value: a source, or an element-wise function of one source."""
    if not self.depends_on_input(v):
      eqns = self.ancestry(v)
      if not eqns:
        raise ConversionError("the module returns a constant or adds a constant array outside "
                              "a layer; keep parameters inside Conv, Dense, BatchNorm or "
                              "LayerNorm")
      self.refuse_random(eqns)
      self.refuse(eqns[-1], "a tensor that does not depend on the input",
                  "constants must live inside supported layers (Conv, Dense, BatchNorm, ...)")
    (s,) = self.sources(v)
    if s is v:
      return self.node(v)
    if v in self._memo:
      return self._memo[v]
    average = self.average_in(v, s)
    if average is not None:
      # An activation of an average (LeNet's relu(avg_pool(x)), gelu(jnp.mean(x, (1, 2)))):
      # the pool is its division, the rest of the chain the activation.
      kind, val = self.identify(v, average)
      if kind == "act":
        self.refuse_gradient_ops(self.region(v, average), inside_calls=False)
        out = self.add("act", [self.value(average)], self.region(v, average)[-1], **val)
        self._memo[v] = out
        return out
    kind, val = self.identify(v, s)
    self.refuse_gradient_ops(self.region(v, s), inside_calls=kind != "act")
    pool = self._sum(s) if kind == "identity" else None
    if pool is not None and self._pools(pool) and self._summed(pool) == 1:
      out = self.pool_of_scale(v, s, 1.0)     # the mean of a 1x1 map: a sum divided by 1
    elif kind == "identity":
      out = self.value(s)
    elif kind == "act":
      out = self.add("act", [self.value(s)], self.region(v, s)[-1], **val)
    else:
      out = self.pool_of_scale(v, s, val)
    self._memo[v] = out
    return out

  def refuse_gradient_ops(self, eqns, inside_calls: bool = True):
    """Refuses a ``stop_gradient`` or a ``jax.custom_vjp`` among ``eqns``: forward they
    compute the identity, which the spec would keep, but they change the gradients, which
    the spec would not. ``inside_calls=False`` (the chain of a recognised activation) looks
    at the chain's own equations only, not into the functions it calls (a library
    activation's own implementation)."""
    for eqn in eqns:
      names = set(_primitives(eqn)) if inside_calls else {eqn.primitive.name}
      for name, what in (("stop_gradient", "a jax.lax.stop_gradient"),
                         ("custom_vjp_call", "a jax.custom_vjp function (e.g. a gradient "
                          "reversal)")):
        if name in names:
          self.refuse(eqn, f"{what}, which changes the gradients of what it computes",
                      "the spec's nodes take their ordinary gradients, so leave it out; to "
                      "freeze layers, leave them out of the optimizer's updates (e.g. "
                      "optax.multi_transform with optax.set_to_zero for their parameters) "
                      "rather than stopping gradients in the module")

  def _sum(self, s):
    """The ``reduce_sum`` or ``reduce_window_sum`` equation ``s`` is (or, with its reduced axes
    put back as ones, ``keepdims=True``, comes from), else None."""
    if _is_literal(s) or s not in self.producer:
      return None
    _, eqn = self.producer[s]
    if eqn.primitive.name in ("broadcast_in_dim", "reshape") and self._unit_axes_only(eqn):
      inner = eqn.invars[0]
      if _is_literal(inner) or inner not in self.producer:
        return None
      eqn = self.producer[inner][1]
    return eqn if eqn.primitive.name in ("reduce_sum", "reduce_window_sum") else None

  @staticmethod
  def _summed(eqn) -> int:
    """How many elements each element of the sum ``eqn`` (:meth:`_sum`) adds up."""
    if eqn.primitive.name == "reduce_window_sum":
      return math.prod(eqn.params["window_dimensions"])
    return math.prod(eqn.invars[0].aval.shape) // max(1, math.prod(eqn.outvars[0].aval.shape))

  @staticmethod
  def _pools(eqn) -> bool:
    """Whether the sum ``eqn`` (:meth:`_sum`) adds up what an average pool does: a window,
    or the (H, W) of a map or the tokens; a sum over other axes (the channels, one of H and
    W) is no average pool, even where it adds up one element."""
    return eqn is not None and (eqn.primitive.name == "reduce_window_sum" or tuple(
        eqn.params["axes"]) == tuple(range(1, len(eqn.invars[0].aval.shape) - 1)))

  def average_in(self, v, s):
    """``s / n`` (or ``s * c``) when ``s`` is a sum (``reduce_sum``, ``reduce_window_sum``, or
    the sum with kept axes) and the element-wise chain from ``s`` to ``v`` starts with that
    division by a constant and goes on after it; else None.

    An average ends in an element-wise division, so without this cut the pool's division
    and the activation after it would be identified as one function (relu(t / 4) is no
    site)."""
    eqn = self._sum(s)
    if eqn is None:
      return None
    if not self._pools(eqn):
      return None
    readers = [e for e in self.region(v, s) if any(u is s for u in e.invars)]
    if len(readers) != 1:
      return None
    (first,) = readers
    name, ins = first.primitive.name, first.invars
    if (name not in ("mul", "div") or len(ins) != 2 or len(first.outvars) != 1
        or name == "div" and ins[0] is not s):
      return None
    other = ins[1] if ins[0] is s else ins[0]
    if other is s or self.depends_on_input(other) or first.outvars[0] is v:
      return None
    return first.outvars[0]

  def pool_of_scale(self, v, s, c) -> int:
    eqn_v = self.region(v, s)[-1]
    if s in self.producer:
      _, eqn = self.producer[s]
      if eqn.primitive.name in ("broadcast_in_dim", "reshape") and self._unit_axes_only(eqn):
        # jnp.mean(..., keepdims=True): the sum with its reduced axes put back as ones. The
        # spec's pool gives (B, C), so the ones must be dropped again by every use.
        inner = eqn.invars[0]
        if not _is_literal(inner) and inner in self.producer:
          kept = self.unflattened_uses(v)
          if kept:
            reader = next((u for u in kept if u.primitive is layer_p), None)
            by = (f"layer {self.leaves[reader.params['index']].where}" if reader is not None
                  else repr(kept[0].primitive.name))
            self.refuse(eqn_v, f"a global average pool with keepdims=True, read as "
                        f"{tuple(v.aval.shape)} by {by}",
                        "pool without keepdims, jnp.mean(x, axis=(1, 2)), which gives (B, C), "
                        "and read it with a Dense (a 1x1 Conv on the pooled map is one)")
          eqn = self.producer[inner][1]
      name = eqn.primitive.name
      x = eqn.invars[0]
      spatial = tuple(range(1, len(x.aval.shape) - 1))    # (H, W) of a map, N of tokens
      if name == "reduce_sum" and len(spatial) in (1, 2) and tuple(eqn.params["axes"]) == spatial:
        if math.isclose(c * math.prod(x.aval.shape[1:-1]), 1.0, rel_tol=1e-6):
          return self.add("pool", [self.value(x)], eqn, op="global_avg")
      if name == "reduce_window_sum":
        pool = self.window(eqn, "avg")
        if math.isclose(c * math.prod(pool["window"]), 1.0, rel_tol=1e-6):
          return self.add("pool", [self.value(x)], eqn, **pool)
    self.refuse(eqn_v, f"a multiplication by the constant {c:g}",
                "scale inside a layer (e.g. fold it into the next Dense or Conv); the averages "
                "jaxdepth has nodes for are jnp.mean over (H, W) of (B, H, W, C) or over the "
                "tokens of (B, N, C), and nn.avg_pool")

  def average_by_counts(self, eqn, window_sum, counts) -> int | None:
    """A window sum divided by an array of counts (``nn.avg_pool(...,
    count_include_pad=False)``: the sum of a window of ones) as an average pool when every
    count is the window's size, i.e. nothing is padded; refuses it over padding. None for
    another array over a window sum without padding (the caller refuses a scale)."""
    pool = self.window(window_sum, "avg")
    value = self.constant_value(counts)
    if value is not None and np.allclose(value, math.prod(pool["window"]), rtol=1e-6):
      return self.add("pool", [self.value(window_sum.invars[0])], window_sum, **pool)
    if any(q != (0, 0) for q in pool["padding"]):
      self.refuse(eqn, f"an average pool over padding {pool['padding']} that leaves the "
                  f"padding out (nn.avg_pool(..., count_include_pad=False)): a window at the "
                  f"border is divided by fewer elements than the others",
                  "the spec's avg pool divides every window by its size: pass "
                  "count_include_pad=True (the default), or padding='VALID'")
    return None

  def constant_value(self, u) -> np.ndarray | None:
    """The value of the input-independent ``u``, run by jax from the trace's constants
    (None where that fails)."""
    env = {}
    read = lambda w: w.val if _is_literal(w) else env[w] if w in env else self.consts[w]
    try:
      for e in self.ancestry(u):
        outs = e.primitive.bind(*(read(w) for w in e.invars), **e.params)
        for var, val in zip(e.outvars, outs if e.primitive.multiple_results else [outs]):
          env[var] = val
      return np.asarray(read(u))
    except Exception:  # pylint: disable=broad-except   # not computable here: not a count
      return None

  def unflattened_uses(self, v) -> list:
    """The equations reading ``v`` (B, 1, 1, C) before its ones are dropped again: its uses
    but reshapes and squeezes to (B, C), and through element-wise functions of ``v`` alone
    (an activation), their results' uses."""
    kept = []
    for u in self.uses(v):
      if (u.primitive.name in ("reshape", "squeeze") and len(u.outvars[0].aval.shape) == 2
          and self._unit_axes_only(u)):
        continue
      if _elementwise(u) and len(u.outvars) == 1 and all(
          w is v or not self.depends_on_input(w) for w in u.invars):
        kept.extend(self.unflattened_uses(u.outvars[0]))
      else:
        kept.append(u)
    return kept

  def uses(self, v) -> list:
    """The equations that read ``v``."""
    if self._uses is None:
      self._uses = {}
      for eqn in self.jaxpr.eqns:
        for u in eqn.invars:
          if not _is_literal(u):
            self._uses.setdefault(u, []).append(eqn)
    return self._uses.get(v, [])

  @staticmethod
  def _unit_axes_only(eqn) -> bool:
    """Whether ``eqn`` only inserts or drops axes of length one."""
    squeeze = lambda shape: tuple(d for d in shape if d != 1)
    return (squeeze(eqn.invars[0].aval.shape) == squeeze(eqn.outvars[0].aval.shape)
            and math.prod(eqn.invars[0].aval.shape) == math.prod(eqn.outvars[0].aval.shape))

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
    if eqn.primitive is layer_p:
      return self.add("leaf", [self.value(ins[0])], eqn, index=eqn.params["index"])
    if name == "add" and len(ins) == 2:
      if not all(self.depends_on_input(u) for u in ins):
        return self.position_embedding(eqn, v)
      if any(tuple(u.aval.shape) != tuple(v.aval.shape) for u in ins):
        self.refuse(eqn, "an addition that broadcasts", "add tensors of the same shape")
      return self.add("add", [self.value(u) for u in ins], eqn)
    if name in ("mul", "div") and not all(self.depends_on_input(u) for u in ins):
      (scale,) = [u for u in ins if not self.depends_on_input(u)]
      if name == "div" and scale is ins[1] and ins[0] in self.producer and (
          self.producer[ins[0]][1].primitive.name == "reduce_window_sum"):
        pool = self.average_by_counts(eqn, self.producer[ins[0]][1], scale)
        if pool is not None:
          return pool
      named = self._parameter(scale)
      what = (f"the parameter {named[0]} of shape {named[1]}" if named else
              f"an array of shape {tuple(scale.aval.shape)}")
      self.refuse(eqn, f"a tensor scaled by {what} outside a layer (e.g. a layer scale)",
                  "fold the scale into the layer before it (multiply its kernel and bias "
                  "by it), or drop it")
    if name in _ELEMENTWISE or name in _CALLS:
      self.refuse(eqn, f"{name!r} of two tensors (not a residual addition)",
                  "jaxdepth joins branches by addition (residual blocks) or by concatenation "
                  "on the last axis")
    if name == "concatenate":
      if len(v.aval.shape) == 3 and eqn.params["dimension"] == 1:
        return self.class_token(eqn, v)
      if eqn.params["dimension"] != len(v.aval.shape) - 1:
        self.refuse(eqn, "a concatenation on another axis than the last",
                    "concatenate channels: jnp.concatenate([...], axis=-1)")
      return self.add("concat", [self.value(u) for u in ins], eqn)
    if name in ("squeeze", "reshape") and self.token_slice(ins[0]) is not None and (
        tuple(v.aval.shape) == (ins[0].aval.shape[0], ins[0].aval.shape[2])):
      slice_eqn, index = self.token_slice(ins[0])
      return self.add("select_token", [self.value(slice_eqn.invars[0])], eqn, index=index)
    if name == "slice" or name in ("squeeze", "reshape") and not _is_literal(ins[0]) and (
        ins[0] in self.producer and self.producer[ins[0]][1].primitive.name == "slice"):
      cut = eqn if name == "slice" else self.producer[ins[0]][1]
      strides = cut.params.get("strides") or ()
      step = f" in steps of {tuple(strides)}" if any(s != 1 for s in strides) else ""
      self.refuse(cut, f"a slice of a tensor of shape {tuple(cut.invars[0].aval.shape)} (from "
                  f"{tuple(cut.params['start_indices'])} to {tuple(cut.params['limit_indices'])}"
                  f"{step})",
                  "the one slice jaxdepth has a node for is one token of a (B, N, C) sequence, "
                  "x[:, i] (the class-token readout, SelectToken); subsample a map with a "
                  "strided Conv or nn.max_pool / nn.avg_pool")
    if name in ("gather", "dynamic_slice"):
      self.refuse(eqn, "indexing by an array or a traced index",
                  "select a token with a Python int, x[:, 0] (SelectToken); other indexing has "
                  "no node")
    if name == "squeeze" and len(v.aval.shape) == 2 and self._unit_axes_only(eqn):
      x = ins[0]      # (B, 1, 1, C) -> (B, C): a flatten
      return self.add("flatten", [self.value(x)], eqn)
    if name == "reshape":
      x = ins[0]
      shape, new = tuple(x.aval.shape), tuple(v.aval.shape)
      if new == shape:
        return self.value(x)
      if len(new) == 2 and new[0] == shape[0] and new[1] == math.prod(shape[1:]):
        return self.add("flatten", [self.value(x)], eqn)
      if len(shape) == 4 and new == (shape[0], shape[1] * shape[2], shape[3]):
        return self.add("tokens", [self.value(x)], eqn)
      self.refuse(eqn, f"a reshape from {shape} to {new}",
                  "only flattening every axis but the batch, x.reshape((x.shape[0], -1)), "
                  "and an image as tokens, x.reshape((B, H * W, C)), are supported")
    if name == "reduce_window_max":
      return self.add("pool", [self.value(ins[0])], eqn, **self.window(eqn, "max"))
    if name in ("reduce_sum", "reduce_window_sum"):
      self.refuse(eqn, "a sum that is not an average",
                  "use jnp.mean(x, axis=(1, 2)) of an image, jnp.mean(x, axis=1) of tokens, "
                  "or nn.avg_pool")
    if name.startswith("random") or name in ("threefry2x32", "rng_bit_generator"):
      self.refuse(eqn, "a random operation outside nn.Dropout",
                  "use nn.Dropout for dropout, or move the noise out of the module")
    self.refuse(eqn, "an operation jaxdepth has no node for",
                "use the supported layers and glue (Conv, Dense, BatchNorm, LayerNorm, "
                "GroupNorm, Dropout, self-attention, activations, residual additions, channel "
                "concatenation, pooling, flatten, image to tokens, class token, position "
                "embedding, x[:, i]); see docs/from_flax.md")

  # -- tokens: x[:, i], class token, position embedding ----------------------------

  def token_slice(self, u):
    """``(slice equation, i)`` if ``u`` is ``x[:, i:i + 1]`` of a sequence ``x`` (B, N, C)."""
    if _is_literal(u) or u not in self.producer:
      return None
    _, eqn = self.producer[u]
    if eqn.primitive.name != "slice":
      return None
    shape = tuple(eqn.invars[0].aval.shape)
    start, limit = tuple(eqn.params["start_indices"]), tuple(eqn.params["limit_indices"])
    strides = eqn.params.get("strides") or (1,) * len(shape)
    if (len(shape) != 3 or any(s != 1 for s in strides) or start[0] != 0 or start[2] != 0
        or limit[0] != shape[0] or limit[2] != shape[2] or limit[1] != start[1] + 1):
      return None
    return eqn, int(start[1])

  def _copies(self, u) -> tuple[list, Any]:
    """``(chain, root)``: the copies (reshape, broadcast, tile, squeeze, dtype conversion)
    that compute ``u``, outermost first, and the value they copy (a constant, a literal or
    the output of anything else)."""
    chain = []
    while not _is_literal(u) and u not in self.consts and u in self.producer:
      _, op = self.producer[u]
      ins = [w for w in op.invars if not _is_literal(w)]
      if (op.primitive.name not in _COPIES or len(ins) != 1
          or op.params.get("dimensions") is not None and op.primitive.name == "reshape"):
        break
      chain.append(op)
      u = ins[0]
    return chain, u

  def _parameter(self, u) -> tuple[str, tuple] | None:
    """Path and shape of the module parameter ``u`` copies, if it copies one."""
    _, root = self._copies(u)
    if _is_literal(root) or root not in self.consts:
      return None
    found = self.params.get(id(self.consts[root]))
    return (found[1], tuple(np.shape(self.consts[root]))) if found is not None else None

  def parameter(self, eqn, u, what: str, todo: str):
    """The module's parameter the input-independent ``u`` copies.

    Returns ``(user path, array, probe)``: ``probe`` is ``u`` computed with
    ``arange(array.size)`` in place of the parameter (float64), so the caller can
    check where each number of the parameter lands. Refuses random operations, a
    ``u`` computed by anything but copies (reshape, broadcast, tile, squeeze,
    dtype conversion), constants that are no parameter, variables of another
    collection and a parameter used twice.
    """
    self.refuse_random(self.ancestry(u))
    chain, u = self._copies(u)
    if _is_literal(u) or u not in self.consts and u not in self.producer:
      self.refuse(eqn, f"{what}: a literal constant", todo)
    if u not in self.consts:
      self.refuse(self.producer[u][1], f"{what}, computed from a parameter or a constant (e.g. "
                  f"cropped or interpolated) rather than a parameter used as it is", todo)
    array = self.consts[u]
    found = self.params.get(id(array))
    if found is None:
      self.refuse(eqn, f"{what}: a constant of shape {np.shape(array)}, not a parameter of "
                  f"the module (e.g. a fixed sin-cos table)", todo)
    collection, path = found
    if collection != "params":
      self.refuse(eqn, f"{what}: the variable {path} of collection {collection!r}, not a "
                  f"parameter (the spec would train it)", todo)
    if path in self.params_used:
      self.refuse(eqn, f"the parameter {path}, used a second time (first at "
                  f"{self.params_used[path]})", "a spec node owns its parameter: give each use "
                  "its own")
    self.params_used[path] = _line(eqn.source_info)
    probe = np.arange(np.size(array), dtype=np.float64).reshape(np.shape(array))
    for op in reversed(chain):
      probe = _copy_numpy(op, probe)
    return path, array, probe

  def position_embedding(self, eqn, v) -> int:
    """``x + p`` of a sequence ``x`` (B, N, C) and a parameter ``p`` with N C numbers."""
    x, p = sorted(eqn.invars, key=lambda u: not self.depends_on_input(u))
    shape = tuple(v.aval.shape)
    todo = ("jaxdepth's PositionEmbedding adds a learned parameter of shape (1, N, C), one row "
            "per token, to a (B, N, C) token sequence: define it with self.param or nnx.Param "
            "and add it as it is, x + pos_embedding; keep other additions of your own "
            "arrays outside the converted module")
    what = "an array added to the tokens that does not depend on the input"
    path, array, probe = self.parameter(eqn, p, what, todo)
    if len(shape) != 3 or tuple(x.aval.shape) != shape:
      self.refuse(eqn, f"an addition of the parameter {path} of shape {np.shape(array)} to a "
                  f"tensor of shape {tuple(x.aval.shape)}, not to a token sequence", todo)
    n, c = shape[1:]
    row = np.arange(n * c, dtype=np.float64).reshape(n, c)
    if np.size(array) != n * c:
      self.refuse(eqn, f"an addition of the parameter {path} of shape {np.shape(array)} to "
                  f"{n} tokens of width {c}: not a position embedding of this sequence (it "
                  f"needs exactly {n} x {c} numbers)", todo)
    if not all(np.array_equal(r, row) for r in np.broadcast_to(probe, shape)):
      self.refuse(eqn, f"an addition of the parameter {path}, rearranged", todo)
    return self.add("position_embedding", [self.value(x)], eqn, param=path,
                    value=jnp.reshape(array, (1, n, c)))

  def class_token(self, eqn, v) -> int:
    """``concatenate([tile(cls), x], axis=1)``: a learned token in front of the sequence."""
    ins = eqn.invars
    shape = tuple(v.aval.shape)
    todo = ("jaxdepth's ClassToken puts one learned token, a parameter of C numbers (e.g. "
            "shape (1, 1, C)), in front of the sequence: jnp.concatenate([jnp.tile(cls, "
            "(B, 1, 1)), x], axis=1)")
    free = [not self.depends_on_input(u) for u in ins]
    if len(ins) != 2 or free != [True, False]:
      self.refuse(eqn, f"a concatenation of {len(ins)} token sequences, "
                  f"{sum(free)} of them parameters", todo)
    token, x = ins
    if tuple(token.aval.shape) != (shape[0], 1, shape[2]):
      self.refuse(eqn, f"a concatenation of {token.aval.shape[1]} tokens in front of the "
                  f"sequence", todo)
    path, array, probe = self.parameter(eqn, token, "a token in front of the sequence that does "
                                        "not depend on the input", todo)
    c = shape[2]
    if np.size(array) != c or not all(np.array_equal(r, np.arange(c, dtype=np.float64))
                                      for r in probe.reshape(shape[0], c)):
      self.refuse(eqn, f"a class token made from the parameter {path} of shape "
                  f"{np.shape(array)}, not its {c} numbers as they are", todo)
    return self.add("class_token", [self.value(x)], eqn, param=path,
                    value=jnp.reshape(array, (1, 1, c)))


# ---------------------------------------------------------------- structure


def dominators(ir) -> list:
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


def series(ir, idom, frm, to, used) -> list:
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
      items.append((n, [series(ir, idom, fork, i, used) for i in n["inputs"]]))
      cur = fork
    else:
      items.append((n, None))
      cur = n["inputs"][0]
  return items[::-1]


def leaf_count(items) -> int:
  return sum(1 if parts is None and n["kind"] in ("leaf", "act") else
             sum(leaf_count(p) for p in parts or ()) for n, parts in items)
