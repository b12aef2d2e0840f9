"""Convolutions and max-pooling written the way XLA:CPU runs them fast, forward and backward.

XLA:CPU hands a convolution to its fast kernels only in the canonical layout
(``NHWC`` x ``HWIO``, no dilation). Automatic differentiation of
``lax.conv_general_dilated`` asks for other convolutions: the input gradient of a
strided convolution dilates the output gradient, the weight gradient contracts
over the batch (both operands are transposed first), a depthwise convolution
becomes a grouped one. Some of these fall off the fast kernels onto naive loops
(CIFAR ResNet-18 on a 2-core CPU: 0.6 s for the input gradient of one 3x3
stride-2 convolution from 4x4 to 2x2, 1.2 s for the weight gradient of one 1x1
convolution of MobileNetV2, against milliseconds as matrix products). Max-pool's
gradient becomes index tensors and a scatter.

:func:`conv` is a convolution with a custom VJP that writes every pass as what
the fast kernels run: canonical convolutions and 2-D matrix products, plus
element-wise fusions. With ``x`` of shape ``(B, H, W, C)``, ``w`` of shape
``(kh, kw, C/groups, O)`` and ``T_ij`` the tap ``(i, j)`` of the zero-padded
input (the ``(B, OH, OW, C)`` slice that kernel position ``(i, j)`` reads)::

    y      = sum_ij T_ij(x) @ w[i, j]
    dx     = sum_ij T_ij^*(dy @ w[i, j]^T)       (T^*: the tap put back in place)
    dw_ij  = T_ij(x)^T @ dy                     (contracted over B, OH, OW)

Which formulation a convolution gets depends on its shapes (:func:`plan`):

* ``"depthwise"`` (``groups == C == O``): the sums above with an element-wise
  product per tap instead of a matrix product (one fused pass for ``y`` and for
  ``dx``, one variadic reduction over the map for the nine ``dw_ij``);
* ``"dense"`` (the input map has no more positions than the kernel, e.g. a 3x3
  kernel on a 2x2 map, and the batch is large enough to pay for building ``M``):
  the convolution is one matrix ``M`` of shape
  ``(H W C, OH OW O)`` holding each kernel tap where it applies, ``y = x M``,
  ``dx = dy M^T``, ``dM = x^T dy`` folded back onto the taps; it multiplies by
  no padding, so it does fewer operations than the taps;
* ``"winograd"`` (3x3 kernel, stride 1, padding 1 on each side, a map of at
  least 4x4, enough channels, ``C O / (C + O) >= 64``, and at least 128 tiles
  of 2x2 in the batch): Winograd's minimal filtering F(2x2, 3x3)
  (Lavin & Gray, 2016, "Fast Algorithms for Convolutional Neural Networks").
  Each 2x2 output tile ``Y`` comes from the 4x4 input tile ``d`` around it as
  ``Y = A^T [(G w G^T) * (B^T d B)] A``, where ``*`` is one ``(C, O)`` matrix
  product per tile position across channels: 16 matrix products of
  ``(B H W / 4, C) x (C, O)``, 2.25 times fewer multiply-adds than the nine
  taps. ``B``, ``G`` and ``A`` hold only 0, +-1 and +-1/2; the gradients are
  those of the same formula (automatic differentiation of matrix products).
  Below the thresholds the transforms' memory traffic costs more than the
  multiply-adds save;
* ``"winograd_dw"`` (the same 3x3 convolutions short of Winograd's channel
  threshold, with ``C O / (C + O) >= 32``, on a 16x16 map, with at least 2048
  tiles in the batch: ResNet-18's CIFAR layer1, 64 channels, at batch 128):
  XLA's own convolution for ``y`` and ``dx`` (as ``"xla"``) and the gradient in
  ``w`` of Winograd's formula for ``dw``: per tile position ``t``,
  ``dU_t = V_t^T dM_t`` over all tiles (``V`` the transformed input tiles, ``dM``
  the output gradient through ``A``), folded back onto the nine taps by ``G``.
  There XLA:CPU's weight gradient (a convolution whose window is as large as the
  map) is the slow pass, while XLA's ``y`` and ``dx`` beat Winograd's;
* ``"patches"`` (1x1 kernels, or a kernel larger than the map, or few input
  channels): the taps side by side as one ``(B OH OW, kh kw C)`` matrix ``P``,
  ``y = P w``, ``dw = P^T dy``, ``dx`` from ``dy w^T`` put back tap by tap
  (few input channels on a map of 256 positions or more, an RGB stem: ``y`` by
  XLA's convolution, which is faster there);
* ``"xla"`` (everything else): XLA's own convolution for ``y``, the transposed
  convolution for ``dx`` when the stride is 1 (else ``dx`` as for ``"patches"``),
  XLA's weight gradient for ``dw``.

Every formulation computes the same function as ``lax.conv_general_dilated`` (the
same sums in another order, or for the Winograd plans an algebraically equal formula),
so results agree to float rounding, and the tests check values and gradients of
each against it. :func:`max_pool` takes the maximum over the taps and keeps which tap holds the
first maximum of each window; its gradient goes there (as ``lax``'s does),
gathered per input position without a scatter. :func:`batch_norm` is training-mode
BatchNorm with its gradient written out: two passes over the activations each way
that read only the input and the output gradient, where automatic
differentiation of the mean and variance makes XLA write and re-read a centred
copy of the input. :func:`pointwise_conv_batch_norm` is an expanding 1x1
convolution and that BatchNorm as one function, its statistics and gradient
computed from the narrow input's Gram matrix without passes over the wide output.

These are CPU formulations: the executor (:mod:`jaxdepth.network`) uses them
when JAX's default backend is the CPU (:func:`wanted`), the convolutions and
BatchNorm for float32 only (max-pool for any dtype); GPUs and TPUs, and bfloat16
compute on the CPU, keep XLA's own convolutions and Flax's BatchNorm (XLA:CPU
miscompiles a bfloat16 matrix product followed by a bias, a residual add, a ReLU
and a mean into NaN or garbage, and the matrix-product plans make exactly that of
a biased residual block before global average pooling).

A batch sharded over a mesh with Explicit axes (``jax.make_mesh``'s default in
jax 0.12) gives the same values: the products that sum over the batch (weight
gradients, the Gram matrix) come out replicated, and a convolution that
:func:`plan` gives to Winograd (whose tiles merge the batch with the map) is
XLA's there.

Custom VJPs support reverse-mode differentiation only: ``jax.jvp``, ``jax.jacfwd``
and ``jax.hessian`` of a network through them fail with "can't apply
forward-mode autodiff (jvp) to a custom_vjp function". Set
``JAXDEPTH_CPU_OPS=xla`` (before the function is traced) to have the executor use
XLA's own convolutions and max-pool and Flax's BatchNorm on the CPU too, which
every transformation supports.
"""
from __future__ import annotations

