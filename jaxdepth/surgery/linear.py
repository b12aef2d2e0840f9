"""Affine ops in one canonical form, and the exact algebra of composing them.

Every affine node a surgery pass touches (:class:`~jaxdepth.spec.Conv`,
:class:`~jaxdepth.spec.Dense`, eval-mode :class:`~jaxdepth.spec.BatchNorm`) is
read as a :class:`LinearOp`: a grouped 2-D correlation with an HWIO kernel
``(kh, kw, C_in / groups, C_out)``, a bias, a stride and explicit zero padding.
A Dense layer is the 1x1 case; a BatchNorm is the depthwise 1x1 case with kernel
``s = γ/√(σ²+ε)`` and bias ``β − μ s``. All arithmetic is float64 numpy.

**Sequential composition** (:func:`compose`, ``docs/surgery.md``). ``b ∘ a`` with
kernels ``k1, k2``, strides ``s1, s2`` and paddings ``p1, p2`` is one op with

* kernel size ``k1 + s1 (k2 − 1)``, stride ``s1 s2``, padding ``p1 + s1 p2``;
* kernel ``K[u] = Σ_{s1 i + t = u} K1[t] · K2[i]`` (a matrix product over the
  middle channels for every pair of taps), i.e. the full correlation of ``K1``
  with ``K2`` dilated by ``s1``;
* bias ``b2 + Σ_{taps, m} K2[·, ·, m, ·] b1[m]``;
* groups ``gcd(g1, g2)``: an output channel of ``b`` sees one group of middle
  channels, which sees ``g1/gcd`` groups of inputs, all inside one group of the
  ``gcd`` partition (so depthwise∘depthwise stays depthwise, depthwise∘full and
  full∘depthwise become full).

The composed op equals ``b ∘ a`` wherever ``b`` reads middle positions that ``a``
computes. Where ``b`` reads its zero padding, the original sees a zero while the
composed op sees ``a`` *extended* over the padding: ``a``'s kernel applied to the
zero-padded input, plus ``a``'s bias. The two agree only if that extension is 0,
i.e. ``a`` has a zero bias and its window at a padded middle position reads
nothing but input padding (a 1x1 conv without padding does; a 3x3 does not). So:

* ``p2 = 0`` (anything∘1x1, any ``b`` without padding): exact everywhere, whatever
  ``p1`` is;
* ``a`` a bias-free 1x1 (stride ``s``, no padding) ∘ anything: exact everywhere;
* otherwise (``k x k ∘ k x k`` with padding, or a biased op, e.g. a 1x1 conv
  with a folded BatchNorm, before a padded conv): exact only in the interior.
  The outputs that read the padding form a ring of ``ceil(p2 / s2)`` positions
  at each edge; :attr:`LinearOp.ring` records it (and how a ring of an earlier
  merge widens through later ones) and :attr:`LinearOp.exact` says whether the
  op is exact everywhere.

**Parallel sum** (:func:`add`): ``a(x) + b(x)`` for two ops reading the same
input with the same stride is one op whose kernel is the union of both windows
(each placed at its own offset). Exact everywhere: each tap reads the same
padded position as before. A residual block with an identity shortcut adds the
identity, a 1x1 kernel equal to 1 on the diagonal (:func:`identity`).

**Dead taps** (:func:`crop`): a tap that, at every output position, reads only
padding contributes nothing; edge rows/columns of such taps are cut and the
padding reduced. Exact. (Two 3x3 convs merged into a 5x5 on a 2x2 map become a
3x3 again.)
"""
from __future__ import annotations

import dataclasses
import math

import numpy as np

from jaxdepth import spec as S

__all__ = ["LinearOp", "NotMergeable", "bn_affine", "from_node", "to_node", "compose", "add", "identity",
           "crop", "is_affine"]


class NotMergeable(ValueError):
  """Two ops cannot be written as one op of this form (the message says why)."""


