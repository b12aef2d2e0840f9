"""Bring your own Flax model: a Linen or NNX module as a spec, by tracing it.

:func:`from_flax` (Linen) and :func:`from_nnx` (NNX) run the user's module once on
a sample batch under ``jax.make_jaxpr`` and read the network off the trace; the
user's source is never parsed. Two sources of truth are combined:

* **layer calls**: every call of a Flax layer (``Conv``, ``Dense``/``Linear``,
  ``BatchNorm``, ``LayerNorm``, ``GroupNorm``, ``Dropout``, multi-head
  self-attention; :mod:`jaxdepth.flax_layers` says what each becomes) is
  intercepted (Linen: ``nn.intercept_methods``; NNX: the module classes'
  ``__call__`` for the time of the trace), its attributes, path and variables
  recorded, and its output replaced in the trace by one opaque equation
  ``module(x)``;
* **glue**: everything between the layer calls is the traced program itself (a
  jaxpr). Additions of two tensors become residual :class:`~jaxdepth.spec.Block`
  s, concatenations on the channel axis :class:`~jaxdepth.spec.Concat` s,
  ``reshape`` to ``(B, -1)`` a Flatten and to ``(B, H W, C)``
  :class:`~jaxdepth.transformer.Tokens`, ``reduce_window`` and ``mean`` over
  ``(H, W)`` or over the tokens pooling, ``x[:, i]`` of a token sequence
  :class:`~jaxdepth.transformer.SelectToken`. A parameter of the module's own
  (``self.param``, ``nnx.Param``) added to the tokens is a
  :class:`~jaxdepth.transformer.PositionEmbedding`, one concatenated in front of
  them a :class:`~jaxdepth.transformer.ClassToken`; both keep the user's array
  and its path. A chain of element-wise operations of one tensor is
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
    to_user_variables(converted, trained_variables, variables)   # back into MyNet's layout
"""
from __future__ import annotations

import collections
import dataclasses
import functools
import inspect
import os
import sys
import traceback
from collections.abc import Mapping
from typing import Any, NamedTuple

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxdepth import flax_layers as layers
from jaxdepth import network, nnx_bridge
from jaxdepth import spec as S
from jaxdepth import trace_graph as G
from jaxdepth.trace_graph import ConversionError
from jaxdepth.transformer import nodes as T

__all__ = ["from_flax", "from_nnx", "ConversionError", "Converted", "to_user_variables"]


class Converted(NamedTuple):
  """What :func:`from_flax` returns.

  Attributes:
    spec: the architecture.
    variables: ``{"params": ..., "batch_stats": ...}`` keyed by the spec's paths.
    paths: ``{spec node path: user path}`` for every layer node (the user's
      module path) and every class token and position embedding (the path of
      the user's parameter); the user's path joins the Linen scope names or NNX
      attribute names with ``/``.
  """
  spec: S.Spec
  variables: dict[str, Any]
  paths: dict[str, str]


# ------------------------------------------------------------------ the trace


@dataclasses.dataclass
class _Leaf:
  """One intercepted layer call."""
  kind: str              # a kind of jaxdepth.flax_layers: conv, dense, attention, ...
  path: tuple            # the user's module path
  module: Any            # the Linen or NNX layer object
  in_shape: tuple
  out_shape: tuple
  line: str
  mode: bool | None = None   # flax_layers.mode_of: running statistics / dropout off

  @property
  def where(self) -> str:
    return f"{_where(self.path)} ({type(self.module).__name__}, {self.line})"


_CONTAINERS = ("Sequential", "List", "Dict")
_HERE = os.path.dirname(os.path.abspath(__file__))
_LIBS = tuple(os.path.dirname(os.path.abspath(m.__file__)) for m in (jax, flax)) + (_HERE,)


def _is_user_frame(filename: str) -> bool:
  f = os.path.abspath(filename)
  return not f.startswith(_LIBS) and "site-packages" not in f and not f.startswith("<frozen")


def _user_line(error: BaseException | None = None) -> str:
  """``file:line (function)`` of the innermost frame outside jax, flax and jaxdepth: of the
  current stack, or of where ``error`` was raised."""
  frames = (traceback.extract_tb(error.__traceback__) if error is not None
            else traceback.extract_stack())
  for frame in reversed(frames):
    if _is_user_frame(frame.filename):
      return f"{frame.filename}:{frame.lineno} ({frame.name})"
  return "unknown source line"


def _where(path) -> str:
  return "/".join(str(p) for p in path) or "(the top module)"


class _Tracer:
  """What one trace records: the layer calls, how deep inside a layer the code is, and the
  module where a failure of the user's code was raised."""

  def __init__(self, flag: _Flag | None):
    self.flag = flag         # the mode argument the module was passed (None: none), for messages
    self.leaves: list[_Leaf] = []
    self.inside = 0          # > 0 while a recorded layer runs its own submodules
    self.failed_in: dict[int, tuple] = {}

  def run(self, path, fun, *args, **kwargs):
    """``fun(*args, **kwargs)``, noting ``path`` as the innermost module of a failure."""
    try:
      return fun(*args, **kwargs)
    except Exception as e:
      self.failed_in.setdefault(id(e), tuple(path))
      raise

  def layer(self, kind, path, module, fun, args, kwargs):
    """Runs a layer call and stands one opaque equation in for its output."""
    where = f"{_where(path)} ({type(module).__name__}, {_user_line()})"
    x = layers.call_input(kind, module, args, kwargs, where)
    self.inside += 1
    try:
      y = self.run(path, fun, *args, **kwargs)
    finally:
      self.inside -= 1
    if not isinstance(x, jax.Array) or not isinstance(y, jax.Array):
      raise ConversionError(
          f"layer {where}: called on {type(x).__name__}, returned {type(y).__name__}; "
          f"jaxdepth converts layers called on one array that return one array")
    index = len(self.leaves)
    self.leaves.append(_Leaf(kind, tuple(path), module, tuple(x.shape), tuple(y.shape),
                             _user_line(), layers.mode_of(kind, module, args, kwargs)))
    return G.layer_p.bind(x, index=index, shape=tuple(y.shape), dtype=y.dtype)

  def error(self, e: Exception, shape, what: str) -> ConversionError:
    return _error_of(e, shape, what, self.failed_in.get(id(e)), self.flag)