import functools
import os

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.sharding import NamedSharding, PartitionSpec as P

from jaxdepth.explicit_axes import explicit_mesh

__all__ = ["conv", "plan", "max_pool", "batch_norm", "pointwise_conv_batch_norm",
           "pointwise_batch_norm_pays", "wanted", "PLANS", "ENV"]

ENV = "JAXDEPTH_CPU_OPS"

PLANS = ("xla", "patches", "dense", "depthwise", "winograd", "winograd_dw")

_NHWC = ("NHWC", "HWIO", "NHWC")

# Below this many input channels per tap the weight gradient as one matrix product
# of the taps side by side beats XLA's (the first convolution of an RGB network).
_FEW_CHANNELS = 16

# From this many input positions XLA's own convolution runs the forward pass of a
# few-channel convolution faster than the patches (2-core CPU: CIFAR's 3x3 RGB stem
# at batch 128 7.5 vs 9.3 ms, ImageNet's 7x7 stride-2 stem at batch 16 27 vs 59 ms,
# at batch 1 1.5-2.5 vs 5 ms); on an 8x8 map the two take the same time.
_LAX_FORWARD_POSITIONS = 256

# Building the dense matrix moves about 3 x 4 bytes per entry (gather, write, read)
# and saves 2 * batch * (kh kw - H W) multiply-adds per entry of H W (OH OW C O);
# with XLA:CPU doing about 10 flops in the time of a byte of memory traffic it pays
# when batch * (kh kw - H W) > 60 H W: from a batch of 48 on a 2x2 map with a
# 3x3 kernel (training batches; a batch of 1 at evaluation takes the patches).
_DENSE_BUILD_COST = 60

# Winograd's 16 products of (tiles, C) x (C, O) pay for input and output
# transforms whose traffic grows with C + O, and for a weight transform whose
# traffic grows with C O whatever the batch. Measured on a 2-core CPU at batch
# 128, both gradients of one convolution against XLA's: 4x4x256 26 % and 8x8x128
# 9 % faster, 16x16x128 4x faster, 8x8x64 and 16x16x64 about 25 % slower; the
# CIFAR ResNet-18 train step 5-9 % faster with layer3 (4x4x256) alone, 10-13 %
# with layer2 (8x8x128) too, 3-10 % with layer1 (16x16x64) as well. Forward
# alone, 4x4x256 is slower up to 16 tiles (batch 4), faster from 64 (batch 16).
_WINOGRAD_CHANNELS = 64
_WINOGRAD_TILES = 128

# Below that threshold Winograd still pays for the weight gradient alone on 16x16
# maps, where XLA:CPU's is a convolution with a 16x16 window. Measured on a 2-core
# CPU (Intel Xeon, AVX-512), the weight gradient alone against XLA's, batch 128:
# 16x16x64 0.57-0.69, 16x16x64 -> 128 0.46, 16x16x32 0.82; slower on 32x32 maps
# (32x32x64 1.07, 32x32x32 1.12), with too few tiles (16x16x64 at batch 16 1.65).
# Train steps, in-process A/B: CIFAR ResNet-18 (layer1's four 16x16x64 convs) 0.91
# and 0.93, VGG-16-BN (one 16x16 64 -> 128 conv) 0.95 and 0.96. Not taken where the
# whole step did not gain: ResNet-20's 8x8x64 and 16x16x32 convs (0.97-1.11, noise
# as large as any gain).
_WINOGRAD_DW_CHANNELS = 32
_WINOGRAD_DW_TILES = 2048
_WINOGRAD_DW_MAP = (16, 16)


def wanted(environ=None) -> bool:
  """Whether the executor uses these formulations: on the CPU, unless ``JAXDEPTH_CPU_OPS=xla``.

  Read when a network is traced, so a setting changed later applies to functions
  traced after it. ``environ`` defaults to ``os.environ``.

  Raises:
    ValueError: the variable is set to anything but ``xla`` or ``cpu_ops``.
  """
  environ = os.environ if environ is None else environ
  value = environ.get(ENV, "cpu_ops").strip().lower()
  if value not in ("xla", "cpu_ops"):
    raise ValueError(f"{ENV}={environ[ENV]!r}: expected 'xla' (XLA's own convolutions and Flax's "
                     "BatchNorm, every JAX transformation) or 'cpu_ops' (the default: faster "
                     "training on the CPU)")
  return value == "cpu_ops" and jax.default_backend() == "cpu"


