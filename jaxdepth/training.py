"""Training and evaluation: jitted steps, data parallel on a device mesh, and the epoch loop.

Parallelism. Every step is one ``jax.jit`` computation over a 1-D device mesh
with axis ``'data'`` (:func:`make_mesh`): the batch is split over the devices
(``NamedSharding(mesh, P('data'))``) and the train state is replicated. The same
code runs on one CPU, on N (fake) CPU devices, a GPU, or every chip of a TPU pod
(after ``jax.distributed.initialize()``, each process feeding its own shard of the
global batch through :func:`shard_batch`). Because the whole global batch is one
array to the compiler, **BatchNorm statistics are global-batch statistics**: the
result equals the single-device computation on the whole batch, unlike ``pmap``
without a ``pmean`` (per-device statistics) or PyTorch DDP without SyncBN.

The loss is the softmax cross-entropy averaged over the real examples of the
batch (``mask`` True)::

    L(w) = sum_i m_i * CE(f_w(x_i), y_i) / max(1, sum_i m_i)

The loss counts the real examples only, but train-mode BatchNorm normalises with
the statistics of the whole batch, padded rows included (and a regularizer may
read them too), so a padded batch changes what the real examples compute: train
on full batches, ``split.batches(..., drop_remainder=True)`` as :func:`fit` does
(a train step refuses a numpy batch with padded rows). Evaluation is per example
(BatchNorm's running statistics), so padded examples there count for nothing.

Metrics come out of the steps as on-device *sums* (``loss``: summed
cross-entropy, ``correct``, ``count``) so that they add up over batches and
devices without a transfer per batch; :func:`mean_metrics` turns them into
``{'loss', 'accuracy'}``.

The epoch loop is :func:`fit`: a fresh optimizer from an :class:`~jaxdepth.optim.Recipe`,
site gates passed to every step, :class:`~jaxdepth.stats.SiteStats` collected (train
mode, on device) during the last epoch when asked, per-epoch validation, a
JSON-lines metrics log, and orbax checkpoints from which a killed run resumes
and ends bit-for-bit where an uninterrupted run would.
"""
from __future__ import annotations

import functools
import hashlib
import itertools
import math
import operator
import os
import pathlib
import re
import threading
import time
from collections.abc import Mapping
from typing import Any, NamedTuple

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

from jaxdepth import network
from jaxdepth import optim
from jaxdepth import stats as site_stats
from jaxdepth.checkpoint import Checkpointer, all_finite
from jaxdepth.progress import MetricsLog, progress_bar
from jaxdepth.spec import Spec, check_spec
from jaxdepth.text.inputs import check_vocabulary

__all__ = [
    "DATA_AXIS", "TrainOptions", "Regularizer", "TrainState", "make_mesh", "shard_batch", "replicate",
    "cross_entropy", "batch_metrics", "mean_metrics", "make_train_step", "make_eval_step",
    "Evaluation", "evaluate", "FitResult", "NonFiniteLossError", "RunMismatchError", "Preempted",
    "fit", "variables_digest", "data_identity", "dtype_name", "devices_hint", "device_layout",
    "layout_hint", "request_stop", "clear_stop", "stop_if_requested", "check_variables",
    "check_seed", "check_split",
]

DATA_AXIS = "data"


class NonFiniteLossError(FloatingPointError):
  """Training diverged: the loss, or the state (parameters, BatchNorm statistics,
  optimizer state) while the loss stayed finite, became NaN or infinite; the run
  stopped without saving it.

  ``kept``: the step of the last good checkpoint left in the work directory (None:
  none is). That checkpoint resumes only with the same settings, so a run with a
  lower learning rate needs another work directory (or this one deleted).

  ``what``: the message without its advice (a program that knows how its user names the
  work directory says what to do itself).
  """

  def __init__(self, what: str, advice: str = "", *, kept: int | None = None):
    super().__init__(f"{what} {advice}" if advice else what)
    self.what = what
    self.kept = kept


class RunMismatchError(ValueError):
  """A work directory holds a run with other settings than the ones asked for.

  ``settings``: the keys of the run's settings that differ, where the refusal compares
  them (``"variables"``: the digest of the initial variables); empty otherwise.
  """

  def __init__(self, *args, settings: tuple[str, ...] = ()):
    super().__init__(*args)
    self.settings = tuple(settings)


class Preempted(KeyboardInterrupt):
  """Every process of a launch stopped at the same step after a preemption notice (SIGTERM to
  any of them, which jax's preemption service passes on to all), that step checkpointed.

  A ``KeyboardInterrupt``, so that a program stops on it as on Ctrl-C; running the same
  call again resumes from the checkpoint.
  """


_sync_steps = itertools.count()   # every process counts the same training steps
_STOP = threading.Event()          # a stop a signal handler asked for (request_stop)


def request_stop() -> None:
  """Asks the training loops of this process to stop at their next step, as Ctrl-C does.

  For a signal handler that raises ``KeyboardInterrupt`` (the commands' SIGTERM handler):
  Python drops an exception raised while a garbage-collection callback runs ("Exception
  ignored in ..."), and jax installs one, so the handler's own interrupt can be lost and the
  run would train on. :func:`fit` checks the request after every step and
  :func:`jaxdepth.driver.run` before every iteration (:func:`stop_if_requested`).
  """
  _STOP.set()


def clear_stop() -> None:
  """Forgets a :func:`request_stop` (a program that handled it and goes on)."""
  _STOP.clear()


def stop_if_requested() -> None:
  """Raises ``KeyboardInterrupt`` if :func:`request_stop` was called."""
  if _STOP.is_set():
    raise KeyboardInterrupt("stopped: a stop was requested (SIGTERM)")


def _preempted() -> bool:
  """Whether the processes of a launch reached the step at which a preemption notice stops
  them all (``multihost_utils.reached_preemption_sync_point``, called at every training
  step of the process, as it must be); ``False`` in a one-process run."""
  if jax.process_count() == 1:
    return False
  from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel
  return multihost_utils.reached_preemption_sync_point(next(_sync_steps))


class Regularizer(NamedTuple):
  """A term added to the training loss, computed from named intermediates.

  The train step runs the network once, keeping the input and output of the
  nodes named in ``capture`` (:func:`jaxdepth.network.forward`), and minimises::

      L = loss(logits, labels, mask) + fn(captured, mask, rng)

  Attributes:
    name: a short name, stored with checkpoints (a resumed run must use the same).
    capture: node paths whose ``(input, output)`` ``fn`` reads.
    fn: ``fn(captured, mask, rng) -> scalar``, ``captured = {path: (x, y)}`` over
      the global batch, ``mask`` the ``(B,)`` real-example flags (a text batch: the
      ``(B, L)`` flags of the real tokens of real examples), ``rng`` a key
      that is a function of the run seed and the step (so a resumed run draws
      the same keys). It must be hashable (compiled steps are cached on it): a
      module-level function or a frozen dataclass instance.
  """
  name: str
  capture: tuple[str, ...]
  fn: Any


class TrainOptions(NamedTuple):
  """What a method asks of a training phase: data the step reads, terms it adds.

  This is the whole interface between a method (:mod:`jaxdepth.methods`) and the
  training loop: :func:`fit` takes one, the driver gets one from
  ``method.train_options(spec, state)`` every iteration.

  Attributes:
    gates: ``(len(spec.sites()),)`` float array passed to every train and eval
      step (0 = the site is the identity), or ``None``.
    stats_last_epoch: accumulate train-mode :class:`~jaxdepth.stats.SiteStats`
      during the last epoch (EASIER's entropy source).
    masks: element-wise weight masks (a nested dict holding a subset of the
      ``params`` leaves, non-zero = kept; :func:`jaxdepth.optim.apply_masks`),
      passed to every step as data: masked gradients and updates keep pruned
      weights exactly 0 (:func:`jaxdepth.optim.keep_masked`). EGP, NEPENTHE
      (pruned weights) and TLC (cut channels).
    regularizer: a :class:`Regularizer` added to the loss (LaCoOT), or ``None``.
    epochs: train this many epochs instead of the recipe's (``0``: no training,
      the iteration only evaluates, e.g. LaCoOT's removals after its one training).
    node_gates: ``{node path: scalar}`` passed to every train and eval step
      (:func:`jaxdepth.network.forward`): a shape-preserving node (a residual
      block with an identity shortcut) whose gate is 0 is the identity. Data,
      like ``gates``: keep the same paths and only the values change, no
      recompilation (LaCoOT's removed blocks).
  """
  gates: jax.Array | None = None
  stats_last_epoch: bool = False
  masks: Any = None
  regularizer: Regularizer | None = None
  epochs: int | None = None
  node_gates: dict[str, Any] | None = None


# ------------------------------------------------------------------------ state


