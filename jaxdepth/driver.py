"""The loop every iterative depth-reduction method shares: train → measure → decide → apply.

:func:`run` drives a :class:`~jaxdepth.methods.base.Method` (EASIER today; EGP,
NEPENTHE, LaCoOT and TLC plug in the same way) through iterations on one dataset::

    for it in 0, 1, ...:                       # iteration 0 trains the dense model
      train E epochs from the current weights with a fresh optimizer (the recipe)
      evaluate val and test                    # the iteration's accuracy
      measure → decide → apply                 # e.g. one more site becomes the identity
      checkpoint                               # a killed run resumes here

The removal decided after the last iteration is never applied: no iteration
trains or evaluates it (the papers' tables stop at (R−1)/R for the same reason);
the report says which units it would have removed. After the last iteration the
**operating point** is the deepest cut whose validation accuracy stays within
``tolerance`` points of the dense model's (:func:`choose_operating_point`); it is
saved as spec JSON + orbax (``chosen/``, reloaded by
:func:`jaxdepth.checkpoint.load_model`).

Work directory::

    run.json             what is run (method, its options, spec, dataset, recipe, seed,
                         compute dtype, device count)
    checkpoints/         orbax, one per finished iteration: train state (variables,
                         optimizer state, rng), method state, the report so far
    iterations/NNN/      metrics.jsonl (one line per epoch: train loss and accuracy,
                         validation loss and accuracy, learning rate), the epoch
                         checkpoints while it runs, and model/ (that iteration's
                         network, removed units baked in)
    chosen/              the operating point (spec.json + variables)
    chosen_merged/       the same collapsed by jaxdepth.surgery (BatchNorm folded,
                         identities dropped, affine chains merged where exact and cheaper)
    report.json, report.md     the report (:mod:`jaxdepth.report`)
    accuracy.png, costs.png, training.png, <scores>.png (entropies.png)   its plots

Accuracies are fractions in [0, 1] everywhere (``metrics.jsonl``,
``report.json``, :func:`jaxdepth.training.evaluate`); only text and plots
show percent. The tolerance is in percentage points (``tolerance_points``).

Determinism: iteration ``i`` trains with the seed :func:`iteration_seed` (seed,
i), which keys its data order, augmentation and dropout; so a killed run
started again with the same arguments ends with the same report and
parameters as an uninterrupted one (bit for bit on CPU). A work directory
holding another run (another model, dataset, recipe, method option, seed,
compute dtype or device count: the devices of the mesh, whose reductions round
differently on another count; the process count is free) is refused before
anything is written; only ``iterations`` and
``tolerance`` may change between calls (more iterations continue a finished run).
The run's saved results (``iterations/*/model``, ``report.json``, ``chosen/``) make the
directory its own as its checkpoints do: with ``checkpoints/`` deleted, a run with
other settings is refused all the same, and so is this run (it cannot resume).
"""
from __future__ import annotations

import inspect
import json
import os
import pathlib
import shutil
import time
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple, Protocol

import jax
import numpy as np

from jaxdepth import checkpoint, costs, network, optim, timing, training
from jaxdepth import report as report_lib
from jaxdepth.data import Dataset
from jaxdepth.methods import base, conformance
from jaxdepth.spec import Spec
from jaxdepth.text.inputs import check_vocabulary

__all__ = ["Trainer", "RunResult", "run", "iteration_seed", "choose_operating_point",
           "RunMismatchError", "read_run_json", "asked_iterations", "latencies_ms", "edit_record"]

RunMismatchError = training.RunMismatchError
# What a refusal adds when the initial variables differ (a caller with other words drops it).
VARIABLES_HINT = (" (variables is a digest of the initial variables: a run started from "
                  "init(spec, key(seed)) has none; pass the variables it started from, or None "
                  "to resume it)")
# The report's note when the last iteration decided a removal (not after a method's stop rule
# or LaCoOT's last evaluation, which decide none).
LAST_REMOVAL_NOTE = ("the removal decided after the last iteration is never applied (no "
                     "iteration trains or evaluates it), so the table stops one removal short "
                     "of it (the papers' (R-1)/R)")


class Trainer(Protocol):
  """Trains ``(spec, variables)`` for one iteration; :func:`jaxdepth.training.fit`'s signature.

  Must return an object with ``variables``, ``stats`` (train-mode SiteStats of the
  last epoch, or ``None``), ``history`` (per-epoch dicts) and ``state`` (a
  :class:`~jaxdepth.training.TrainState` made with the recipe's optimizer).
  """

  def __call__(self, spec: Spec, variables, dataset: Dataset, recipe: optim.Recipe, *,
               options: training.TrainOptions, seed: int, workdir: pathlib.Path | None,
               desc: str) -> training.FitResult: ...


class RunResult(NamedTuple):
  """What :func:`run` returns.

  Attributes:
    report: the JSON report (also in ``workdir/report.json``).
    chosen_spec: the operating point's spec (removed units baked in).
    chosen_variables: its variables.
    state: the method state after the last removal.
  """
  report: dict[str, Any]
  chosen_spec: Spec
  chosen_variables: dict[str, Any]
  state: Any