def is_affine(node: S.Node) -> bool:
  """Whether :func:`from_node` reads ``node`` (Conv, Dense, BatchNorm)."""
  return isinstance(node, (S.Conv, S.Dense, S.BatchNorm))


@dataclasses.dataclass(frozen=True, eq=False)
class LinearOp:
  """A grouped 2-D correlation with bias, on a known input shape.

  Attributes:
    kernel: ``(kh, kw, C_in // groups, C_out)`` float64.
    bias: ``(C_out,)`` float64.
    stride: ``(sh, sw)``.
    padding: ``((top, bottom), (left, right))``.
    groups: feature groups (contiguous blocks of channels).
    in_shape: the input shape without batch axis; ``(H, W, C)`` for a spatial op,
      any shape ending in ``C`` for a dense one (then the op is 1x1, stride 1,
      no padding, applied to every leading position).
    ring: output positions at each edge of the output where it may differ
      from the ops it replaces (0: equal everywhere).
    lossless: every composition that built it was exact everywhere (a ring it
      has then only carries the ring of an input op that already had one).
    has_bias: whether any source op had a bias (the result gets one).
  """
  kernel: np.ndarray
  bias: np.ndarray
  stride: tuple[int, int]
  padding: tuple[tuple[int, int], tuple[int, int]]
  groups: int
  in_shape: tuple[int, ...]
  ring: int = 0
  lossless: bool = True
  has_bias: bool = True

  @property
  def exact(self) -> bool:
    """Whether the op equals what it replaces at every output position."""
    return self.ring == 0

  @property
  def spatial(self) -> bool:
    return len(self.in_shape) == 3

  @property
  def cin(self) -> int:
    return self.in_shape[-1]

  @property
  def cout(self) -> int:
    return self.kernel.shape[-1]

  @property
  def out_shape(self) -> tuple[int, ...]:
    if not self.spatial:
      return self.in_shape[:-1] + (self.cout,)
    return (*(_out_size(n, k, s, lo, hi) for n, k, s, (lo, hi) in zip(
        self.in_shape[:2], self.kernel.shape[:2], self.stride, self.padding)), self.cout)

  @property
  def macs(self) -> int:
    """Multiply-accumulates per example (the :func:`jaxdepth.costs.count_macs` rule)."""
    kh, kw, ci, co = self.kernel.shape
    return math.prod(self.out_shape[:-1]) * kh * kw * ci * co

  @property
  def zero_bias(self) -> bool:
    return not np.any(self.bias)


def _out_size(n, k, s, lo, hi) -> int:
  return (n + lo + hi - k) // s + 1


# ----------------------------------------------------------------- nodes <-> ops


def bn_affine(node: S.BatchNorm, node_vars) -> tuple[np.ndarray, np.ndarray]:
  """``(s, t)`` of an eval-mode BatchNorm ``y = s x + t`` (float64): ``s = γ/√(σ²+ε)``, ``t = β − μ s``."""
  params, stats = node_vars["params"], node_vars["batch_stats"]
  s = np.asarray(params["scale"], np.float64) / np.sqrt(
      np.asarray(stats["var"], np.float64) + node.epsilon)
  return s, np.asarray(params["bias"], np.float64) - np.asarray(stats["mean"], np.float64) * s


def from_node(node: S.Node, node_vars, in_shape, *, ring: int = 0) -> LinearOp:
  """Reads a Conv, Dense or (eval-mode) BatchNorm node and its variables.

  Args:
    node: the node.
    node_vars: ``{"params": {...}, "batch_stats": {...}}`` of that node.
    in_shape: the node's input shape (no batch axis).
    ring: the node's known border ring (from earlier interior-mode merges).

  Returns:
    The :class:`LinearOp`.
  """
  in_shape = tuple(in_shape)
  params = node_vars["params"]
  c = in_shape[-1]
  one, zero = (1, 1), ((0, 0), (0, 0))
  if isinstance(node, S.Conv):
    kernel = np.asarray(params["kernel"], np.float64)
    bias = (np.asarray(params["bias"], np.float64) if node.bias
            else np.zeros(node.features))
    return LinearOp(kernel, bias, node.stride, node.padding, node.groups, in_shape,
                    ring=ring, has_bias=node.bias)
  if isinstance(node, S.Dense):
    kernel = np.asarray(params["kernel"], np.float64)[None, None]
    bias = (np.asarray(params["bias"], np.float64) if node.bias
            else np.zeros(node.features))
    return LinearOp(kernel, bias, one, zero, 1, in_shape, ring=ring, has_bias=node.bias)
  if isinstance(node, S.BatchNorm):
    s, t = bn_affine(node, node_vars)
    return LinearOp(s.reshape(1, 1, 1, c), t, one, zero, c, in_shape, ring=ring)
  raise TypeError(f"{type(node).__name__} is not an affine node (Conv, Dense, BatchNorm)")