def _key_data(rng) -> jax.Array:
  """Raw ``uint32`` key data from an int seed (a Python, numpy or 0-d jax integer), a typed
  key or raw key data; anything else is refused here rather than at the first step."""
  if isinstance(rng, (int, np.integer)) and not isinstance(rng, bool):
    return jax.random.key_data(jax.random.key(int(rng)))
  shape = jax.eval_shape(lambda: jax.random.key_data(jax.random.key(0))).shape
  dtype, got = getattr(rng, "dtype", None), tuple(getattr(rng, "shape", (None,)))
  if dtype is not None and jnp.issubdtype(dtype, jax.dtypes.prng_key) and got == ():
    if jax.random.key_data(rng).shape == shape:   # not a key of another PRNG implementation
      return jax.random.key_data(rng)
  elif dtype is not None and jnp.issubdtype(dtype, jnp.integer) and got == ():
    return jax.random.key_data(jax.random.key(rng))   # the same key as the Python int's
  elif dtype == jnp.uint32 and got == shape:
    return jnp.asarray(rng)
  if dtype is None:
    what = f"a {type(rng).__name__}"
  elif jnp.issubdtype(dtype, jax.dtypes.prng_key):
    what = f"a key of shape {got} and dtype {dtype}"
  else:
    what = f"{dtype} of shape {got}"
  raise TypeError(f"TrainState.create: rng takes an int seed, a key (jax.random.key(seed)) or "
                  f"its uint32 key data of shape {shape} (jax.random.PRNGKey(seed)), got {what}")


def _own_copy(x):
  """``x`` copied into buffers of its own: by a transfer, where it is (``jnp.copy``
  compiles a program per shape); a multi-process array only by a compiled copy."""
  if isinstance(x, jax.Array) and not x.is_fully_addressable:
    return jnp.copy(x)
  return jax.device_put(x, may_alias=False)


def check_seed(seed) -> int:
  """``seed`` as a Python int (np.int64 from np.arange, a 0-d jax integer): it goes to JSON.

  Raises:
    TypeError: ``seed`` is no integer (a float, a string, a bool).
    ValueError: it is outside ``[0, 2**32)``: ``jax.random.key`` keeps a seed's low 32
      bits (jax's default, without ``jax_enable_x64``), so ``2**32`` would draw the
      initialisation and every key of seed 0, and ``-1`` those of ``2**32 - 1``.
  """
  if isinstance(seed, (bool, np.bool_)) or not hasattr(type(seed), "__index__"):
    raise TypeError(f"seed must be an integer, got {seed!r} ({type(seed).__name__})")
  seed = operator.index(seed)
  if not 0 <= seed < 2**32:
    raise ValueError(f"seed must be in [0, 2**32), got {seed}: jax.random.key keeps its low 32 "
                     f"bits, so it would draw the keys of seed {seed % 2**32}")
  return seed


def check_variables(variables, where: str) -> None:
  """Refuses what is not a variables dict (the ``params`` alone, a spec) by name."""
  if isinstance(variables, Mapping) and "params" in variables:
    return
  got = (f"a dict with keys {sorted(map(str, variables))[:6]} (the params alone?): pass "
         f"variables, not variables['params']" if isinstance(variables, Mapping)
         else f"a {type(variables).__name__}")
  raise TypeError(f"{where} takes the variables dict {{'params': ..., 'batch_stats': ...}} of "
                  f"jaxdepth.init, got {got}")


def _check_float32(variables, where: str) -> None:
  """Refuses floating ``params`` or ``batch_stats`` that are not float32, naming the first
  such leaf: half-precision parameters train silently wrong (float16 Adam moments underflow,
  NaN at the first step), and bfloat16 compute is the step's ``dtype``, not the state's."""
  for name in ("params", "batch_stats"):
    for path, leaf in flax.traverse_util.flatten_dict(variables.get(name, {}), sep="/").items():
      dtype = getattr(leaf, "dtype", None)
      if dtype is not None and jnp.issubdtype(dtype, jnp.floating) and dtype != jnp.float32:
        raise TypeError(
            f"{where}: {name}/{path} is {jnp.dtype(dtype).name}; parameters, BatchNorm "
            f"statistics and optimizer state stay float32: pass float32 variables "
            f"(jax.tree.map(lambda a: a.astype(jnp.float32), variables)) and compute in half "
            f"precision with make_train_step(spec, tx, dtype=jnp.bfloat16)")


def check_split(split, where: str) -> None:
  """Refuses what is not one split of a dataset (the whole Dataset, say) by name."""
  if not hasattr(split, "batches"):
    got = (f"the Dataset {getattr(split, 'name', '')!r}" if hasattr(split, "train")
           else f"a {type(split).__name__}")
    raise TypeError(f"{where} takes one split of a dataset, e.g. dataset.test or dataset.val, "
                    f"got {got}")


@flax.struct.dataclass
class TrainState:
  """Everything a training run carries from step to step (a pytree).

  Attributes:
    step: optimizer steps taken (int32 scalar).
    params: the ``params`` collection.
    batch_stats: the ``batch_stats`` collection (``{}`` for a spec without BatchNorm).
    opt_state: the optax state.
    rng: raw ``uint32`` key data (``jax.random.key_data``); the dropout key of
      step ``t`` is ``fold_in(rng, t)``, so the run is a function of the seed.
  """
  step: jax.Array
  params: Any
  batch_stats: Any
  opt_state: Any
  rng: jax.Array

  @classmethod
  def create(cls, variables: dict[str, Any], tx: optax.GradientTransformation,
             rng) -> TrainState:
    """A state at step 0 with a fresh ``tx.init(params)``.

    Args:
      variables: ``{"params": ..., "batch_stats": ...}`` from :func:`jaxdepth.init`.
      tx: the optimizer.
      rng: an int seed (a Python, numpy or 0-d jax integer: the same state for the same
        value), a key (``jax.random.key(seed)``) or its ``uint32`` key data
        (``jax.random.PRNGKey(seed)``), for dropout.

    Raises:
      TypeError: ``variables`` is not a variables dict, holds floating ``params`` or
        ``batch_stats`` that are not float32 (parameters and optimizer state stay
        float32: compute in bfloat16 with ``make_train_step(..., dtype=jnp.bfloat16)``),
        or ``rng`` is none of the above (a float, an array of keys).
    """
    check_variables(variables, "TrainState.create")
    _check_float32(variables, "TrainState.create")
    params = variables["params"]
    state = cls(step=jnp.zeros((), jnp.int32), params=params,
                batch_stats=variables.get("batch_stats", {}), opt_state=tx.init(params),
                rng=_key_data(rng))
    # Own copies: train steps donate the state, which must not free the caller's arrays.
    return jax.tree.map(_own_copy, state)

  @property
  def variables(self) -> dict[str, Any]:
    """The Flax variables (``params`` and, if any, ``batch_stats``)."""
    out = {"params": self.params}
    if self.batch_stats:
      out["batch_stats"] = self.batch_stats
    return out


# ------------------------------------------------------------------------- mesh


def make_mesh(devices=None) -> Mesh:
  """A 1-D ``'data'`` mesh over ``devices`` (default: every device of every process).

  The axis type is ``Auto`` (jit propagates shardings), not the ``Explicit``
  default of ``jax.make_mesh`` in jax 0.12.
  """
  devices = list(jax.devices() if devices is None else devices)
  return jax.make_mesh((len(devices),), (DATA_AXIS,), axis_types=(AxisType.Auto,),
                       devices=devices)


def replicated_sharding(mesh: Mesh) -> NamedSharding:
  """The sharding of a value held whole by every device of ``mesh``."""
  return NamedSharding(mesh, P())


_replicated = replicated_sharding


def _batch_sharding(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P(DATA_AXIS))


def replicate(tree, mesh: Mesh):
  """Places every leaf of ``tree`` on every device of ``mesh`` (of every process).

  Every process must pass the same values. In a multi-process run local arrays
  go through the host (``jax.device_put`` of a device array onto devices of
  other processes is not supported by jax 0.12), global ones are resharded.
  """
  sharding = _replicated(mesh)
  if jax.process_count() == 1:
    return jax.device_put(tree, sharding)

  def put(x):
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
      return x if x.sharding == sharding else jax.jit(lambda a: a, out_shardings=sharding)(x)
    return jax.device_put(np.asarray(x), sharding)
  return jax.tree.map(put, tree)


def _on_mesh(trees, mesh: Mesh, sharding: NamedSharding):
  """``trees`` with every leaf on ``sharding`` (``mesh``'s replicated one), a step's outputs
  passed through.

  A jitted step compiles one program per placement of its arguments: a fresh
  ``TrainState.create`` or ``empty_stats`` (one device), then the step's own
  replicated outputs, would compile twice. Runs every step, so it only reads the
  leaves' shardings (a step's outputs hold ``sharding`` itself) and transfers
  nothing unless a leaf is elsewhere.
  """
  for leaf in jax.tree.leaves(trees):
    placed = getattr(leaf, "sharding", None)
    if placed is not sharding and placed != sharding:
      return replicate(trees, mesh)
  return trees


