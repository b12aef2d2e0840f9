"""Checkpoints of a run and saved models, on orbax.

Two things are stored, both sealed with a checksum manifest (:mod:`jaxdepth.integrity`)
that is checked before anything is read back:

* **Run checkpoints** (:class:`Checkpointer`, over ``orbax.checkpoint.CheckpointManager``).
  Each step directory holds the items ``spec`` (the architecture as JSON),
  ``state`` (the train state: step, params, batch_stats, optimizer state, rng),
  optionally ``extra`` (an arbitrary pytree such as a method's masks or
  accumulated statistics), ``meta`` (an arbitrary JSON dict) and ``checksums.json``.
  Orbax writes a step into a temporary directory and renames it when complete, so a
  run killed at any point leaves the previous checkpoints intact and never a
  half-written one; the manifest then catches what changed on disk afterwards.
  Restoring resumes from the newest intact checkpoint (a damaged newer one is
  reported and moved aside), checks the stored spec against the expected one and
  refuses another architecture with a :class:`SpecMismatchError` that names the
  node that differs.
* **Saved models** (:func:`save_model`, :func:`load_model`): ``spec.json`` beside an
  orbax checkpoint of the variables. ``load_model(dir)`` rebuilds both with no
  Python beyond jaxdepth, which is how a shallow model produced by a method is
  shipped. Saving over a model is atomic: the old one stays loadable until the
  new one is complete.

Every process of a multi-host run must call :meth:`Checkpointer.save` and
:meth:`Checkpointer.restore` (orbax coordinates the writes).
"""
from __future__ import annotations

import itertools
import logging
import os
import pathlib
import shutil
import threading
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

from jaxdepth import integrity, network
from jaxdepth.spec import Spec

__all__ = ["Checkpointer", "Restored", "SpecMismatchError", "NonFiniteStateError",
           "DamagedCheckpointError", "DamagedModelError",
           "spec_difference", "save_model", "load_model", "all_finite"]


class SpecMismatchError(ValueError):
  """A checkpoint holds another architecture than the one expected."""


class NonFiniteStateError(FloatingPointError):
  """Refused to save parameters holding NaN or infinity."""


class DamagedCheckpointError(ValueError):
  """No intact checkpoint is left (each failed its checksums), or the one asked for is damaged."""


class DamagedModelError(ValueError):
  """A saved model's files do not match the checksums written with them."""


log = logging.getLogger("jaxdepth")


# ---------------------------------------------------------------- spec comparison


def _fields(node) -> dict[str, Any]:
  """A node's own fields (children excluded), JSON style."""
  d = node.to_dict()
  for k in ("layers", "branch", "shortcut", "post"):
    d.pop(k, None)
  return d


def spec_difference(stored: Spec, expected: Spec) -> str | None:
  """Says how ``stored`` differs from ``expected`` as architectures, or ``None``.

  The spec ``name`` is a label and is not compared. The message names the first
  node (in call order) that is missing, extra, moved or configured differently,
  with its output shape on both sides.
  """
  if stored.input_shape != expected.input_shape:
    return (f"input_shape is {stored.input_shape} in the checkpoint but {expected.input_shape} "
            f"is expected")
  a, b = dict(stored.walk()), dict(expected.walk())
  sa, sb = stored.shapes(), expected.shapes()
  for path, node in b.items():
    if path not in a:
      return (f"node {path!r} ({node.kind}, output shape {sb[path][1]}) is expected but the "
              f"checkpoint has no such node")
    fa, fb = _fields(a[path]), _fields(node)
    if fa != fb:
      diffs = [f"{k}={fa.get(k)!r} in the checkpoint, {fb.get(k)!r} expected"
               for k in sorted(set(fa) | set(fb)) if fa.get(k) != fb.get(k)]
      return (f"node {path!r} differs: {'; '.join(diffs)} (output shape {sa[path][1]} in the "
              f"checkpoint, {sb[path][1]} expected)")
  for path, node in a.items():
    if path not in b:
      return (f"node {path!r} ({node.kind}, output shape {sa[path][1]}) is in the checkpoint "
              f"but not in the expected spec")
  if list(a) != list(b):
    for pa, pb in zip(a, b):
      if pa != pb:
        return f"nodes run in another order: {pa!r} in the checkpoint where {pb!r} is expected"
  return None