def iteration_seed(seed: int, iteration: int) -> int:
  """The training seed of ``iteration``: ``fold_in(key(seed), iteration)`` as a 31-bit int."""
  key = jax.random.fold_in(jax.random.key(seed), iteration)
  return int(jax.random.randint(key, (), 0, 2**31 - 1))


def choose_operating_point(iterations: list[dict[str, Any]], tolerance: float) -> dict[str, Any]:
  """The deepest cut whose validation accuracy is within ``tolerance`` of the dense model.

  Args:
    iterations: report entries (``units_removed``, ``val_accuracy`` a fraction
      in [0, 1]); the first one is the dense model.
    tolerance: allowed drop in validation accuracy, in percentage points (>= 0).

  Returns:
    The chosen entry: the most ``units_removed`` among those with
    ``val_accuracy >= dense - tolerance / 100`` (the latest of them on a tie;
    the dense model when none qualifies).
  """
  _check_tolerance(tolerance)
  if not iterations:
    raise ValueError("no iteration to choose from")
  floor = iterations[0]["val_accuracy"] - tolerance / 100 - 1e-9
  good = [e for e in iterations if e["val_accuracy"] >= floor]
  return max(good, key=lambda e: (e["units_removed"], e["iteration"]))


def _check_tolerance(tolerance):
  if not isinstance(tolerance, (int, float)) or not tolerance >= 0:
    raise ValueError(f"tolerance must be a number of accuracy points >= 0, got {tolerance!r}")


def _check_epochs(method: base.Method, spec: Spec, recipe: optim.Recipe) -> None:
  """Refuses a run whose first iteration measures statistics its training collects (the
  method's ``train_options`` ask for ``stats_last_epoch``) and that trains no epoch."""
  options = conformance.train_options(method, spec, method.init(spec))
  epochs = recipe.epochs if options.epochs is None else options.epochs
  if options.stats_last_epoch and epochs == 0:
    raise ValueError(
        f"recipe epochs=0, but {method.name} measures the statistics of the last training "
        f"epoch of each iteration, and 0 epochs collect none; train at least one epoch "
        f"(epochs >= 1), or use an estimator that measures on its own (e.g. "
        f"estimator='dataset')")


def _check_latency_batches(batches) -> tuple[int, ...] | None:
  if batches is None:
    return None
  batches = tuple(batches)
  if not all(isinstance(b, int) and not isinstance(b, bool) and b >= 1 for b in batches):
    raise ValueError(f"latency_batches must be batch sizes >= 1 (or () to time nothing), got "
                     f"{batches!r}")
  return batches


def _has_checkpoints(workdir: pathlib.Path) -> bool:
  """Whether ``workdir`` holds a checkpoint to resume (of an iteration or inside one)."""
  return any(workdir.glob("checkpoints/*")) or any(workdir.glob("iterations/*/checkpoints/*"))


def _results(workdir: pathlib.Path) -> list[str]:
  """The results a run saved in ``workdir``: iteration models, the report, the chosen model."""
  return [name for name, there in (
      ("iterations/*/model", any(workdir.glob("iterations/*/model"))),
      ("report.json", (workdir / "report.json").exists()),
      ("chosen/", (workdir / "chosen").exists())) if there]


def _has_progress(workdir: pathlib.Path) -> bool:
  """Whether ``workdir`` holds a run's checkpoints or saved results (then the run owns it)."""
  return _has_checkpoints(workdir) or bool(_results(workdir))


_JSON_KINDS = {list: "array", str: "string", int: "number", float: "number", bool: "boolean",
               type(None): "null"}


def read_run_json(workdir) -> dict[str, Any] | None:
  """The ``run.json`` of ``workdir`` (the settings of the run there), None where there is none.

  Raises:
    RunMismatchError: it cannot be read (a directory, no permission) or is not the JSON
      object jaxdepth writes (empty, cut short, edited), naming the file: which run the
      directory holds cannot be told.
  """
  path = pathlib.Path(workdir) / "run.json"
  advice = ("it records the run's settings: restore it, or move the directory aside or use "
            "another directory")
  try:
    raw = path.read_bytes()
  except FileNotFoundError:
    return None
  except OSError as e:   # a directory, no permission, an I/O error
    raise RunMismatchError(f"work directory {workdir}: run.json cannot be read "
                           f"({e.strerror or e}); {advice}") from e
  try:
    stored = json.loads(raw)
  except ValueError as e:   # JSONDecodeError, or bytes that are not UTF-8
    why = "it is empty" if not raw.strip() else f"{e}"
  else:
    if isinstance(stored, dict):
      return stored
    why = f"it holds a JSON {_JSON_KINDS.get(type(stored), type(stored).__name__)}"
  raise RunMismatchError(
      f"work directory {workdir}: run.json is not the JSON object jaxdepth writes ({why}); "
      f"{advice}")