def _out_size(n: int, k: int, s: int, lo: int, hi: int) -> int:
  return (n + lo + hi - k) // s + 1


def plan(x_shape, w_shape, strides, padding, groups: int = 1) -> str:
  """The formulation :func:`conv` uses for these shapes (one of :data:`PLANS`)."""
  (h, w), c = x_shape[1:3], x_shape[3]
  kh, kw, _, o = w_shape
  if groups != 1:
    return "depthwise" if groups == c == o and w_shape[2] == 1 else "xla"
  if h * w <= kh * kw and (kh, kw) != (1, 1) and (
      x_shape[0] * (kh * kw - h * w) > _DENSE_BUILD_COST * h * w):
    return "dense"
  tiles = x_shape[0] * -(-h // 2) * -(-w // 2)
  if _winograd_applies(x_shape, w_shape, strides, padding, groups) and min(h, w) >= 4:
    if c * o >= _WINOGRAD_CHANNELS * (c + o) and tiles >= _WINOGRAD_TILES:
      return "winograd"
    if (c * o >= _WINOGRAD_DW_CHANNELS * (c + o) and tiles >= _WINOGRAD_DW_TILES
        and (h, w) == _WINOGRAD_DW_MAP):
      return "winograd_dw"
  if (kh, kw) == (1, 1) or kh > h or kw > w or c < _FEW_CHANNELS:
    return "patches"
  return "xla"


def _winograd_applies(x_shape, w_shape, strides, padding, groups) -> bool:
  return (groups == 1 and tuple(w_shape[:2]) == (3, 3) and tuple(strides) == (1, 1)
          and tuple(map(tuple, padding)) == ((1, 1), (1, 1)) and min(x_shape[1:3]) >= 2)


def _taps(xp, kernel, strides, out):
  """The ``kh * kw`` slices of the padded input that the kernel taps read, row-major."""
  (kh, kw), (sh, sw), (oh, ow) = kernel, strides, out
  b, _, _, c = xp.shape
  return [lax.slice(xp, (0, i, j, 0), (b, i + sh * (oh - 1) + 1, j + sw * (ow - 1) + 1, c),
                    (1, sh, sw, 1)) for i in range(kh) for j in range(kw)]


def _untap(g, tap, strides, padding, in_hw):
  """Puts ``g`` (a tap's ``(B, OH, OW, C)`` values) back where tap ``(i, j)`` read the input.

  The adjoint of taking the tap: a strided placement into the unpadded input
  frame (the padding rows and columns are cut away by negative padding).
  """
  (i, j), (sh, sw), ((pt, _), (pl, _)), (h, w) = tap, strides, padding, in_hw
  oh, ow = g.shape[1:3]
  lo_h, lo_w = i - pt, j - pl
  return lax.pad(g, jnp.zeros((), g.dtype), (
      (0, 0, 0), (lo_h, h - lo_h - (sh * (oh - 1) + 1), sh - 1),
      (lo_w, w - lo_w - (sw * (ow - 1) + 1), sw - 1), (0, 0, 0)))


def _pad(x, padding, value=0.0):
  return lax.pad(x, jnp.asarray(value, x.dtype), ((0, 0, 0), (*padding[0], 0),
                                                 (*padding[1], 0), (0, 0, 0)))


def _batch_summed(*operands):
  """``out_sharding`` of a product of ``operands`` that sums over the batch: replicated on
  an Explicit mesh that shards the batch (each device's partial sums all-reduced), else
  ``None`` (JAX's default)."""
  mesh = explicit_mesh(*operands)
  return None if mesh is None else NamedSharding(mesh, P())


def _zeros_like_weight(shape, dtype, dy):
  """Zeros of a weight's shape, the primal that ``jax.vjp`` transposes a convolution at;
  replicated on an Explicit mesh that shards ``dy``'s batch, so JAX's transposition
  (a product over the batch) knows where its result goes."""
  zeros, replicated = jnp.zeros(shape, dtype), _batch_summed(dy)
  return zeros if replicated is None else jax.sharding.reshard(zeros, replicated)


def _dot_t(a, b):
  """``a^T @ b`` for 2-D ``a``, ``b``, contracting their first axes (no explicit transpose)."""
  return lax.dot_general(a, b, (((0,), (0,)), ((), ())), out_sharding=_batch_summed(a, b))


def _lax_conv(x, w, strides, padding, groups=1):
  return lax.conv_general_dilated(x, w, strides, padding, dimension_numbers=_NHWC,
                                  feature_group_count=groups)


# ----------------------------------------------------------------------- patches


def _patches(x, kernel, strides, padding, out):
  """``(B, OH, OW, kh * kw * C)``: the taps side by side (tap-major, then channel)."""
  taps = _taps(_pad(x, padding), kernel, strides, out)
  return taps[0] if len(taps) == 1 else jnp.concatenate(taps, axis=-1)


def _col2im(dpatches, kernel, strides, padding, in_hw):
  """The adjoint of :func:`_patches`: every tap's slice of ``dpatches`` put back and summed."""
  kh, kw = kernel
  c = dpatches.shape[-1] // (kh * kw)
  parts = [_untap(dpatches[..., t * c:(t + 1) * c], divmod(t, kw), strides, padding, in_hw)
           for t in range(kh * kw)]
  return functools.reduce(jnp.add, parts)


# ------------------------------------------------------------------------- dense


@functools.lru_cache(maxsize=None)
def _dense_index(in_hw, kernel, strides, padding):
  """For every (input position, output position) the kernel tap joining them, or ``kh*kw`` (none)."""
  (h, w), (kh, kw), (sh, sw), ((pt, pb), (pl, pr)) = in_hw, kernel, strides, padding
  oh, ow = _out_size(h, kh, sh, pt, pb), _out_size(w, kw, sw, pl, pr)
  index = np.full((h * w, oh * ow), kh * kw, np.int32)
  for p in range(h * w):
    for q in range(oh * ow):
      i, j = p // w - sh * (q // ow) + pt, p % w - sw * (q % ow) + pl
      if 0 <= i < kh and 0 <= j < kw:
        index[p, q] = i * kw + j
  return index


def _dense_matrix(w, index):
  """``M`` of shape ``(H W C, OH OW O)``: ``M[(p, c), (q, o)] = w[tap(p, q), c, o]`` or 0."""
  kh, kw, c, o = w.shape
  taps = jnp.concatenate([w.reshape(kh * kw, c, o), jnp.zeros((1, c, o), w.dtype)])
  m = taps[index]                                   # (HW, OHOW, C, O), static gather
  return m.transpose(0, 2, 1, 3).reshape(index.shape[0] * c, index.shape[1] * o)


def _dense_fold(dm, index, w_shape):
  """The adjoint of :func:`_dense_matrix`: each tap's gradient is the sum of its blocks."""
  kh, kw, c, o = w_shape
  blocks = dm.reshape(index.shape[0], c, index.shape[1], o)
  out = []
  for t in range(kh * kw):
    pairs = np.argwhere(index == t)
    parts = [blocks[p, :, q, :] for p, q in pairs]
    out.append(functools.reduce(jnp.add, parts) if parts else jnp.zeros((c, o), dm.dtype))
  return jnp.stack(out).reshape(w_shape)


# ---------------------------------------------------------------------- winograd

# F(2x2, 3x3): Y = A^T [(G w G^T) * (B^T d B)] A on 4x4 input tiles d.
_WINOGRAD_BT = np.array([[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]], np.float32)
_WINOGRAD_G = np.array([[1, 0, 0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0, 0, 1]], np.float32)
_WINOGRAD_AT = np.array([[1, 1, 1, 0], [0, 1, -1, -1]], np.float32)


@jax.custom_vjp
def _materialised_cotangent(y):
  """``y``, with its cotangent materialised once (an optimization barrier) in the backward pass."""
  return y


_materialised_cotangent.defvjp(lambda y: (y, None),
                               lambda _, g: (lax.optimization_barrier(g),))


def _winograd(x, w):
  """A 3x3, stride-1, padding-1 convolution as Winograd F(2x2, 3x3) (see the module docstring).

  Each transform is one matrix product with a Kronecker product of the 1-D
  transforms (``B^T d B`` of all tiles is ``kron(B^T, B^T)`` times the 16 tile
  elements stacked): few, large operations, which XLA:CPU compiles and runs faster
  than the same additions written out.
  """
  b, h, wd, c = x.shape
  o = w.shape[-1]
  th, tw = -(-h // 2), -(-wd // 2)                     # tiles; odd sizes get one zero row
  x = lax.optimization_barrier(x)
  xp = jnp.pad(x, ((0, 0), (1, 1 + 2 * th - h), (1, 1 + 2 * tw - wd), (0, 0)))
  # Tile element (i, j) of every tile is a plain slice of one of the four even/odd
  # row/column planes: the gradient puts four planes back, not 16 strided taps.
  planes = [[xp[:, p::2, q::2] for q in range(2)] for p in range(2)]
  d = jnp.stack([planes[i % 2][j % 2][:, i // 2:i // 2 + th, j // 2:j // 2 + tw]
                 for i in range(4) for j in range(4)])
  # The transforms' entries (0, +-1/4, +-1/2, +-1) are exact in every float dtype.
  kron = lambda a, dtype: jnp.asarray(np.kron(a, a), dtype)
  v = (kron(_WINOGRAD_BT, x.dtype) @ d.reshape(16, -1)).reshape(16, -1, c)
  u = (kron(_WINOGRAD_G, w.dtype) @ w.reshape(9, -1)).reshape(16, c, o)
  m = jnp.einsum("trc,tco->tro", v, u)
  y = (kron(_WINOGRAD_AT, m.dtype) @ m.reshape(16, -1)).reshape(2, 2, b, th, tw, o)
  y = y.transpose(2, 3, 0, 4, 1, 5).reshape(b, 2 * th, 2 * tw, o)
  return _materialised_cotangent(y[:, :h, :wd])


# ------------------------------------------------------------------------ passes


def _depthwise(xp, w, strides, out):
  """``y = sum_ij T_ij(x) * w[i, j]`` from the padded input ``xp``, one fused pass."""
  kh, kw = w.shape[:2]
  taps = _taps(xp, (kh, kw), strides, out)
  return functools.reduce(jnp.add, [t * w[i, j, 0] for (i, j), t in
                                    zip(np.ndindex(kh, kw), taps)])


def _forward(x, w, strides, padding, groups, how):
  b, h, wd, c = x.shape
  kh, kw, _, o = w.shape
  out = (_out_size(h, kh, strides[0], *padding[0]), _out_size(wd, kw, strides[1], *padding[1]))
  if how == "depthwise":
    return _depthwise(_pad(x, padding), w, strides, out)
  if how == "dense":
    m = _dense_matrix(w, _dense_index((h, wd), (kh, kw), strides, padding))
    return (x.reshape(b, -1) @ m).reshape(b, *out, o)
  if how == "patches" and not _lax_forward(x.shape, w.shape):
    p = _patches(x, (kh, kw), strides, padding, out)
    return (p.reshape(-1, p.shape[-1]) @ w.reshape(-1, o)).reshape(b, *out, o)
  return _lax_conv(x, w, strides, padding, groups)


def _lax_forward(x_shape, w_shape) -> bool:
  """Whether a ``"patches"`` convolution runs its forward pass as XLA's convolution.

  A few-channel kernel (an RGB stem) that fits a large enough map: XLA's forward is
  faster there, and the weight gradient keeps the patches.
  """
  (h, w), c = x_shape[1:3], x_shape[3]
  kh, kw = w_shape[:2]
  return ((kh, kw) != (1, 1) and kh <= h and kw <= w and c < _FEW_CHANNELS
          and h * w >= _LAX_FORWARD_POSITIONS)


def _input_grad(dy, w, x_shape, strides, padding, groups, how):
  b, h, wd, c = x_shape
  kh, kw, _, o = w.shape
  if how == "depthwise":
    parts = [_untap(dy * w[i, j, 0], (i, j), strides, padding, (h, wd))
             for i, j in np.ndindex(kh, kw)]
    return functools.reduce(jnp.add, parts)
  if how == "dense":
    m = _dense_matrix(w, _dense_index((h, wd), (kh, kw), strides, padding))
    return lax.dot_general(dy.reshape(b, -1), m, (((1,), (1,)), ((), ()))).reshape(x_shape)
  if how in ("xla", "winograd_dw") and strides == (1, 1):
    zeros = jnp.zeros(x_shape, dy.dtype)
    return jax.vjp(lambda x: _lax_conv(x, w, strides, padding, groups), zeros)[1](dy)[0]
  dpatches = lax.dot_general(dy.reshape(-1, o), w.reshape(-1, o), (((1,), (1,)), ((), ())))
  dpatches = dpatches.reshape(*dy.shape[:3], kh * kw * c)
  return _col2im(dpatches, (kh, kw), strides, padding, (h, wd))


def _weight_grad(dy, x, w_shape, strides, padding, groups, how):
  """``dw``; for ``"depthwise"``, ``x`` is the padded input the forward pass kept."""
  b, h, wd, c = x.shape
  kh, kw, _, o = w_shape
  out = dy.shape[1:3]
  if how == "depthwise":
    taps = _taps(x, (kh, kw), strides, out)
    # One pass over x and dy for every tap: summed over the map first (one (B, C)
    # row per tap), then over the batch; XLA:CPU runs a reduction over all of
    # (B, OH, OW) at once many times slower.
    sums = lax.reduce([t * dy for t in taps], [jnp.zeros((), dy.dtype)] * len(taps),
                      lambda a, b: [u + v for u, v in zip(a, b)], (1, 2))
    return jnp.sum(jnp.stack(sums), axis=1).reshape(w_shape)
  if how == "dense":
    index = _dense_index((h, wd), (kh, kw), strides, padding)
    return _dense_fold(_dot_t(x.reshape(b, -1), dy.reshape(b, -1)), index, w_shape)
  if how == "patches":
    p = _patches(x, (kh, kw), strides, padding, out)
    return _dot_t(p.reshape(-1, p.shape[-1]), dy.reshape(-1, o)).reshape(w_shape)
  zeros = _zeros_like_weight(w_shape, dy.dtype, dy)
  if how == "winograd_dw":   # only the transforms and products that dw needs are kept
    return jax.vjp(lambda w: _winograd(x, w), zeros)[1](dy)[0]
  return jax.vjp(lambda w: _lax_conv(x, w, strides, padding, groups), zeros)[1](dy)[0]


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4, 5))
def _conv(x, w, strides, padding, groups, how):
  return _forward(x, w, strides, padding, groups, how)


def _conv_fwd(x, w, strides, padding, groups, how):
  # The input is kept as one materialised buffer (padded, for depthwise): without
  # the barrier XLA recomputes the BatchNorm and activation that produce it inside
  # every backward fusion that reads it (a transposition, each of nine taps).
  if how == "depthwise":
    xp = lax.optimization_barrier(_pad(x, padding))
    out = (_out_size(x.shape[1], w.shape[0], strides[0], *padding[0]),
           _out_size(x.shape[2], w.shape[1], strides[1], *padding[1]))
    return _depthwise(xp, w, strides, out), (xp, w)
  x = lax.optimization_barrier(x)
  return _forward(x, w, strides, padding, groups, how), (x, w)


def _conv_bwd(strides, padding, groups, how, residuals, dy):
  x, w = residuals
  x_shape = x.shape
  if how == "depthwise":   # x is the padded input
    (pt, pb), (pl, pr) = padding
    x_shape = (x.shape[0], x.shape[1] - pt - pb, x.shape[2] - pl - pr, x.shape[3])
  dy = lax.optimization_barrier(dy)   # computed once, read by both gradients
  dx = _input_grad(dy, w, x_shape, strides, padding, groups, how)
  if how == "depthwise":
    # Materialised: fused into the activation's and a site gate's backward (selects),
    # the nine put-back taps ran about 3x slower (MobileNetV2 train step 21 % slower
    # with gates, 7 % without).
    dx = lax.optimization_barrier(dx)
  return (dx, _weight_grad(dy, x, w.shape, strides, padding, groups, how))


_conv.defvjp(_conv_fwd, _conv_bwd)


def conv(x: jax.Array, w: jax.Array, strides=(1, 1), padding=((0, 0), (0, 0)),
         groups: int = 1, how: str | None = None) -> jax.Array:
  """A 2-D convolution of ``x`` ``(B, H, W, C)`` with ``w`` ``(kh, kw, C/groups, O)``.

  The same function as ``lax.conv_general_dilated(x, w, strides, padding,
  dimension_numbers=("NHWC", "HWIO", "NHWC"), feature_group_count=groups)``
  (no dilation, explicit non-negative padding), differentiable, with every pass
  written as ``how`` says (default :func:`plan`; the module docstring has the
  formulas).

  Raises:
    ValueError: ``how`` is not one of :data:`PLANS`, or names a formulation that
      does not apply to these shapes.
  """
  strides = tuple(int(s) for s in strides)
  padding = tuple((int(lo), int(hi)) for lo, hi in padding)
  if any(p < 0 for pair in padding for p in pair):
    raise ValueError(f"conv takes non-negative padding, got {padding}")
  planned = plan(x.shape, w.shape, strides, padding, groups)
  if how is None and planned in ("winograd", "winograd_dw") and explicit_mesh(x) is not None:
    planned = "xla"   # Winograd's tiles merge the batch with the map: not on an Explicit mesh
  how = planned if how is None else how
  if how not in PLANS:
    raise ValueError(f"unknown convolution formulation {how!r}; expected one of {PLANS}")
  if ((how == "depthwise") != (planned == "depthwise") or (groups != 1 and how != planned)
      or how in ("winograd", "winograd_dw")
      and not _winograd_applies(x.shape, w.shape, strides, padding, groups)):
    raise ValueError(f"formulation {how!r} does not apply to a convolution with "
                     f"{groups} groups, input {x.shape} and kernel {w.shape}")
  if how in ("winograd", "winograd_dw") and explicit_mesh(x) is not None:
    raise ValueError(f"formulation {how!r} does not run on a batch sharded over Explicit mesh "
                     f"axes {explicit_mesh(x).explicit_axes}: leave how=None (XLA's "
                     "convolution there) or shard over jaxdepth.training.make_mesh() or "
                     "axis_types=(AxisType.Auto,)")
  if how == "xla" and groups != 1:
    return _lax_conv(x, w, strides, padding, groups)
  if how == "winograd":
    return _winograd(x, w)
  return _conv(x, w, strides, padding, groups, how)


# ---------------------------------------------------------------------- max-pool


def _pool_taps(x, window, strides, padding):
  out = tuple(_out_size(n, k, s, *p) for n, k, s, p in zip(x.shape[1:3], window, strides, padding))
  return _taps(_pad(x, padding, -jnp.inf), window, strides, out)


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2, 3))
def _max_pool(x, window, strides, padding):
  return functools.reduce(jnp.maximum, _pool_taps(x, window, strides, padding))