def to_node(op: LinearOp, name: str, *, dense: bool = False, dtype=np.float32):
  """Writes ``op`` as a node named ``name`` and its variables.

  Args:
    op: the op.
    name: the node name.
    dense: write a :class:`~jaxdepth.spec.Dense` (needs a 1x1, stride-1,
      unpadded, ungrouped op) instead of a :class:`~jaxdepth.spec.Conv`.
    dtype: parameter dtype.

  Returns:
    ``(node, node_vars)``.
  """
  kh, kw, _, co = op.kernel.shape
  params = {"kernel": op.kernel.astype(dtype)}
  if op.has_bias:
    params["bias"] = op.bias.astype(dtype)
  elif np.any(op.bias):
    raise ValueError(f"{name}: op without a bias holds a non-zero bias")
  if dense or not op.spatial:
    if (kh, kw) != (1, 1) or op.groups != 1 or op.stride != (1, 1) or any(
        any(p) for p in op.padding):
      raise NotMergeable(f"{name}: a {kh}x{kw} op with groups={op.groups}, stride "
                         f"{op.stride} is not a Dense layer")
    params["kernel"] = params["kernel"][0, 0]
    return S.Dense(name, features=co, bias=op.has_bias), {"params": params}
  node = S.Conv(name, features=co, kernel=(kh, kw), stride=op.stride, padding=op.padding,
                groups=op.groups, bias=op.has_bias)
  return node, {"params": params}


# ------------------------------------------------------------------------ algebra


def _dense_groups(kernel: np.ndarray, groups: int, g: int) -> np.ndarray:
  """Kernel ``(kh, kw, C_in/groups, C_out)`` as ``g`` dense blocks ``(g, kh, kw, C_in/g, C_out/g)``.

  ``g`` divides ``groups``; each of the ``g`` blocks is block-diagonal with
  ``groups / g`` blocks of the original kernel.
  """
  kh, kw, ci, co = kernel.shape
  r, cog = groups // g, co // groups
  k6 = kernel.reshape(kh, kw, ci, g, r, cog)
  dense = np.einsum("hwiGaj,ab->Ghwaibj", k6, np.eye(r))
  return dense.reshape(g, kh, kw, r * ci, r * cog)


def _grouped(dense: np.ndarray) -> np.ndarray:
  """Inverse layout of :func:`_dense_groups` with ``groups == g``."""
  g, kh, kw, ci, co = dense.shape
  return dense.transpose(1, 2, 3, 0, 4).reshape(kh, kw, ci, g * co)


