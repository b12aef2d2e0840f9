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
paths from the fork to each operand become the block's branches
(:mod:`jaxdepth.trace_graph` reads the glue and makes that cut; this module
traces, reads the layers and builds the spec).

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
import os
import traceback
from collections.abc import Mapping
from typing import Any, NamedTuple

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from flax.linen import linear as linen_linear

from jaxdepth import network
from jaxdepth import spec as S
from jaxdepth import trace_graph as G
from jaxdepth.trace_graph import ConversionError

__all__ = ["from_flax", "from_nnx", "ConversionError", "Converted", "to_user_variables"]


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
  return G.layer_p.bind(x, index=index, shape=tuple(y.shape), dtype=y.dtype)


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
          a, b = sorted(range(2), key=lambda i: (-G.leaf_count(parts[i]), i))
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
  graph = G.Graph(closed, leaves, root)
  out = graph.value(jaxpr.outvars[0])
  ir = graph.ir
  start = next(i for i, n in enumerate(ir) if n["kind"] == "input")
  idom = G.dominators(ir)
  items = G.series(ir, idom, start, out, set())
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