def _check_spec(stored: Spec, expected: Spec, where: str):
  diff = spec_difference(stored, expected)
  if diff is not None:
    raise SpecMismatchError(
        f"{where} holds another architecture ({stored.name!r}) than the expected "
        f"{expected.name!r}: {diff}. Use another directory for another model.")


# ---------------------------------------------------------------------- helpers


@jax.jit
def _finite(tree) -> jax.Array:
  leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)
            if jnp.issubdtype(x.dtype, jnp.inexact)]
  return jnp.all(jnp.stack(leaves)) if leaves else jnp.asarray(True)


def all_finite(tree) -> bool:
  """True when no floating-point leaf of ``tree`` holds a NaN or an infinity."""
  return bool(_finite(tree))


def _abstract(tree):
  """Shape, dtype and sharding of every leaf (the restore target)."""
  def leaf(x):
    if isinstance(x, jax.ShapeDtypeStruct):
      return x
    return ocp.utils.to_shape_dtype_struct(jnp.asarray(x) if not hasattr(x, "sharding") else x)
  return jax.tree.map(leaf, tree)


_barriers = itertools.count()


def _sync(name: str) -> None:
  """A barrier between the processes of a multi-host run (nothing on one process).

  Every process passes the same barriers in the same order, so the counter that
  makes each barrier's key unique agrees between them.
  """
  if jax.process_count() > 1:
    ocp.multihost.sync_global_processes(f"{name}_{next(_barriers)}")


def _aside(directory: pathlib.Path, name: str) -> pathlib.Path:
  """A free path ``directory/name`` (``name.2``, ``name.3``... when taken)."""
  path, n = directory / name, 1
  while path.exists():
    n += 1
    path = directory / f"{name}.{n}"
  return path


class Restored(NamedTuple):
  """What :meth:`Checkpointer.restore` returns.

  Attributes:
    step: the checkpoint's step.
    state: the train state (the template's structure, its shardings).
    extra: the extra pytree, or ``None`` if none was asked for.
    meta: the JSON dict saved with it.
  """
  step: int
  state: Any
  extra: Any
  meta: dict[str, Any]


