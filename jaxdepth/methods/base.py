"""The method protocol: what :mod:`jaxdepth.driver` needs from a depth-reduction method.

The five methods share one shape: train, look at the trained network, decide
what to take out, take it out, train again (or not: LaCoOT trains once and then
only removes). A method is the steps in the middle, as pure functions over
``(spec, variables, state)``; the driver owns training, evaluation, checkpoints
and the report::

    state = method.init(spec)
    for iteration in range(R):                           # R = method.default_iterations(spec)
      options = method.train_options(spec, state)        # TrainOptions: gates, masks, loss term, epochs
      trained = train(spec, variables, options)          # the driver (a fresh optimizer)
      scores = method.measure(spec, trained.variables, state, context)   # {unit: score}
      decision = method.decide(scores, state)            # Decision: the units to remove now
      variables, state = method.apply(spec, trained.variables, state, decision)
    shallow_spec, shallow_variables = method.export(spec, variables, state)

What a method removes is its **unit** (``method.unit``): an activation
``"site"`` (EASIER, EGP, NEPENTHE, TLC) or a residual ``"block"`` (LaCoOT);
``method.units(spec)`` lists them and the report counts them. What training
needs from the method is one :class:`~jaxdepth.training.TrainOptions` (site
gates, statistics of the last epoch, element-wise weight masks, a regularizer
over named intermediates, the number of epochs, node gates that turn whole
shape-preserving nodes such as residual blocks into the identity), never a
method-specific argument of :func:`jaxdepth.training.fit`.

A method whose later iterations only evaluate (``epochs=0``, LaCoOT) gets one
more iteration after its last removal, with no live unit: ``measure`` then
returns ``{}`` and ``decide`` an empty :class:`Decision`.

The method ``state`` is a pytree of arrays (so orbax checkpoints it beside the
variables): EASIER's is the site gates, EGP's adds weight masks, LaCoOT's holds
block gates and the ranking it made after its one training. The spec does
not change during a run (removed units are data: gates at 0, masks; no
recompilation); :meth:`Method.export` bakes the state into the spec for a saved
model.

A run stops when the iterations are done or ``live_units`` is empty; a method
with a stop rule of its own (TLC: accuracy collapsed) returns no live unit once
it holds, and names the rule in its last ``Decision.details["stop"]``.

The driver holds a method to these rules as its members return
(:mod:`jaxdepth.methods.conformance`): ``options()`` and the scores are JSON (jax and
numpy numbers are taken), ``Decision.remove`` is a tuple of live unit names, each once,
and the state keeps ``init(spec)``'s tree structure, shapes and dtypes. Writing a
method of one's own: docs/methods/writing.md.
"""
from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol, runtime_checkable

import jax
import numpy as np

from jaxdepth.network import gates_by_site
from jaxdepth.spec import Spec
from jaxdepth.stats import SiteStats
from jaxdepth.training import Regularizer, TrainOptions

__all__ = ["TrainOptions", "Regularizer", "Context", "Decision", "Method", "live_sites",
           "removed_sites", "check_state"]

if TYPE_CHECKING:
  from jaxdepth.data import Dataset

State = Any  # a pytree of arrays


class Context(NamedTuple):
  """What the driver hands :meth:`Method.measure` besides the trained variables.

  Attributes:
    iteration: the iteration (0 = the dense model).
    train_stats: train-mode SiteStats of the last training epoch, when the
      method asked for them, else ``None``.
    eval_stats: ``split -> SiteStats``: eval-mode statistics of the trained
      network on ``"train"``, ``"val"`` or ``"test"`` (with the current gates).
    rng: a key derived from the run's seed and the iteration.
    dataset: the run's dataset (e.g. for a validation batch of one's own).
    mesh: the device mesh the run uses.
    dtype: the compute dtype (``None``: float32).
    eval_batch_size: the global batch size of the run's evaluations.
    val_accuracy: the trained network's validation accuracy, a fraction in [0, 1]
      (as the report holds it), for a stop rule on accuracy (TLC).
  """
  iteration: int
  train_stats: SiteStats | None
  eval_stats: Callable[[str], SiteStats]
  rng: jax.Array
  dataset: Dataset | None = None
  mesh: Any = None
  dtype: Any = None
  eval_batch_size: int | None = None
  val_accuracy: float | None = None


class Decision(NamedTuple):
  """What :meth:`Method.decide` returns.

  Attributes:
    remove: the units to remove now, in the order they go (may be empty: EGP
      prunes weights every iteration but removes a site only when one reaches zero
      entropy).
    details: JSON facts of the decision for the report (e.g. EGP's pruning
      amounts per layer), also read by :meth:`Method.apply`.
  """
  remove: tuple[str, ...] = ()
  details: dict[str, Any] | None = None