def shard_batch(batch: dict[str, Any], mesh: Mesh) -> dict[str, jax.Array]:
  """Splits a batch over the ``'data'`` axis of ``mesh``.

  In a single process ``batch`` is the whole global batch. In a multi-process
  run each process passes its own slice (``split.batches(...,
  process_index=jax.process_index(), process_count=jax.process_count())``) and
  the global array is assembled with ``jax.make_array_from_process_local_data``.
  """
  sharding = _batch_sharding(mesh)
  size = len(next(iter(batch.values())))
  if jax.process_count() == 1:
    _check_batch_splits(batch, mesh, "shard_batch")
    return jax.device_put(batch, sharding)
  local = len(mesh.local_devices)
  if size % local:
    raise ValueError(f"a process-local batch of {size} examples does not split over this "
                     f"process's {local} devices")
  return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, x), batch)


def _check_batch_splits(batch, mesh: Mesh, where: str) -> None:
  """Refuses, on the host, a batch whose examples do not split over ``mesh``'s devices
  (jit's own error names neither the batch nor what to do)."""
  n = mesh.devices.size
  for leaf in jax.tree.leaves(batch):
    shape = tuple(getattr(leaf, "shape", ()))
    if shape and shape[0] % n:
      if jax.process_count() > 1 and not isinstance(leaf, jax.Array):
        raise ValueError(f"{where}: a host batch of {shape[0]} examples in a run of "
                         f"{jax.process_count()} processes: pass each process's slice through "
                         f"training.shard_batch(batch, mesh), which assembles the global batch")
      raise ValueError(f"{where}: a batch of {shape[0]} examples does not split over {n} "
                       f"devices; use a batch size divisible by {n}")


# ------------------------------------------------------------------------- loss


def cross_entropy(logits: jax.Array, labels: jax.Array, mask: jax.Array | None = None
                  ) -> jax.Array:
  """Mean softmax cross-entropy over the examples where ``mask`` is True."""
  losses = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
  if mask is None:
    return jnp.mean(losses)
  m = mask.astype(losses.dtype)
  return jnp.sum(losses * m) / jnp.maximum(jnp.sum(m), 1.0)


def batch_metrics(logits: jax.Array, labels: jax.Array, mask: jax.Array | None = None
                  ) -> dict[str, jax.Array]:
  """Summed loss, number correct and number of real examples of one batch."""
  losses = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
  m = jnp.ones_like(losses) if mask is None else mask.astype(losses.dtype)
  correct = (jnp.argmax(logits, -1) == labels).astype(losses.dtype)
  return {"loss": jnp.sum(losses * m), "correct": jnp.sum(correct * m), "count": jnp.sum(m)}


def mean_metrics(sums: dict[str, Any]) -> dict[str, float]:
  """``{'loss', 'accuracy'}`` (and ``'regularizer'`` when summed) from summed metrics.

  See :func:`batch_metrics`; every sum is divided by the number of examples.
  """
  sums = jax.device_get(sums)
  n = max(float(sums["count"]), 1.0)
  out = {"loss": float(sums["loss"]) / n, "accuracy": float(sums["correct"]) / n}
  if "regularizer" in sums:
    out["regularizer"] = float(sums["regularizer"]) / n
  return out


def _real_mask(batch, mask: jax.Array) -> jax.Array:
  """What a regularizer reads as real: the ``(B,)`` example flags, or for a text batch the
  ``(B, L)`` flags of its real tokens (``attention_mask``) in real examples."""
  if "attention_mask" not in batch:
    return mask
  return (batch["attention_mask"] != 0) & mask.astype(bool)[:, None]


def _zero_metrics(regularizer: bool = False) -> dict[str, jax.Array]:
  keys = ("loss", "correct", "count") + (("regularizer",) if regularizer else ())
  return {k: jnp.zeros((), jnp.float32) for k in keys}


# ------------------------------------------------------------------------ steps


def make_train_step(spec: Spec, tx: optax.GradientTransformation, *, mesh: Mesh | None = None,
                    dtype=None, collect_stats: bool = False, donate: bool = True,
                    loss=None, regularizer: Regularizer | None = None):
  """A jitted SGD step: ``(state, batch, gates, stats, masks=None, node_gates=None) -> (state, metrics, stats)``.

  Train on full batches. The loss counts the real examples only (``mask`` True),
  but train-mode BatchNorm normalises with the statistics of the whole batch,
  padded rows included, and a regularizer may read them too: a padded batch
  changes the real examples' results. Serve ``split.batches(...,
  drop_remainder=True)`` as :func:`fit` does; a batch whose ``mask`` is a numpy
  array (what ``batches()`` serves) with a padded row is refused. A device array
  (:func:`shard_batch`'s) is not fetched to check it.

  Args:
    spec: the architecture.
    tx: the optimizer (the one ``state.opt_state`` was made by: a state of another
      optimizer is refused); it is wrapped by :func:`jaxdepth.optim.keep_masked`, whose
      state is ``tx``'s.
    mesh: the device mesh (default :func:`make_mesh`); the batch is split over
      its ``'data'`` axis, the state replicated (a state, gates, stats or masks not
      yet replicated, a fresh :meth:`TrainState.create`'s say, are placed there by
      the step: one transfer, no second compile). BatchNorm statistics are over the
      global batch.
    dtype: compute dtype, e.g. ``jnp.bfloat16``; parameters and optimizer stay float32
      (:meth:`TrainState.create` refuses half-precision variables).
    collect_stats: fold every live site's sign counts (train mode, padded examples
      left out) into ``stats``, a :class:`~jaxdepth.stats.SiteStats`.
    donate: donate the input state's buffers (the state passed in is consumed, and
      passing it to a step again is refused: use the state the step returned;
      :meth:`TrainState.create` copies the variables it is given, so they stay valid).
    loss: ``loss(logits, labels, mask) -> scalar``, the mean over the real
      examples (default :func:`cross_entropy`).
    regularizer: a :class:`Regularizer` added to the loss (its value, times the
      number of real examples, is summed into ``metrics["regularizer"]``).

  Returns:
    ``step(state, batch, gates, stats, masks=None, node_gates=None)`` where ``state``
    is a :class:`TrainState`; ``batch`` has ``image``
    (or a text spec's ``input_ids``, ``attention_mask``, ``token_type_ids``:
    :func:`jaxdepth.network.batch_inputs`), ``label`` (integer classes, ``(B,)``) and
    ``mask`` (``(B,)`` bool, all True); ``gates`` is ``None``
    or a ``(len(spec.sites()),)`` array; ``stats`` is a SiteStats (``None`` unless ``collect_stats``);
    ``masks`` are element-wise weight masks (:func:`jaxdepth.optim.apply_masks`):
    the step zeroes the pruned weights before its forward pass and keeps them
    at 0; ``node_gates`` are ``{node path: gate}``
    (:func:`jaxdepth.network.forward`). Gates and masks are data: changing their
    values does not recompile (gates and node gates are cast to float32 first, so Python
    floats, ints, bools and float32 arrays of them are one program). ``metrics`` are the
    batch's summed ``loss``, ``correct``, ``count`` (cross-entropy whatever ``loss`` is).

  Raises:
    TypeError, ValueError: (when called) a state that is not a TrainState or whose
      ``opt_state`` another optimizer made, a batch without ``label`` or ``mask``, labels
      that are not integer classes ``(B,)`` (numpy labels, with the default loss: outside
      the spec's outputs), a numpy batch with padded rows, a batch whose examples do not
      split over the mesh's devices, ``stats=None`` with ``collect_stats``, or stats of
      another spec.
    RuntimeError: (when called) a state an earlier step consumed (``donate``).
  """
  check_spec(spec, "make_train_step(spec, tx)")
  mesh = make_mesh() if mesh is None else mesh
  classes = _num_classes(spec) if loss is None else None   # labels a custom loss reads are its own
  loss = cross_entropy if loss is None else loss
  masked_tx = optim.keep_masked(tx)
  capture = regularizer.capture if regularizer is not None else ()

  def step(state: TrainState, batch, gates, stats, masks, node_gates):
    # Checked while tracing: no cost per step.
    if not isinstance(state, TrainState):
      raise TypeError(f"the train step takes a TrainState, got a {type(state).__name__}: make "
                      f"one with TrainState.create(variables, tx, rng) and pass the state "
                      f"each step returns")
    if jax.tree.structure(state.opt_state) != jax.tree.structure(
        jax.eval_shape(tx.init, state.params)):
      raise TypeError("the train step: the state's opt_state was made by another optimizer "
                      "than this step's tx (its structure is not tx.init(params)'s): make the "
                      "state with TrainState.create(variables, tx, rng) with the step's tx")
    _check_batch(batch, "the train step")
    _check_stats_given(stats, collect_stats, "train")
    rng = jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)
    mask = batch["mask"]
    # Pruned weights are 0 from this step on (fit's already are: x where kept, 0 where 0).
    params = optim.apply_masks(state.params, masks)

    def loss_fn(params):
      variables = {"params": params}
      if state.batch_stats:
        variables["batch_stats"] = state.batch_stats
      out = network.forward(spec, variables, network.batch_inputs(spec, batch), train=True,
                            gates=gates, rng=rng, collect_stats=collect_stats,
                            example_mask=mask, dtype=dtype, capture=capture,
                            node_gates=node_gates)
      value = loss(out.logits, batch["label"], mask)
      term = jnp.zeros((), jnp.float32)
      if regularizer is not None:
        term = regularizer.fn(out.captured, _real_mask(batch, mask), jax.random.fold_in(rng, 1))
      return value + term, (out, term)

    (_, (out, term)), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    updates, opt_state = masked_tx.update(grads, state.opt_state, params, masks=masks)
    new_state = state.replace(
        step=state.step + 1, params=optax.apply_updates(params, updates),
        batch_stats=out.batch_stats if state.batch_stats else state.batch_stats,
        opt_state=opt_state)
    if collect_stats:
      stats = site_stats.accumulate(stats, out.site_counts)
    metrics = batch_metrics(out.logits, batch["label"], mask)
    if regularizer is not None:
      metrics["regularizer"] = term * metrics["count"]
    return new_state, metrics, stats

  rep = _replicated(mesh)
  jitted = jax.jit(step, in_shardings=(rep, _batch_sharding(mesh), rep, rep, rep, rep),
                   out_shardings=(rep, rep, rep), donate_argnums=(0,) if donate else ())

  @functools.wraps(step)
  def train_step(state, batch, gates, stats, masks=None, node_gates=None):
    _check_not_donated(state, "the train step")
    _check_batch_sizes(batch, "the train step")
    _check_host_batch(batch, classes, "the train step", full=True)
    _check_batch_splits(batch, mesh, "the train step")
    gates, node_gates = _float32_gates(gates, node_gates)
    state, gates, stats, masks, node_gates = _on_mesh((state, gates, stats, masks, node_gates),
                                                      mesh, rep)
    return jitted(state, batch, gates, stats, masks, node_gates)

  train_step.jitted = jitted
  return train_step


