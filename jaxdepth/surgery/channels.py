"""Cut channels that are always OFF on the data (TLC; ``docs/surgery.md``).

A channel whose pre-activation is never positive on the data (its positive
sign count is 0: :func:`jaxdepth.stats.always_off`) outputs exactly 0 after a
ReLU or ReLU6 (zeros count as OFF: ``relu(0) = 0``). It can be deleted with
everything that only feeds it, and the next weight layer can forget the
matching input channel. Exact on the data the counts came from (and on any
input that keeps the channel OFF); a GELU site is left alone, since GELU of a
negative number is not 0.

Both sides of the site are walked inside its scope (through nested Sequentials,
never through a residual Block):

* **producer** (backwards): per-channel nodes (BatchNorm: its entries are cut;
  activations, dropout, pooling: nothing to cut) up to the conv or dense layer
  that makes the channel, whose output channel is cut. A depthwise conv on the
  way (one group per channel) loses the channel too and the walk goes on to its
  input's producer, whose output channel is now unused.
* **consumer** (forwards): the value of a cut channel is known, 0 after the
  site, then ``f(0) = 0`` through activations, ``β − γμ/√(σ²+ε)`` through a
  BatchNorm (whose entries are cut), the same through pooling and flatten, and
  ``Σ K v + b`` through a depthwise conv (cut as well) -- up to the conv or
  dense layer that reads it, whose input channel is cut; a known non-zero value
  is added to its bias (``b += Σ_taps K[..., c, :] v_c``), which is exact only
  for a dense layer or an unpadded conv (a padded conv would read zeros at the
  border), so otherwise the channel is kept.

A site whose walk hits a residual addition, a grouped (non-depthwise) conv,
the end of its scope or an inexact bias fold keeps all its channels. A site
with every channel OFF keeps one (its value is 0 all the same), so no layer is
left with zero channels. Counts of sites met on the way are cut with them.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Mapping

import numpy as np

from jaxdepth import network
from jaxdepth import spec as S
from jaxdepth import stats
from jaxdepth.surgery import _tree
from jaxdepth.surgery import linear as L

__all__ = ["cut_channels"]

_RECTIFIERS = ("relu", "relu6")


def _fn(name: str, v: np.ndarray, negative_slope: float = 0.01) -> np.ndarray:
  if name == "relu":
    return np.maximum(v, 0)
  if name == "relu6":
    return np.clip(v, 0, 6)
  if name == "identity":
    return v
  if name == "gelu":
    from math import erf
    return np.array([0.5 * x * (1 + erf(x / np.sqrt(2))) for x in v])  # gelu (exact)
  return np.asarray(network.activation(name, np.asarray(v, np.float32), negative_slope),
                    np.float64)


def _is_depthwise(n: S.Node, node_vars, channels: int) -> bool:
  """One group per channel, one output per group (``C -> C``, kernel ``(kh, kw, 1, C)``)."""
  return (isinstance(n, S.Conv) and n.groups == channels == n.features
          and np.shape(node_vars["params"]["kernel"])[2] == 1)


def _passes_channels(n: S.Node) -> bool:
  """Per-channel nodes that need no edit when a channel goes (every pool op is per-channel)."""
  return isinstance(n, (S.Act, S.Dropout, S.Pool))


def _roots(nodes, prefix, shape):
  """Node lists whose flat views cover the spec once: the top and each block part."""
  yield prefix, nodes, shape
  for e in _tree.flat_view(nodes, prefix, shape):
    if isinstance(e.node, S.Block):
      scope = e.path + S.SEP
      yield from _roots(e.node.branch, scope, e.in_shape)
      yield from _roots(e.node.shortcut, scope, e.in_shape)
      mid = S._run_shapes(e.node.branch, e.in_shape, scope)
      yield from _roots(e.node.post, scope, mid)


class _Cutter:
  """Stages the edits of one site; :meth:`commit` applies them."""

  def __init__(self, nodes: dict, node_vars: dict, counts: dict):
    self.nodes, self.node_vars, self.counts = nodes, node_vars, counts
    self.new_nodes: dict[str, S.Node] = {}
    self.new_vars: dict[str, dict] = {}
    self.new_counts: dict[str, np.ndarray] = {}

  def node(self, path):
    return self.new_nodes.get(path, self.nodes[path])

  def vars(self, path):
    return self.new_vars.get(path, self.node_vars.get(path))

  def set(self, path, node, params=None, stats=None):
    self.new_nodes[path] = node
    if params is not None:
      entry = {"params": params}
      if stats is not None:
        entry["batch_stats"] = stats
      self.new_vars[path] = entry

  def commit(self):
    self.nodes.update(self.new_nodes)
    self.node_vars.update(self.new_vars)
    self.counts.update(self.new_counts)

  # -- per-kind cuts ---------------------------------------------------------------

  def cut_bn(self, path, keep):
    v = self.vars(path)
    self.set(path, self.node(path), {k: np.asarray(a)[keep] for k, a in v["params"].items()},
             {k: np.asarray(a)[keep] for k, a in v["batch_stats"].items()})

  def cut_outputs(self, path, keep):
    n, v = self.node(path), self.vars(path)["params"]
    params = {"kernel": np.asarray(v["kernel"])[..., keep]}
    if "bias" in v:
      params["bias"] = np.asarray(v["bias"])[keep]
    if isinstance(n, S.Conv):
      groups = len(keep) if n.groups > 1 else 1
      n = dataclasses.replace(n, features=len(keep), groups=groups)
    else:
      n = dataclasses.replace(n, features=len(keep))
    self.set(path, n, params)

  def cut_inputs(self, path, rows_keep, bias_add):
    n, v = self.node(path), self.vars(path)["params"]
    kernel = np.asarray(v["kernel"])
    params = {"kernel": kernel[rows_keep] if isinstance(n, S.Dense)
              else kernel[:, :, rows_keep, :]}
    if "bias" in v or np.any(bias_add):
      bias = np.asarray(v["bias"], np.float64) if "bias" in v else np.zeros(n.features)
      params["bias"] = (bias + bias_add).astype(kernel.dtype)
      n = dataclasses.replace(n, bias=True)
    self.set(path, n, params)

  def cut_counts(self, path, keep):
    if path in self.counts:
      self.new_counts[path] = np.asarray(self.counts[path])[:, keep]


def _producer(cutter: _Cutter, view, i, cut, keep) -> bool:
  """Stages the backward cuts from site ``view[i]``; False if impossible."""
  j = i - 1
  while j >= 0:
    e = view[j]
    n = cutter.node(e.path)
    if isinstance(n, S.BatchNorm):
      cutter.cut_bn(e.path, keep)
    elif isinstance(n, S.Act):
      cutter.cut_counts(e.path, keep)
    elif _passes_channels(n):
      pass
    elif isinstance(n, S.Dense) or (isinstance(n, S.Conv) and n.groups == 1):
      cutter.cut_outputs(e.path, keep)
      return True
    elif _is_depthwise(n, cutter.vars(e.path), len(keep) + len(cut)):
      cutter.cut_outputs(e.path, keep)      # its input channels are now unused too
    else:
      return False
    j -= 1
  return False


def _consumer(cutter: _Cutter, view, i, cut, keep) -> bool:
  """Stages the forward cuts from site ``view[i]``; False if impossible."""
  channels = len(cut) + len(keep)
  value = np.zeros(len(cut))
  flat_positions = None          # set after a Flatten: rows are (position, channel)
  for e in view[i + 1:]:
    n = cutter.node(e.path)
    if isinstance(n, S.Act):
      value = _fn(n.fn, value, n.negative_slope)
      cutter.cut_counts(e.path, keep)
    elif isinstance(n, S.Dropout):
      pass
    elif isinstance(n, S.Pool):
      if n.op == "avg" and any(any(p) for p in n.padding) and np.any(value):
        return False             # averaging in the zero padding changes a constant
    elif isinstance(n, S.Flatten):
      flat_positions = int(np.prod(e.in_shape[:-1]))
    elif isinstance(n, S.BatchNorm) and flat_positions is None:
      s, t = L.bn_affine(n, cutter.vars(e.path))
      value = s[cut] * value + t[cut]
      cutter.cut_bn(e.path, keep)
    elif flat_positions is None and _is_depthwise(n, cutter.vars(e.path), channels):
      v = cutter.vars(e.path)["params"]
      if np.any(value) and any(any(p) for p in n.padding):
        return False
      k = np.asarray(v["kernel"], np.float64)
      b = np.asarray(v["bias"], np.float64) if "bias" in v else np.zeros(channels)
      value = value * k[:, :, 0, cut].sum((0, 1)) + b[cut]
      cutter.cut_outputs(e.path, keep)
    elif isinstance(n, S.Dense) or (isinstance(n, S.Conv) and n.groups == 1
                                    and flat_positions is None):
      k = np.asarray(cutter.vars(e.path)["params"]["kernel"], np.float64)
      if flat_positions is not None:
        rows = np.arange(flat_positions * channels).reshape(flat_positions, channels)
        rows_keep, rows_cut = rows[:, keep].ravel(), rows[:, cut]
        bias_add = np.einsum("pc,pco->o", np.broadcast_to(value, rows_cut.shape),
                             k[rows_cut])
        rows_keep = np.sort(rows_keep)
      elif isinstance(n, S.Dense):
        rows_keep, bias_add = keep, value @ k[cut]
      else:
        if np.any(value) and any(any(p) for p in n.padding):
          return False
        rows_keep, bias_add = keep, np.einsum("c,hwco->o", value, k[:, :, cut, :])
      cutter.cut_inputs(e.path, rows_keep, bias_add)
      return True
    else:
      return False
  return False


def cut_channels(spec: S.Spec, variables, site_counts: Mapping[str, object], *,
                 log: list | None = None):
  """Cuts the channels that are always OFF at ReLU / ReLU6 sites (see module doc).

  Args:
    spec: the architecture.
    variables: its Flax variables.
    site_counts: ``{site: (3, C)}`` sign counts (positive, negative, zero) of
      the sites' pre-activations over the data, as
      ``jaxdepth.forward(..., collect_stats=True).site_counts`` or
      ``jaxdepth.stats.SiteStats.counts`` give them. Sites left out are not cut.
    log: optional list of :class:`~jaxdepth.surgery.Edit` to append to.

  Returns:
    ``(spec, variables)`` with fewer channels, equal to the input network on
    every input on which the cut channels are OFF.

  Raises:
    TypeError: ``spec`` is not a Spec, or ``site_counts`` not a ``{site: counts}`` mapping.
    KeyError: a site of ``site_counts`` is not a live site of ``spec``.
    ValueError: counts of the wrong shape.
    jaxdepth.checkpoint.SpecMismatchError: ``variables`` do not fit ``spec`` (the node
      is named).
  """
  _tree.check_model(spec, variables, "cut_channels(spec, variables, site_counts)")
  return _cut_channels(spec, variables, site_counts, log=log)


def _cut_channels(spec: S.Spec, variables, site_counts: Mapping[str, object], *,
                  log: list | None = None):
  """:func:`cut_channels` on variables already checked to fit ``spec`` (collapse checks once)."""
  if not isinstance(site_counts, Mapping):
    raise TypeError(f"site_counts must map each site to its (3, C) sign counts, e.g. the "
                    f"SiteStats.counts of an evaluation with collect_stats=True; got a "
                    f"{type(site_counts).__name__}")
  live = spec.sites()
  shapes = spec.shapes()
  counts = {}
  for site, c in site_counts.items():
    if site not in live:
      raise KeyError(f"site_counts names {site!r}, which is not a live site of "
                     f"{spec.name!r}; live sites: {list(live)}")
    c = np.asarray(c)
    channels = shapes[site][0][-1]
    if c.shape != (3, channels):
      raise ValueError(f"site_counts[{site!r}] has shape {c.shape}; expected (3, {channels}) "
                       f"(positive, negative, zero counts per channel)")
    counts[site] = c
  node_vars = _tree.split_variables(spec, variables)
  nodes = dict(spec.walk())
  for prefix, root, shape in list(_roots(spec.layers, "", spec.input_shape)):
    view = _tree.flat_view(root, prefix, shape)
    for i, e in enumerate(view):
      if e.path not in counts or nodes[e.path].fn not in _RECTIFIERS:
        continue
      off = np.array(stats.always_off(counts[e.path]))
      if not off.any():
        continue
      if off.all():
        off[0] = False
      cut, keep = np.flatnonzero(off), np.flatnonzero(~off)
      cutter = _Cutter(nodes, node_vars, counts)
      cutter.cut_counts(e.path, keep)
      if _producer(cutter, view, i, cut, keep) and _consumer(cutter, view, i, cut, keep):
        cutter.commit()
        if log is not None:
          log.append(_tree.Edit("cut_channels", e.path,
                                f"{len(cut)} of {len(off)} channels always OFF cut"))
  new_spec = S.map_nodes(spec, lambda p, n: nodes[p] if not isinstance(
      n, (S.Sequential, S.Block, S.Concat)) else n)
  return new_spec, _tree.join_variables(new_spec, node_vars)