def _check_identity(workdir: pathlib.Path, identity: dict[str, Any]) -> None:
  """Refuses a work directory that holds another run (before anything is written).

  A ``run.json`` of the same method with no checkpoint and no saved result beside it
  (a run that stopped before saving anything) owns nothing: the new run takes the
  directory over. A run whose report is there but whose iteration checkpoints are gone
  (``checkpoints/`` deleted to save space) is refused even with the same settings: it
  can be neither resumed nor extended, and training it again would overwrite its results.
  The digest of the initial variables is compared only when variables are given:
  ``variables=None`` resumes from the run's iteration checkpoints whatever it started from.
  A ``run.json`` written before the compute dtype, the evaluation batch, the data
  (:func:`jaxdepth.training.data_identity`), or some of the data's keys, or the device
  count were recorded resumes with any.
  """
  stored = read_run_json(workdir)
  if stored is None:
    if (workdir / "checkpoints").exists():
      raise RunMismatchError(f"work directory {workdir} holds checkpoints but no run.json "
                             f"(another program's run?); use another directory")
    return
  if stored.get("method") == identity["method"] and not _has_progress(workdir):
    return
  if stored.get("method") != identity["method"]:
    what = (f"a {stored['method']!r} run" if stored.get("method") else
            "a run without a method (python -m jaxdepth fit, or another program)")
    raise RunMismatchError(f"work directory {workdir} holds {what}, not a {identity['method']!r} "
                           f"run; use another directory")
  if stored.get("spec") != identity["spec"]:
    diff = checkpoint.spec_difference(Spec.from_dict(stored["spec"]),
                                      Spec.from_dict(identity["spec"]))
    raise checkpoint.SpecMismatchError(
        f"work directory {workdir} holds a run of another model "
        f"({stored['spec'].get('name')!r}): {diff or 'the spec names differ'}; use another "
        f"directory")
  if "variables" not in identity:
    stored.pop("variables", None)
  for key in ("dtype", "eval_batch_size", "data", "devices", "layout"):   # older run.json: any
    stored.setdefault(key, identity[key])
  if isinstance(stored["data"], dict) and isinstance(identity["data"], dict):
    stored["data"] = {**identity["data"], **stored["data"]}   # keys recorded since: any
  diffs = _differences(stored, identity)
  if diffs:
    hint = VARIABLES_HINT if stored.get("variables") != identity.get("variables") else ""
    hint += training.devices_hint(stored["devices"], identity["devices"])
    if stored["devices"] == identity["devices"]:
      hint += training.layout_hint(stored["layout"], identity["layout"])
    settings = tuple(k for k in sorted(set(stored) | set(identity))
                     if stored.get(k) != identity.get(k))
    raise RunMismatchError(f"work directory {workdir} holds a run with other settings "
                           f"({'; '.join(diffs)}){hint}; use another directory",
                           settings=settings)
  finished = [r for r in _results(workdir) if r != "iterations/*/model"]
  if finished and not any(workdir.glob("checkpoints/*")):
    raise RunMismatchError(
        f"work directory {workdir} holds this run's results ({', '.join(finished)}) but its "
        f"iteration checkpoints (checkpoints/) are gone: it can be neither resumed nor "
        f"extended, and training it again would overwrite them. To train it again from its "
        f"start, move {workdir} aside or delete it; or use another directory")


def _check_data(method, spec: Spec, dataset, eval_batch_size: int, mesh) -> None:
  """The method's optional ``check_data`` (see :class:`base.Method`), given the run's
  evaluation batch and mesh, or called as ``check_data(spec, dataset)`` where a method of
  one's own takes only those (the protocol's form before they were passed)."""
  check_data = getattr(method, "check_data", None)
  if check_data is None:
    return
  params = inspect.signature(check_data).parameters
  if ({"eval_batch_size", "mesh"} <= params.keys()
      or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())):
    check_data(spec, dataset, eval_batch_size=eval_batch_size, mesh=mesh)
  else:
    check_data(spec, dataset)


def _check_own_start(workdir: pathlib.Path, variables, mesh) -> None:
  """Refuses to restart from ``init(spec, key(seed))`` a run that began from given variables.

  ``variables=None`` resumes from the run's iteration checkpoints; when none is left
  (the run was stopped before sealing its first one, which opening the directory
  removed), the run would silently start again from a random initialisation.
  """
  stored = (read_run_json(workdir) or {}).get("variables")
  if stored is None or stored == training.variables_digest(variables, mesh):
    return
  raise RunMismatchError(
      f"work directory {workdir} holds a run that started from given variables (digest "
      f"{stored}), and no iteration checkpoint is left to resume it from; pass the variables "
      f"it started from (variables=...), or use another directory", settings=("variables",))


def _differences(stored: dict[str, Any], asked: dict[str, Any], prefix: str = "") -> list[str]:
  """``key: stored there, asked`` for every differing key, nested dicts opened."""
  out = []
  for k in sorted(set(stored) | set(asked)):
    a, b = stored.get(k), asked.get(k)
    if isinstance(a, dict) and isinstance(b, dict):
      out += _differences(a, b, f"{prefix}{k}.")
    elif a != b:
      out.append(f"{prefix}{k}: {a!r} there, {b!r} asked")
  return out