class Checkpointer:
  """The checkpoints of one run of one architecture, in ``directory``.

  Every checkpoint is sealed with a checksum manifest (:mod:`jaxdepth.integrity`)
  once orbax has written it, and checked against it before it is read. Reading
  "the latest" checkpoint means the newest *intact* one: a newer damaged one is
  reported (a warning naming its step and what is wrong) and moved aside to
  ``directory/damaged-<step>``, never deleted. Cleanup keeps the ``keep`` newest
  checkpoints and never deletes an older one unless a newer one is known intact.

  Example::

      with Checkpointer(workdir / "checkpoints", spec) as ckpt:
        if ckpt.latest_step() is not None:
          state, extra, meta = ckpt.restore(state, extra=extra)[1:]
        ...
        ckpt.save(step, state, extra=extra, meta={"epoch": 3})

  Args:
    directory: where the step directories go (created if needed).
    spec: the architecture every checkpoint here must hold.
    keep: how many of the latest checkpoints to keep (at least 1).
    async_save: write in a background thread (the arrays are copied first, so the
      caller may go on training, and :meth:`wait` or :meth:`close` joins).
  """

  def __init__(self, directory: str | os.PathLike, spec: Spec, *, keep: int = 2,
               async_save: bool = True):
    if not isinstance(keep, int) or keep < 1:
      raise ValueError(f"keep must be a positive int, got {keep!r}")
    self.directory = pathlib.Path(directory).absolute()
    self.spec = spec
    self.keep = keep
    self._async = async_save
    self._sealer: threading.Thread | None = None
    self._sealer_error: BaseException | None = None
    self._intact: set[int] = set()          # steps sealed or verified by this object
    options = ocp.CheckpointManagerOptions(enable_async_checkpointing=async_save,
                                           cleanup_tmp_directories=True)
    self._manager = ocp.CheckpointManager(self.directory, options=options)

  def __enter__(self) -> Checkpointer:
    return self

  def __exit__(self, *exc):
    self.close()

  def latest_step(self) -> int | None:
    """The step of the newest complete checkpoint (intact or not), or ``None``."""
    self._settle()
    return self._manager.latest_step()

  def all_steps(self) -> list[int]:
    self._settle()
    return list(self._manager.all_steps())

  def latest_intact_step(self) -> int | None:
    """The step of the newest checkpoint that matches its checksums, or ``None``."""
    self._settle()
    for step in sorted(self._manager.all_steps(), reverse=True):
      if self._problem(step) is None:
        return step
    return None

  def save(self, step: int, state, *, extra=None, meta: dict[str, Any] | None = None,
           check_finite: bool = True) -> None:
    """Writes checkpoint ``step`` (atomically; replaces nothing already there).

    Args:
      step: the checkpoint's number (usually the optimizer step).
      state: the train state (any pytree of arrays).
      extra: an optional pytree saved beside it (method state).
      meta: an optional JSON-serialisable dict.
      check_finite: refuse (:class:`NonFiniteStateError`) to save a state whose
        floating-point leaves hold NaN or infinity, so the last good checkpoint
        stays the latest.
    """
    if check_finite and not all_finite(state):
      good = self.latest_intact_step()
      raise NonFiniteStateError(
          f"refusing to save checkpoint {step} in {self.directory}: the state holds NaN or "
          f"infinite values; " + (f"the latest good checkpoint is {good}" if good is not None
                                  else "there is no intact checkpoint to go back to"))
    self._settle()
    items = {"spec": ocp.args.JsonSave(self.spec.to_dict()),
             "state": ocp.args.StandardSave(state),
             "meta": ocp.args.JsonSave(dict(meta or {}))}
    if extra is not None:
      items["extra"] = ocp.args.StandardSave(extra)
    step = int(step)
    self._manager.save(step, args=ocp.args.Composite(**items))
    if self._async:
      self._sealer = threading.Thread(target=self._seal_when_written, args=(step,),
                                      name=f"jaxdepth-seal-{step}", daemon=True)
      self._sealer.start()
    else:
      self._seal(step)
      self._cleanup()

  def stored_spec(self, step: int | None = None) -> Spec:
    """The architecture saved in checkpoint ``step`` (default: the latest intact)."""
    step = self._step(step)
    out = self._read(step, {"spec": ocp.args.JsonRestore()})
    return Spec.from_dict(out.spec)

  def meta(self, step: int | None = None) -> dict[str, Any]:
    """The JSON dict saved with checkpoint ``step`` (default: the latest intact)."""
    step = self._step(step)
    return self._read(step, {"meta": ocp.args.JsonRestore()}).meta

  def restore(self, state, *, extra=None, step: int | None = None) -> Restored:
    """Reads checkpoint ``step`` (default: the latest intact) after checking it.

    The checkpoint's files are checked against its checksums first, then its
    spec against the expected one. Without ``step``, damaged newer checkpoints
    are reported and moved aside, and the newest intact one is read.

    Args:
      state: a template of the train state: arrays or ``jax.ShapeDtypeStruct``s
        whose shapes, dtypes and shardings the restored leaves take.
      extra: a template of the extra pytree, or ``None`` to skip it.
      step: which checkpoint.

    Returns:
      A :class:`Restored`.

    Raises:
      FileNotFoundError: there is no checkpoint.
      DamagedCheckpointError: no intact checkpoint is left (or ``step`` is damaged).
      SpecMismatchError: the checkpoint holds another architecture.
    """
    step = self._step(step)
    _check_spec(self.stored_spec(step), self.spec, f"checkpoint {step} in {self.directory}")
    items = {"state": ocp.args.StandardRestore(_abstract(state)),
             "meta": ocp.args.JsonRestore()}
    if extra is not None:
      items["extra"] = ocp.args.StandardRestore(_abstract(extra))
    out = self._read(step, items)
    return Restored(step, out.state, out.extra if extra is not None else None,
                    dict(out.meta or {}))

  def wait(self) -> None:
    """Blocks until pending asynchronous saves are written and sealed."""
    self._settle()

  def close(self) -> None:
    try:
      self._settle()
    finally:
      self._manager.close()

  # -- integrity ------------------------------------------------------------------

  def _step_dir(self, step: int) -> pathlib.Path:
    return self.directory / str(step)

  def _seal(self, step: int) -> None:
    if jax.process_index() == 0:
      integrity.write_manifest(self._step_dir(step))
    self._intact.add(step)

  def _seal_when_written(self, step: int) -> None:
    try:
      self._manager.wait_until_finished()
      self._seal(step)
    except BaseException as e:  # re-raised in the caller's thread by _settle
      self._sealer_error = e

  def _settle(self) -> None:
    """Joins the pending save and its seal, then applies the keep policy."""
    if self._sealer is None:
      return
    self._sealer.join()
    self._sealer = None
    _sync("jaxdepth_checkpoint_sealed")
    error, self._sealer_error = self._sealer_error, None
    if error is not None:
      raise error
    self._cleanup()

  def _cleanup(self) -> None:
    """Deletes all but the ``keep`` newest checkpoints, if a kept one is intact."""
    steps = sorted(self._manager.all_steps())
    kept, old = steps[-self.keep:], steps[:-self.keep]
    if old and any(s in self._intact for s in kept):
      for s in old:
        self._manager.delete(s)
        self._intact.discard(s)

  def _problem(self, step: int) -> str | None:
    if step in self._intact:
      return None
    problem = integrity.problem(self._step_dir(step))
    if problem is None:
      self._intact.add(step)
    return problem

  def _read(self, step: int, items: dict[str, Any]):
    return self._manager.restore(step, args=ocp.args.Composite(**items))

  def _step(self, step):
    """``step`` checked, or the newest intact step (damaged newer ones moved aside)."""
    self._settle()
    if step is not None:
      if int(step) not in self._manager.all_steps():
        raise FileNotFoundError(f"no checkpoint {step} in {self.directory} (it holds "
                                f"{list(self._manager.all_steps())})")
      problem = self._problem(int(step))
      if problem is not None:
        raise DamagedCheckpointError(f"checkpoint {step} in {self.directory} is damaged: "
                                     f"{problem}")
      return int(step)
    steps = sorted(self._manager.all_steps(), reverse=True)
    if not steps:
      raise FileNotFoundError(f"no checkpoint in {self.directory}")
    damaged = []
    for s in steps:
      problem = self._problem(s)
      if problem is None:
        break
      damaged.append((s, problem))
    else:
      listing = "; ".join(f"checkpoint {s}: {p}" for s, p in damaged)
      raise DamagedCheckpointError(
          f"no intact checkpoint is left in {self.directory} ({listing}). Nothing was "
          f"changed there. Restore the directory from a backup, or move it away (or delete "
          f"it) to start the run afresh.")
    for bad, problem in damaged:
      aside = _aside(self.directory, f"damaged-{bad}")
      if jax.process_index() == 0:
        log.warning("checkpoint %d in %s is damaged: %s; moved it aside to %s and resuming from "
                    "checkpoint %d", bad, self.directory, problem, aside.name, s)
        os.replace(self._step_dir(bad), aside)
    if damaged:
      _sync("jaxdepth_checkpoint_moved_aside")
      self._manager.reload()
    return s