@runtime_checkable
class Method(Protocol):
  """A depth-reduction method, as the driver sees it.

  Attributes:
    name: a short name (``"easier"``), stored in the run's identity.
    unit: what the method removes: ``"site"`` or ``"block"``.
    score_name: the report key of what :meth:`measure` returns (``"entropies"``).

  Optional attribute: ``score_unit``, the unit of numeric scores for the report's
  axes and tables (``"bits"`` for entropies); read with ``getattr(method,
  "score_unit", None)``, so a method without one still satisfies the protocol.
  Optional method: ``check_data(spec, dataset, *, eval_batch_size=None, mesh=None)``,
  which raises ``ValueError`` on data the method cannot measure (EASIER's and EGP's
  dataset-level counts on a split too large for them, EGP's entropy batch that the
  mesh does not split, TLC's ranking batch on a smaller validation split, LaCoOT's
  distances on batches of fewer than 2 examples); the driver calls it with the run's
  evaluation batch and mesh before writing anything (a ``check_data(spec, dataset)``
  that takes neither is called with the two arguments).
  """
  name: str
  unit: str
  score_name: str

  def options(self) -> dict[str, Any]:
    """The method's settings as JSON (part of a run's identity)."""

  def init(self, spec: Spec) -> State:
    """The state before anything is removed."""

  def units(self, spec: Spec) -> tuple[str, ...]:
    """Every removable unit of ``spec`` (node paths), in call order."""

  def live_units(self, spec: Spec, state: State) -> tuple[str, ...]:
    """Units still in play, in call order; the driver stops when there are none."""

  def default_iterations(self, spec: Spec) -> int:
    """How many iterations a run makes when the user does not say."""

  def train_options(self, spec: Spec, state: State) -> TrainOptions:
    """How to train the network in ``state``."""

  def measure(self, spec: Spec, variables, state: State, context: Context) -> dict[str, Any]:
    """The scores of the live units (``{unit: score}``, JSON, call order).

    A score is a number, or a JSON object whose first numeric field is the
    number the report shows (EGP: ``{"entropy", "layer", "nnz", ...}``), so
    that :meth:`decide` can read every fact it needs from the scores.
    """

  def decide(self, scores: dict[str, Any], state: State) -> Decision:
    """What to remove now, from the scores."""

  def apply(self, spec: Spec, variables, state: State, decision: Decision
            ) -> tuple[Any, State]:
    """Carries out ``decision``: the new ``(variables, state)``."""

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
  return gates_by_site(spec, np.asarray(jax.device_get(gates))).items()


def check_state(method, spec: Spec, state, *, optional: tuple[str, ...] = ()) -> None:
  """Refuses a state whose keys are not those of ``method.init(spec)``, naming the keys.

  A host-side check of the dict's keys only (nothing is read from the arrays), for the
  entry points that take a state: a state of another method (EASIER's gates given to
  EGP, say) is refused by name instead of failing on a bare key or being read silently.

  Args:
    method: the method that reads ``state``.
    spec: the architecture.
    state: what the caller passed as ``method``'s state.
    optional: keys that may be missing or extra (the method checks them itself).

  Raises:
    TypeError: ``state`` is not a dict.
    ValueError: ``state`` lacks keys of ``method.init(spec)`` or holds others.
  """
  make = f"make it with {type(method).__name__}().init(spec)"
  if not isinstance(state, Mapping):
    raise TypeError(f"the {method.name} state is a dict of arrays (what "
                    f"{type(method).__name__}().init(spec) returns), got an object of type "
                    f"{type(state).__name__}; {make}")
  expected = _state_keys(method, spec)
  keys = set(state)
  missing = sorted(expected - keys - set(optional))
  extra = sorted(keys - expected - set(optional), key=str)
  if missing or extra:
    what = " and ".join(
        ([f"lacks {missing}"] if missing else []) +
        ([f"holds {extra}, which {type(method).__name__} does not make"] if extra else []))
    raise ValueError(f"this {method.name} state {what} (its keys: {sorted(keys, key=str)}; "
                     f"{method.name}'s: {sorted(expected)}): a state of another method? "
                     f"{make}")


def _state_keys(method, spec: Spec) -> frozenset:
  """The keys of ``method.init(spec)``, computed once per (method, spec) where both hash."""
  try:
    return _cached_state_keys(method, spec)
  except TypeError:   # an unhashable method or spec
    return frozenset(method.init(spec))


@functools.lru_cache(maxsize=64)
def _cached_state_keys(method, spec: Spec) -> frozenset:
  return frozenset(method.init(spec))