def _fit_trainer(mesh, dtype, progress, fit_options) -> Trainer:
  def train(spec, variables, dataset, recipe, *, options, seed, workdir, desc):
    return training.fit(spec, variables, dataset, recipe, options=options, workdir=workdir,
                        seed=seed, mesh=mesh, dtype=dtype, progress=progress, desc=desc,
                        **fit_options)
  return train


def run(method: base.Method, spec: Spec, dataset: Dataset, recipe: optim.Recipe,
        workdir: str | os.PathLike, *, variables=None, iterations: int | None = None,
        tolerance: float = 1.0, seed: int = 0, mesh=None, dtype=None,
        eval_batch_size: int | None = None, progress: bool = True,
        checkpoint_epochs: bool = True, fit_options: dict[str, Any] | None = None,
        trainer: Trainer | None = None, info: dict[str, Any] | None = None,
        after_iteration: Callable[[int, dict[str, Any]], None] | None = None,
        merge: bool = True, latency_batches: Sequence[int] | None = None,
        say: Callable[[str], None] | None = None) -> RunResult:
  """Runs ``method`` on ``(spec, dataset)`` for ``iterations`` iterations, resumably.

  Args:
    method: the method (e.g. :class:`jaxdepth.methods.Easier`).
    spec: the architecture (every unit live).
    dataset: train, val (required: the operating point is picked on it) and test.
    recipe: the per-iteration schedule (a fresh optimizer every iteration).
    workdir: the run's directory (created; a run there is resumed, with the same
      settings, ``eval_batch_size`` included: it is the statistics' batch too).
    variables: initial variables (default ``jaxdepth.init(spec, key(seed))``). Given
      ones are part of the run's identity (a digest,
      :func:`jaxdepth.training.variables_digest`): a ``workdir`` holding a run started
      from others is refused; ``None`` resumes a run from its iteration checkpoints
      (a run with no sealed iteration checkpoint yet resumes only from the variables
      it started from: ``run.json`` and iteration 0's epoch checkpoints hold their
      digest).
    iterations: rounds (default ``method.default_iterations(spec)``). Iteration
      ``i`` trains (when the method asks for epochs) and evaluates the network
      with the removals decided in iterations ``0 .. i-1``.
    tolerance: allowed validation-accuracy drop of the operating point, in points.
    seed: initialisation and the per-iteration seeds (:func:`iteration_seed`).
    mesh: the device mesh (default: every device). Its number of devices is part of the
      run's identity (another count rounds differently; the number of processes is not).
    dtype: compute dtype (part of the run's identity, as ``"float32"`` for ``None``).
    eval_batch_size: batch size of the evaluations (default: the recipe's).
    progress: progress bars.
    checkpoint_epochs: also checkpoint every epoch inside an iteration (a killed
      iteration resumes mid-way); the epoch checkpoints are deleted once the
      iteration is done.
    fit_options: more keywords of :func:`jaxdepth.training.fit` (``eval_every``, ...;
      ``eval_batch_size`` defaults to the run's).
    trainer: replaces :func:`jaxdepth.training.fit` (see :class:`Trainer`).
    info: JSON facts stored in ``run.json`` and the report (e.g. the config); they
      are part of the run's identity.
    after_iteration: called as ``after_iteration(i, entry)`` once iteration ``i``
      is checkpointed.
    merge: also save the chosen model collapsed by :func:`jaxdepth.surgery.collapse`
      (exact passes only) in ``chosen_merged/``, with its distance to the chosen
      model and its costs in ``report["chosen"]["merged"]``.
    latency_batches: batch sizes at which the merged report times the dense,
      chosen and merged models' eval forwards (``report["chosen"]["merged"]
      ["latency"]``; default ``(1, eval_batch_size)``). Each model is compiled
      at each size, which on a CPU can cost more than a short run's training:
      ``()`` times nothing and leaves the latency out of the report.
    say: where progress lines go (e.g. ``print``); silent by default.

  Returns:
    A :class:`RunResult`.

  Raises:
    ValueError: bad argument (tolerance < 0, no validation split, a tokenizer whose
      ids run past the spec's embedding, ``recipe.epochs=0`` for a method that measures
      the statistics of its training's last epoch, ...).
    TypeError: ``seed`` is not an integer (numpy and 0-d jax integers are taken).
    RunMismatchError, SpecMismatchError: ``workdir`` holds another run (or this one's
      results without its iteration checkpoints).
    DamagedModelError: a model an iteration saved, which the choice (or the timing)
      reads, is damaged or missing; the message says how the run makes it again.
  """
  if isinstance(method, type):
    raise TypeError(f"method must be an instance, e.g. {method.__name__}(), got the class "
                    f"{method.__name__}")
  conformance.check_method(method)
  seed = training.check_seed(seed)
  _check_tolerance(tolerance)
  latency_batches = _check_latency_batches(latency_batches)
  if iterations is not None and (not isinstance(iterations, int) or iterations < 1):
    raise ValueError(f"iterations must be a positive int (or None for the method's "
                     f"default), got {iterations!r}")
  if dataset.val is None:
    raise ValueError(f"dataset {dataset.name!r} has no validation split; the operating point "
                     f"is chosen on it: load it with val_fraction > 0")
  units = conformance.units(method, spec, "units")
  if not units:
    raise ValueError(f"spec {spec.name!r} has no {method.unit} that {method.name} can remove")
  # The members that need no training, called once on the initial state: a method of one's own
  # that breaks the protocol is refused before anything is written or trained.
  initial_state = method.init(spec)
  conformance.check_state_leaves(method, initial_state, "init")
  conformance.live_units(method, spec, initial_state, units)
  initial_layout = conformance.state_layout(initial_state)   # what every apply keeps
  _check_epochs(method, spec, recipe)
  if iterations is None:
    iterations = conformance.default_iterations(method, spec)
  options = conformance.options(method)
  mesh = training.make_mesh() if mesh is None else mesh
  eval_batch_size = eval_batch_size or recipe.batch_size
  _check_data(method, spec, dataset, eval_batch_size, mesh)
  check_vocabulary(spec, dataset)   # a larger tokenizer: a NaN loss at the first step
  if variables is not None:   # abstractly: raises the forward pass's "do not fit spec" error
    jax.eval_shape(lambda v: network.forward(spec, v, network.example_input(spec)).logits,
                   variables)
  say = say or (lambda _: None)
  workdir = pathlib.Path(workdir)
  # The evaluation batch is the statistics' batch too (EGP's per-batch entropy estimators,
  # LaCoOT's distances): another one changes the decisions. So does another device count
  # or, with more than two devices, another spread of them over processes (the reductions
  # round differently); the process count alone does not.
  identity = {"method": method.name, "method_options": options,
              "spec": spec.to_dict(), "dataset": dataset.name,
              "data": training.data_identity(dataset), "recipe": recipe.to_dict(),
              "seed": seed, "dtype": training.dtype_name(dtype),
              "devices": int(mesh.devices.size), "layout": training.device_layout(mesh),
              "eval_batch_size": eval_batch_size,
              "info": info or {}}
  # As run.json reads back (tuples become lists): the same call compares equal on resume.
  identity = conformance.as_stored(method, identity)
  if variables is not None:   # given ones are part of the identity (None: the run's own)
    identity["variables"] = training.variables_digest(variables, mesh)
  _check_identity(workdir, identity)
  latency_batches = (1, eval_batch_size) if latency_batches is None else latency_batches
  # fit validates at the run's evaluation batch: one compiled eval step serves both.
  trainer = trainer or _fit_trainer(mesh, dtype, progress,
                                    {"eval_batch_size": eval_batch_size, **(fit_options or {})})
  total = len(units)
  own_start = variables is None
  if own_start:
    variables = network.init(spec, jax.random.key(seed))

  main_process = jax.process_index() == 0
  if main_process:
    workdir.mkdir(parents=True, exist_ok=True)
    if not (workdir / "run.json").exists() or not _has_progress(workdir):
      # Atomically: the other processes read it in _check_identity meanwhile, and a
      # half-written file is no JSON.
      report_lib.write_json(workdir, identity, name="run.json")

  state = method.init(spec)
  entries: list[dict[str, Any]] = []
  ckpt = checkpoint.Checkpointer(workdir / "checkpoints", spec, keep=2, async_save=False)
  try:
    if own_start and ckpt.latest_step() is None:
      _check_own_start(workdir, variables, mesh)
    if ckpt.latest_step() is not None:
      template = training.TrainState.create(variables, optim.make_optimizer(recipe, 1), seed)
      # Restore targets replicated over the mesh, as saved (host-local arrays cannot be
      # written or read by several processes).
      restored = ckpt.restore(training.replicate(template, mesh),
                              extra=training.replicate(state, mesh))
      variables, state = restored.state.variables, restored.extra
      entries = list(restored.meta["iterations"])
      say(f"resuming {workdir} after iteration {len(entries) - 1}")
      if len(entries) > iterations:
        say(f"the run already holds {len(entries)} iterations, more than the {iterations} "
            f"asked: the report and the choice keep all of them")
    for done in range(len(entries)):
      _drop_epoch_checkpoints(workdir, done)

    while len(entries) < iterations and _more(method, spec, state, entries):
      training.stop_if_requested()   # a SIGTERM whose own interrupt was lost
      it = len(entries)
      tic = time.perf_counter()
      entry, variables, state, trained_state = _iteration(
          method, spec, dataset, recipe, variables, state, it=it, seed=seed, total=total,
          initial_layout=initial_layout, workdir=workdir, trainer=trainer, mesh=mesh, dtype=dtype,
          eval_batch_size=eval_batch_size, checkpoint_epochs=checkpoint_epochs)
      entry["seconds"] = round(time.perf_counter() - tic, 3)
      entries.append(entry)
      ckpt.save(len(entries), trained_state, extra=training.replicate(state, mesh),
                meta={"iterations": entries})
      _drop_epoch_checkpoints(workdir, it)
      if main_process:
        report_lib.write_json(workdir, _report(identity, entries, None, tolerance, total,
                                               method, iterations))
      say(f"iteration {it}: {entry['units_removed']}/{total} {method.unit}s removed, val "
          f"{100 * entry['val_accuracy']:.2f} %, test {100 * entry['test_accuracy']:.2f} %; "
          f"then removed "
          f"{', '.join(entry['removed_now']) or 'nothing'}")
      if after_iteration is not None:
        after_iteration(it, entry)
    if len(entries) < iterations:
      rule = (entries[-1].get("decision") or {}).get("stop") if entries else None
      why = f"the method's stop rule ({rule})" if rule else f"no {method.unit} is left to remove"
      say(f"stopped after {len(entries)} of the {iterations} iterations asked: {why}")
  finally:
    ckpt.close()

  chosen = choose_operating_point(entries, tolerance)
  chosen_spec, chosen_variables = _iteration_model(   # replicated: every process saves
      workdir, chosen["iteration"], sharding=training.replicated_sharding(mesh))
  checkpoint.save_model(workdir / "chosen", chosen_spec, chosen_variables, overwrite=True)
  summary = _chosen_summary(chosen, entries, tolerance, method.unit)
  if merge:   # the dense model only times: not loaded when nothing is timed
    dense = _iteration_model(workdir, 0) if latency_batches else None
    summary["merged"] = _save_merged(chosen_spec, chosen_variables, dataset, workdir,
                                     eval_batch_size=eval_batch_size, mesh=mesh, dtype=dtype,
                                     dense=dense, latency_batches=latency_batches)
  report = _report(identity, entries, summary, tolerance, total, method, iterations)
  if main_process:
    report_lib.write(workdir, report)
  return RunResult(report, chosen_spec, chosen_variables, state)


