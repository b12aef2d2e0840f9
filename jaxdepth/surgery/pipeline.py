"""One call from a collapsed network to a really shallower one.

:func:`collapse` runs the passes in the order in which each one opens the way
for the next::

    cut_channels      (if site counts are given: always-OFF channels go)
    remove_blocks     (if block paths are given: LaCoOT's edit)
    fold_batchnorm    (BatchNorm into the conv/dense before it)
    drop_noops        (identity sites, dropout)
    repeat until nothing changes:
      merge_linear    (chains of affine ops -> fewer ops, where cheaper)
      fold_residuals  (linear blocks -> one op)
    crop_kernels      (edge taps that read only padding)

Every pass is a pure ``(spec, variables) -> (spec, variables)`` function and
can be used alone or in another order.
"""
from __future__ import annotations

from collections.abc import Mapping

from jaxdepth import costs
from jaxdepth import spec as S
from jaxdepth.surgery import _tree, channels, fold_bn, merge, noops, residual
from jaxdepth.surgery.cost import COSTS

__all__ = ["collapse", "layers_removed", "summary"]


def layers_removed(spec: S.Spec) -> int:
  """The papers' count of removed layers: the identity sites in ``spec``."""
  return sum(isinstance(n, S.Act) and n.fn == "identity" for _, n in spec.walk())


def summary(before: S.Spec, after: S.Spec) -> dict:
  """What surgery bought, JSON-ready: the papers' count beside the real figures.

  Args:
    before: the spec given to surgery (identity sites baked in).
    after: the spec it returned.

  Returns:
    ``layers_removed`` (identity sites in ``before``), and ``macs``, ``params``
    and :func:`jaxdepth.costs.depth` (active sites, nonlinear and weight depth)
    of both specs.

  Raises:
    TypeError: ``before`` or ``after`` is not a Spec.
  """
  S.check_spec(before, "summary(before, after)")
  S.check_spec(after, "summary(before, after)")

  def figures(spec):
    return {"macs": costs.count_macs(spec), "params": costs.count_params(spec),
            **costs.depth(spec)._asdict()}
  return {"layers_removed": layers_removed(before), "before": figures(before),
          "after": figures(after)}


def collapse(spec: S.Spec, variables, *, mode: str = "exact",
             site_counts: Mapping[str, object] | None = None, cost: str = "macs",
             remove_blocks=(), max_chain: int = 4, latency_batch: int = 1,
             log: list | None = None):
  """Rebuilds ``(spec, variables)`` as a shallower network computing the same function.

  Args:
    spec: the architecture, with the sites a method removed baked in as
      identities (:func:`jaxdepth.spec.with_identity`).
    variables: its Flax variables (eval mode: BatchNorm running statistics).
    mode: ``"exact"``: only merges equal everywhere; ``"interior"``: also the
      kxk∘kxk merges that differ on a border ring (see
      :mod:`jaxdepth.surgery.merge`; the log holds each ring).
    site_counts: ``{site: (3, C)}`` sign counts on the data; channels never
      positive at a ReLU/ReLU6 site are cut (:func:`~jaxdepth.surgery.cut_channels`).
    cost: ``"macs"`` (default), ``"latency"`` or ``"none"``: a merge is made
      where it lowers this cost (:mod:`jaxdepth.surgery.cost`).
    remove_blocks: paths of identity-shortcut blocks to replace by the identity.
    max_chain: the most ops merged into one.
    latency_batch: batch size at which ``cost="latency"`` times candidates.
    log: optional list; every pass appends its :class:`~jaxdepth.surgery.Edit`
      records (pass one to :func:`jaxdepth.equivalence.border_width`): the
      edits made, and a ``"skip"`` record, with its ``reason``, for every merge
      not made (an identity site with nothing affine on one side, two
      neighbouring ops not exact at the border in ``"exact"`` mode, a merge
      that would raise the cost).

  Returns:
    ``(spec, variables)``: a normal jaxdepth model (save it with
    :func:`jaxdepth.checkpoint.save_model`, train it, measure it).

  Raises:
    TypeError: ``spec`` is not a Spec (the arguments swapped, a JSON string).
    jaxdepth.checkpoint.SpecMismatchError: ``variables`` do not fit ``spec`` (made for
      another spec: another head or width); the first node that differs is named.
    ValueError: an unknown ``mode`` or ``cost``.
  """
  _tree.check_model(spec, variables, "collapse(spec, variables)")
  merge.check_mode(mode)
  if cost not in COSTS:
    raise ValueError(f"unknown cost {cost!r}; expected one of {COSTS}")
  log = [] if log is None else log
  if site_counts is not None:
    spec, variables = channels._cut_channels(spec, variables, site_counts, log=log)
  if remove_blocks:
    spec, variables = residual._remove_blocks(spec, variables, remove_blocks, log=log)
  spec, variables = fold_bn._fold_batchnorm(spec, variables, log=log)
  spec, variables = noops._drop_noops(spec, variables, log=log)
  loop_start = len(log)
  for _ in range(16):
    before, round_start = spec, len(log)
    spec, variables = merge._merge_linear(spec, variables, mode=mode, cost=cost,
                                          max_chain=max_chain, latency_batch=latency_batch,
                                          log=log)
    spec, variables = residual._fold_residuals(spec, variables, cost=cost,
                                               latency_batch=latency_batch, log=log)
    if spec == before:
      break
  # Each round logs the merges it skipped; only the last round's describe the result.
  log[loop_start:] = [e for i, e in enumerate(log[loop_start:], loop_start)
                      if e.kind != "skip" or i >= round_start]
  # An identity dropped next to a block that a round then folded and merged with the node
  # on its other side: the node after it is gone into that merge, and so is the skip.
  paths = {p for p, _ in spec.walk()}
  log[:loop_start] = [e for e in log[:loop_start]
                      if not (e.kind == "skip" and e.between and e.between[-1] not in paths)]
  return merge._crop_kernels(spec, variables, log=log)
