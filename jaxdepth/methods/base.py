"""The method protocol: what :mod:`jaxdepth.driver` needs from a depth-reduction method.

The iterative methods (EASIER, EGP, NEPENTHE, TLC; LaCoOT with one iteration)
share one shape: train, look at the trained network, decide what to take out,
take it out, train again. A method is the three steps in the middle, as pure
functions over ``(spec, variables, state)``; the driver owns training,
evaluation, checkpoints and the report::

    state = method.init(spec)
    for iteration in range(R):
      options = method.train_options(spec, state)       # gates, statistics to collect
      trained = train(spec, variables, **options)       # the driver (a fresh optimizer)
      scores = method.measure(spec, trained.variables, state, context)   # {site: score}
      chosen = method.decide(scores, state)              # what to remove now
      variables, state = method.apply(spec, trained.variables, state, chosen)
    shallow_spec, shallow_variables = method.export(spec, variables, state)

The method ``state`` is a pytree of arrays (so orbax checkpoints it beside the
variables): EASIER's is the site gates, EGP's would add weight masks. The spec
does not change during a run (removed sites are gates at 0: data, no
recompilation); :meth:`Method.export` bakes the state into the spec for a saved
model.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple, Protocol, runtime_checkable

import jax
import numpy as np

from jaxdepth.spec import Spec
from jaxdepth.stats import SiteStats

__all__ = ["TrainOptions", "Context", "Method", "live_sites", "removed_sites"]

State = Any  # a pytree of arrays


class TrainOptions(NamedTuple):
  """What a method asks of the next training phase.

  Attributes:
    gates: ``(len(spec.sites()),)`` float array passed to every train and eval
      step (0 = the site is the identity), or ``None``.
    stats_last_epoch: accumulate train-mode :class:`~jaxdepth.stats.SiteStats`
      during the last epoch (EASIER's entropy source).
  """
  gates: jax.Array | None = None
  stats_last_epoch: bool = False


class Context(NamedTuple):
  """What the driver hands :meth:`Method.measure` besides the trained variables.

  Attributes:
    iteration: the iteration (0 = the dense model).
    train_stats: train-mode SiteStats of the last training epoch, when the
      method asked for them, else ``None``.
    eval_stats: ``split -> SiteStats``: eval-mode statistics of the trained
      network on ``"train"``, ``"val"`` or ``"test"`` (with the current gates).
    rng: a key derived from the run's seed and the iteration.
  """
  iteration: int
  train_stats: SiteStats | None
  eval_stats: Callable[[str], SiteStats]
  rng: jax.Array


@runtime_checkable
class Method(Protocol):
  """A depth-reduction method, as the driver sees it.

  Attributes:
    name: a short name (``"easier"``), stored in the run's identity.
    score_name: the report key of what :meth:`measure` returns (``"entropies"``).
  """
  name: str
  score_name: str

  def options(self) -> dict[str, Any]:
    """The method's settings as JSON (part of a run's identity)."""

  def init(self, spec: Spec) -> State:
    """The state before anything is removed."""

  def live_sites(self, spec: Spec, state: State) -> tuple[str, ...]:
    """Sites still in play, in call order; the driver stops when there are none."""

  def train_options(self, spec: Spec, state: State) -> TrainOptions:
    """How to train the network in ``state``."""

  def measure(self, spec: Spec, variables, state: State, context: Context) -> dict[str, float]:
    """One score per live site (``{site: score}``, call order)."""

  def decide(self, scores: dict[str, float], state: State) -> tuple[str, ...]:
    """The sites to remove now, from the scores."""

  def apply(self, spec: Spec, variables, state: State, sites: tuple[str, ...]
            ) -> tuple[Any, State]:
    """Removes ``sites``: the new ``(variables, state)``."""

  def export(self, spec: Spec, variables, state: State) -> tuple[Spec, Any]:
    """``(spec, variables)`` with the state baked in (what gets saved)."""


def removed_sites(spec: Spec, gates) -> tuple[str, ...]:
  """Sites of ``spec`` whose gate is 0, in call order."""
  return tuple(s for s, g in _site_gates(spec, gates) if g == 0)


def live_sites(spec: Spec, gates) -> tuple[str, ...]:
  """Sites of ``spec`` whose gate is not 0, in call order."""
  return tuple(s for s, g in _site_gates(spec, gates) if g != 0)


def _site_gates(spec: Spec, gates):
  """``(site, gate)`` pairs on the host, after checking the gates' shape."""
  gates = np.asarray(jax.device_get(gates))
  if gates.shape != (len(spec.sites()),):
    raise ValueError(f"gates must have shape ({len(spec.sites())},), one per live site of "
                     f"{spec.name!r}, got {gates.shape}")
  return zip(spec.sites(), gates)