def _more(method, spec, state, entries) -> bool:
  """Whether another iteration has something to do.

  While units are live, yes. Once none is, one more iteration runs only to
  evaluate the last removal when the method would not train it (``epochs=0``,
  LaCoOT): with nothing live, its ``measure`` gets no unit and ``decide`` removes
  nothing.
  """
  if conformance.live_units(method, spec, state, it=len(entries)):
    return True
  return bool(entries and entries[-1]["removed_now"]
              and conformance.train_options(method, spec, state, len(entries)).epochs == 0)


def _iteration_dir(workdir: pathlib.Path, it: int) -> pathlib.Path:
  return workdir / "iterations" / f"{it:03d}"


def _iteration_model(workdir: pathlib.Path, it: int, **kw):
  """The model iteration ``it`` saved; a damaged or missing one says how the run can make it
  again (:class:`~jaxdepth.checkpoint.DamagedModelError`, either way).

  With the later iteration checkpoints moved aside, the run resumes before iteration
  ``it`` (from checkpoint ``it``, or from its start for iteration 0) and trains it and
  the later ones again, bit-identical on a CPU; the run keeps only its last two.
  """
  try:
    return checkpoint.load_model(_iteration_dir(workdir, it) / "model", **kw)
  except (checkpoint.DamagedModelError, FileNotFoundError) as e:
    problem = str(e) if isinstance(e, checkpoint.DamagedModelError) else f"{e}."
    steps = sorted(int(p.name) for p in (workdir / "checkpoints").glob("*") if p.name.isdigit())
    later = [f"checkpoints/{s}" for s in steps if s > it]
    if it == 0 or it in steps:
      start = f"checkpoint {it}" if it else "the variables it started from"
      redo = (f"move {', '.join(later)} out of {workdir} and run it again: it resumes from "
              f"{start} and trains iteration {it} and the later ones again")
    else:
      redo = (f"the run no longer holds the checkpoint taken before iteration {it}; run it "
              f"again in a new directory")
    raise checkpoint.DamagedModelError(
        f"{problem} Iteration {it} of this run saved it: {redo}") from e