def _max_pool_fwd(x, window, strides, padding):
  """The maximum of each window and which tap (row-major) holds its first maximum."""
  taps = _pool_taps(x, window, strides, padding)
  index_dtype = jnp.int8 if len(taps) <= 127 else jnp.int32
  y, first = taps[0], jnp.zeros(taps[0].shape, index_dtype)
  for k, t in enumerate(taps[1:], 1):
    first = jnp.where(t > y, jnp.asarray(k, index_dtype), first)
    y = jnp.maximum(y, t)
  # Materialised: fused into its consumers, the chain of taps ran once per reader
  # (CIFAR ResNet-18 train step 7 % slower than with reduce_window).
  y, first = lax.optimization_barrier((y, first))
  return y, (first, x.shape[1:3])


def _pool_residues(k, s, lo):
  """For each residue ``r`` of an input index modulo the stride ``s``: the taps ``t`` that
  read such indices, latest first, each with the offset ``d`` of the window that reads
  input ``s q + r`` through it (window ``q + d``)."""
  return [[(t, (r + lo - t) // s) for t in reversed(range(k)) if (t - r - lo) % s == 0]
          for r in range(s)]


def _max_pool_bwd(window, strides, padding, residuals, dy):
  """Each window's gradient to its first maximum, gathered per input position.

  Input position ``s q + r`` (per axis) is read by the taps ``t = r + lo - s d`` of
  windows ``q + d``, so the positions of one residue class ``(r_h, r_w)`` sum a
  fixed set of shifted copies of ``where(first == tap, dy, 0)``; the classes are
  then interleaved. The sum runs over the windows in row-major order, as lax's.
  """
  first, (h, w) = residuals
  (kh, kw), (sh, sw) = window, strides
  (oh, ow), zero = dy.shape[1:3], jnp.zeros((), dy.dtype)
  rows = _pool_residues(kh, sh, padding[0][0])
  cols = _pool_residues(kw, sw, padding[1][0])
  qh, qw = -(-h // sh), -(-w // sw)
  # A border of windows that read nothing (tap -1) makes every shifted read a plain slice.
  dh = [d for taps in rows for _, d in taps] or [0]
  dw = [d for taps in cols for _, d in taps] or [0]
  border = ((0, 0, 0), (max(0, -min(dh)), max(0, qh + max(dh) - oh), 0),
            (max(0, -min(dw)), max(0, qw + max(dw) - ow), 0), (0, 0, 0))
  first = lax.pad(first, jnp.asarray(-1, first.dtype), border)
  dy_padded = lax.pad(dy, zero, border)
  top, left = border[1][0], border[2][0]
  classes = []
  for taps_h in rows:
    row = []
    for taps_w in cols:
      total = jnp.zeros((dy.shape[0], qh, qw, dy.shape[3]), dy.dtype)
      for th, d_h in taps_h:
        for tw, d_w in taps_w:
          at = (slice(None), slice(top + d_h, top + d_h + qh), slice(left + d_w, left + d_w + qw))
          total = total + jnp.where(first[at] == th * kw + tw, dy_padded[at], zero)
      row.append(total)
    classes.append(jnp.stack(row, axis=3))                 # (B, qh, qw, sw, C)
  # On an Explicit mesh the merge keeps dy's sharding (the batch's), which JAX does not infer.
  dx = jnp.stack(classes, axis=2).reshape(
      dy.shape[0], qh * sh, qw * sw, dy.shape[3],
      out_sharding=None if explicit_mesh(dy) is None else jax.typeof(dy).sharding)
  return (dx[:, :h, :w],)


_max_pool.defvjp(_max_pool_fwd, _max_pool_bwd)


def max_pool(x: jax.Array, window, strides, padding) -> jax.Array:
  """Max-pooling of ``x`` ``(B, H, W, C)`` over ``window`` with -inf ``padding`` pairs.

  The same values as ``flax.linen.max_pool`` (``lax.reduce_window``); the gradient
  goes to the first maximum of each window, as ``lax``'s does, but is gathered per
  input position from the window and tap that hold each maximum (one small
  integer per window, kept from the forward pass) instead of a scatter.
  """
  window, strides = tuple(int(k) for k in window), tuple(int(s) for s in strides)
  padding = tuple((int(lo), int(hi)) for lo, hi in padding)
  return _max_pool(x, window, strides, padding)


# -------------------------------------------------------------------- batch norm


def _channel_sums(*parts):
  """Per-channel sums of each of ``parts`` (channels last), as ``(rows, C)`` column sums.

  Written as one reduction of a 2-D view per operand, which XLA:CPU hands to its
  fast reduction kernels; one variadic reduction over the leading axes of the 4-D
  arrays ran as a loop (a CIFAR MobileNetV2 train step 1.5x slower).
  """
  return [jnp.sum(p.reshape(-1, p.shape[-1]), axis=0) for p in parts]


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def batch_norm(x: jax.Array, scale: jax.Array, bias: jax.Array, epsilon: float):
  """Training-mode BatchNorm of ``x`` (channels last) over all other axes: ``(y, mean, var)``.

  The same function as ``flax.linen.BatchNorm(use_running_average=False)``
  (Ioffe & Szegedy, 2015) with ``n`` the number of rows (all positions of the
  batch)::

      mean = sum(x) / n          var = max(0, sum(x^2) / n - mean^2)
      inv  = 1 / sqrt(var + epsilon)
      y    = (x - mean) * inv * scale + bias

  with the gradient written out: for the cotangents ``g`` of ``y`` (and ``g_mean``,
  ``g_var`` of the returned statistics), ``xc = x - mean``::

      d bias  = sum(g)           d scale = inv * sum(g * xc)
      d x     = scale * inv * (g - d bias / n - xc * inv * d scale / n)
                + g_mean / n + xc * 2 g_var / n

  Forward, the column sums of ``x`` and ``x^2``, then ``y = x a + b`` with
  per-channel ``a``, ``b``; backward, the column sums of ``g`` and ``g x`` (``sum(g xc)
  = sum(g x) - mean sum(g)``), then ``d x``. Every pass reads only ``x`` and ``g``
  (the residuals are ``x`` and per-channel vectors), where automatic
  differentiation of Flax's BatchNorm has XLA write and re-read a centred copy of
  ``x``. Like Flax's fast variance, the uncentred sums lose precision in a channel
  whose mean is many standard deviations away from 0. Where the variance is
  clipped to 0 (a constant channel) the formula keeps the unclipped variance's
  gradient; there ``xc`` is 0.
  """
  return _batch_norm_fwd(x, scale, bias, epsilon)[0]


def _normalisation(mean, mean_square, scale, bias, epsilon):
  """From the batch moments: ``var``, ``inv = 1 / sqrt(var + epsilon)`` and ``a``, ``b`` of ``y = x a + b``.

  ``y`` as ``x a + b`` leaves no centred copy of ``x`` for XLA to keep between passes.
  """
  var = jnp.maximum(0.0, mean_square - mean * mean)
  inv = lax.rsqrt(var + epsilon)
  a = inv * scale
  return var, inv, a, bias - mean * a


def _batch_norm_fwd(x, scale, bias, epsilon):
  n = x.size // x.shape[-1]
  total, squares = _channel_sums(x, x * x)
  mean = total / n
  var, inv, a, b = _normalisation(mean, squares / n, scale, bias, epsilon)
  return (x * a + b, mean, var), (x, mean, inv, scale)


def _batch_norm_bwd(epsilon, residuals, cotangents):
  x, mean, inv, scale = residuals
  g, g_mean, g_var = cotangents
  n = x.size // x.shape[-1]
  # sum(g * xc) from sum(g * x): XLA:CPU's reduction kernels take g and x as they
  # are, where a centred copy of x would be one more pass written and read.
  d_bias, g_x = _channel_sums(g, g * x)
  g_xc = g_x - mean * d_bias
  xc = x - mean
  d_x = (scale * inv) * (g - d_bias / n - xc * (inv * inv * g_xc / n))
  d_x = d_x + g_mean / n + xc * (2.0 * g_var / n)
  return d_x, inv * g_xc, d_bias


batch_norm.defvjp(_batch_norm_fwd, _batch_norm_bwd)


# ---------------------------------------------------- pointwise conv + batch norm

# The Gram matrices cost (rows, C) x (C, C) products, twice; they save about six
# passes over the (rows, O) output. Measured on a 2-core CPU at batch 128 (both
# gradients of one 1x1 convolution + BatchNorm + ReLU6 against `conv` then
# `batch_norm`): 24 -> 144 on 32x32 maps 30 % faster, 16 -> 96 20 %, 32 -> 192
# 25 %, 64 -> 384 10-25 % (C^2 / O from 2.7 to 10.7); 96 -> 576 the same time
# (16), 160 -> 960 10 % slower (27).
_GRAM_RATIO = 12


def pointwise_batch_norm_pays(in_channels: int, out_channels: int) -> bool:
  """Whether :func:`pointwise_conv_batch_norm` is faster than :func:`conv` then :func:`batch_norm`.

  True for expanding 1x1 convolutions with ``C^2 <= 12 O`` (MobileNetV2's expand
  layers up to 64 -> 384); see ``_GRAM_RATIO`` for the measurements.
  """
  return in_channels * in_channels <= _GRAM_RATIO * out_channels


@functools.partial(jax.custom_vjp, nondiff_argnums=(4,))
def pointwise_conv_batch_norm(x: jax.Array, w: jax.Array, scale: jax.Array, bias: jax.Array,
                              epsilon: float):
  """:func:`batch_norm` of the 1x1 convolution ``x @ w`` (no bias), from ``x``'s Gram matrix.

  The same function as ``batch_norm(conv(x, w[None, None]), scale, bias, epsilon)``
  with ``x`` channels last of ``n`` rows (all positions of the batch) and ``C``
  channels, ``w`` of shape ``(C, O)`` and ``Y = x w`` the ``(n, O)`` output. The
  batch statistics of ``Y`` follow from ``x``'s column sums ``s = 1^T x`` and
  Gram matrix ``G = x^T x``, both ``C``-sized::

      mean = s w / n            E[y_o^2] = w_o^T G w_o / n

  and the gradient goes back to ``x`` and ``w`` without ``Y`` or its gradient.
  For the cotangent ``g`` of the output, :func:`batch_norm`'s input gradient is
  ``dY = g c1 + Y c3 + 1 c0`` with per-channel ``c1 = scale * inv``,
  ``c3 = 2 g_var / n - c1 inv^2 sum(g yc) / n`` and ``c0`` (its constant part), so
  with ``P = x^T g``::

      sum(g y)_o = sum_i w_io P_io
      dx = g (w c1)^T + x (w c3 w^T) + 1 (w c0)^T
      dw = P c1 + (G w) c3 + s c0^T

  Passes over ``(n, O)`` arrays: the output, one column sum of ``g`` and the two
  products with ``g``, where the convolution then BatchNorm also write ``Y`` and
  ``dY`` and read each twice more; it costs two ``(n, C) x (C, C)`` products
  more, so it pays when ``C`` is small next to ``O`` (an expanding 1x1
  convolution, MobileNetV2's ``expand`` layers; :func:`pointwise_batch_norm_pays`).
  Like :func:`batch_norm`, the uncentred moments lose precision in a channel
  whose mean is many standard deviations away from 0.
  """
  return _pointwise_conv_batch_norm_fwd(x, w, scale, bias, epsilon)[0]


def _pointwise_conv_batch_norm_fwd(x, w, scale, bias, epsilon):
  rows = x.reshape(-1, x.shape[-1])
  n = rows.shape[0]
  total, gram = jnp.sum(rows, axis=0), _dot_t(rows, rows)
  mean = total @ w / n
  var, inv, a, b = _normalisation(mean, jnp.sum(w * (gram @ w), axis=0) / n, scale, bias, epsilon)
  y = (rows @ w) * a + b
  return (y.reshape(*x.shape[:-1], w.shape[-1]), mean, var), (x, w, total, gram, mean, inv,
                                                             scale)


def _pointwise_conv_batch_norm_bwd(epsilon, residuals, cotangents):
  x, w, total, gram, mean, inv, scale = residuals
  g, g_mean, g_var = cotangents
  rows, g = x.reshape(-1, x.shape[-1]), g.reshape(-1, g.shape[-1])
  n = rows.shape[0]
  d_bias = jnp.sum(g, axis=0)
  p = _dot_t(rows, g)
  g_yc = jnp.sum(w * p, axis=0) - mean * d_bias
  c1 = scale * inv
  c3 = 2.0 * g_var / n - c1 * inv * inv * g_yc / n
  c0 = (g_mean - c1 * d_bias) / n - mean * c3
  d_x = g @ (w * c1).T + rows @ ((w * c3) @ w.T) + w @ c0
  d_w = p * c1 + (gram @ w) * c3 + jnp.outer(total, c0)
  return d_x.reshape(x.shape), d_w, inv * g_yc, d_bias


pointwise_conv_batch_norm.defvjp(_pointwise_conv_batch_norm_fwd, _pointwise_conv_batch_norm_bwd)
