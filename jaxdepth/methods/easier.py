"""EASIER: remove the lowest-entropy rectifier, one per iteration (``docs/methods/easier.md``).

Quétu, Liao, Nguyen, Tartaglione, "The Simpler The Better: An Entropy-Based
Importance Metric To Reduce Neural Networks' Depth", ECML PKDD 2024
(arXiv 2404.18949).

A rectifier site ``l`` puts each channel ``c`` ON or OFF; with ``q_c`` the
probability of ON, the channel's entropy is the binary entropy (bits)::

    h2(q; ε) = −q log2 max(q, ε) − (1 − q) log2 max(1 − q, ε),   ε = 1e-10

and the site's entropy ``H_l`` is the mean of ``h2(q_c)`` over *all* its channels.
A site with ``H_l = 0`` is linear on the data (every channel always ON or
always OFF), so it can be replaced by the identity at no cost; EASIER removes
the site closest to that. One iteration::

    train E epochs (a fresh optimizer) → H_l for every live site
    H[argmin H] ← 0;  remove every live site with H_l = 0   (usually just the argmin)

Two sources of ``q_c`` (:data:`ESTIMATORS`):

* ``"easier"`` (the official code, the default): during the **last training
  epoch**, in train mode, per batch ``b``: ``q_c^b = #(z ≥ 0) / n`` over the
  batch and the positions (zeros count as ON), ``H_l^b = mean_c h2(q_c^b)``, and
  ``H_l = mean_b H_l^b``. This is ``stats.entropies(stats, "easier")`` on the
  :class:`~jaxdepth.stats.SiteStats` accumulated by the train step.
* ``"dataset"`` (the paper's formulas): one pass over a split in eval mode,
  ``q_c = #(z > 0) / #(z ≠ 0)`` over the whole split (zeros discarded),
  ``H_l = mean_c h2(q_c)``.

The pieces are tiny pure functions a training loop of one's own can call
(:func:`measure`, :func:`choose`, :func:`apply` on gates during a run,
:func:`remove`, the ``(spec, variables) -> (spec, variables)`` transform, at
the end); :class:`Easier` wires them into :mod:`jaxdepth.driver`::

    gates = jaxdepth.gates_for(spec)                  # every site on
    for iteration in range(R):
      variables, stats = train_one_round(spec, variables, gates)  # accumulate() in the step
      H = easier.measure(stats, base.live_sites(spec, gates))
      gates = easier.apply(gates, easier.choose(H), spec=spec)
    shallow, variables = easier.remove(spec, variables, base.removed_sites(spec, gates))
"""
from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp

from jaxdepth import network
from jaxdepth import stats as site_stats
from jaxdepth.methods import base
from jaxdepth.spec import Spec, site_paths, with_identity

__all__ = ["ESTIMATORS", "SPLITS", "measure", "choose", "apply", "remove", "Easier"]

ESTIMATORS = ("easier", "dataset")
SPLITS = ("train", "val")


def measure(stats: site_stats.SiteStats, live_sites, estimator: str = "easier"
            ) -> dict[str, float]:
  """The entropy ``H_l`` (bits) of every live site, from accumulated statistics.

  Args:
    stats: :class:`~jaxdepth.stats.SiteStats` of the network: train-mode ones of
      the last epoch for ``"easier"``, eval-mode ones of a split for ``"dataset"``.
    live_sites: the sites still in play (removed sites are not measured any more).
    estimator: ``"easier"`` (per-batch mean, zeros ON, the official code) or
      ``"dataset"`` (dataset-level counts, zeros discarded, the paper).

  Returns:
    ``{site: bits}`` in the order of ``live_sites``.

  Raises:
    ValueError: unknown estimator, no site, or statistics of no data.
    KeyError: a site the statistics do not hold.
    TypeError: ``live_sites`` given as one string instead of a collection of names.
  """
  if estimator not in ESTIMATORS:
    raise ValueError(f"unknown EASIER estimator {estimator!r}; expected one of {ESTIMATORS}")
  live_sites = site_paths(live_sites, "live_sites")
  if not live_sites:
    raise ValueError("no live site to measure: every site is already removed")
  unknown = [s for s in live_sites if s not in stats.counts]
  if unknown:
    raise KeyError(f"unknown sites {unknown}; the statistics hold {list(stats.counts)}")
  values = site_stats.entropies(stats, estimator)   # refuses statistics of no batch
  return {s: values[s] for s in live_sites}


def choose(entropies: dict[str, float]) -> tuple[str, ...]:
  """The sites EASIER removes: the lowest entropy, and any at exactly zero.

  Ties go to the first site in call order (``argmin``'s rule).

  Args:
    entropies: ``{site: H_l}`` of the live sites, in call order.

  Returns:
    The sites to turn into identities, in call order (at least one).

  Raises:
    TypeError: ``entropies`` is not a ``{site: entropy}`` dict (e.g. a list of values).
    ValueError: no entropy, or a NaN or infinite one (statistics of no data, or a
      diverged run): the lowest would be meaningless.
  """
  if not isinstance(entropies, Mapping):
    raise TypeError(f"choose needs {{site: entropy}} (as easier.measure returns), got a "
                    f"{type(entropies).__name__}; the site names say which site to remove")
  if not entropies:
    raise ValueError("no entropies to choose from: every site is already removed")
  bad = [s for s, h in entropies.items() if not math.isfinite(float(h))]
  if bad:
    raise ValueError(f"the entropies of sites {bad} are not finite "
                     f"({[float(entropies[s]) for s in bad]}), so the lowest is undefined; "
                     f"check that their statistics hold data and that training did not diverge")
  lowest = min(entropies, key=entropies.__getitem__)
  return tuple(s for s, h in entropies.items() if s == lowest or h == 0.0)


