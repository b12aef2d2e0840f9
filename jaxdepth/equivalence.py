"""Is the shallow network the same function? Measured, not assumed.

:func:`compare` runs two networks in eval mode on one batch and reports how far
their outputs are apart (:class:`EquivalenceReport`). Most surgery is exact
everywhere and the logits must then agree to float32 rounding (the property
tests ask for 1e-4 relative). A kxk∘kxk merge made in ``mode="interior"`` is
exact only away from the border, and a global average pool then mixes the
border into every logit, so the logits alone cannot show that the merge is
right. So, given ``border``, :func:`compare` also compares the *last spatial
feature map* of both networks (the input of the head: everything up to the
first node that leaves the ``(H, W, C)`` layout, :func:`spatial_prefix`), whole
and with a ring of ``border`` positions cut off each edge. The interior must
agree to rounding; the whole map and the logits measure the border deviation.

The ring to cut is not a guess: every interior-mode merge records the ring of
its own output in the surgery log, and :func:`border_width` follows those rings
through the rest of the network (a ring ``r`` becomes
``ceil((r + p_lo) / s)`` after a window of stride ``s`` and padding ``p_lo``,
likewise at the far edge) to the last spatial map. A ring as wide as half the
map leaves no interior: the merge changed the function everywhere (ResNet-18's
2x2 last stage on CIFAR) and only the accuracy can judge it.
"""
from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Mapping
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxdepth import network
from jaxdepth import spec as S
from jaxdepth.surgery import _tree
from jaxdepth.surgery.linear import _widen

__all__ = ["EquivalenceReport", "compare", "border_width", "spatial_prefix", "deviation"]


class EquivalenceReport(NamedTuple):
  """How far two networks' eval outputs are apart on one batch.

  Attributes:
    max_abs: ``max |y_a − y_b|`` over the outputs (logits).
    max_rel: ``max_abs / max |y_a|`` (relative to the output scale; an
      element-wise ratio would blow up near zero).
    top1_agreement: fraction of examples with the same argmax (2-D outputs),
      else ``nan``.
    feature_max_abs: the same on the last spatial feature map (``nan`` when
      ``border`` was not given).
    feature_max_rel: relative to ``max |f_a|``.
    interior_max_abs: on that map without a ring of ``border`` positions at
      each edge (``nan`` when nothing is left).
    interior_max_rel: relative to ``max |f_a|`` over the whole map.
    border: the ring cut off (``None`` when not given).
    interior_fraction: the fraction of map positions in the interior.
    feature_shape: the ``(H, W, C)`` of the compared map (``None`` if none).
  """
  max_abs: float
  max_rel: float
  top1_agreement: float
  feature_max_abs: float = math.nan
  feature_max_rel: float = math.nan
  interior_max_abs: float = math.nan
  interior_max_rel: float = math.nan
  border: int | None = None
  interior_fraction: float = math.nan
  feature_shape: tuple | None = None


def deviation(a, b) -> tuple[float, float]:
  """``(max |a − b|, max |a − b| / max |a|)`` in float64."""
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  if a.shape != b.shape:
    raise ValueError(f"outputs of shapes {a.shape} and {b.shape} cannot be compared")
  if a.size == 0:
    return math.nan, math.nan
  diff = float(np.max(np.abs(a - b)))
  return diff, diff / max(float(np.max(np.abs(a))), 1e-30)


def spatial_prefix(spec: S.Spec) -> S.Spec | None:
  """The part of ``spec`` up to its last ``(H, W, C)`` feature map (``None`` if none).

  It runs every node whose output is still spatial and stops before the first
  that is not (a global pool, a flatten), opening Sequentials on the way.
  """
  if len(spec.input_shape) != 3:
    return None

  def cut(nodes, shape, prefix):
    out = []
    for n in nodes:
      o = n.output_shape(shape, prefix + n.name)
      if len(o) == 3:
        out.append(n)
        shape = o
        continue
      if isinstance(n, S.Sequential):
        inner = cut(n.layers, shape, prefix + n.name + S.SEP)
        if inner:
          out.append(dataclasses.replace(n, layers=inner))
      break
    return tuple(out)

  return S.Spec(spec.input_shape, cut(spec.layers, spec.input_shape, ""),
                name=f"{spec.name}_features")