def _drop_epoch_checkpoints(workdir: pathlib.Path, it: int) -> None:
  if jax.process_index() == 0:
    shutil.rmtree(_iteration_dir(workdir, it) / "checkpoints", ignore_errors=True)


def _iteration(method, spec, dataset, recipe, variables, state, *, it, seed, total,
               initial_layout, workdir, trainer, mesh, dtype, eval_batch_size, checkpoint_epochs):
  """One train → evaluate → measure → decide → apply round; saves the iteration's model.

  What the method returns is checked against the protocol (:class:`base.Method`) as it comes,
  the state after ``apply`` against ``initial_layout`` (``method.init(spec)``'s), before
  anything of the iteration is saved or reported.
  """
  live = conformance.live_units(method, spec, state, it=it)
  removed = tuple(u for u in method.units(spec) if u not in live)
  options = conformance.train_options(method, spec, state, it)
  it_dir = _iteration_dir(workdir, it)
  if options.epochs == 0:   # the method only evaluates this iteration (e.g. LaCoOT's removals)
    trained = training.FitResult(   # the state replicated as fit's (every process saves it)
        variables, None, [], training.replicate(
            training.TrainState.create(variables, optim.make_optimizer(recipe, 1), seed), mesh))
  else:
    trained = trainer(spec, variables, dataset, recipe, options=options,
                      seed=iteration_seed(seed, it),
                      workdir=it_dir if checkpoint_epochs else None,
                      desc=f"iteration {it} ({len(removed)}/{total} {method.unit}s removed)")
  history = it_dir / "metrics.jsonl"
  if not checkpoint_epochs or not history.exists():   # fit with the workdir writes it as it goes
    _write_history(history, trained.history)

  # A split that augments always (val_augment) serves the view of fit's last validation:
  # a function of the iteration, so a resumed run evaluates the same.
  epochs = recipe.epochs if options.epochs is None else options.epochs

  def evaluate(split, collect_stats=False):
    return training.evaluate(spec, trained.variables, split, batch_size=eval_batch_size,
                             gates=options.gates, mesh=mesh, dtype=dtype,
                             collect_stats=collect_stats, node_gates=options.node_gates,
                             seed=iteration_seed(seed, it), epoch=max(epochs - 1, 0))

  val, test = evaluate(dataset.val), evaluate(dataset.test)
  splits = {"train": dataset.train, "val": dataset.val, "test": dataset.test}
  context = base.Context(
      iteration=it, train_stats=trained.stats,
      eval_stats=lambda name: evaluate(splits[name], collect_stats=True).stats,
      rng=jax.random.fold_in(jax.random.key(seed), it), dataset=dataset, mesh=mesh,
      dtype=dtype, eval_batch_size=eval_batch_size, val_accuracy=val.accuracy)
  scores = conformance.scores(method, method.measure(spec, trained.variables, state, context), it)
  decision = method.decide(scores, state)
  conformance.check_decision(method, decision, live, it)
  shallow_spec, shallow_variables = conformance.exported(
      method, method.export(spec, trained.variables, state), it)
  new_variables, new_state = conformance.applied(
      method, method.apply(spec, trained.variables, state, decision), initial_layout, it)
  checkpoint.save_model(it_dir / "model", shallow_spec, shallow_variables, overwrite=True)
  last = trained.history[-1] if trained.history else {}
  entry = {
      "iteration": it, "unit": method.unit, "units_removed": len(removed),
      "units_total": total, "removed": list(removed), "removed_now": list(decision.remove),
      method.score_name: scores,
      "val_accuracy": val.accuracy, "val_loss": val.loss,
      "test_accuracy": test.accuracy, "test_loss": test.loss,
      "train_accuracy": last.get("train_accuracy"),
      "train_loss": last.get("train_loss"), "epochs": len(trained.history),
      "params": costs.count_params(shallow_spec), "macs": costs.count_macs(shallow_spec),
      "depth": costs.depth(shallow_spec)._asdict(),
      "merged": _merged_costs(shallow_spec, shallow_variables),
  }
  if decision.details:
    entry["decision"] = decision.details
  return entry, new_variables, new_state, trained.state