def apply(gates, sites, *, spec: Spec):
  """Turns ``sites`` off in a gate array (during a run: the spec does not change).

  Args:
    gates: ``(len(spec.sites()),)`` gates (:func:`jaxdepth.gates_for`).
    sites: site paths to turn into identities.
    spec: the spec the gates belong to (for the site order).

  Returns:
    The new gates (those of ``sites`` at 0).

  Raises:
    KeyError: a name that is not a live site (not a site, or already off).
    TypeError: a spec given instead of gates (use :func:`remove`), no ``spec``, or
      ``sites`` given as one string instead of a collection of names.
  """
  if isinstance(gates, Spec):
    raise TypeError("easier.apply turns sites off in a gate array; to bake removed sites into "
                    "a model use easier.remove(spec, variables, sites) -> (spec, variables)")
  if spec is None:
    raise TypeError("apply(gates, sites) needs spec= to know which gate is which site")
  sites = site_paths(sites)
  live = base.live_sites(spec, gates)
  unknown = [s for s in sites if s not in live]
  if unknown:
    known = "removed already" if set(unknown) <= set(spec.sites()) else "not sites of the spec"
    raise KeyError(f"cannot remove {unknown}: {known}; live sites: {list(live)}")
  off = jnp.asarray([s in sites for s in spec.sites()])
  return jnp.where(off, 0.0, jnp.asarray(gates, jnp.float32))


def remove(spec: Spec, variables, sites) -> tuple[Spec, Any]:
  """The transform: ``(spec, variables)`` with ``sites`` baked in as identities.

  A site holds no parameters, so the variables are returned as they are; the
  result computes what the gated network computed (and is what surgery takes).

  Args:
    spec: the architecture.
    variables: its Flax variables.
    sites: site paths to turn into ``Act(fn="identity")``; for those a gate array
      turns off, pass ``base.removed_sites(spec, gates)``.

  Returns:
    ``(spec, variables)``.

  Raises:
    KeyError: a name that is not a site of ``spec``.
    TypeError: ``sites`` given as one string or as a gate array instead of a
      collection of names.
  """
  return with_identity(spec, sites), variables


@dataclasses.dataclass(frozen=True)
class Easier:
  """EASIER as a :class:`~jaxdepth.methods.base.Method` for :func:`jaxdepth.driver.run`.

  The state is ``{"gates": (len(spec.sites()),) float32}``.

  Attributes:
    estimator: ``"easier"`` (last training epoch, train mode, the faithful
      default) or ``"dataset"`` (eval mode on ``entropy_split``, zeros discarded).
    entropy_split: the split the ``"dataset"`` estimator measures on
      (``"train"`` or ``"val"``; unused by ``"easier"``).
  """
  estimator: str = "easier"
  entropy_split: str = "train"
  name: str = dataclasses.field(default="easier", init=False)
  unit: str = dataclasses.field(default="site", init=False)
  score_name: str = dataclasses.field(default="entropies", init=False)
  score_unit: str = dataclasses.field(default="bits", init=False)

  def __post_init__(self):
    if self.estimator not in ESTIMATORS:
      raise ValueError(f"unknown EASIER estimator {self.estimator!r}; expected one of "
                       f"{ESTIMATORS}")
    if self.entropy_split not in SPLITS:
      raise ValueError(f"entropy_split must be one of {SPLITS}, got {self.entropy_split!r}")

  def options(self) -> dict[str, Any]:
    return {"estimator": self.estimator,
            "entropy_split": self.entropy_split if self.estimator == "dataset" else None}

  def init(self, spec: Spec) -> dict[str, jax.Array]:
    return {"gates": network.gates_for(spec)}

  def units(self, spec: Spec) -> tuple[str, ...]:
    return spec.sites()

  def live_units(self, spec: Spec, state) -> tuple[str, ...]:
    base.check_state(self, spec, state)
    return base.live_sites(spec, state["gates"])

  def check_data(self, spec: Spec, dataset, *, eval_batch_size: int | None = None,
                 mesh=None) -> None:
    """Refuses a split whose dataset-level counts would pass int32 (only for ``"dataset"``)."""
    del eval_batch_size, mesh   # the evaluations' batch is checked by fit
    if self.estimator == "dataset":
      split = getattr(dataset, self.entropy_split)
      if split is not None:
        site_stats.check_count_capacity(spec, split.num_examples, split=self.entropy_split)

  def default_iterations(self, spec: Spec) -> int:
    return len(spec.sites())

  def train_options(self, spec: Spec, state) -> base.TrainOptions:
    base.check_state(self, spec, state)
    return base.TrainOptions(gates=state["gates"],
                             stats_last_epoch=self.estimator == "easier")

  def measure(self, spec: Spec, variables, state, context: base.Context) -> dict[str, float]:
    if self.estimator == "easier":
      if context.train_stats is None:
        raise ValueError("the 'easier' estimator needs the last epoch's train-mode statistics; "
                         "train with stats_last_epoch=True")
      stats = context.train_stats
    else:
      stats = context.eval_stats(self.entropy_split)
    return measure(stats, self.live_units(spec, state), self.estimator)

  def decide(self, scores: dict[str, float], state) -> base.Decision:
    return base.Decision(choose(scores))

  def apply(self, spec: Spec, variables, state, decision: base.Decision):
    base.check_state(self, spec, state)
    return variables, {"gates": apply(state["gates"], decision.remove, spec=spec)}

  def export(self, spec: Spec, variables, state):
    base.check_state(self, spec, state)
    return remove(spec, variables, base.removed_sites(spec, state["gates"]))