def _ceil_div(a: int, b: int) -> int:
  return -(-a // b)


def _widen(ring: int, k: int, s: int, lo: int, hi_read: int) -> int:
  """Ring of the output of a window op (kernel/window ``k``, stride ``s``) whose
  input has a ring ``ring``: outputs whose window touches the ring."""
  if ring <= 0:
    return 0
  return max(0, _ceil_div(ring + lo, s), _ceil_div(ring + hi_read, s))


def _compose_axis(n, a_axis, b_axis, a_zero_bias):
  """One spatial axis of :func:`compose`.

  Returns ``(k, s, (lo, hi), exact, new_ring, read)`` where ``read`` is
  ``(lo2, hi_read2)``, the padding of ``b`` that ``b`` actually reads.
  """
  k1, s1, (lo1, hi1) = a_axis
  k2, s2, (lo2, hi2) = b_axis
  n1 = _out_size(n, k1, s1, lo1, hi1)
  n2 = _out_size(n1, k2, s2, lo2, hi2)
  k, s, lo = k1 + s1 * (k2 - 1), s1 * s2, lo1 + s1 * lo2
  hi = max(0, s * (n2 - 1) + k - lo - n)
  if _out_size(n, k, s, lo, hi) != n2:
    raise NotMergeable(f"the merged window (kernel {k}, stride {s}) cannot reproduce the "
                       f"{n2} outputs of the original pair on a size-{n} axis")
  hi_read2 = s2 * (n2 - 1) + k2 - lo2 - n1   # padding b reads at the far edge
  lo_zero = a_zero_bias and k1 - 1 - lo1 - s1 < 0      # a at middle -1 reads only padding
  hi_zero = a_zero_bias and s1 * n1 - lo1 >= n         # a at middle n1 reads only padding
  new_ring = 0
  if lo2 > 0 and not lo_zero:
    new_ring = max(new_ring, _ceil_div(lo2, s2))
  if hi_read2 > 0 and not hi_zero:
    new_ring = max(new_ring, _ceil_div(hi_read2, s2))
  return k, s, (lo, hi), new_ring == 0, new_ring, (lo2, hi_read2)


def compose(a: LinearOp, b: LinearOp) -> LinearOp:
  """The single op equal to ``b ∘ a`` (see the module docstring for where).

  Args:
    a: the first op.
    b: the second op; ``b.in_shape`` must be ``a.out_shape``.

  Returns:
    The composed :class:`LinearOp`; ``exact`` is False and ``ring`` positive
    where it differs from ``b ∘ a`` near the border.

  Raises:
    NotMergeable: shapes do not chain or the output grid cannot be reproduced.
  """
  if a.out_shape != b.in_shape:
    raise NotMergeable(f"output shape {a.out_shape} does not feed input shape {b.in_shape}")
  g = math.gcd(a.groups, b.groups)
  ka = _dense_groups(a.kernel, a.groups, g)          # (g, kh1, kw1, ci, cm)
  kb = _dense_groups(b.kernel, b.groups, g)          # (g, kh2, kw2, cm, co)
  (sh, sw) = a.stride
  kh = ka.shape[1] + sh * (kb.shape[1] - 1)
  kw = ka.shape[2] + sw * (kb.shape[2] - 1)
  k = np.zeros((g, kh, kw, ka.shape[3], kb.shape[4]))
  ka_rows = ka.reshape(g, -1, ka.shape[4])                # (g, kh1 kw1 ci, cm)
  for i in range(kb.shape[1]):
    for j in range(kb.shape[2]):
      k[:, sh * i:sh * i + ka.shape[1], sw * j:sw * j + ka.shape[2]] += np.matmul(
          ka_rows, kb[:, i, j]).reshape(g, *ka.shape[1:4], kb.shape[4])
  bias = b.bias + np.matmul(a.bias.reshape(g, 1, -1), kb.sum(axis=(1, 2))).reshape(-1)
  ring, lossless = max(a.ring, b.ring), a.lossless and b.lossless
  stride, padding = (1, 1), ((0, 0), (0, 0))
  if a.spatial:
    axes = [_compose_axis(n, (a.kernel.shape[d], a.stride[d], a.padding[d]),
                          (b.kernel.shape[d], b.stride[d], b.padding[d]), a.zero_bias)
            for d, n in enumerate(a.in_shape[:2])]
    stride = tuple(ax[1] for ax in axes)
    padding = tuple(ax[2] for ax in axes)
    lossless = lossless and all(ax[3] for ax in axes)
    ring = max(max(ax[4] for ax in axes), b.ring,
               *(_widen(a.ring, b.kernel.shape[d], b.stride[d], *axes[d][5]) for d in (0, 1)))
  return LinearOp(_grouped(k), bias, stride, padding, g, a.in_shape, ring=ring,
                  lossless=lossless, has_bias=a.has_bias or b.has_bias)


def identity(in_shape) -> LinearOp:
  """The identity on ``in_shape`` as a depthwise 1x1 op (a residual shortcut)."""
  c = in_shape[-1]
  return LinearOp(np.ones((1, 1, 1, c)), np.zeros(c), (1, 1), ((0, 0), (0, 0)), c,
                  tuple(in_shape), has_bias=False)


def add(a: LinearOp, b: LinearOp) -> LinearOp:
  """The single op equal to ``a(x) + b(x)`` everywhere.

  Args:
    a, b: ops on the same input with the same stride and output shape.

  Returns:
    The sum as one :class:`LinearOp` (kernel: the union of both windows).

  Raises:
    NotMergeable: different inputs, strides or output shapes.
  """
  if a.in_shape != b.in_shape or a.out_shape != b.out_shape:
    raise NotMergeable(f"ops on {a.in_shape} -> {a.out_shape} and {b.in_shape} -> "
                       f"{b.out_shape} do not run in parallel")
  if a.spatial and a.stride != b.stride:
    raise NotMergeable(f"strides {a.stride} and {b.stride} differ")
  g = math.gcd(a.groups, b.groups)
  da, db = _dense_groups(a.kernel, a.groups, g), _dense_groups(b.kernel, b.groups, g)
  size, offsets, padding = [], [], []
  for d in range(2):
    lo_a, lo_b = a.padding[d][0], b.padding[d][0]
    ka, kb = a.kernel.shape[d], b.kernel.shape[d]
    lo = max(lo_a, lo_b) if a.spatial else 0
    k = max(ka - lo_a, kb - lo_b) + lo if a.spatial else 1
    if a.spatial:
      n, n_out, s = a.in_shape[d], a.out_shape[d], a.stride[d]
      hi = max(0, s * (n_out - 1) + k - lo - n)
      if _out_size(n, k, s, lo, hi) != n_out:
        raise NotMergeable("the union window cannot reproduce the output grid")
      padding.append((lo, hi))
    size.append(k)
    offsets.append((lo - lo_a, lo - lo_b) if a.spatial else (0, 0))
  k = np.zeros((g, size[0], size[1], da.shape[3], da.shape[4]))
  for dense, (oh, ow) in ((da, (offsets[0][0], offsets[1][0])),
                          (db, (offsets[0][1], offsets[1][1]))):
    k[:, oh:oh + dense.shape[1], ow:ow + dense.shape[2]] += dense
  return LinearOp(_grouped(k), a.bias + b.bias, a.stride if a.spatial else (1, 1),
                  tuple(padding) if a.spatial else ((0, 0), (0, 0)), g, a.in_shape,
                  ring=max(a.ring, b.ring), lossless=a.lossless and b.lossless,
                  has_bias=a.has_bias or b.has_bias)


def crop(op: LinearOp) -> LinearOp:
  """Cuts edge taps that read only padding at every output position (exact)."""
  if not op.spatial:
    return op
  cuts, padding = [], []
  for d in range(2):
    n, k, s, (lo, hi) = op.in_shape[d], op.kernel.shape[d], op.stride[d], op.padding[d]
    n_out = op.out_shape[d]
    first = max(0, lo - s * (n_out - 1))      # smallest tap reading x[0..n-1] somewhere
    last = min(k - 1, n - 1 + lo)             # largest such tap
    if first > last:                          # every tap reads padding: leave it alone
      first, last = 0, k - 1
    cuts.append((first, last + 1))
    padding.append((lo - first, hi - (k - 1 - last)))
  (h0, h1), (w0, w1) = cuts
  if (h0, h1, w0, w1) == (0, op.kernel.shape[0], 0, op.kernel.shape[1]):
    return op
  return dataclasses.replace(op, kernel=op.kernel[h0:h1, w0:w1], padding=tuple(padding))