def _error_of(e: Exception, shape, what: str, module_path=None, flag: _Flag | None = None
              ) -> ConversionError:
  """A failure of the user's module on the sample input as a ConversionError saying where
  (the innermost module, when known, and the user's source line) and what to do (``flag``:
  the module's mode argument)."""
  name = type(e).__name__
  text = str(e).strip().split("\n")[0]
  where = (f"in module {_where(module_path)} " if module_path is not None else ""
           ) + f"at {_user_line(e)}"
  if "Rng" in name or "rng" in text.lower() and "PRNG" in text:
    return ConversionError(
        f"{what} needs a random number stream that was not passed, {where} ({name}: {text}). "
        f"Pass rngs={{'<stream>': jax.random.key(0)}} to from_flax if the module draws "
        f"random numbers only through nn.Dropout; random operations of its own cannot be "
        f"converted: move them out of the module"
        + (f". A dropout drawing in eval mode does not follow the module's mode flag "
           f"({flag.follow('deterministic')}){flag.swap()}" if flag else ""))
  if name == "ModifyScopeVariableError" or (name == "TraceContextError"
                                            and "mutate BatchStat" in text):
    follow = (f"the module's mode flag ({flag.follow('use_running_average')}){flag.swap()}"
              if flag else "a mode flag of __call__ (train with use_running_average=not "
              "train, or deterministic with use_running_average=deterministic)")
    return ConversionError(
        f"{what} updates its variables in eval mode, {where} ({name}: {text}): e.g. a "
        f"BatchNorm on batch statistics (use_running_average=False) whatever the mode. Make "
        f"it follow {follow}")
  if name == "TraceContextError":
    return ConversionError(
        f"{what} runs a part of itself through an NNX transform, {where} ({name}: {text}). "
        f"jaxdepth reads nnx.remat and nnx.jit through; other transforms (nnx.vmap, "
        f"nnx.scan, nnx.cond, ...) cannot be converted: call the layers directly (a stack of "
        f"layers as a list of modules)")
  if name in ("ScopeParamNotFoundError", "ScopeCollectionNotFound"):
    return ConversionError(
        f"the variables passed for {what} lack one the module reads, {where} ({name}: {text}). "
        f"Pass the whole dict module.init(rng, x) returned (params and, with BatchNorm, "
        f"batch_stats), not a part of it")
  if name in ("ScopeParamShapeError", "TypeError", "ValueError", "IndexError"):
    return ConversionError(
        f"{what} cannot run on a sample input of shape {tuple(shape)}: it failed {where} "
        f"({name}: {text}). Pass a batch shaped like the data the module was built for, with "
        f"the batch axis first, e.g. x[:8] of a (B, H, W, C) dataset")
  return ConversionError(f"tracing {what} on a sample input of shape {tuple(shape)} failed "
                         f"{where}: {name}: {text}")


def _refuse_layer(path, module):
  raise ConversionError(
      f"layer {_where(path)} is a {type(module).__module__}.{type(module).__name__} (called at "
      f"{_user_line()}), which jaxdepth cannot represent; supported layers: {layers.SUPPORTED}. "
      f"Replace it, or keep that part outside the converted module")


def _linen_interceptor(tracer: _Tracer):
  def intercept(next_fun, args, kwargs, context):
    module = context.module
    if tracer.inside or context.method_name != "__call__":
      return next_fun(*args, **kwargs)
    kind = layers.kind_of(type(module), layers.LINEN)
    if kind is not None:
      return tracer.layer(kind, module.path, module, next_fun, args, kwargs)
    if type(module).__module__.startswith("flax.") and type(module).__name__ not in _CONTAINERS:
      _refuse_layer(module.path, module)
    return tracer.run(module.path, next_fun, *args, **kwargs)
  return intercept


class _Flag(NamedTuple):
  """The module's mode argument: its name and its value in eval mode (``train``: False;
  ``deterministic``: True)."""
  name: str
  eval: bool

  def __str__(self) -> str:      # how messages show the train mode
    return f"{self.name}={not self.eval}"

  def follow(self, attribute: str) -> str:
    """A layer's ``attribute`` that is True in eval mode (``use_running_average``,
    ``deterministic``) set from this flag."""
    return f"{attribute}={self.name if self.eval else 'not ' + self.name}"

  def swap(self) -> str:
    """Advice for a flag that means the opposite of what it was declared as ('' for
    ``train``, which cannot)."""
    if self == _Flag("train", False):
      return ""
    if self.eval:
      return (f"; if {self.name} is True in train mode, pass train_kwarg={self.name!r} instead "
              f"of eval_kwarg")
    return (f"; if {self.name} is True in eval mode (like Flax's deterministic), pass "
            f"eval_kwarg={self.name!r} instead of train_kwarg")


def _flag(train_kwarg: str, eval_kwarg: str | None) -> _Flag:
  """The mode argument ``train_kwarg`` (True in train mode) or ``eval_kwarg`` (True in eval
  mode) names; refuses both."""
  if eval_kwarg is None:
    return _Flag(train_kwarg, False)
  if train_kwarg != "train":
    raise ConversionError(
        f"train_kwarg={train_kwarg!r} and eval_kwarg={eval_kwarg!r} both name the module's "
        f"mode argument; pass one: train_kwarg for an argument that is True in train mode, "
        f"eval_kwarg for one that is True in eval mode (like Flax's deterministic)")
  return _Flag(eval_kwarg, True)


_TRAINING = ("training", "is_training")     # Keras-style train flags, which are not read


