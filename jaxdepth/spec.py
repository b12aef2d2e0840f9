"""The architecture as data.

A network is a :class:`Spec`: an input shape and a tuple of *nodes*. Every node is
a frozen, hashable dataclass with a local ``name``; containers (:class:`Sequential`,
:class:`Block`) open a name scope, so every node has a stable hierarchical path
such as ``layer2/0/relu1``. Variables produced by :class:`jaxdepth.Network` are
keyed by exactly these paths.

Layouts are channel-last: images are ``(B, H, W, C)``, token sequences
``(B, L, D)``. Shapes in this module never include the batch axis.

Every transform in jaxdepth maps ``(spec, variables) -> (spec, variables)``; the
helpers at the bottom of this file (:func:`replace_node`, :func:`with_identity`,
:func:`map_nodes`) are the structural edits they share.

Example::

    spec = Spec(input_shape=(8, 8, 1), layers=(
        Conv("conv", features=16), BatchNorm("bn"), Act("relu"),
        Pool("pool", "global_avg"), Dense("head", features=10)))
    spec.sites()          # ('relu',)
    Spec.from_json(spec.to_json()) == spec   # True
"""
from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any, ClassVar

__all__ = [
    "Node", "Conv", "BatchNorm", "LayerNorm", "GroupNorm", "Dense", "Act", "Pool", "Flatten",
    "Dropout", "Sequential", "Block", "Concat", "Spec", "SpecError", "ACTIVATIONS",
    "node_from_dict", "replace_node", "with_identity", "site_paths", "map_nodes",
]

ACTIVATIONS = ("relu", "relu6", "gelu", "gelu_tanh", "silu", "leaky_relu", "hard_swish",
               "identity")
POOL_KINDS = ("max", "avg", "global_avg", "adaptive_avg")
SEP = "/"


class SpecError(ValueError):
  """An invalid spec; the message names the node and what is wrong."""


def _is_int(value) -> bool:
  """An int that is not a bool (``True`` is an int in Python, never a size here)."""
  return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value) -> bool:
  return isinstance(value, (int, float)) and not isinstance(value, bool)


def _number(node: str, what: str, value) -> None:
  if not _is_number(value):
    raise SpecError(f"node {node!r}: {what} must be a number, got {value!r}")


def _pair(value, what: str, node: str) -> tuple[int, int]:
  if _is_int(value):
    return (value, value)
  if isinstance(value, (tuple, list)) and len(value) == 2 and all(
      _is_int(v) for v in value):
    return (int(value[0]), int(value[1]))
  raise SpecError(f"node {node!r}: {what} must be an int or a pair of ints, got {value!r}")


def _padding(value, node: str) -> tuple[tuple[int, int], tuple[int, int]]:
  """Normalises ``p``, ``(ph, pw)`` or ``((top, bottom), (left, right))``."""
  if _is_int(value):
    return ((value, value), (value, value))
  if isinstance(value, (tuple, list)) and len(value) == 2:
    if all(_is_int(v) for v in value):
      return ((value[0], value[0]), (value[1], value[1]))
    if all(isinstance(v, (tuple, list)) and len(v) == 2 and all(_is_int(x) for x in v)
           for v in value):
      return tuple((int(a), int(b)) for a, b in value)  # type: ignore[return-value]
  raise SpecError(
      f"node {node!r}: padding must be an int, (ph, pw) or ((top, bottom), (left, right)), "
      f"got {value!r}")