# ----------------------------------------------------------------------- models
#
# A model directory D is replaced in four moves, each atomic on one file system:
#   1. write the new model completely into D.saving and seal it (checksums.json last);
#   2. rename D to D.previous;  3. rename D.saving to D;  4. delete D.previous.
# A process killed anywhere leaves one of: D (old) [+ a partial or complete D.saving];
# D.previous (old) + D.saving (new, complete); D (new) + D.previous (old). The newest
# complete copy is therefore D, else a sealed D.saving, else D.previous, which is
# what load_model reads and what the next save_model puts back in place first.

_MODEL_FILES = {"spec.json", "variables", integrity.MANIFEST}


def _beside(directory: pathlib.Path, what: str) -> pathlib.Path:
  return directory.with_name(f"{directory.name}.{what}")


def _rename(src: pathlib.Path, dst: pathlib.Path) -> None:
  os.replace(src, dst)


def _remove(path: pathlib.Path) -> None:
  shutil.rmtree(path, ignore_errors=True)


def _is_model(path: pathlib.Path) -> bool:
  return (path / "spec.json").is_file()


def _sealed(path: pathlib.Path) -> bool:
  return _is_model(path) and integrity.problem(path) is None


def _current_copy(directory: pathlib.Path) -> pathlib.Path | None:
  """The newest complete copy of the model saved as ``directory`` (see above)."""
  if _is_model(directory):
    return directory
  saving, previous = _beside(directory, "saving"), _beside(directory, "previous")
  if _sealed(saving):
    return saving
  if _is_model(previous):
    return previous
  return None