def _window_ring(r, shape_in, shape_out, kernel, stride, padding) -> int:
  return max(_widen(r, kernel[d], stride[d], padding[d][0],
                    stride[d] * (shape_out[d] - 1) + kernel[d] - padding[d][0] - shape_in[d])
             for d in (0, 1))


def _adaptive_ring(r, n_in, n_out) -> int:
  """Output bins of an adaptive average pool that touch a ring ``r`` of the input."""
  if r <= 0:
    return 0
  bad = [i for i in range(n_out) if (i * n_in) // n_out < r
         or math.ceil((i + 1) * n_in / n_out) > n_in - r]
  return max(min(i + 1, n_out - i) for i in bad) if bad else 0


def border_width(spec: S.Spec, log: Iterable | None) -> int:
  """The ring at the last spatial feature map where ``spec`` may differ from the original.

  Args:
    spec: the network surgery returned.
    log: the :class:`~jaxdepth.surgery.Edit` list the passes filled.

  Returns:
    The number of positions at each edge of the map of :func:`spatial_prefix`
    that an interior-mode merge may have changed (0: none). Pass it as
    ``compare(..., border=...)``.

  Raises:
    TypeError: ``spec`` is not a Spec, or ``log`` is not a list of edits (e.g. the
      arguments swapped).
  """
  S.check_spec(spec, "border_width(spec, log)")
  if log is not None:
    if isinstance(log, (S.Spec, str, Mapping)) or not isinstance(log, Iterable):
      raise TypeError(f"border_width(spec, log): log must be the list of Edits the surgery "
                      f"passes filled (or None), got a {type(log).__name__}; check the order "
                      f"of the arguments")
    log = list(log)
    bad = next((e for e in log if not isinstance(e, _tree.Edit)), None)
    if bad is not None:
      raise TypeError(f"border_width(spec, log): log must hold the Edits the surgery passes "
                      f"filled, it holds a {type(bad).__name__}; pass the list given to "
                      f"collapse(..., log=...) or to the passes")
  ring_of = _tree.rings(log)

  def run(nodes, prefix, shape, r):
    for n in nodes:
      path = prefix + n.name
      o = n.output_shape(shape, path)
      if len(o) != 3:
        return r, True
      if isinstance(n, S.Sequential):
        r, done = run(n.layers, path + S.SEP, shape, r)
        if done:
          return r, True
      elif isinstance(n, S.Block):
        rb, _ = run(n.branch, path + S.SEP, shape, r)
        rs, _ = run(n.shortcut, path + S.SEP, shape, r)
        mid = S._run_shapes(n.branch, shape, path + S.SEP)
        r, _ = run(n.post, path + S.SEP, mid, max(rb, rs))
      elif isinstance(n, S.Concat):
        rb = max(run(b, path + S.SEP, shape, r)[0] for b in n.branches)
        r, _ = run(n.post, path + S.SEP, n.joined_shape(shape, path), rb)
      elif isinstance(n, S.Conv):
        r = _window_ring(r, shape, o, n.kernel, n.stride, n.padding)
      elif isinstance(n, S.Pool) and n.op in ("max", "avg"):
        r = _window_ring(r, shape, o, n.window, n.stride, n.padding)
      elif isinstance(n, S.Pool) and n.op == "adaptive_avg":
        r = max(_adaptive_ring(r, shape[d], o[d]) for d in (0, 1))
      elif isinstance(n, S.GroupNorm) and r > 0:   # its statistics read the whole map
        r = -(-max(o[:2]) // 2)
      r = max(r, ring_of.get(path, 0))
      shape = o
    return r, False

  if len(spec.input_shape) != 3:
    return 0
  r, _ = run(spec.layers, "", spec.input_shape, 0)
  return r


def compare(spec_a: S.Spec, vars_a, spec_b: S.Spec, vars_b, x, *, gates_a=None,
            border: int | None = None) -> EquivalenceReport:
  """Compares two networks' eval-mode outputs on the batch ``x``.

  Args:
    spec_a: the reference network (e.g. the dense one, or its identity-swapped
      form).
    vars_a: its variables.
    spec_b: the network to check (e.g. what surgery returned).
    vars_b: its variables.
    x: a batch ``(B, *input_shape)`` both accept (for text specs, the token ids
      or the dict of :func:`jaxdepth.network.batch_inputs`).
    gates_a: optional site gates for ``spec_a`` (0 = identity), to compare the
      gated form the methods search with against the baked and merged one.
    border: also compare the last spatial feature maps, whole and without this
      many positions at each edge (see :func:`border_width`).

  Returns:
    An :class:`EquivalenceReport`.

  Raises:
    ValueError: ``border`` is given but a network has no last spatial feature
      map, or the two maps differ in shape (channels cut there by
      ``collapse(site_counts=...)``: which channels were kept is not known
      here, so the maps cannot be matched; compare without ``border``, and
      measure the border on the network collapsed without ``site_counts``).
  """
  x = jax.tree.map(jnp.asarray, x)   # an array, or a text spec's dict of token arrays
  ya = network.forward(spec_a, vars_a, x, gates=gates_a).logits
  yb = network.forward(spec_b, vars_b, x).logits
  max_abs, max_rel = deviation(ya, yb)
  top1 = math.nan
  if ya.ndim == 2 and ya.shape[-1] > 1:
    top1 = float(np.mean(np.argmax(np.asarray(ya), -1) == np.argmax(np.asarray(yb), -1)))
  report = EquivalenceReport(max_abs, max_rel, top1)
  if border is None:
    return report
  if not isinstance(border, int) or border < 0:
    raise ValueError(f"border must be a non-negative int, got {border!r}")
  pa, pb = spatial_prefix(spec_a), spatial_prefix(spec_b)
  if pa is None or pb is None:
    raise ValueError("border comparison needs two networks on (H, W, C) inputs, with a last "
                     f"spatial feature map; got inputs {spec_a.input_shape} and "
                     f"{spec_b.input_shape}; compare without border= (the logits only)")
  if pa.output_shape != pb.output_shape:
    raise ValueError("border comparison compares the last feature maps position by position, "
                     f"but they differ in shape: {pa.output_shape} and {pb.output_shape} "
                     "(collapse(site_counts=...) may have cut channels there); compare without "
                     "border= (the logits only), and measure the border on the network "
                     "collapsed without site_counts, before its channels are cut")
  gates = None if gates_a is None else jnp.asarray(gates_a)[:len(pa.sites())]
  fa = np.asarray(network.forward(pa, vars_a, x, gates=gates).logits)
  fb = np.asarray(network.forward(pb, vars_b, x).logits)
  f_abs, f_rel = deviation(fa, fb)
  h, w = fa.shape[1:3]
  inner_a = fa[:, border:h - border, border:w - border]
  inner_b = fb[:, border:h - border, border:w - border]
  frac = inner_a.shape[1] * inner_a.shape[2] / (h * w) if min(inner_a.shape[1:3]) > 0 else 0.0
  i_abs = deviation(inner_a, inner_b)[0] if frac else math.nan
  scale = max(float(np.max(np.abs(fa))), 1e-30)
  return report._replace(feature_max_abs=f_abs, feature_max_rel=f_rel, interior_max_abs=i_abs,
                         interior_max_rel=i_abs / scale, border=border, interior_fraction=frac,
                         feature_shape=tuple(fa.shape[1:]))