def _named_padding(value, kernel, stride, node: str):
  """``"VALID"`` / ``"SAME"`` (stride 1 only) as explicit ``((top, bottom), (left, right))``."""
  if not isinstance(value, str):
    return value
  if value.upper() == "VALID":
    return ((0, 0), (0, 0))
  if value.upper() == "SAME" and tuple(stride) == (1, 1):
    return tuple(((k - 1) // 2, k - 1 - (k - 1) // 2) for k in kernel)
  if value.upper() == "SAME":
    raise SpecError(f"node {node!r}: padding 'SAME' with stride {tuple(stride)} depends on the "
                    f"input size; give explicit numbers, e.g. jax.lax.padtype_to_pads((H, W), "
                    f"{tuple(kernel)}, {tuple(stride)}, 'SAME')")
  raise SpecError(f"node {node!r}: padding {value!r} is not 'SAME', 'VALID' or numbers")


def _set(obj, **fields):
  for k, v in fields.items():
    object.__setattr__(obj, k, v)


def _check_bias(node) -> None:
  if not isinstance(node.bias, bool):   # a JSON "false" (a string) would be a bias
    raise SpecError(f"node {node.name!r}: bias must be true or false, got {node.bias!r}")


def _check_epsilon(node) -> None:
  _number(node.name, "epsilon", node.epsilon)
  if not (math.isfinite(node.epsilon) and node.epsilon > 0):
    raise SpecError(f"node {node.name!r}: epsilon must be a finite number > 0, got "
                    f"{node.epsilon}")


_REGISTRY: dict[str, type[Node]] = {}


@dataclasses.dataclass(frozen=True)
class Node:
  """Base of every spec node. ``kind`` is the JSON tag of the subclass."""
  name: str
  kind: ClassVar[str] = "node"

  def __init_subclass__(cls, **kw):
    super().__init_subclass__(**kw)
    if "kind" in cls.__dict__:
      _REGISTRY[cls.kind] = cls

  def __post_init__(self):
    if not isinstance(self.name, str) or not self.name or SEP in self.name:
      raise SpecError(f"{self.kind} node name must be a non-empty string without "
                      f"'{SEP}', got {self.name!r}")

  def children(self) -> tuple[Node, ...]:
    return ()

  def to_dict(self) -> dict[str, Any]:
    out: dict[str, Any] = {"kind": self.kind}
    for f in dataclasses.fields(self):
      v = getattr(self, f.name)
      if isinstance(v, tuple) and v and isinstance(v[0], Node):
        v = [c.to_dict() for c in v]
      out[f.name] = _jsonable(v)
    return out

  # Shape inference: returns the output shape or raises SpecError.
  def output_shape(self, shape: tuple[int, ...], path: str) -> tuple[int, ...]:
    raise NotImplementedError


def _jsonable(v):
  if isinstance(v, tuple):
    return [_jsonable(x) for x in v]
  return v


def _tupled(v):
  if isinstance(v, list):
    return tuple(_tupled(x) for x in v)
  return v


def node_from_dict(d: dict[str, Any], prefix: str = "") -> Node:
  """Inverse of :meth:`Node.to_dict`; refuses unknown kinds and fields.

  Args:
    d: the node as JSON data.
    prefix: the path of its container (``"layer1/0/"``), used to name the node
      in errors by its full path.
  """
  if not isinstance(d, dict) or "kind" not in d:
    raise SpecError(f"{f'in {prefix[:-1]!r}: ' if prefix else ''}a node must be a JSON object "
                    f"with a 'kind', got {d!r}")
  name = d.get("name")
  path = prefix + name if isinstance(name, str) else name
  kind = d["kind"]
  if kind not in _REGISTRY:
    raise SpecError(f"node {path!r}: unknown node kind {kind!r}; "
                    f"known kinds: {sorted(_REGISTRY)}")
  cls = _REGISTRY[kind]
  names = {f.name for f in dataclasses.fields(cls)}
  unknown = set(d) - names - {"kind"}
  if unknown:
    raise SpecError(f"node {path!r} ({kind}): unknown fields {sorted(unknown)}")
  kw = {}
  for k, v in d.items():
    if k == "kind":
      continue
    if k in ("layers", "branch", "shortcut", "post"):
      if not isinstance(v, list):
        raise SpecError(f"node {path!r} ({kind}): {k} must be a list of nodes, got {v!r}")
      kw[k] = tuple(node_from_dict(c, f"{path}{SEP}") for c in v)
    elif k == "branches":
      if not isinstance(v, list) or not all(isinstance(b, list) for b in v):
        raise SpecError(f"node {path!r} ({kind}): branches must be a list of node lists, "
                        f"got {v!r}")
      kw[k] = tuple(tuple(node_from_dict(c, f"{path}{SEP}") for c in b) for b in v)
    else:
      kw[k] = _tupled(v)
  try:
    return cls(**kw)
  except TypeError as e:
    raise SpecError(f"node {path!r} ({kind}): {e}") from None
  except SpecError as e:   # the node's own check names it locally: name it by its path
    if path == name:
      raise
    raise SpecError(str(e).replace(f"node {name!r}", f"node {path!r}", 1)) from None


def _spatial(shape, path, kind):
  if len(shape) != 3:
    raise SpecError(f"node {path!r}: {kind} needs an (H, W, C) input, got shape {shape}")
  return shape


def _conv_out(size: int, k: int, s: int, lo: int, hi: int) -> int:
  return (size + lo + hi - k) // s + 1


# --------------------------------------------------------------------------- layers


@dataclasses.dataclass(frozen=True)
class Conv(Node):
  """2-D convolution, HWIO kernel of shape ``(kh, kw, C_in // groups, features)``.

  ``padding`` is explicit zero padding (PyTorch convention), ``((top, bottom),
  (left, right))`` after normalisation; an int means the same on every side.
  ``"VALID"`` is no padding and ``"SAME"`` (stride 1) pads ``k - 1`` in all,
  ``(k - 1) // 2`` before and the rest after, as XLA does; a strided ``"SAME"``
  depends on the input size, so give it as explicit numbers
  (``jax.lax.padtype_to_pads`` computes them; :func:`jaxdepth.from_flax` does).
  """
  features: int = 0
  kernel: tuple[int, int] = (3, 3)
  stride: tuple[int, int] = (1, 1)
  padding: tuple[tuple[int, int], tuple[int, int]] = ((0, 0), (0, 0))
  groups: int = 1
  bias: bool = False
  kind: ClassVar[str] = "conv"

  def __post_init__(self):
    super().__post_init__()
    _set(self, kernel=_pair(self.kernel, "kernel", self.name),
         stride=_pair(self.stride, "stride", self.name))
    _set(self, padding=_padding(_named_padding(self.padding, self.kernel, self.stride,
                                               self.name), self.name))
    if not _is_int(self.features) or self.features <= 0:
      raise SpecError(f"node {self.name!r}: conv features must be a positive int, "
                      f"got {self.features!r}")
    if min(self.kernel) <= 0:
      raise SpecError(f"node {self.name!r}: kernel must be positive, got {self.kernel}")
    if min(self.stride) <= 0:
      raise SpecError(f"node {self.name!r}: stride must be positive, got {self.stride}")
    if min(min(p) for p in self.padding) < 0:
      raise SpecError(f"node {self.name!r}: padding must be >= 0, got {self.padding}")
    if not _is_int(self.groups) or self.groups <= 0:
      raise SpecError(f"node {self.name!r}: groups must be a positive int, got {self.groups!r}")
    if self.features % self.groups:
      raise SpecError(f"node {self.name!r}: features={self.features} is not divisible by "
                      f"groups={self.groups}")
    _check_bias(self)

  def output_shape(self, shape, path):
    h, w, c = _spatial(shape, path, "conv")
    if c % self.groups:
      raise SpecError(f"node {path!r}: input channels {c} not divisible by groups={self.groups}")
    (pt, pb), (pl, pr) = self.padding
    oh = _conv_out(h, self.kernel[0], self.stride[0], pt, pb)
    ow = _conv_out(w, self.kernel[1], self.stride[1], pl, pr)
    if oh <= 0 or ow <= 0:
      raise SpecError(f"node {path!r}: kernel {self.kernel} with padding {self.padding} does "
                      f"not fit the {h}x{w} input")
    return (oh, ow, self.features)


@dataclasses.dataclass(frozen=True)
class BatchNorm(Node):
  """Batch normalisation over the last axis. ``momentum`` is Flax's (0.9 = PyTorch 0.1)."""
  momentum: float = 0.9
  epsilon: float = 1e-5
  kind: ClassVar[str] = "batch_norm"

  def __post_init__(self):
    super().__post_init__()
    _number(self.name, "momentum", self.momentum)
    _number(self.name, "epsilon", self.epsilon)
    if not 0.0 <= self.momentum < 1.0:
      raise SpecError(f"node {self.name!r}: momentum must be in [0, 1), got {self.momentum}")
    _check_epsilon(self)

  def output_shape(self, shape, path):
    return shape


@dataclasses.dataclass(frozen=True)
class LayerNorm(Node):
  """Layer normalisation over the last axis (transformers)."""
  epsilon: float = 1e-5
  kind: ClassVar[str] = "layer_norm"

  def __post_init__(self):
    super().__post_init__()
    _check_epsilon(self)

  def output_shape(self, shape, path):
    return shape


@dataclasses.dataclass(frozen=True)
class GroupNorm(Node):
  """Group normalisation (Wu and He, "Group Normalization", ECCV 2018).

  The channels (last axis) are split into ``groups`` groups of ``C / groups``
  consecutive channels; each example is normalised per group over every
  non-batch axis (``(H, W, C / groups)`` of an image, ``(N, C / groups)`` of a
  token sequence), then scaled and shifted per channel:
  ``y = γ_c (x − μ_g) / √(σ²_g + ε) + β_c``. Parameters ``scale`` and ``bias``
  of shape ``(C,)``; no running statistics (train and eval mode compute the
  same thing). The statistics depend on the data, so surgery merges nothing
  across it and cuts no channel through it.
  """
  groups: int = 32
  epsilon: float = 1e-5
  kind: ClassVar[str] = "group_norm"

  def __post_init__(self):
    super().__post_init__()
    if not _is_int(self.groups) or self.groups <= 0:
      raise SpecError(f"node {self.name!r}: groups must be a positive int, got {self.groups!r}")
    _check_epsilon(self)

  def output_shape(self, shape, path):
    if not shape or shape[-1] % self.groups:
      raise SpecError(f"node {path!r}: {self.groups} groups do not divide the "
                      f"{shape[-1] if shape else 0} channels of an input of shape {shape}; "
                      f"choose groups dividing the channel count")
    return shape


@dataclasses.dataclass(frozen=True)
class Dense(Node):
  """Affine map on the last axis, kernel ``(D_in, features)``."""
  features: int = 0
  bias: bool = True
  kind: ClassVar[str] = "dense"

  def __post_init__(self):
    super().__post_init__()
    if not _is_int(self.features) or self.features <= 0:
      raise SpecError(f"node {self.name!r}: dense features must be a positive int, "
                      f"got {self.features!r}")
    _check_bias(self)

  def output_shape(self, shape, path):
    if not shape:
      raise SpecError(f"node {path!r}: dense needs at least one axis")
    return shape[:-1] + (self.features,)


@dataclasses.dataclass(frozen=True)
class Act(Node):
  """An activation *site*: the place where the depth-reduction methods look.

  ``fn`` is one of :data:`ACTIVATIONS`: ``relu``, ``relu6``, ``gelu`` (exact,
  erf), ``gelu_tanh`` (the tanh approximation, Flax's ``nn.gelu`` default),
  ``silu`` (= swish, ``x sigmoid(x)``), ``leaky_relu`` (slope
  ``negative_slope`` below 0), ``hard_swish`` (``x relu6(x + 3) / 6``) or
  ``identity``. Each is the identity on its ON side up to a vanishing error and
  the sign of the pre-activation is the ON/OFF state. A site whose ``fn`` is
  ``identity`` has been removed (baked in); every other ``Act`` is a live site,
  listed by :meth:`Spec.sites` in call order.
  """
  fn: str = "relu"
  negative_slope: float = 0.01
  kind: ClassVar[str] = "act"

  def __post_init__(self):
    super().__post_init__()
    if self.fn not in ACTIVATIONS:
      raise SpecError(f"node {self.name!r}: unknown activation {self.fn!r}; "
                      f"expected one of {ACTIVATIONS}")
    if not _is_number(self.negative_slope) or not math.isfinite(
        self.negative_slope):
      raise SpecError(f"node {self.name!r}: negative_slope must be a finite number, "
                      f"got {self.negative_slope!r}")
    if self.fn != "leaky_relu":
      # Only leaky_relu reads it: other sites (a leaky_relu baked to the identity included)
      # hold the default, so that they equal what their JSON, which omits it, reads back.
      _set(self, negative_slope=0.01)

  def to_dict(self):
    out = super().to_dict()
    if self.fn != "leaky_relu":   # only leaky_relu reads it: keep other sites' JSON as it was
      out.pop("negative_slope")
    return out

  def output_shape(self, shape, path):
    return shape


@dataclasses.dataclass(frozen=True)
class Pool(Node):
  """Pooling, ``op`` in ``max``, ``avg``, ``global_avg``, ``adaptive_avg``.

  ``max``/``avg`` use ``window``, ``stride`` (default: the window), ``padding`` (PyTorch
  semantics: max pads with -inf, avg counts the padding); ``global_avg`` maps
  ``(H, W, C) -> (C,)`` (and a token sequence ``(N, C) -> (C,)``, the mean over the
  tokens); ``adaptive_avg`` maps to ``output_size`` with PyTorch's bin rule."""
  op: str = "max"
  window: tuple[int, int] = (2, 2)
  stride: tuple[int, int] | None = None
  padding: tuple[tuple[int, int], tuple[int, int]] = ((0, 0), (0, 0))
  output_size: tuple[int, int] = (1, 1)
  kind: ClassVar[str] = "pool"

  def __post_init__(self):
    super().__post_init__()
    if self.op not in POOL_KINDS:
      raise SpecError(f"node {self.name!r}: unknown pool op {self.op!r}; "
                      f"expected one of {POOL_KINDS}")
    _set(self, window=_pair(self.window, "window", self.name))
    _set(self, stride=_pair(self.window if self.stride is None else self.stride, "stride",
                            self.name),
         padding=_padding(self.padding, self.name),
         output_size=_pair(self.output_size, "output_size", self.name))
    if min(self.window) <= 0 or min(self.stride) <= 0 or min(self.output_size) <= 0:
      raise SpecError(f"node {self.name!r}: window, stride and output_size must be positive")
    if any(2 * max(p) > w for p, w in zip(self.padding, self.window)):
      raise SpecError(f"node {self.name!r}: padding {self.padding} must be at most half the "
                      f"window {self.window}")

  def output_shape(self, shape, path):
    if self.op == "global_avg" and len(shape) == 2:    # the mean of a token sequence
      return shape[-1:]
    h, w, c = _spatial(shape, path, "pool")
    if self.op == "global_avg":
      return (c,)
    if self.op == "adaptive_avg":
      return (*self.output_size, c)
    (pt, pb), (pl, pr) = self.padding
    oh = _conv_out(h, self.window[0], self.stride[0], pt, pb)
    ow = _conv_out(w, self.window[1], self.stride[1], pl, pr)
    if oh <= 0 or ow <= 0:
      raise SpecError(f"node {path!r}: pool window {self.window} does not fit the {h}x{w} input")
    return (oh, ow, c)


@dataclasses.dataclass(frozen=True)
class Flatten(Node):
  """Flattens every non-batch axis (channel-last order)."""
  kind: ClassVar[str] = "flatten"

  def output_shape(self, shape, path):
    return (math.prod(shape),)


@dataclasses.dataclass(frozen=True)
class Dropout(Node):
  """Dropout with probability ``rate`` in train mode; the identity in eval mode."""
  rate: float = 0.5
  kind: ClassVar[str] = "dropout"

  def __post_init__(self):
    super().__post_init__()
    _number(self.name, "dropout rate", self.rate)
    if not 0.0 <= self.rate < 1.0:
      raise SpecError(f"node {self.name!r}: dropout rate must be in [0, 1), got {self.rate}")

  def output_shape(self, shape, path):
    return shape


# ------------------------------------------------------------------------ containers


def _nodes(value, where: str, what: str) -> tuple:
  """A container's ``layers`` / ``branch`` / ... as a tuple; one node (not in a list) is
  refused by name, since iterating it would fail with a raw TypeError."""
  if isinstance(value, Node) or isinstance(value, (str, bytes, Mapping)) or not isinstance(
      value, Iterable):
    raise SpecError(f"{where}: {what} must be a list of spec nodes, got {value!r}"
                    + (f"; put the one node in a list: {what}=[{type(value).__name__}(...)]"
                       if isinstance(value, Node) else ""))
  return tuple(value)


def _check_unique(nodes: tuple[Node, ...], where: str):
  seen: set[str] = set()
  for n in nodes:
    if not isinstance(n, Node):
      raise SpecError(f"{where}: expected spec nodes, got {n!r}")
    if n.name in seen:
      raise SpecError(f"{where}: duplicate name {n.name!r}")
    seen.add(n.name)


def _run_shapes(nodes, shape, prefix):
  for n in nodes:
    shape = n.output_shape(shape, prefix + n.name)
  return shape


@dataclasses.dataclass(frozen=True)
class Sequential(Node):
  """A named scope that runs its ``layers`` one after the other."""
  layers: tuple[Node, ...] = ()
  kind: ClassVar[str] = "sequential"

  def __post_init__(self):
    super().__post_init__()
    _set(self, layers=_nodes(self.layers, f"node {self.name!r}", "layers"))
    _check_unique(self.layers, f"node {self.name!r}")

  def children(self):
    return self.layers

  def output_shape(self, shape, path):
    return _run_shapes(self.layers, shape, path + SEP)


@dataclasses.dataclass(frozen=True)
class Block(Node):
  """A residual block: ``post(branch(x) + shortcut(x))``.

  An empty ``shortcut`` is the identity. ``post`` holds what follows the
  addition (ResNet's ``relu2``). Branch, shortcut and post share one name scope.
  """
  branch: tuple[Node, ...] = ()
  shortcut: tuple[Node, ...] = ()
  post: tuple[Node, ...] = ()
  kind: ClassVar[str] = "block"

  def __post_init__(self):
    super().__post_init__()
    where = f"node {self.name!r}"
    _set(self, branch=_nodes(self.branch, where, "branch"),
         shortcut=_nodes(self.shortcut, where, "shortcut"), post=_nodes(self.post, where, "post"))
    if not self.branch:
      raise SpecError(f"node {self.name!r}: a block needs a non-empty branch")
    _check_unique(self.branch + self.shortcut + self.post, f"node {self.name!r}")

  def children(self):
    return self.branch + self.shortcut + self.post

  @property
  def identity_shortcut(self) -> bool:
    return not self.shortcut

  def output_shape(self, shape, path):
    prefix = path + SEP
    b = _run_shapes(self.branch, shape, prefix)
    s = _run_shapes(self.shortcut, shape, prefix)
    if b != s:
      raise SpecError(f"node {path!r}: branch output shape {b} does not match shortcut "
                      f"output shape {s}; add a shortcut projection or fix the channels")
    return _run_shapes(self.post, b, prefix)


@dataclasses.dataclass(frozen=True)
class Concat(Node):
  """Parallel branches joined on the channel axis: ``post(concat_i branch_i(x))``.

  ``branches`` is a tuple of node lists; an empty list is the identity (a
  DenseNet layer is ``Concat(branches=((), (bn, relu, conv)))``: the input and the
  new features side by side). Every branch keeps the leading axes of the input
  (``(H, W)`` or the tokens) and the outputs are concatenated on the last axis
  in order. ``post`` runs after the concatenation. Branches and post share one
  name scope, as in :class:`Block`.
  """
  branches: tuple[tuple[Node, ...], ...] = ()
  post: tuple[Node, ...] = ()
  kind: ClassVar[str] = "concat"

  def __post_init__(self):
    super().__post_init__()
    if not isinstance(self.branches, (tuple, list)) or any(
        not isinstance(b, (tuple, list)) for b in self.branches):
      raise SpecError(f"node {self.name!r}: concat branches must be a tuple of node tuples, "
                      f"got {self.branches!r}")
    _set(self, branches=tuple(tuple(b) for b in self.branches), post=tuple(self.post))
    if len(self.branches) < 2:
      raise SpecError(f"node {self.name!r}: a concat needs at least two branches, "
                      f"got {len(self.branches)}")
    _check_unique(sum(self.branches, ()) + self.post, f"node {self.name!r}")

  def children(self):
    return sum(self.branches, ()) + self.post

  def to_dict(self):
    return {"kind": self.kind, "name": self.name,
            "branches": [[c.to_dict() for c in b] for b in self.branches],
            "post": [c.to_dict() for c in self.post]}

  def joined_shape(self, shape, path) -> tuple[int, ...]:
    """The shape after the concatenation (before ``post``)."""
    outs = [_run_shapes(b, shape, path + SEP) for b in self.branches]
    if not outs[0] or any(o[:-1] != outs[0][:-1] or not o for o in outs):
      raise SpecError(f"node {path!r}: concat branch output shapes {outs} differ before the "
                      f"last axis; every branch must keep the leading axes")
    return outs[0][:-1] + (sum(o[-1] for o in outs),)

  def output_shape(self, shape, path):
    return _run_shapes(self.post, self.joined_shape(shape, path), path + SEP)


# ------------------------------------------------------------------------------ spec


@dataclasses.dataclass(frozen=True)
class Spec:
  """A whole network: the input shape (no batch axis) and the top-level layers.

  A spec is validated on construction (shapes, channels, names), hashable, and
  round-trips losslessly through :meth:`to_json` / :meth:`from_json`.
  """
  input_shape: tuple[int, ...]
  layers: tuple[Node, ...]
  name: str = "network"

  def __post_init__(self):
    if isinstance(self.input_shape, (str, bytes)) or not isinstance(self.input_shape, Iterable):
      raise SpecError(f"spec {self.name!r}: input_shape must be a list of positive ints, e.g. "
                      f"[28, 28, 1], got {self.input_shape!r}")
    _set(self, input_shape=tuple(self.input_shape),
         layers=_nodes(self.layers, f"spec {self.name!r}", "layers"))
    if not self.input_shape or any(not _is_int(d) or d <= 0 for d in self.input_shape):
      raise SpecError(f"spec {self.name!r}: input_shape must be positive ints, "
                      f"got {self.input_shape!r}")
    _check_unique(self.layers, f"spec {self.name!r}")
    self.output_shape  # validates every node's shape

  # -- traversal ---------------------------------------------------------------

  def walk(self) -> Iterator[tuple[str, Node]]:
    """Yields ``(path, node)`` for every node, parents first, in call order."""
    def rec(nodes, prefix):
      for n in nodes:
        path = prefix + n.name
        yield path, n
        yield from rec(n.children(), path + SEP)
    yield from rec(self.layers, "")

  def node(self, path: str) -> Node:
    """The node at ``path``; a clear error if there is none."""
    for p, n in self.walk():
      if p == path:
        return n
    raise KeyError(f"spec {self.name!r} has no node {path!r}")

  def sites(self) -> tuple[str, ...]:
    """Paths of the live activation sites (``Act`` with ``fn != 'identity'``), in call order."""
    return tuple(p for p, n in self.walk() if isinstance(n, Act) and n.fn != "identity")

  def shapes(self) -> dict[str, tuple[tuple[int, ...], tuple[int, ...]]]:
    """``path -> (input_shape, output_shape)`` for every node (no batch axis)."""
    out = {}

    def rec(nodes, shape, prefix):
      for n in nodes:
        path = prefix + n.name
        if isinstance(n, Sequential):
          o = rec(n.layers, shape, path + SEP)
        elif isinstance(n, Block):
          b = rec(n.branch, shape, path + SEP)
          rec(n.shortcut, shape, path + SEP)
          o = rec(n.post, b, path + SEP)
        elif isinstance(n, Concat):
          for b in n.branches:
            rec(b, shape, path + SEP)
          o = rec(n.post, n.joined_shape(shape, path), path + SEP)
        else:
          o = n.output_shape(shape, path)
        out[path] = (shape, o)
        shape = o
      return shape

    rec(self.layers, self.input_shape, "")
    return out

  @property
  def output_shape(self) -> tuple[int, ...]:
    return _run_shapes(self.layers, self.input_shape, "")

  # -- serialisation -------------------------------------------------------------

  def to_dict(self) -> dict[str, Any]:
    return {"name": self.name, "input_shape": list(self.input_shape),
            "layers": [n.to_dict() for n in self.layers]}

  def to_json(self, **kw) -> str:
    return json.dumps(self.to_dict(), **kw)

  @classmethod
  def from_dict(cls, d: dict[str, Any]) -> Spec:
    if not isinstance(d, dict) or "layers" not in d or "input_shape" not in d:
      raise SpecError("a spec must be a JSON object with 'input_shape' and 'layers'")
    if not isinstance(d["layers"], list):
      raise SpecError(f"spec {d.get('name')!r}: layers must be a list of nodes, "
                      f"got {d['layers']!r}")
    if not d["layers"]:   # in code, an empty spec is the identity (e.g. a prefix of a net)
      raise SpecError(f"spec {d.get('name')!r}: layers is empty; a spec needs at least one "
                      f"node")
    return cls(input_shape=d["input_shape"],
               layers=tuple(node_from_dict(n) for n in d["layers"]),
               name=d.get("name", "network"))

  @classmethod
  def from_json(cls, text: str) -> Spec:
    try:
      d = json.loads(text)
    except json.JSONDecodeError as e:
      raise SpecError(f"spec is not valid JSON: {e}") from None
    return cls.from_dict(d)


# ---------------------------------------------------------------------------- edits


def map_nodes(spec: Spec, fn: Callable[[str, Node], Node | tuple[Node, ...] | None]) -> Spec:
  """Rebuilds ``spec`` bottom-up, replacing each node by ``fn(path, node)``.

  ``fn`` sees a container after its children were mapped. It may return the node
  unchanged, a replacement node, a tuple of nodes (spliced in place) or ``None``
  (the node is deleted).
  """
  def rec(nodes, prefix):
    out = []
    for n in nodes:
      path = prefix + n.name
      if isinstance(n, Sequential):
        n = dataclasses.replace(n, layers=rec(n.layers, path + SEP))
      elif isinstance(n, Block):
        n = dataclasses.replace(n, branch=rec(n.branch, path + SEP),
                                shortcut=rec(n.shortcut, path + SEP),
                                post=rec(n.post, path + SEP))
      elif isinstance(n, Concat):
        n = dataclasses.replace(n, branches=tuple(rec(b, path + SEP) for b in n.branches),
                                post=rec(n.post, path + SEP))
      r = fn(path, n)
      if r is None:
        continue
      out.extend(r if isinstance(r, tuple) else (r,))
    return tuple(out)
  return dataclasses.replace(spec, layers=rec(spec.layers, ""))


def replace_node(spec: Spec, path: str, new: Node | tuple[Node, ...] | None) -> Spec:
  """Replaces (or deletes, with ``None``) the node at ``path``."""
  spec.node(path)  # raises a clear KeyError
  return map_nodes(spec, lambda p, n: new if p == path else n)


def check_spec(spec, call: str) -> None:
  """Refuses a ``spec`` argument that is not a :class:`Spec` (e.g. the variables, passed in
  its place or with the arguments swapped, a zoo name, a zoo function not called); ``call``
  shows the call's argument order."""
  if isinstance(spec, Spec):
    return
  if isinstance(spec, str) and spec.lstrip().startswith("{"):
    raise TypeError(f"{call}: spec must be a jaxdepth Spec, got a str holding JSON; read it "
                    f"first: jaxdepth.Spec.from_json(text)")
  if isinstance(spec, str):
    raise TypeError(f"{call}: spec must be a jaxdepth Spec, got the string {spec!r}; build "
                    f"the Spec first, e.g. jaxdepth.zoo.get({spec!r}) for a zoo model")
  if callable(spec) and isinstance(getattr(spec, "__name__", None), str):
    raise TypeError(f"{call}: spec must be a jaxdepth Spec, got the function {spec.__name__}; "
                    f"call it to build the Spec: {spec.__name__}()")
  raise TypeError(f"{call}: spec must be a jaxdepth Spec, got a {type(spec).__name__}; "
                  f"check the order of the arguments")


def site_paths(sites, what: str = "sites", of: str = "site paths") -> tuple[str, ...]:
  """``sites`` as a tuple of paths; one string is refused (it would be split into letters),
  and so are entries that are no strings (a gate array is no list of names).

  Raises:
    TypeError: ``sites`` is a string or holds a non-string (``what`` names the argument in
      the message, ``of`` what it collects).
  """
  if isinstance(sites, str):
    raise TypeError(f"{what} must be a collection of {of}, got the string {sites!r}; "
                    f"write [{sites!r}]")
  paths = tuple(sites)
  odd = next((p for p in paths if not isinstance(p, str)), None)
  if odd is not None:
    got = (f"a {sites.dtype} array of shape {tuple(sites.shape)}" if hasattr(sites, "dtype")
           else f"{type(odd).__name__} entries")
    hint = ("; for the sites a gate array turns off (or keeps) pass "
            "jaxdepth.methods.removed_sites(spec, gates) (or live_sites(spec, gates))"
            if of == "site paths" else "")
    raise TypeError(f"{what} must be a collection of {of}, got {got}{hint}")
  return paths


def with_identity(spec: Spec, sites) -> Spec:
  """Bakes the given sites in as identities (``Act(fn='identity')``).

  Raises:
    TypeError: ``sites`` is one string or a gate array (a collection of paths is wanted).
    KeyError: a name that is not a live site of ``spec``.
  """
  sites = set(site_paths(sites))
  unknown = sites - set(spec.sites())
  if unknown:
    raise KeyError(f"not live sites of spec {spec.name!r}: {sorted(unknown)}; "
                   f"live sites: {list(spec.sites())}")
  return map_nodes(spec, lambda p, n: dataclasses.replace(n, fn="identity")
                   if p in sites else n)