def _check_not_donated(state, where: str) -> None:
  """Refuses a state whose buffers an earlier donating step consumed, by name (jax's own
  error is "Array has been deleted"). One leaf's flag, read on the host: no device sync."""
  is_deleted = getattr(getattr(state, "step", None), "is_deleted", None)
  if isinstance(state, TrainState) and is_deleted is not None and is_deleted():
    raise RuntimeError(
        f"{where}: this state was consumed by an earlier step, which donates the state it is "
        f"given (its buffers are reused for the new state): pass the state that step returned, "
        f"or make the step with make_train_step(..., donate=False) to keep using a state")


def _check_stats_given(stats, collect_stats: bool, kind: str) -> None:
  """Refuses, while tracing, ``stats=None`` to a step that collects site statistics."""
  if collect_stats and stats is None:
    raise TypeError(f"this {kind} step collects site statistics (collect_stats=True): pass "
                    f"stats=jaxdepth.empty_stats(spec), then the stats each step returns, "
                    f"not None")


def _float32_gates(gates, node_gates):
  """Gates and node gates as float32 (strong, not weak-typed) arrays: Python floats, ints or
  float32 arrays of the same gates would each compile a program of their own. Numbers and
  numpy arrays are cast on the host, a device array that already is float32 is passed
  through, anything else (a list of gates) is left for the forward pass to refuse by name."""
  def cast(g):
    if isinstance(g, jax.Array):
      strong = g.dtype == jnp.float32 and not getattr(g, "weak_type", False)
      return g if strong else g.astype(jnp.float32)
    if isinstance(g, (np.ndarray, np.generic, int, float)):
      return np.asarray(g, np.float32)
    return g

  if gates is not None:
    gates = cast(gates)
  if isinstance(node_gates, Mapping):
    node_gates = {p: cast(g) for p, g in node_gates.items()}
  return gates, node_gates


def _num_classes(spec: Spec) -> int | None:
  """The number of classes a spec's ``(C,)`` output scores, else ``None``."""
  shape = tuple(spec.output_shape)
  return shape[0] if len(shape) == 1 else None


def _check_batch_sizes(batch, where: str) -> None:
  """Refuses, on the host, a batch whose entries have different leading sizes (jax's own
  broadcasting error, from inside the step, names no entry). Reads only each entry's
  ``.shape``: a device array is neither fetched nor waited on."""
  if not isinstance(batch, Mapping):
    return
  sizes = {}
  for key, value in batch.items():
    shape = getattr(value, "shape", None)
    if shape is not None and len(shape):
      sizes[key] = int(shape[0])
  if len(set(sizes.values())) > 1:
    named = ", ".join(f"{key} {size}" for key, size in sizes.items())
    raise ValueError(f"{where}: batch sizes differ: {named}; every entry needs the same "
                     f"leading batch axis (one row per example)")


def _check_batch(batch, where: str) -> None:
  """Refuses, while tracing, a batch without ``label`` and ``mask``, labels that are
  not integer classes of shape ``(B,)`` (optax's own error never says "labels"), or
  integer images (not normalised)."""
  if not isinstance(batch, Mapping):
    raise TypeError(f"{where} takes a batch dict with 'image' (or a text spec's token "
                    f"arrays), 'label' and 'mask', as split.batches() serves, got a "
                    f"{type(batch).__name__}")
  missing = [k for k in ("label", "mask") if k not in batch]
  if missing:
    raise ValueError(f"{where}: the batch has no {' or '.join(map(repr, missing))} (it has "
                     f"{sorted(batch)}); 'label' holds the (B,) integer classes, 'mask' the "
                     f"(B,) bool flags of the real examples (np.ones(B, bool) for a full "
                     f"batch), as split.batches() serves them")
  image_dtype = getattr(batch.get("image"), "dtype", None)
  if image_dtype is not None and jnp.issubdtype(image_dtype, jnp.integer):
    raise TypeError(f"{where}: batch['image'] is {image_dtype}; the steps take float images "
                    f"normalised as split.batches() serves them: uint8 pixels? use "
                    f"jaxdepth.data.augment.normalize(images, mean, std), or serve them "
                    f"through Dataset.from_arrays(...)")
  label = batch["label"]
  dtype, shape = getattr(label, "dtype", None), tuple(getattr(label, "shape", ()))
  if dtype is not None and jnp.issubdtype(dtype, jnp.integer) and len(shape) == 1:
    return
  if len(shape) == 2 and shape[1] > 1:
    hint = "one-hot labels? pass labels.argmax(-1)"
  elif len(shape) == 2 and shape[1] == 1:
    hint = "pass labels[:, 0]"
  else:
    hint = "pass labels.astype(np.int32)"
  raise TypeError(f"{where}: batch['label'] must be integer class indices of shape (B,), got "
                  f"{dtype} of shape {shape}: {hint}")


def _check_host_batch(batch, classes: int | None, where: str, *, full: bool) -> None:
  """Refuses, on the host, a numpy batch with padded rows (``full``) or labels outside
  ``[0, classes)``. Device arrays are left alone: fetching them would cost a transfer."""
  if not isinstance(batch, Mapping):
    return
  mask, label = batch.get("mask"), batch.get("label")
  if not isinstance(mask, np.ndarray):
    mask = None
  if full and mask is not None and not mask.all():
    padded = int(np.size(mask) - np.count_nonzero(mask))
    raise ValueError(
        f"train steps need full batches: this batch has {padded} "
        f"padded examples (mask False) of {np.size(mask)}, and train-mode BatchNorm's batch "
        f"statistics (and a regularizer) would read them, changing the real examples' results; "
        f"use split.batches(..., drop_remainder=True) as fit does")
  if (classes is None or not isinstance(label, np.ndarray) or label.ndim != 1
      or not np.issubdtype(label.dtype, np.integer)):
    return
  if mask is not None and mask.shape == label.shape:
    label = label[mask.astype(bool)]
  if label.size and (label.min() < 0 or label.max() >= classes):
    raise ValueError(f"{where}: labels run from {label.min()} to {label.max()}, but the spec "
                     f"gives {classes} outputs (classes 0 .. {classes - 1}): map the labels "
                     f"to 0 .. {classes - 1}, or give the model one output per class")