def _mode_flag(module, train_kwarg: str, eval_kwarg: str | None,
               command_line: bool = False) -> _Flag:
  """The module's mode argument: the one named (:func:`_flag`), else, when ``__call__``
  takes no ``train``, Flax's ``deterministic`` (True in eval mode) if it takes that.

  A bool ``training`` or ``is_training`` argument (with no flag named) is refused: left at
  its default, the module would be traced in one mode only, its layers' modes unchecked.
  ``command_line``: advice for ``--model file.py:Class``, which cannot name a flag.
  """
  flag = _flag(train_kwarg, eval_kwarg)
  if flag != _Flag("train", False):
    return flag
  try:
    params = inspect.signature(module.__call__).parameters
  except (TypeError, ValueError):
    return flag
  if "train" in params:
    return flag
  if "deterministic" in params:
    return _Flag("deterministic", True)
  for name in _TRAINING:
    p = params.get(name)
    if p is not None and (p.annotation in (p.empty, bool, "bool") or isinstance(p.default, bool)):
      if command_line:
        advice = (f"a model file's flag must be called train (True in train mode) or "
                  f"deterministic (True in eval mode): rename it, or wrap the class in a module "
                  f"whose __call__(x, train) calls it with {name}=train")
      else:
        advice = (f"pass train_kwarg={name!r} (or eval_kwarg={name!r} if it is True in eval "
                  f"mode)")
      raise ConversionError(
          f"{type(module).__name__}.__call__ takes {name!r}, a mode flag the converter does "
          f"not read by itself (it reads train, True in train mode, or deterministic, True in "
          f"eval mode), so the module would be traced in one mode only; {advice}")
  return flag