def _put_back(directory: pathlib.Path) -> None:
  """Completes or undoes an interrupted save of ``directory`` (process 0 only)."""
  saving, previous = _beside(directory, "saving"), _beside(directory, "previous")
  current = _current_copy(directory)
  if current is not None and current != directory and not (
      directory.is_dir() and any(directory.iterdir())):
    _rename(current, directory)   # replaces an empty directory, never anything else
  if _is_model(directory):
    _remove(previous)
  _remove(saving)


def save_model(directory: str | os.PathLike, spec: Spec, variables, *,
               overwrite: bool = False) -> pathlib.Path:
  """Saves a model as ``directory/spec.json`` + ``directory/variables`` (orbax), sealed.

  The model is written beside (``<directory>.saving``), sealed with a checksum
  manifest (:mod:`jaxdepth.integrity`) and renamed into place, so a process
  killed at any point leaves either the previous model or the new one loadable.

  Args:
    directory: the model directory (created).
    spec: the architecture.
    variables: ``{"params": ..., "batch_stats": ...}``.
    overwrite: replace a model already saved there.

  Returns:
    The directory.

  Raises:
    FileExistsError: a model is there and ``overwrite`` is false, or the directory
      holds other files than a saved model (never replaced).
  """
  directory = pathlib.Path(directory).absolute()
  main = jax.process_index() == 0
  if main:
    _put_back(directory)
  _sync("jaxdepth_save_model_start")
  if _is_model(directory) and not overwrite:
    raise FileExistsError(f"a model is already saved in {directory}; pass overwrite=True "
                          f"or choose another directory")
  others = sorted(p.name for p in directory.iterdir() if p.name not in _MODEL_FILES) if (
      directory.is_dir()) else []
  if others:
    raise FileExistsError(f"{directory} holds other files than a saved model ({others[:5]}); "
                          f"save the model into a new or empty directory")
  saving, previous = _beside(directory, "saving"), _beside(directory, "previous")
  if main:
    saving.mkdir(parents=True)
  _sync("jaxdepth_save_model_mkdir")
  if jax.process_count() > 1:   # host values: every process calls, orbax writes them once
    variables = jax.tree.map(np.asarray, jax.device_get(dict(variables)))
  with ocp.StandardCheckpointer() as ckptr:
    ckptr.save(saving / "variables", dict(variables), force=True)
  _sync("jaxdepth_save_model_written")
  if main:
    (saving / "spec.json").write_text(spec.to_json(indent=1))
    integrity.write_manifest(saving)
    if directory.exists():
      _rename(directory, previous)
    _rename(saving, directory)
    _remove(previous)
  _sync("jaxdepth_save_model_done")
  return directory