@functools.lru_cache(maxsize=64)
def make_eval_step(spec: Spec, *, mesh: Mesh | None = None, dtype=None,
                   collect_stats: bool = False):
  """A jitted eval-mode step: ``(variables, batch, gates, stats, node_gates=None) -> (metrics, stats)``.

  BatchNorm uses its running statistics, dropout is off. With ``collect_stats``
  every live site's sign counts (eval mode, padded examples left out) are folded
  into ``stats`` (a :class:`~jaxdepth.stats.SiteStats` of ``spec``, not ``None``).
  Gates and node gates are cast to float32, so their number type compiles no other
  program; a batch whose examples do not split over the mesh's devices is refused.
  Steps are cached per ``(spec, mesh, dtype, collect_stats)``.
  """
  mesh = make_mesh() if mesh is None else mesh

  def step(variables, batch, gates, stats, node_gates=None):
    _check_batch(batch, "the eval step")   # while tracing
    _check_stats_given(stats, collect_stats, "eval")
    out = network.forward(spec, variables, network.batch_inputs(spec, batch), train=False,
                          gates=gates, collect_stats=collect_stats, example_mask=batch["mask"],
                          dtype=dtype, node_gates=node_gates)
    if collect_stats:
      stats = site_stats.accumulate(stats, out.site_counts)
    return batch_metrics(out.logits, batch["label"], batch["mask"]), stats

  rep = _replicated(mesh)
  jitted = jax.jit(step, in_shardings=(rep, _batch_sharding(mesh), rep, rep, rep),
                   out_shardings=(rep, rep))

  @functools.wraps(step)
  def eval_step(variables, batch, gates, stats, node_gates=None):
    _check_batch_sizes(batch, "the eval step")
    _check_batch_splits(batch, mesh, "the eval step")
    gates, node_gates = _float32_gates(gates, node_gates)
    variables, gates, stats, node_gates = _on_mesh((variables, gates, stats, node_gates),
                                                  mesh, rep)
    return jitted(variables, batch, gates, stats, node_gates)

  eval_step.jitted = jitted
  return eval_step


class Evaluation(NamedTuple):
  """What :func:`evaluate` returns.

  Attributes:
    loss: mean cross-entropy over the split.
    accuracy: top-1 accuracy in [0, 1].
    count: examples evaluated.
    stats: eval-mode :class:`~jaxdepth.stats.SiteStats`, or ``None``.
  """
  loss: float
  accuracy: float
  count: int
  stats: site_stats.SiteStats | None

  def as_dict(self) -> dict[str, float]:
    return {"loss": self.loss, "accuracy": self.accuracy}


def evaluate(spec: Spec, variables, split, *, batch_size: int = 256, gates=None,
             mesh: Mesh | None = None, dtype=None, collect_stats: bool = False,
             node_gates=None, seed: int = 0, epoch: int = 0) -> Evaluation:
  """Loss and accuracy of ``variables`` on every example of ``split`` (eval mode).

  Args:
    spec: the architecture.
    variables: ``{"params": ..., "batch_stats": ...}``.
    split: a data split (``batches(batch_size, drop_remainder=False, ...)`` pads the
      last batch; padded examples are left out).
    batch_size: global evaluation batch size (a multiple of the device count).
    gates: optional site gates.
    mesh: the device mesh (default :func:`make_mesh`).
    dtype: compute dtype.
    collect_stats: also return the sites' sign counts on this split.
    node_gates: optional ``{node path: gate}`` (0 = that node is the identity).
    seed, epoch: the augmentation key of a split that augments always
      (``load(..., val_augment=True)``: the official code's validation quirk draws
      another view at every evaluation; :func:`fit` passes its seed and the epoch).
      The other splits serve the same batches whatever they are.

  Returns:
    An :class:`Evaluation`.

  Raises:
    TypeError: ``split`` is not a split (e.g. the whole Dataset).
    ValueError: a label outside the spec's outputs (the loss would be NaN).
  """
  check_spec(spec, "evaluate(spec, variables, split)")
  check_split(split, "evaluate")
  mesh = make_mesh() if mesh is None else mesh
  classes = _num_classes(spec)
  step = make_eval_step(spec, mesh=mesh, dtype=dtype, collect_stats=collect_stats)
  stats = site_stats.empty_stats(spec) if collect_stats else None
  sums = _zero_metrics()
  variables = replicate(variables, mesh)
  local, process_kw = _per_process(batch_size)
  for batch in split.batches(local, drop_remainder=False, seed=seed, epoch=epoch, **process_kw):
    _check_host_batch(batch, classes, "evaluate", full=False)   # numpy labels: cheap
    metrics, stats = step(variables, shard_batch(batch, mesh), gates, stats, node_gates)
    sums = jax.tree.map(jnp.add, sums, metrics)
  sums = jax.device_get(sums)
  mean = mean_metrics(sums)
  return Evaluation(mean["loss"], mean["accuracy"], int(sums["count"]), stats)


def _per_process(batch_size: int) -> tuple[int, dict[str, int]]:
  """This process's share of a global batch, and the ``batches()`` keywords that select it."""
  count = jax.process_count()
  if count == 1:
    return batch_size, {}
  if batch_size % count:
    raise ValueError(f"the global batch size {batch_size} does not split over {count} processes")
  return batch_size // count, {"process_index": jax.process_index(), "process_count": count}


# ------------------------------------------------------------------------- loop


class FitResult(NamedTuple):
  """What :func:`fit` returns.

  Attributes:
    variables: the trained Flax variables.
    stats: train-mode :class:`~jaxdepth.stats.SiteStats` of the last epoch (when
      ``stats_last_epoch``), else ``None``.
    history: one dict per epoch: ``epoch``, ``step``, ``lr`` (the recipe's, at the
      epoch's last step; ``None`` with a custom ``tx``), ``train_loss``,
      ``train_accuracy``, ``val_loss``, ``val_accuracy`` (when there is a
      validation split), ``seconds``.
    state: the final :class:`TrainState` (optimizer state included).
  """
  variables: dict[str, Any]
  stats: site_stats.SiteStats | None
  history: list[dict[str, Any]]
  state: TrainState


@functools.lru_cache(maxsize=16)
def _recipe_train_step(spec, recipe, steps_per_epoch, mesh, dtype, collect_stats, regularizer):
  tx = optim.make_optimizer(recipe, steps_per_epoch)
  return tx, make_train_step(spec, tx, mesh=mesh, dtype=dtype, collect_stats=collect_stats,
                             regularizer=regularizer)


def _digest(tree) -> str | None:
  """A short content hash of a pytree of arrays (``None`` for ``None``)."""
  if tree is None:
    return None
  h = hashlib.sha256()
  for path, leaf in jax.tree_util.tree_flatten_with_path(jax.device_get(tree))[0]:
    h.update(jax.tree_util.keystr(path).encode())
    h.update(np.ascontiguousarray(leaf).tobytes())
  return h.hexdigest()[:16]


def data_identity(dataset) -> dict[str, Any]:
  """What a run records of its data: the classes, the example shape, every split's size
  and a digest of which source examples each split holds, in which order; and how each
  split serves them: its normalisation, augmentation recipe and ``always_augment``
  (images), its tokenizer (a digest) and ``max_length`` (text).

  A folder that gained or lost files, another ``val_fraction`` or ``split_seed`` change
  the splits (and the steps per epoch) under the same dataset name, another
  ``normalization``, augmentation, ``val_augment`` or tokenizer the batches: a resume on
  them would mix two datasets, so :func:`fit` and :func:`jaxdepth.driver.run` refuse it.
  A split of one's own without ``source_indices`` (which
  :class:`jaxdepth.data.pipeline.BatchedSplit` does not require) is recorded by its size
  only, and one without the serving attributes without them. In-memory arrays
  (:meth:`jaxdepth.data.Dataset.from_arrays`), whose indices say nothing of what they
  hold, add ``content``: each split's digest of its images and labels
  (``Split.content_digest``), so other arrays of the same sizes are another run. A key a
  stored identity lacks (a run recorded before it was) is not compared on resume.
  """
  splits = {name: getattr(dataset, name) for name in ("train", "val", "test")}
  served = {name: split for name, split in splits.items() if split is not None}
  identity = {"classes": int(dataset.num_classes), "input_shape": list(dataset.input_shape),
              "examples": {name: None if split is None else int(split.num_examples)
                           for name, split in splits.items()},
              "splits": _digest({name: np.asarray(split.source_indices, np.int64)
                                 for name, split in served.items()
                                 if getattr(split, "source_indices", None) is not None})}
  contents = {name: getattr(split, "content_digest", None) for name, split in served.items()}
  if any(v is not None for v in contents.values()):
    identity["content"] = contents
  for key, read in (("normalization", _normalization), ("augment", _augment_recipe),
                    ("always_augment", lambda s: bool(getattr(s, "always_augment", False))),
                    ("tokenizer", _tokenizer_digest), ("max_length", _max_length)):
    values = {name: read(split) for name, split in served.items()}
    if any(v is not None for v in values.values()):
      identity[key] = values
  return identity