def _write_history(path: pathlib.Path, history) -> None:
  """Writes an iteration's per-epoch records to ``metrics.jsonl`` (replacing, atomically,
  what a run that stopped before its checkpoint may have left there)."""
  if jax.process_index() != 0:
    return
  path.parent.mkdir(parents=True, exist_ok=True)
  tmp = path.with_suffix(".tmp")
  tmp.write_text("".join(json.dumps(r) + "\n" for r in history))
  tmp.replace(path)


def _merged_costs(spec, variables) -> dict[str, int] | None:
  """Params, MACs and depths of ``spec`` once collapsed by exact surgery (``None`` without it)."""
  try:
    from jaxdepth import surgery  # pylint: disable=import-outside-toplevel
  except ImportError:
    return None
  merged_spec, _ = surgery.collapse(spec, variables, mode="exact")
  d = costs.depth(merged_spec)
  return {"params": costs.count_params(merged_spec), "macs": costs.count_macs(merged_spec),
          "nonlinear_depth": d.nonlinear_depth, "weight_depth": d.weight_depth}


def edit_record(edit) -> dict[str, Any]:
  """A surgery :class:`~jaxdepth.surgery.Edit` as the report's JSON."""
  out = {"kind": edit.kind, "path": edit.path, "detail": edit.detail}
  if edit.kind == "skip":
    out["reason"] = edit.reason
  else:
    out.update(exact=edit.exact, macs_before=edit.macs_before, macs_after=edit.macs_after)
  return out


def latencies_ms(models: dict[str, tuple[Spec, Any]], batch_sizes, *, dtype=None
                 ) -> list[dict[str, Any]]:
  """Eval-forward latency of each model at each batch size, in milliseconds.

  :func:`jaxdepth.timing.latencies`: medians of measurements taken in turns
  after warm-up, so the models are compared under the same load. Each model is
  timed on one device of this process (its variables copied there first), so a
  model replicated over the devices of several processes is timed like one
  loaded from disk. ``dtype`` is the compute dtype (``None``: float32), that of
  the run whose models are timed, so the figures are those of its evaluation.

  Returns:
    ``[{"batch": b, "<name>_ms": ms, ...}]``, one row per batch size.
  """
  device = jax.local_devices()[0]
  models = {name: (spec, jax.device_put(jax.device_get(variables), device))
            for name, (spec, variables) in models.items()}
  rows = []
  for b in dict.fromkeys(int(b) for b in batch_sizes):
    row = {"batch": b}
    row.update({f"{name}_ms": round(1e3 * t, 4)
                for name, t in timing.latencies(models, b, repeats=15, min_seconds=5e-3,
                                                 dtype=dtype).items()})
    rows.append(row)
  return rows