def _eval_kwargs(module, flag: _Flag) -> dict:
  """``{flag.name: flag.eval}`` if the module's ``__call__`` takes it, else ``{}``; refuses a
  ``__call__`` that needs more than the input and that flag."""
  try:
    params = list(inspect.signature(module.__call__).parameters.values())
  except (TypeError, ValueError):
    return {}
  needed = [p.name for p in params[1:] if p.default is p.empty and p.name != flag.name
            and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
  if needed:
    first = needed[0]
    if first == "deterministic":
      advice = (f"'deterministic' is True in eval mode, as Flax's own: pass "
                f"eval_kwarg='deterministic' (if it is True in train mode instead, pass "
                f"train_kwarg='deterministic')")
    else:
      advice = (f"if {first!r} is the mode flag, pass train_kwarg={first!r} when it is True in "
                f"train mode, or eval_kwarg={first!r} when it is True in eval mode (like Flax's "
                f"deterministic)")
    raise ConversionError(
        f"{type(module).__name__}.__call__ needs the argument(s) {', '.join(needed)} besides the "
        f"input; the converter passes the input and, if __call__ takes it, "
        f"{flag.name}={flag.eval} in eval mode ({flag} in train mode). {advice[0].upper()}"
        f"{advice[1:]}; otherwise give the argument a default (or wrap the module in one that "
        f"supplies it)")
  return {flag.name: flag.eval} if any(p.name == flag.name for p in params) else {}


def _check_output(y, module):
  """Refuses a module output that is not one array (a dict, a tuple, ...)."""
  if isinstance(y, jax.Array):
    return
  if isinstance(y, Mapping):
    what = f"a {type(y).__name__} with the keys {list(y)}"
  elif isinstance(y, (tuple, list)):
    what = f"a {type(y).__name__} of {len(y)} values"
  else:
    what = f"a {type(y).__name__}"
  raise ConversionError(f"module {type(module).__name__} returns {what}; jaxdepth converts "
                        f"modules returning one array, the logits: return the logits array "
                        f"alone (e.g. out['logits'] of a dict), or wrap the module in one "
                        f"that does")


def _trace_linen(module, variables, x, kwargs, rngs, flag: _Flag, mutable=False):
  tracer = _Tracer(flag if kwargs else None)

  def fn(x):
    out = module.apply(variables, x, rngs=rngs, mutable=mutable, **kwargs)
    _check_output(out[0] if mutable else out, module)
    return out

  try:
    with nn.intercept_methods(_linen_interceptor(tracer)), jax.disable_jit():
      closed = jax.make_jaxpr(fn)(x)
  except ConversionError:
    raise
  except Exception as e:  # pylint: disable=broad-except   # any failure of user code: explained
    raise tracer.error(e, x.shape, f"module {type(module).__name__}") from e
  return closed, tracer.leaves, _linen_params(variables)


def _linen_params(variables) -> dict[int, tuple[str, str]]:
  """``{id(array): (collection, path)}`` of a Linen variables dict (the trace closes over
  these very arrays, so a constant of the trace is found by identity)."""
  out = {}

  def walk(tree, collection, path):
    for key, value in tree.items():
      if isinstance(value, Mapping):
        walk(value, collection, path + (str(key),))
      else:
        out.setdefault(id(value), (collection, "/".join(path + (str(key),))))
  for collection, tree in variables.items():
    if isinstance(tree, Mapping):
      walk(tree, collection, ())
  return out


def _nnx_patches(model):
  """The path of every submodule (by identity) and the module classes to wrap."""
  paths = {}
  for path, node in nnx.iter_graph(model):
    if isinstance(node, nnx.Module):
      paths.setdefault(id(node), tuple(path))
  types = {type(node) for _, node in nnx.iter_graph(model) if isinstance(node, nnx.Module)}
  return paths, types


def _wrapper_codes(fn) -> tuple:
  """The code objects (or types) of the wrappers around a function, outermost first."""
  codes = []
  while hasattr(fn, "__wrapped__"):
    codes.append(getattr(fn, "__code__", type(fn)))
    fn = fn.__wrapped__
  return tuple(codes)


@functools.cache
def _remat_codes() -> tuple:
  return _wrapper_codes(nnx.remat(lambda: None))


def _unwrapped_nnx_transform(value):
  """The function an ``nnx.remat`` or ``nnx.jit`` wrapper runs, else None.

  Both change how a function is run, not what it computes; traced as they are, NNX's own
  split and merge would hand the trace copies of the module from another trace level."""
  if isinstance(value, nnx.transforms.compilation.JitWrapped):
    return value.__wrapped__
  if callable(value) and _wrapper_codes(value) == _remat_codes():
    return inspect.unwrap(value)
  return None


def _run_plain(f=None, /, **_options):
  """Stands in for ``nnx.remat`` and ``nnx.jit`` during the trace: the function itself (or,
  called with options only, a decorator that returns it)."""
  return f if callable(f) else (lambda g: g)


def _nnx_params(model) -> dict[int, tuple[str, str]]:
  """``{id(array): (collection, path)}`` of an NNX model's variables (``params`` for
  ``nnx.Param``, else the variable type's name)."""
  out = {}
  for path, node in nnx.iter_graph(model):
    if isinstance(node, nnx.Variable):
      collection = "params" if isinstance(node, nnx.Param) else type(node).__name__
      out.setdefault(id(node.get_value()), (collection, "/".join(str(p) for p in path)))
  return out


def _trace_nnx(model, x, kwargs, flag: _Flag, train=False):
  """Traces a copy of ``model`` in eval mode (``train``: in train mode), its module
  classes' ``__call__`` wrapped for the time of the trace (layers emit the marker, other
  modules name a scope) and ``nnx.remat`` / ``nnx.jit`` running the functions they wrap."""
  tracer = _Tracer(flag if kwargs else None)
  model = nnx.clone(model)
  if train:
    model.train()
  else:
    model.eval()
  paths, types = _nnx_patches(model)
  saved = {}
  entered: list[tuple] = []    # the paths of the modules whose __call__ is running

  def wrap(cls, original):
    kind = layers.kind_of(cls, layers.NNX)

    @functools.wraps(original)      # keeps the signature: flax_layers binds a call to it
    def call(self, *args, **kwargs):
      path = paths.get(id(self), ())
      if tracer.inside or type(self) is not cls:   # inside a layer, or a subclass's super()
        return original(self, *args, **kwargs)
      if kind is not None:
        return tracer.layer(kind, path, self, lambda *a, **k: original(self, *a, **k), args,
                            kwargs)
      if cls.__module__.startswith("flax.") and cls.__name__ not in _CONTAINERS:
        _refuse_layer(path, self)
      if not path:
        return tracer.run(path, original, self, *args, **kwargs)
      # The scope is the path below the calling module, so that a block reached through a
      # list (blocks/0) is named by the whole of it, as Linen names it.
      outer = entered[-1] if entered else ()
      below = path[len(outer):] if path[:len(outer)] == outer else path
      entered.append(path)
      try:
        with jax.named_scope("/".join(str(p) for p in below)):
          return tracer.run(path, original, self, *args, **kwargs)
      finally:
        entered.pop()
    return call

  def patch(owner, name, value):
    saved.setdefault((owner, name), owner.__dict__.get(name))
    setattr(owner, name, value)

  try:
    # nnx.remat and nnx.jit, at a method's definition or called inside one, run the plain
    # function for the time of the trace.
    for owner in {c for t in types for c in t.__mro__
                  if not c.__module__.startswith(("flax.", "builtins", "abc"))}:
      for name, value in list(owner.__dict__.items()):
        if (plain := _unwrapped_nnx_transform(value)) is not None:
          patch(owner, name, plain)
    for name in ("remat", "jit"):
      patch(nnx, name, _run_plain)
    for cls in types:
      if "__call__" in dir(cls):
        patch(cls, "__call__", wrap(cls, cls.__call__))
    with jax.disable_jit():
      if train:
        # Train mode updates BatchNorm statistics, which NNX allows only to a model made
        # inside the trace: a copy merged there, its submodules' paths noted for the wrappers.
        graphdef, state = nnx.split(model)

        def run(state, x):
          inner = nnx.merge(graphdef, state)
          paths.update(_nnx_patches(inner)[0])
          y = inner(x, **kwargs)
          _check_output(y, model)
          return y
        closed = jax.make_jaxpr(run)(state, x)
      else:
        def run_eval(x):
          y = model(x, **kwargs)
          _check_output(y, model)
          return y
        closed = jax.make_jaxpr(run_eval)(x)
  except ConversionError:
    raise
  except Exception as e:  # pylint: disable=broad-except
    raise tracer.error(e, x.shape, f"module {type(model).__name__}") from e
  finally:
    for (owner, name), original in saved.items():
      if original is None:
        delattr(owner, name)
      else:
        setattr(owner, name, original)
  return closed, tracer.leaves, _nnx_params(model)


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
        hint = _relative(n["module"], scope_module) or (
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
    if kind == "tokens":
      return T.Tokens(_unique("tokens", taken))
    if kind == "select_token":
      return T.SelectToken(_unique("select_token", taken), index=n["index"])
    if kind in ("class_token", "position_embedding"):
      name = _unique(_clean(_relative(n["param"], scope_module)), taken)
      node, leaf = ((T.ClassToken(name), "token") if kind == "class_token"
                    else (T.PositionEmbedding(name), "embedding"))
      self.paths[prefix + name] = n["param"]
      self.variables[prefix + name] = {"params": {leaf: n["value"]}}
      return node
    if kind == "pool":
      name = _unique(f"{n['op']}_pool", taken)
      fields = {k: n[k] for k in ("window", "stride", "padding") if k in n}
      return S.Pool(name, op=n["op"], **fields)
    leaf = self.leaves[n["index"]]
    user = "/".join(str(p) for p in leaf.path)
    name = _unique(_clean(_relative(user, scope_module) or type(leaf.module).__name__), taken)
    node, variables = layers.node_of(leaf.kind, leaf.module, name, leaf.in_shape,
                                     leaf.out_shape, self.read_vars(leaf), leaf.where)
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


# ------------------------------------------------------------------ variables


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
  return {col: nnx.to_pure_dict(nnx.state(leaf.module, kind))
          for col, kind in (("params", nnx.Param), ("batch_stats", nnx.BatchStat))}


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


def _convert(closed, leaves, params, read_vars, x, root, name) -> Converted:
  closed = G.inline_checkpoints(closed)
  jaxpr = closed.jaxpr      # one output: _check_output refused any other
  for leaf in leaves:
    dtype = getattr(leaf.module, "dtype", None)
    if dtype is not None and jnp.dtype(dtype) != jnp.float32:
      raise ConversionError(
          f"layer {leaf.where} computes in {jnp.dtype(dtype).name}: convert a float32 "
          f"instance of the module (its layers' dtype left unset); jaxdepth picks the compute "
          f"dtype itself (forward(..., dtype=jnp.bfloat16), --dtype on the command line)")
  calls: dict[tuple, int] = {}
  for leaf in leaves:
    if not jax.tree.leaves(read_vars(leaf)):
      continue        # weightless (a Dropout): each call becomes a node of its own
    calls[leaf.path] = calls.get(leaf.path, 0) + 1
    if calls[leaf.path] == 2:
      raise ConversionError(
          f"layer {_where(leaf.path)} ({type(leaf.module).__name__}) is called more than once "
          f"(again at {leaf.line}): a spec node owns its weights, so shared layers cannot be "
          f"converted; give each call its own layer (a layer inside nn.scan or a loop runs once "
          f"per step, with stacked weights: unroll the loop into one module per step)")
  graph = G.Graph(closed, leaves, root, params)
  graph.refuse_preprocessing()
  graph.refuse_probabilities(jaxpr.outvars[0])
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
    for col, leaves_ in _float32(entry).items():
      d = variables.setdefault(col, {})
      *parents, last = path.split(S.SEP)
      for part in parents:
        d = d.setdefault(part, {})
      d[last] = leaves_
  return Converted(spec, variables, builder.paths)


def _float32(tree):
  """``tree`` with its half-precision floating arrays (a layer's ``param_dtype=jnp.bfloat16``)
  as float32: exact, as every bfloat16 or float16 number is a float32, and what the layer
  computes with them when it computes in float32 (its dtype is checked to be); jaxdepth
  trains float32 variables."""
  def up(a):
    dtype = jnp.dtype(a.dtype)
    return (a.astype(jnp.float32) if jnp.issubdtype(dtype, jnp.floating)
            and dtype.itemsize < 4 else a)
  return jax.tree.map(up, tree)


def _rate(leaf: _Leaf) -> float:
  """The dropout rate of a dropout or attention layer (0 for other kinds)."""
  return float(getattr(leaf.module, {"dropout": "rate", "attention": "dropout_rate"}.get(
      leaf.kind, ""), 0.0) or 0.0)


def _check_modes(eval_leaves, train_leaves, flag: _Flag | None):
  """Refuses a layer whose mode does not follow the module's own.

  The spec's BatchNorm and dropout follow :func:`jaxdepth.forward`'s ``train``: batch
  statistics and dropout in train mode, running statistics and no dropout in eval mode.
  A layer pinned to one mode (a frozen BatchNorm, ``use_running_average=True``; a dropout
  with ``deterministic=True``) computes in the module's train mode what the spec would not.
  ``flag``: the mode argument the module was passed (None: none).
  """
  def todo(attribute):
    follow = f" ({flag.follow(attribute)})" if flag else ""
    return f"make it follow the module's mode{follow}, or keep it outside the converted module"
  swap = flag.swap() if flag else ""   # in eval mode, a flag meaning the opposite shows first
  for leaf in eval_leaves:
    if leaf.kind == "batch_norm" and leaf.mode is False:
      raise ConversionError(f"layer {leaf.where} normalises with batch statistics in eval "
                            f"mode (use_running_average=False); "
                            f"{todo('use_running_average')}{swap}")
    if _rate(leaf) > 0 and leaf.mode is False:
      raise ConversionError(f"layer {leaf.where} drops units in eval mode "
                            f"(deterministic=False); {todo('deterministic')}{swap}")
  for leaf in train_leaves:
    if leaf.kind == "batch_norm" and leaf.mode:
      raise ConversionError(f"layer {leaf.where} keeps its running statistics in train mode "
                            f"(use_running_average=True, a frozen BatchNorm), which the spec's "
                            f"BatchNorm does not; {todo('use_running_average')}, or fold it "
                            f"into the layer before it")
    if _rate(leaf) > 0 and leaf.mode:
      raise ConversionError(f"layer {leaf.where} never drops units (deterministic=True) with "
                            f"rate {_rate(leaf)}, while the spec's dropout drops in train "
                            f"mode; {todo('deterministic')}, or set its rate to 0")


def _check_train_trace(eval_leaves, train_closed, train_leaves, flag: _Flag | None,
                       root: str):
  """Refuses what the module computes in train mode only: the spec is read off the eval
  trace, so a layer called in one mode only (``if train: x = nn.Dropout(...)(x)``) or a
  random operation of the module's own (a DropPath drawing with ``make_rng`` when training)
  would be left out. Dropout's own draws are inside its layer call, which the trace
  replaces by its marker."""
  calls = collections.Counter((leaf.path, leaf.kind) for leaf in eval_leaves)
  calls.subtract((leaf.path, leaf.kind) for leaf in train_leaves)
  for leaves, sign, one, other in ((train_leaves, -1, "train", "eval"),
                                   (eval_leaves, 1, "eval", "train")):
    for leaf in leaves:
      if sign * calls[(leaf.path, leaf.kind)] > 0:
        follow = (f" ({flag.follow('deterministic')})" if flag and leaf.kind == "dropout"
                  else "")
        raise ConversionError(
            f"layer {leaf.where} is called in {one} mode only (or more often than in {other} "
            f"mode): the spec has the same layers in both modes, so it would compute "
            f"something else than the module in one of them; call the layer in both modes, "
            f"its mode following the module's{follow}, or keep it outside the converted "
            f"module")
  closed = G.inline_checkpoints(train_closed)
  graph = G.Graph(closed, train_leaves, root)
  graph.refuse_random(graph.ancestry(closed.jaxpr.outvars[0]))


def _check_one_mode(leaves, module, flag: _Flag):
  """Refuses, in a Linen module whose ``__call__`` takes no mode argument (so it runs in one
  mode only), a BatchNorm and a dropout with a rate: pinned to eval mode (or the eval trace
  would have refused them), they never run in the train mode the spec trains them in. A
  bool argument of ``__call__`` under another name (``is_train: bool = False``) is named
  as the flag to pass."""
  root = type(module).__name__
  try:
    params = list(inspect.signature(module.__call__).parameters.values())[1:]
  except (TypeError, ValueError):
    params = []
  bools = [p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
           and (p.annotation in (bool, "bool") or isinstance(p.default, bool))]
  for leaf in leaves:
    if leaf.kind == "batch_norm":
      what = ("keeps its running statistics (use_running_average=True)", "normalises with "
              "batch statistics", flag.follow("use_running_average"), "fold it into the layer "
              "before it")
    elif _rate(leaf) > 0:
      what = (f"never drops units (deterministic=True) with rate {_rate(leaf)}", "drops units",
              flag.follow("deterministic"), "set its rate to 0")
    else:
      continue
    named = ""
    if bools:
      first = bools[0]
      named = (f"if {' or '.join(repr(b) for b in bools)} is its mode argument, pass "
               f"train_kwarg={first!r} when it is True in train mode, or eval_kwarg={first!r} "
               f"when it is True in eval mode (a model file on the command line: rename it "
               f"train); otherwise ")
    raise ConversionError(
        f"layer {leaf.where} {what[0]} and {root}.__call__ takes no mode argument "
        f"({flag.name!r}), so the module never runs in train mode, where the spec's layer "
        f"{what[1]}; {named}add a {flag.name!r} argument to __call__ (True in "
        f"{'eval' if flag.eval else 'train'} mode) and construct the layer with {what[2]}, "
        f"or {what[3]}")


def _train_mode_error(e: ConversionError, flag: _Flag | None) -> ConversionError:
  mode = f"{flag}, " if flag else ""
  return ConversionError(f"in train mode ({mode}the mode the spec is trained in): {e}")


def _verify(conv: Converted, expected, x, tolerance, flag: _Flag):
  got = network.forward(conv.spec, conv.variables, x).logits
  expected = np.asarray(expected, np.float64)
  err = float(np.max(np.abs(np.asarray(got, np.float64) - expected))) if expected.size else 0.0
  scale = max(1.0, float(np.max(np.abs(expected))) if expected.size else 1.0)
  if not err <= tolerance * scale:
    raise ConversionError(
        f"the converted network (eval mode) differs from the module by {err:.3g} on the sample "
        f"input (tolerance {tolerance * scale:.3g}). If the module ran in train mode, name its "
        f"mode argument (the converter passed {flag.name}={flag.eval} if __call__ takes it): "
        f"train_kwarg= for one that is True in train mode, eval_kwarg= for one that is True "
        f"in eval mode (like Flax's deterministic); otherwise the module does something the "
        f"trace did not capture (e.g. a layer called with non-default arguments): please "
        f"report it with the module")


def from_flax(module, variables=None, sample_input=None, *, train_kwarg: str = "train",
              eval_kwarg: str | None = None, rngs=None, name: str | None = None,
              check: bool = True, tolerance: float = 1e-5) -> Converted:
  """A Linen module (or an NNX module: see :func:`from_nnx`) as ``(spec, variables, paths)``.

  Args:
    module: a ``flax.linen.Module`` whose ``__call__(x[, train])`` returns one array.
    variables: its variables (``module.init(rng, x)``: ``params``, ``batch_stats``).
      ``None`` for an NNX module.
    sample_input: a batch ``(B, *input_shape)``; the spec's input shape is its
      shape without the batch axis.
    train_kwarg: the name of the module's train-mode argument (True in train
      mode), passed ``False`` while tracing if ``__call__`` has it (BatchNorm
      running statistics, deterministic dropout); any other argument
      ``__call__`` requires is refused.
    eval_kwarg: instead of ``train_kwarg``, the name of an argument that is
      True in eval mode and False in train mode (Flax's ``deterministic``),
      passed ``True`` while tracing; passing both is refused. With neither
      named and no ``train`` argument, a ``deterministic`` argument is taken
      as this flag, and a bool ``training`` or ``is_training`` is refused
      (name it with ``train_kwarg``).
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
      module path, the source line and what to do), code that runs in train mode
      only, a layer pinned to one mode, a module that needs an rng stream not
      passed or arguments besides the input and its mode flag, one that returns
      anything but one array, or a sample input the module cannot run on (with
      the module and line where it failed).
  """
  if isinstance(module, network.Network):
    raise ConversionError("from_flax: this module is already a jaxdepth network "
                          "(jaxdepth.Network(spec)): its spec is module.spec and the variables "
                          "of jaxdepth.init(module.spec, rng) are keyed by the spec's paths; use "
                          "them as they are")
  if isinstance(module, nnx.Module):
    if variables is not None and sample_input is None:
      variables, sample_input = None, variables
    if variables is not None:
      raise ConversionError("an NNX module holds its own variables: call "
                            "from_flax(model, sample_input) or from_nnx(model, sample_input)")
    return from_nnx(module, sample_input, train_kwarg=train_kwarg, eval_kwarg=eval_kwarg,
                    name=name, check=check, tolerance=tolerance)
  if not isinstance(module, nn.Module):
    raise ConversionError(f"from_flax converts flax.linen or flax.nnx modules, got "
                          f"{type(module).__name__}")
  if not isinstance(variables, Mapping) or "params" not in variables:
    raise ConversionError("variables must be the module's variables dict, module.init(rng, x) "
                          "({'params': ..., 'batch_stats': ...})")
  flag = _mode_flag(module, train_kwarg, eval_kwarg)
  x = _check_input(sample_input)
  kwargs = _eval_kwargs(module, flag)
  variables = jax.tree.map(jnp.asarray, variables)   # arrays, whose identity the trace keeps
  closed, leaves, params = _trace_linen(module, variables, x, kwargs, rngs, flag)
  root = type(module).__name__
  if kwargs:
    try:
      train, train_leaves, _ = _trace_linen(module, variables, x, {flag.name: not flag.eval},
                                            {"dropout": jax.random.key(0), **(rngs or {})},
                                            flag, mutable=True)
      _check_train_trace(leaves, train, train_leaves, flag, root)
    except ConversionError as e:
      raise _train_mode_error(e, flag) from e
    _check_modes(leaves, train_leaves, flag)
  else:               # a module without a mode flag has one mode: the spec's eval mode
    _check_one_mode(leaves, module, flag)
  conv = _convert(closed, leaves, params, _linen_reader(variables), x, root, name or root)
  if check:
    _verify(conv, module.apply(variables, x, rngs=rngs, **kwargs), x, tolerance, flag)
  return conv


def from_nnx(model, sample_input, *, train_kwarg: str = "train",
             eval_kwarg: str | None = None, name: str | None = None, check: bool = True,
             tolerance: float = 1e-5) -> Converted:
  """An ``nnx.Module`` as ``(spec, variables, paths)``; see :func:`from_flax`.

  The model is traced on a copy in eval mode (``model.eval()``, and
  ``train_kwarg=False`` or ``eval_kwarg=True`` if ``__call__`` takes it), so the
  user's model and its flags are left as they were.
  """
  if not isinstance(model, nnx.Module):
    raise ConversionError(f"from_nnx converts flax.nnx modules, got {type(model).__name__}")
  if isinstance(model, nnx_bridge.NNXNetwork):
    raise ConversionError("from_nnx: this module is already a jaxdepth network (made by "
                          "nnx_bridge.to_nnx): use model.spec and nnx_bridge.variables_of(model) "
                          "as they are")
  flag = _mode_flag(model, train_kwarg, eval_kwarg)
  x = _check_input(sample_input)
  kwargs = _eval_kwargs(model, flag)
  closed, leaves, params = _trace_nnx(model, x, kwargs, flag)
  root = type(model).__name__
  try:
    train, train_leaves, _ = _trace_nnx(model, x, {k: not v for k, v in kwargs.items()}, flag,
                                        train=True)
    _check_train_trace(leaves, train, train_leaves, flag if kwargs else None, root)
  except ConversionError as e:
    raise _train_mode_error(e, flag if kwargs else None) from e
  _check_modes(leaves, train_leaves, flag if kwargs else None)
  conv = _convert(closed, leaves, params, _nnx_read, x, root, name or root)
  if check:
    copy = nnx.clone(model)
    copy.eval()
    _verify(conv, copy(x, **kwargs), x, tolerance, flag)
  return conv


def to_user_variables(converted: Converted, variables, like, *, spec: S.Spec | None = None
                      ) -> tuple[dict, list[str]]:
  """Hands spec variables back to the user's module, where its structure allows.

  Args:
    converted: what :func:`from_flax` or :func:`from_nnx` returned (its spec and
      paths).
    variables: spec variables, e.g. after training, keyed like ``spec``.
    like: the user's variables as a nested dict (Linen: ``module.init(...)``;
      NNX: ``nnx.to_pure_dict(nnx.state(model))``), for names and shapes.
    spec: the spec ``variables`` belong to, e.g. what a method or surgery
      returned (default: ``converted.spec``).

  Returns:
    ``(new, skipped)``: a copy of ``like`` in which every layer that ``spec``
    still has exactly as converted takes its variables from ``variables``
    (attention's ``qkv`` and ``proj`` split back into ``query``, ``key``,
    ``value`` and ``out``; a class token or position embedding reshaped back
    into the user's parameter), and the spec paths that did not go back, sorted:
    nodes that are new, gone or changed in ``spec`` (merged, folded, cut,
    removed; sites a method turned into identities, which the user's module
    still applies), the conv and dense layers whose values surgery may have
    rewritten under the same name and fields (one whose input lost channels,
    one next to a gone or changed node holding values: a BatchNorm folded
    into it, an op merged into it), and variables with no exact place in the
    user's layer (a bias the layer has no room for that training made
    non-zero); a skipped layer keeps the user's variables. The user's module computes what ``spec`` computes with
    ``variables`` exactly when ``skipped`` is empty.
  """
  spec = converted.spec if spec is None else spec
  before, after = _leaf_nodes(converted.spec), _leaf_nodes(spec)
  skipped = {p for p in before.keys() | after.keys() if before.get(p) != after.get(p)}
  skipped |= _rewritten(converted.spec, spec, skipped)
  out = _plain(like)
  by_collection = "params" in out
  for spath, upath in converted.paths.items():
    if spath in skipped:
      continue
    spec_leaves = {}
    for tree in variables.values():
      spec_leaves.update(_flat(_lookup(tree, spath.split(S.SEP))))
    users = {}         # relative path -> (the user tree holding it, its leaf)
    for tree in ([out[c] for c in out if isinstance(out[c], dict)] if by_collection else [out]):
      for key, value in _flat(_lookup(tree, upath.split("/"))).items():
        users[key] = (tree, value)
    if not spec_leaves and isinstance(after[spath], S.Dropout):
      continue                                   # nothing to hand back
    if not spec_leaves or not users:
      skipped.add(spath)
      continue
    try:
      updates = layers.user_leaves(after[spath], spec_leaves,
                                   {k: v for k, (_, v) in users.items()})
    except layers.CannotGoBack:
      skipped.add(spath)
      continue
    for key, value in updates.items():
      *parents, last = upath.split("/") + list(key)
      node = _lookup(users[key][0], parents)
      node[last if last in node or not str(last).isdigit() else int(last)] = jnp.asarray(value)
  return out, sorted(skipped)


def _leaf_nodes(spec: S.Spec) -> dict[str, S.Node]:
  return {p: n for p, n in spec.walk() if not isinstance(n, (S.Sequential, S.Block, S.Concat))}


def _rewritten(before: S.Spec, after: S.Spec, changed: set[str]) -> set[str]:
  """Conv and dense layers of ``before`` whose node ``after`` keeps but whose values it may not.

  Surgery writes what it merges or folds into the first weight layer of the
  chain, under that layer's name: a conv that had a bias keeps its node when a
  BatchNorm is folded into it or the op after it is merged into it, and a layer
  whose input lost channels keeps its node with a smaller kernel. The spec
  cannot say which neighbour went where, so a layer counts as rewritten when
  its input shape changed, or when next to it (across nodes gone or changed)
  a node that holds values (anything but an activation or dropout) is gone or
  changed: a BatchNorm folded into the layer after it marks that one too.
  """
  shapes_before, shapes_after = before.shapes(), after.shapes()
  nodes_after = dict(after.walk())

  def kept(path, node):
    if isinstance(node, (S.Block, S.Concat)):   # its inside is compared node by node
      return type(nodes_after.get(path)) is type(node)
    return path not in changed

  out = set()

  def visit(nodes, prefix):
    view = []                                   # a list with its Sequentials opened,
    def flat(nodes, prefix):                    # as surgery merges across them
      for n in nodes:
        path = prefix + n.name
        if isinstance(n, S.Sequential):
          flat(n.layers, path + S.SEP)
        else:
          view.append((path, n))
          for child in ([n.branch, n.shortcut, n.post] if isinstance(n, S.Block) else
                        [*n.branches, n.post] if isinstance(n, S.Concat) else []):
            visit(child, path + S.SEP)
    flat(nodes, prefix)
    for i, (path, node) in enumerate(view):
      if not isinstance(node, (S.Conv, S.Dense)) or not kept(path, node):
        continue
      if shapes_before[path][0] != shapes_after[path][0]:
        out.add(path)
        continue
      for step in (-1, 1):
        j = i + step
        while 0 <= j < len(view) and not kept(*view[j]):
          if not isinstance(view[j][1], (S.Act, S.Dropout)):
            out.add(path)
          j += step

  visit(before.layers, "")
  return out


def _plain(tree):
  return {k: _plain(v) for k, v in tree.items()} if isinstance(tree, Mapping) else tree


def _lookup(tree, parts):
  """``tree[p0][p1]...`` (a digit also finds an int key: NNX lists), or ``None``."""
  for part in parts:
    if not isinstance(tree, Mapping):
      return None
    key = part if part in tree or not str(part).isdigit() else int(part)
    tree = tree.get(key)
  return tree


def _flat(tree, prefix=()) -> dict[tuple, Any]:
  """``{key path: leaf}``; a bare leaf (a parameter's own path) is ``{(): leaf}``."""
  if not isinstance(tree, Mapping):
    return {} if tree is None else {prefix: tree}
  out = {}
  for k, v in tree.items():
    out.update(_flat(v, prefix + (k,)))
  return out


# ---------------------------------------------------------------- from a file


def is_file_reference(name) -> bool:
  """Whether a model name is ``path/to/file.py:ClassName`` (a user's module)."""
  return isinstance(name, str) and ".py:" in name


def load_class(reference: str):
  """The class named by ``path/to/file.py:ClassName`` (the file is imported, not parsed,
  with its folder put first on ``sys.path``, so that it imports the modules beside it)."""
  import importlib.util  # pylint: disable=import-outside-toplevel
  import pathlib  # pylint: disable=import-outside-toplevel
  path, _, attr = reference.rpartition(":")
  file = pathlib.Path(path)
  if not file.is_file():
    raise ConversionError(f"model {reference!r}: no file {path!r}; give path/to/file.py:ClassName")
  # The file's folder first on the path, as `python file.py` puts it, so that it imports the
  # modules next to it; kept there, for the imports its functions make when they run.
  folder = str(file.resolve().parent)
  if sys.path[:1] != [folder]:
    sys.path.insert(0, folder)
  module_spec = importlib.util.spec_from_file_location(f"jaxdepth_user_{file.stem}", file)
  module = importlib.util.module_from_spec(module_spec)
  # Registered while it runs, as an import does: dataclasses (a Linen module is one) look
  # their module up there to resolve string annotations (from __future__ import annotations).
  sys.modules[module_spec.name] = module
  try:
    module_spec.loader.exec_module(module)
  except Exception as e:  # pylint: disable=broad-except   # the user's file: say which
    sys.modules.pop(module_spec.name, None)
    raise ConversionError(f"model {reference!r}: importing {path!r} failed: "
                          f"{type(e).__name__}: {e}") from e
  cls = getattr(module, attr, None)
  if not isinstance(cls, type) or not issubclass(cls, (nn.Module, nnx.Module)):
    found = sorted(k for k, v in vars(module).items() if isinstance(v, type) and issubclass(
        v, (nn.Module, nnx.Module)) and v.__module__ == module.__name__)
    raise ConversionError(f"model {reference!r}: {path!r} defines no Flax module class "
                          f"{attr!r}; its module classes: {found or 'none'}")
  return cls


def from_file(reference: str, *, input_shape, num_classes: int, seed: int = 0,
              model_kwargs: Mapping[str, Any] | None = None) -> Converted:
  """Builds, initialises and converts the module class named by ``file.py:ClassName``.

  The class is constructed with ``num_classes=`` when it takes it (a Linen field
  or an NNX ``__init__`` argument), with the entries of ``model_kwargs`` it takes
  (the others, e.g. a config's arguments for its own zoo model, are left out), and
  for NNX with ``rngs=``; then initialised with ``seed`` and converted (and checked) by
  :func:`from_flax` on a standard-normal sample of shape ``(2, *input_shape)``. The
  mode flag is read from ``__call__``'s arguments: ``train`` (True in train mode), else
  Flax's ``deterministic`` (True in eval mode, ``eval_kwarg``); a ``training`` or
  ``is_training`` flag is refused (the command line cannot name a flag).
  """
  cls = load_class(reference)
  if issubclass(cls, nn.Module):
    takes = {f.name for f in dataclasses.fields(cls) if f.init} - {"parent", "name"}
  else:
    takes = set(inspect.signature(cls.__init__).parameters) - {"self"}
  kwargs = {k: v for k, v in (model_kwargs or {}).items() if k in takes}
  if "num_classes" in takes:
    kwargs["num_classes"] = num_classes
  if "rngs" in takes and not issubclass(cls, nn.Module):
    kwargs["rngs"] = nnx.Rngs(seed)
  try:
    module = cls(**kwargs)
  except TypeError as e:
    raise ConversionError(f"model {reference!r}: {cls.__name__}({', '.join(kwargs)}) failed "
                          f"({e}); the class must be constructible with num_classes (when it "
                          f"takes it) and the model_kwargs it takes (--set "
                          f"\"model_kwargs={{...}}\")") from e
  # A standard-normal sample, not zeros: the conversion's check compares the module and
  # the spec on it, and on zeros most networks output their (zero) biases whatever they are.
  init_key, sample_key, dropout_key = jax.random.split(jax.random.key(seed), 3)
  x = jax.random.normal(sample_key, (2, *input_shape), jnp.float32)
  flag = _mode_flag(module, "train", None, command_line=True)
  mode = {"eval_kwarg": flag.name} if flag.eval else {}
  if isinstance(module, nnx.Module):
    return from_nnx(module, x, **mode)
  keys = {"params": init_key, "dropout": dropout_key}
  eval_kwargs = _eval_kwargs(module, flag)
  try:
    variables = module.init(keys, x, **eval_kwargs)
  except Exception as e:  # pylint: disable=broad-except
    raise _error_of(e, x.shape, f"module {cls.__name__}") from e
  return from_flax(module, variables, x, **mode)