def _normalization(split) -> dict[str, list[float]] | None:
  """A split's per-channel mean and std (6 significant digits: JSON-safe settings)."""
  if getattr(split, "mean", None) is None or getattr(split, "std", None) is None:
    return None
  return {k: [float(f"{float(v):.6g}") for v in np.ravel(getattr(split, k))]
          for k in ("mean", "std")}


def _augment_recipe(split) -> str | None:
  """A split's preprocessing recipe by its repr (a dataclass's: its fields), memory
  addresses left out (they change between processes)."""
  recipe = getattr(split, "recipe", None)
  if recipe is None:
    return None
  return re.sub(r" at 0x[0-9a-fA-F]+", "", f"{type(recipe).__module__}.{recipe!r}")


def _tokenizer_digest(split) -> str | None:
  """A digest of a text split's tokenizer (its JSON: vocabulary, normaliser, special tokens)."""
  tokenizer = getattr(getattr(split, "encoder", None), "tokenizer", None)
  if tokenizer is None or not hasattr(tokenizer, "to_str"):
    return None
  return hashlib.sha256(tokenizer.to_str().encode()).hexdigest()[:16]


def _max_length(split) -> int | None:
  length = getattr(getattr(split, "encoder", None), "max_length", None)
  return None if length is None else int(length)


def variables_digest(variables, mesh: Mesh | None = None) -> str:
  """A short content hash of variables (their paths and every bit), the same on every process.

  The leaves are replicated over ``mesh`` (default :func:`make_mesh`) first, so each
  process reads the full copy its own devices hold (a multi-process run's global
  arrays, sharded or not, are resharded, never fetched from another host); in a
  multi-process run every process must call it, as :func:`fit` does.
  """
  replicated = replicate(variables, make_mesh() if mesh is None else mesh)
  return _digest(jax.tree.map(lambda x: np.asarray(x.addressable_data(0)), replicated))


def _gate_values(node_gates) -> dict[str, float] | None:
  """``{path: gate}`` as JSON floats (a run's identity), or ``None``."""
  if node_gates is None:
    return None
  return {p: float(jax.device_get(g)) for p, g in sorted(node_gates.items())}


def dtype_name(dtype) -> str:
  """The compute dtype as a run records it: ``None`` (no cast) computes as ``"float32"``."""
  return "float32" if dtype is None else jnp.dtype(dtype).name


def devices_hint(stored, asked) -> str:
  """What to do when a run on ``stored`` devices is resumed on ``asked`` (``""`` when the same).

  The device count is part of a run's identity (the process count is not, except in how
  more than two devices are spread, :func:`device_layout`): the order of the reductions
  changes with it, and so does the result.
  """
  if stored is None or stored == asked:
    return ""
  s = "" if stored == 1 else "s"
  return (f" (devices is the number of devices the run's batches are split over, every "
          f"process's together; another count rounds, and so trains, differently: resume it "
          f"on {stored} device{s}, e.g. "
          f"JAX_NUM_CPU_DEVICES={stored} on CPU, CUDA_VISIBLE_DEVICES naming {stored} GPU{s}, "
          f"or mesh=training.make_mesh(jax.devices()[:{stored}]))")


def device_layout(mesh: Mesh) -> str | None:
  """How a run's devices are spread over processes, where the spread changes its sums:
  ``"2 processes x 2 devices"``; ``None`` with two devices or fewer.

  A cross-device sum is taken within each process, then across processes, so another
  spread of the same devices (2 x 2 against 1 x 4) adds the same numbers in another order
  and rounds, and trains, differently. A sum of two parts is the same in either order:
  two processes of one device compute bit for bit what one process of two does.
  """
  devices = list(mesh.devices.flat)
  if len(devices) <= 2:
    return None
  processes = len({d.process_index for d in devices})
  per = len(devices) // processes
  return (f"{processes} process{'es' if processes != 1 else ''} x {per} "
          f"device{'s' if per != 1 else ''}")


def layout_hint(stored, asked) -> str:
  """What to do when a run of one spread of its devices over processes (:func:`device_layout`)
  is resumed on another (``""`` when the same, or when the run did not record it)."""
  if stored is None or asked is None or stored == asked:
    return ""
  return (f" (layout is how the run's devices are spread over processes: with more than two "
          f"devices another spread sums the gradients in another order, and so trains "
          f"differently: resume it as {stored}, e.g. with JAX_NUM_CPU_DEVICES or the launch's "
          f"process count)")


def _check_same_run(meta: dict[str, Any], recipe: optim.Recipe, run: dict[str, Any], where):
  stored = dict(meta.get("recipe", {}))
  asked = recipe.to_dict()
  stored.pop("epochs", None), asked.pop("epochs", None)
  diffs = [f"{k}: {stored.get(k)!r} stored, {asked.get(k)!r} asked"
           for k in sorted(set(stored) | set(asked)) if stored.get(k) != asked.get(k)]
  stored_run = dict(meta.get("run", {}))
  # Checkpoints written before the dtype was normalised record dtype=None as None;
  # those written before the data or the device count was recorded resume with any.
  stored_run["dtype"] = stored_run.get("dtype") or "float32"
  stored_run.setdefault("devices", run.get("devices"))
  stored_run.setdefault("layout", run.get("layout"))
  if stored_run.get("data") is None:
    stored_run["data"] = run.get("data")
  elif run.get("data") is not None:   # keys recorded since (normalization, ...): any
    stored_run["data"] = {**run["data"], **stored_run["data"]}
  for k, v in run.items():
    if stored_run.get(k) == v:
      continue
    if k == "data":   # name the entries that differ rather than two dicts
      diffs += [_data_difference(key, stored_run[k].get(key), v.get(key))
                for key in v if stored_run[k].get(key) != v.get(key)]
    else:
      diffs.append(f"{k}: {stored_run.get(k)!r} stored, {v!r} asked")
  if diffs:
    hint = (" (variables is a digest of the initial variables: resume from the ones the run "
            "started with)" if "variables" in run
            and stored_run.get("variables") != run["variables"] else "")
    hint += devices_hint(stored_run.get("devices"), run.get("devices"))
    if stored_run.get("devices") == run.get("devices"):
      hint += layout_hint(stored_run.get("layout"), run.get("layout"))
    settings = [k for k in sorted(set(stored) | set(asked)) if stored.get(k) != asked.get(k)]
    settings += [k for k, v in run.items() if stored_run.get(k) != v]
    raise RunMismatchError(f"{where} holds a run with other settings ({'; '.join(diffs)}){hint}; "
                           f"resume it with the same settings or use another directory",
                           settings=tuple(settings))


def _data_difference(key: str, stored, asked) -> str:
  """``data key: stored, asked``, per split where both are per-split dicts."""
  if (key not in ("examples", "splits") and isinstance(stored, dict)
      and isinstance(asked, dict)):
    return "; ".join(f"data {key} of {name}: {stored.get(name)!r} stored, {asked.get(name)!r} "
                     f"asked" for name in dict.fromkeys([*asked, *stored])
                     if stored.get(name) != asked.get(name))
  return f"data {key}: {stored!r} stored, {asked!r} asked"


def _check_fit_arguments(recipe: optim.Recipe, mesh: Mesh, eval_batch_size, eval_every,
                         checkpoint_every_steps) -> None:
  """Refuses arguments of :func:`fit` that would fail or mislead only later."""
  def positive(value):
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool) and value >= 1

  if not positive(eval_every):
    raise ValueError(f"eval_every must be an integer >= 1 (validate every this many epochs), "
                     f"got {eval_every!r}")
  for name, value in (("eval_batch_size", eval_batch_size),
                      ("checkpoint_every_steps", checkpoint_every_steps)):
    if value is not None and not positive(value):
      raise ValueError(f"{name} must be None or an integer >= 1, got {value!r}")
  devices = mesh.devices.size
  for name, value in (("batch_size", recipe.batch_size), ("eval_batch_size", eval_batch_size)):
    if value is not None and value % devices:
      raise ValueError(f"{name}={value} does not split evenly over the mesh's {devices} "
                       f"devices; use a multiple of {devices}")


def _check_outputs_fit_classes(spec: Spec, dataset) -> None:
  """Refuses a model that does not give one output per class of ``dataset``.

  With fewer outputs, labels past them make the loss NaN (a "diverged" run); with
  more, the model trains on classes that do not exist.
  """
  classes = getattr(dataset, "num_classes", None)
  if classes is not None and tuple(spec.output_shape) != (classes,):
    raise ValueError(
        f"spec {spec.name!r} gives {tuple(spec.output_shape)} outputs, but the dataset "
        f"{getattr(dataset, 'name', '')!r} has {classes} classes: give it a head of {classes} "
        f"outputs (e.g. zoo.get(name, num_classes={classes}))")