def _save_merged(spec, variables, dataset, workdir, *, eval_batch_size, mesh, dtype, dense,
                 latency_batches):
  """Collapses the chosen model with the surgery pipeline (exact passes only) and saves it.

  Returns the report's ``chosen.merged`` entry: where it is, how far its logits
  are from the chosen model's on the first test batch, its test accuracy, the
  costs before and after, every surgery edit made and every merge skipped
  with its reason, and the eval latency of the dense, chosen and merged models
  at each of ``latency_batches`` (left out when there is none); ``None`` when
  :mod:`jaxdepth.surgery` is not installed.
  """
  try:
    from jaxdepth import equivalence, surgery  # pylint: disable=import-outside-toplevel
  except ImportError:
    return None
  log: list = []
  merged_spec, merged_variables = surgery.collapse(spec, variables, mode="exact", log=log)
  checkpoint.save_model(workdir / "chosen_merged", merged_spec, merged_variables, overwrite=True)
  batch = next(iter(dataset.test.batches(min(eval_batch_size, dataset.test.num_examples))))
  x = network.batch_inputs(spec, batch)
  spatial = equivalence.spatial_prefix(spec) is not None   # no feature map on token inputs
  same = equivalence.compare(spec, variables, merged_spec, merged_variables, x,
                             border=equivalence.border_width(merged_spec, log) if spatial
                             else None)
  test = training.evaluate(merged_spec, merged_variables, dataset.test,
                           batch_size=eval_batch_size, mesh=mesh, dtype=dtype)
  before, after = costs.summary(spec), costs.summary(merged_spec)
  out = {
      "path": "chosen_merged", "mode": "exact",
      "edits": [edit_record(e) for e in log if e.kind != "skip"],
      "skipped": [edit_record(e) for e in log if e.kind == "skip"],
      "max_abs_diff": same.max_abs, "max_rel_diff": same.max_rel,
      "top1_agreement": same.top1_agreement, "test_batch": int(len(batch["label"])),
      "test_accuracy": test.accuracy,
      **{f"{k}_{when}": d[k] for k in ("params", "macs", "nonlinear_depth", "weight_depth")
         for when, d in (("before", before), ("after", after))},
  }
  if latency_batches:
    out["latency"] = latencies_ms({"dense": dense, "chosen": (spec, variables),
                                   "merged": (merged_spec, merged_variables)}, latency_batches,
                                  dtype=dtype)
  return out


def _chosen_summary(chosen, entries, tolerance, unit) -> dict[str, Any]:
  dense = entries[0]
  return {
      "iteration": chosen["iteration"], "unit": unit, "units_removed": chosen["units_removed"],
      "units_total": chosen["units_total"], "removed": chosen["removed"],
      "val_accuracy": chosen["val_accuracy"], "test_accuracy": chosen["test_accuracy"],
      "dense_val_accuracy": dense["val_accuracy"], "dense_test_accuracy": dense["test_accuracy"],
      "tolerance_points": tolerance, "params": chosen["params"], "macs": chosen["macs"],
      "depth": chosen["depth"], "dense_depth": dense["depth"], "path": "chosen",
  }


def _report(identity, entries, chosen, tolerance, total, method, asked) -> dict[str, Any]:
  """The report: ``asked``, the iterations this call was asked for, tells a rerun that leaves
  them out how many the run holds to (:func:`asked_iterations`)."""
  return {
      "method": identity["method"], "method_options": identity["method_options"],
      "model": identity["spec"]["name"], "dataset": identity["dataset"],
      "recipe": identity["recipe"], "seed": identity["seed"], "dtype": identity["dtype"],
      "devices": identity["devices"], "info": identity["info"],
      "unit": method.unit, "units_total": total, "score_name": method.score_name,
      "score_unit": getattr(method, "score_unit", None),
      "tolerance_points": tolerance, "finished": chosen is not None,
      "note": LAST_REMOVAL_NOTE if entries and entries[-1]["removed_now"] else None,
      "iterations": entries, "iterations_asked": asked, "chosen": chosen,
  }


def asked_iterations(workdir) -> int | None:
  """The iterations the run in ``workdir`` was last asked for, from its ``report.json``; for a
  report written before they were recorded, the iterations of a finished run (it did what it
  was asked). None: no report, or an unfinished one that does not say."""
  try:
    stored = json.loads((pathlib.Path(workdir) / "report.json").read_bytes())
  except (OSError, ValueError):   # none yet, or damaged: the run itself says so
    return None
  if not isinstance(stored, dict):
    return None
  asked = stored.get("iterations_asked")
  if isinstance(asked, int) and not isinstance(asked, bool):
    return asked
  entries = stored.get("iterations")
  return len(entries) if stored.get("finished") and isinstance(entries, list) and entries else None