def _variables_difference(stored, expected) -> str | None:
  """Names the first node whose stored variables differ from those a spec expects."""
  def flat(tree):
    return {"/".join(str(getattr(k, "key", k)) for k in path): leaf
            for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}

  def node(path):   # "params/layer1/0/conv1/kernel" -> "layer1/0/conv1"
    return "/".join(path.split("/")[1:-1]) or path

  a, b = flat(stored), flat(expected)
  for path, want in b.items():
    if path not in a:
      return f"node {node(path)!r} has no saved {path!r} (shape {tuple(want.shape)} expected)"
    if tuple(a[path].shape) != tuple(want.shape):
      return (f"node {node(path)!r}: {path!r} is saved with shape {tuple(a[path].shape)} but "
              f"spec.json needs {tuple(want.shape)}")
  for path, have in a.items():
    if path not in b:
      return (f"node {node(path)!r}: {path!r} (shape {tuple(have.shape)}) is saved but spec.json "
              f"has no such variable")
  return None


def load_model(directory: str | os.PathLike, *, sharding: jax.sharding.Sharding | None = None,
               verify: bool = True) -> tuple[Spec, dict[str, Any]]:
  """Loads a model written by :func:`save_model`.

  If a save into ``directory`` was interrupted, the newest complete copy is read
  (the sealed new one, else the previous one).

  Args:
    directory: the model directory.
    sharding: where the arrays go (default: the first local device).
    verify: check the files against the checksums saved with them first.

  Returns:
    ``(spec, variables)``, ready for :func:`jaxdepth.forward`.

  Raises:
    FileNotFoundError: no model is saved there (the message names the saved models
      in its subdirectories: a run's ``chosen/``, ``chosen_merged/``).
    DamagedModelError: the files do not match their checksums.
    SpecMismatchError: the variables do not fit the saved spec (the node is named).
  """
  directory = pathlib.Path(directory).absolute()
  source = _current_copy(directory)
  if source is None:
    inside = [f"{d.name}/" for d in sorted(directory.glob("*"))
              if d.is_dir() and _current_copy(d)]   # a run's directory: chosen/, ...
    hint = ("" if not inside else
            f"; its subdirectory {inside[0]} holds one: load that" if len(inside) == 1 else
            f"; its subdirectories {', '.join(inside)} hold one each: load one of those")
    raise FileNotFoundError(f"no saved model in {directory} (spec.json is missing){hint}")
  if verify:
    problem = integrity.problem(source)
    if problem is not None:
      raise DamagedModelError(
          f"the model in {source} is damaged: {problem}. Save it again, or pass verify=False "
          f"to load it unchecked (a model saved by an older jaxdepth has no checksums).")
  spec = Spec.from_json((source / "spec.json").read_text())
  shapes = jax.eval_shape(lambda k: network.init(spec, k), jax.random.key(0))
  sharding = sharding or jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  target = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding),
                        shapes)
  with ocp.StandardCheckpointer() as ckptr:
    diff = _variables_difference(ckptr.metadata(source / "variables").item_metadata, target)
    if diff is not None:
      raise SpecMismatchError(f"the variables in {source} do not fit its spec.json: {diff}")
    variables = ckptr.restore(source / "variables", target)
  return spec, dict(variables)