def fit(spec: Spec, variables: dict[str, Any], dataset, recipe: optim.Recipe, *,
        options: TrainOptions | None = None, workdir: str | os.PathLike | None = None,
        seed: int = 0, mesh: Mesh | None = None, dtype=None, progress: bool = True,
        tx: optax.GradientTransformation | None = None, eval_batch_size: int | None = None,
        eval_every: int = 1, checkpoint_every_steps: int | None = None,
        meta: dict[str, Any] | None = None, desc: str | None = None) -> FitResult:
  """Trains ``(spec, variables)`` on ``dataset.train`` for ``recipe.epochs`` epochs.

  What a method needs of the training (site gates, statistics of the last
  epoch, weight masks, a loss term, another number of epochs) comes in
  ``options``, a :class:`TrainOptions`. The optimizer state is fresh (``make_optimizer(recipe, steps_per_epoch)`` unless
  ``tx`` is given; compiled steps are cached per (spec, recipe), so repeated calls,
  e.g. one per iteration of a method, compile once); steps per epoch are ``floor(num_train / batch_size)`` (the last
  partial batch is dropped, a different one each epoch since the order is
  reshuffled). Epoch ``e`` reads ``dataset.train.batches(batch_size, seed=seed,
  epoch=e, shuffle=True, augment=recipe.augment, drop_remainder=True)`` and validates
  with ``evaluate(..., seed=seed, epoch=e)`` (a validation split that augments always
  draws that epoch's view), and the
  dropout key of step ``t`` is ``fold_in(key(seed), t)``: the run is a pure function
  of its inputs and ``seed``, and on CPU it is bit-for-bit repeatable.

  With a ``workdir``, a checkpoint is written after every epoch (and every
  ``checkpoint_every_steps`` steps), ``metrics.jsonl`` gets one JSON line per
  epoch, and a call on a workdir that holds checkpoints resumes from the latest
  one, ending with exactly the parameters of an uninterrupted run (the
  last-epoch statistics and epoch metrics in progress are checkpointed too). A
  workdir holding another architecture raises
  :class:`~jaxdepth.checkpoint.SpecMismatchError`; other settings (recipe,
  dataset: its name and its splits, :func:`data_identity`; seed, compute dtype (``None`` is ``float32``), options, the initial
  variables: a digest of them, masks applied, :func:`variables_digest`; the number of devices
  of ``mesh``, whose reductions round differently on another count, but not the number of
  processes) raise :class:`RunMismatchError`; a checkpoint written before the device count
  was recorded resumes on any.
  Only ``recipe.epochs`` may change between calls, to extend a run. A custom
  ``tx`` is recorded only as being one (optax transformations cannot be
  compared): keeping it the same on resume is the caller's part; one whose state
  has another structure (``sgd`` after ``adam``) raises :class:`RunMismatchError`
  on restore, one with other hyperparameters cannot be told apart. Checkpoints
  are checked against their checksums: a damaged latest one is reported and moved
  aside, and the run resumes from the newest intact one (still bit-identical);
  with none intact, :class:`~jaxdepth.checkpoint.DamagedCheckpointError` says so.

  A NaN or infinite training loss raises :class:`NonFiniteLossError` before
  anything is saved, so the latest checkpoint is the last good state.

  Args:
    spec: the architecture.
    variables: initial ``{"params", "batch_stats"}``.
    dataset: a :mod:`jaxdepth.data` dataset (``train`` and optional ``val`` splits).
    recipe: epochs, batch size and optimizer (:class:`~jaxdepth.optim.Recipe`).
    options: a :class:`TrainOptions` (default: no gates, no statistics, no masks,
      no regularizer, the recipe's epochs).
    workdir: where checkpoints and ``metrics.jsonl`` go (``None``: nothing is written).
    seed: data order, augmentation and dropout seed.
    mesh: device mesh (default: every device).
    dtype: compute dtype (e.g. ``jnp.bfloat16``).
    progress: show a progress bar with ETA (process 0 only).
    tx: an optimizer to use instead of the recipe's (the recipe's ``optimizer``, ``lr``
      and schedule fields are then unused; ``history``'s ``lr`` is ``None``). A
      resume must pass the same one.
    eval_batch_size: validation batch size (default: the training batch size).
    eval_every: validate every this many epochs (and after the last).
    checkpoint_every_steps: also checkpoint inside epochs, every this many steps.
    meta: JSON dict stored with every checkpoint (under ``"user"``).
    desc: label of the progress bar.

  Returns:
    A :class:`FitResult`.

  Raises:
    TypeError: ``dataset`` is not a Dataset (e.g. its train split), ``recipe`` not a
      Recipe, ``variables`` not a variables dict, ``seed`` not an integer (numpy and 0-d
      jax integers are taken, as Python ints).
    ValueError: ``eval_every`` < 1, a batch size < 1 or not a multiple of the
      device count, a training split smaller than one batch, a spec whose
      outputs are not one per class of ``dataset``, or a tokenizer whose ids or
      token types run past the spec's embeddings
      (:func:`jaxdepth.text.inputs.check_vocabulary`).
    RunMismatchError: ``workdir`` holds a run with other settings (see above).
  """
  check_spec(spec, "fit(spec, variables, dataset, recipe)")
  if not hasattr(dataset, "train"):
    got = "one split of it" if hasattr(dataset, "batches") else f"a {type(dataset).__name__}"
    raise TypeError(f"fit takes the whole Dataset (it trains on dataset.train and validates "
                    f"on dataset.val), e.g. data.load('digits'), got {got}")
  if not isinstance(recipe, optim.Recipe):
    raise TypeError(f"recipe must be an optim.Recipe, got a {type(recipe).__name__} (from a "
                    f"dict: optim.Recipe.from_dict(d))")
  check_variables(variables, "fit")
  seed = check_seed(seed)
  mesh = make_mesh() if mesh is None else mesh
  _check_fit_arguments(recipe, mesh, eval_batch_size, eval_every, checkpoint_every_steps)
  _check_outputs_fit_classes(spec, dataset)
  check_vocabulary(spec, dataset)   # else ids past the embedding: a NaN loss at step 1
  options = TrainOptions() if options is None else options
  if options.epochs is not None:
    recipe = recipe.replace(epochs=options.epochs)
  gates, stats_last_epoch, regularizer = (options.gates, options.stats_last_epoch,
                                          options.regularizer)
  node_gates = options.node_gates
  local_batch, process_kw = _per_process(recipe.batch_size)
  spe = dataset.train.num_batches(local_batch, drop_remainder=True,
                                  process_count=process_kw.get("process_count", 1))
  if spe <= 0:
    raise ValueError(f"the training split of {dataset.name!r} has "
                     f"{dataset.train.num_examples} examples, fewer than one batch of "
                     f"{recipe.batch_size}; lower the batch size")
  total = recipe.epochs * spe
  custom_tx = tx is not None
  if tx is None:
    tx, train_step = _recipe_train_step(spec, recipe, spe, mesh, dtype, False, regularizer)
    stats_step = _recipe_train_step(spec, recipe, spe, mesh, dtype, True, regularizer)[1]
  else:
    train_step = make_train_step(spec, tx, mesh=mesh, dtype=dtype, regularizer=regularizer)
    stats_step = make_train_step(spec, tx, mesh=mesh, dtype=dtype, collect_stats=True,
                                 regularizer=regularizer)
  schedule = optim.make_schedule(recipe, spe)
  eval_batch_size = eval_batch_size or recipe.batch_size
  # The devices the batches are split over, and with more than two, how they are spread over
  # processes: another count or spread rounds, and so trains, differently.
  run = {"dataset": dataset.name, "data": data_identity(dataset), "seed": seed, "stats_last_epoch": stats_last_epoch,
         "custom_tx": custom_tx, "dtype": dtype_name(dtype), "devices": int(mesh.devices.size),
         "layout": device_layout(mesh),
         "gates": None if gates is None else np.asarray(jax.device_get(gates)).tolist(),
         "masks": _digest(options.masks),
         "regularizer": None if regularizer is None else regularizer.name,
         "node_gates": _gate_values(node_gates)}

  masks = None if options.masks is None else replicate(options.masks, mesh)
  state = replicate(TrainState.create(variables, tx, seed), mesh)
  if masks is not None:   # pruned weights start at exactly 0 (both sides on the mesh)
    state = state.replace(params=optim.apply_masks(state.params, masks))
  if workdir is not None:   # the starting point is part of the run's identity
    run["variables"] = variables_digest(state.variables, mesh)
  loop = replicate({"metrics": _zero_metrics(regularizer is not None),
                    "stats": site_stats.empty_stats(spec) if stats_last_epoch else None}, mesh)
  history: list[dict[str, Any]] = []
  ckpt = log = None
  if workdir is not None:
    workdir = pathlib.Path(workdir)
    ckpt = Checkpointer(workdir / "checkpoints", spec)
    if ckpt.latest_step() is not None:
      where = f"work directory {workdir}"
      # The initial variables once the restore has checked the architecture (whose
      # difference would change their digest too, and is the better message).
      _check_same_run(ckpt.meta(), recipe, {k: v for k, v in run.items() if k != "variables"},
                      where)
      try:
        restored = ckpt.restore(state, extra=loop)   # restored leaves keep the replicated shardings
      except ValueError as e:   # orbax: "... tree structures do not match"
        if "tree structure" not in str(e):
          raise
        raise RunMismatchError(
            f"work directory {workdir} holds a train state of another structure than this "
            f"call's: most likely another optimizer (a custom tx must be the one the run "
            f"started with, e.g. not sgd after adam); resume with it or use another directory "
            f"({str(e).splitlines()[0]})") from e
      _check_same_run(restored.meta, recipe, run, where)
      state, loop = restored.state, restored.extra
      history = list(restored.meta.get("history", []))
      _check_epochs_left(int(state.step), spe, recipe.epochs,
                         restored.meta.get("recipe", {}).get("epochs"), workdir)
    log = MetricsLog(workdir / "metrics.jsonl", records=history)   # the checkpoint's
  if gates is not None:
    gates = replicate(jnp.asarray(gates, jnp.float32), mesh)
  if node_gates is not None:
    node_gates = replicate({p: jnp.asarray(g, jnp.float32) for p, g in node_gates.items()}, mesh)

  def save(step):   # after _check_state, which did the checkpoint's finiteness check
    if ckpt is not None:
      ckpt.save(step, state, extra=loop, meta={
          "recipe": recipe.to_dict(), "run": run, "history": history,
          "spec_name": spec.name, "user": meta or {}}, check_finite=False)

  step = int(state.step)
  bar = progress_bar(total=total, initial=step, desc=desc or f"{spec.name} on {dataset.name}",
                     enabled=progress)
  log_every = max(1, spe // 10)
  preempted = False
  try:
    while step < total:
      epoch, start = divmod(step, spe)
      last = epoch == recipe.epochs - 1
      collect = stats_last_epoch and last
      step_fn = stats_step if collect else train_step
      if collect and start == 0:
        loop["stats"] = replicate(site_stats.empty_stats(spec), mesh)
      tic = time.perf_counter()
      batches = dataset.train.batches(
          local_batch, seed=seed, epoch=epoch, shuffle=True, augment=recipe.augment,
          drop_remainder=True, start_batch=start, **process_kw)
      for batch in batches:
        state, metrics, stats = step_fn(state, shard_batch(batch, mesh), gates,
                                        loop["stats"] if collect else None, masks, node_gates)
        loop["metrics"] = jax.tree.map(jnp.add, loop["metrics"], metrics)
        if collect:
          loop["stats"] = stats
        step += 1
        bar.update(1)
        stop_if_requested()   # a signal's own KeyboardInterrupt may have been lost
        preempted = _preempted()   # every process is at this step: checkpoint it and stop
        if preempted and step % spe:
          _check_loss(mean_metrics(loop["metrics"])["loss"], epoch, step, ckpt)
          _check_state(state, epoch, step, ckpt)
          save(step)
          raise Preempted(f"stopped at step {step} by a preemption notice (SIGTERM)")
        if step % spe == 0:
          break   # the epoch's metrics are checked and shown below (and a preemption then)
        if step % log_every == 0:
          running = mean_metrics(loop["metrics"])
          _check_loss(running["loss"], epoch, step, ckpt)
          bar.set_postfix(epoch=epoch + 1, loss=f"{running['loss']:.4f}",
                          acc=f"{running['accuracy']:.3f}", refresh=False)
        if checkpoint_every_steps and step % checkpoint_every_steps == 0:
          _check_loss(mean_metrics(loop["metrics"])["loss"], epoch, step, ckpt)
          _check_state(state, epoch, step, ckpt)
          save(step)
      if step % spe:
        raise RuntimeError(f"the training split gave fewer batches than the "
                           f"{spe} its num_batches() announced (epoch {epoch})")
      train = mean_metrics(loop["metrics"])
      _check_loss(train["loss"], epoch, step, ckpt)
      _check_state(state, epoch, step, ckpt)
      record = {"epoch": epoch + 1, "step": step,   # a custom tx's rate is not fit's to know
                "lr": None if custom_tx else float(schedule(step - 1)),
                "train_loss": train["loss"], "train_accuracy": train["accuracy"]}
      if "regularizer" in train:
        record["train_regularizer"] = train["regularizer"]
      postfix = {"epoch": epoch + 1, "loss": f"{train['loss']:.4f}",
                 "acc": f"{train['accuracy']:.3f}"}
      if dataset.val is not None and ((epoch + 1) % eval_every == 0 or last):
        val = evaluate(spec, state.variables, dataset.val, batch_size=eval_batch_size,
                       gates=gates, mesh=mesh, dtype=dtype, node_gates=node_gates,
                       seed=seed, epoch=epoch)
        record.update(val_loss=val.loss, val_accuracy=val.accuracy)
        postfix["val_acc"] = f"{val.accuracy:.3f}"
      bar.set_postfix(**postfix)
      record["seconds"] = round(time.perf_counter() - tic, 3)
      history.append(record)
      loop["metrics"] = replicate(_zero_metrics(regularizer is not None), mesh)
      save(step)
      if log is not None:   # a resume rewrites the log from the checkpoint's history
        log.write(record)
      if preempted:
        raise Preempted(f"stopped after epoch {epoch + 1} by a preemption notice (SIGTERM)")
  finally:
    bar.close()
    if ckpt is not None:
      ckpt.close()
  return FitResult(state.variables, loop["stats"] if stats_last_epoch else None, history, state)


def _check_epochs_left(step: int, spe: int, epochs: int, saved_epochs: int | None, workdir):
  """Refuses a resume with fewer epochs once the new last epoch has begun.

  The last epoch is special (its statistics are collected, it is always validated):
  an epoch trained, even in part, as a middle one cannot become the last. Fewer
  epochs than the run was started with are fine while the new last one has not begun
  (a long run stopped early), more epochs always.
  """
  grown = saved_epochs is None or epochs >= saved_epochs
  if step <= (epochs if grown else epochs - 1) * spe:
    return
  least = -(-step // spe) + 1
  least = least if saved_epochs is None else min(least, saved_epochs)
  raise RunMismatchError(
      f"work directory {workdir} holds a run of {saved_epochs} epochs trained for {step} steps "
      f"(into epoch {-(-step // spe)}), and {epochs} are asked now: epoch {epochs} would be "
      f"the last after being trained as a middle one (the last epoch's statistics and "
      f"validation differ); ask for at least {least} epochs, or use another directory")


def _check_loss(loss: float, epoch: int, step: int, ckpt: Checkpointer | None):
  if math.isfinite(loss):
    return
  raise NonFiniteLossError(
      f"training loss became {loss} in epoch {epoch + 1} (by step {step}); stopped, and "
      f"{_kept(ckpt)}.", _advice(ckpt), kept=_good(ckpt))


def _check_state(state, epoch: int, step: int, ckpt: Checkpointer | None):
  """Refuses to go on (or save) once an update overflowed while the loss it saw was finite."""
  if all_finite(state):
    return
  raise NonFiniteLossError(
      f"training diverged in epoch {epoch + 1} (by step {step}): the loss stayed finite but the "
      f"parameters, the BatchNorm statistics or the optimizer's state became NaN or infinite; "
      f"stopped, and {_kept(ckpt)}.", _advice(ckpt), kept=_good(ckpt))


def _good(ckpt: Checkpointer | None) -> int | None:
  """The step of the last intact checkpoint (None: none)."""
  return ckpt.latest_intact_step() if ckpt is not None else None


def _advice(ckpt: Checkpointer | None) -> str:
  """What to do after a divergence: a kept checkpoint resumes only with the same settings."""
  if _good(ckpt) is None:
    return "Lower the learning rate or check the data."
  return (f"That checkpoint resumes only with the same settings, the learning rate among "
          f"them, and would diverge again: run again with a lower learning rate in another "
          f"work directory (or after deleting {ckpt.directory.parent}), or check the data.")


def _kept(ckpt: Checkpointer | None) -> str:
  """What is left to resume from, in words."""
  good = _good(ckpt)
  if good is not None:
    return f"the last good checkpoint (step {good}) is kept in {ckpt.directory}"
  if ckpt is not None and ckpt.latest_step() is not None:
    return f"no intact checkpoint is left in {ckpt.directory}"
  return "nothing was saved"
