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
  node that differs; a restore template of other paths or shapes than the stored
  state (another width, another optimizer) is refused the same way, naming the
  first path that differs (read from orbax's metadata, before any array).
* **Saved models** (:func:`save_model`, :func:`load_model`): ``spec.json`` beside an
  orbax checkpoint of the variables. ``load_model(dir)`` rebuilds both with no
  Python beyond jaxdepth, which is how a shallow model produced by a method is
  shipped. Saving over a model is atomic: the old one stays loadable until the
  new one is complete.

Every process of a multi-host run must call :meth:`Checkpointer.save` and
:meth:`Checkpointer.restore` (orbax coordinates the writes).
"""
from __future__ import annotations

import contextlib
import itertools
import json
import logging
import os
import pathlib
import shutil
import signal
import threading
from collections.abc import Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

from jaxdepth import integrity, network
from jaxdepth.spec import Spec, check_spec

__all__ = ["Checkpointer", "Restored", "SpecMismatchError", "NonFiniteStateError",
           "DamagedCheckpointError", "DamagedModelError",
           "spec_difference", "save_model", "load_model", "load_spec", "all_finite"]


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


@contextlib.contextmanager
def _ctrl_c_held():
  """Holds Ctrl-C (SIGINT) back while a checkpoint is handed to orbax, then raises it.

  Interrupted inside ``CheckpointManager.save``, orbax's own background threads go on
  and fail as the interpreter shuts down, printing tracebacks after the command's
  clean "Interrupted" paragraph (the checkpoint itself is discarded on resume either
  way). The signal is only held in the main thread, where Python handles it, and only
  over Python's own handler or an ignored SIGINT (a background job's): a SIGTERM that the
  command line passes on to SIGINT's handler (``signum`` SIGTERM) is held too, and raised
  after, while an ignored SIGINT stays ignored.
  """
  previous = signal.getsignal(signal.SIGINT)
  if (threading.current_thread() is not threading.main_thread()
      or previous not in (signal.default_int_handler, signal.SIG_IGN)):
    yield
    return
  caught = []
  signal.signal(signal.SIGINT, lambda signum, frame: caught.append(signum))
  try:
    yield
  finally:
    signal.signal(signal.SIGINT, previous)
  if signal.SIGTERM in caught or (caught and previous is signal.default_int_handler):
    raise KeyboardInterrupt


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
  once orbax has written it, and checked against it before it is read. One that a
  stopped run left unsealed (killed between orbax's write and the seal) is that
  run's unfinished save: it is removed when the directory is opened, with a warning. Reading
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
    self._drop_unsealed()
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
             # A copy, as it will be read back: orbax writes the JSON later, in the background,
             # while the caller goes on (fit appends the epoch's record to the history it saved).
             "meta": ocp.args.JsonSave(json.loads(json.dumps(dict(meta or {}))))}
    if extra is not None:
      items["extra"] = ocp.args.StandardSave(extra)
    step = int(step)
    with _ctrl_c_held():   # orbax's own threads are not left half-way (a traceback at exit)
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
      SpecMismatchError: the checkpoint holds another architecture, or a state (or
        extra) whose paths or shapes differ from the template's (the first such path
        is named; checked on orbax's metadata, before any array is read).
    """
    step = self._step(step)
    _check_spec(self.stored_spec(step), self.spec, f"checkpoint {step} in {self.directory}")
    self._check_template(step, "state", state)
    if extra is not None:
      self._check_template(step, "extra", extra)
    items = {"state": ocp.args.StandardRestore(_abstract(state)),
             "meta": ocp.args.JsonRestore()}
    if extra is not None:
      items["extra"] = ocp.args.StandardRestore(_abstract(extra))
    out = self._read(step, items)
    return Restored(step, out.state, out.extra if extra is not None else None,
                    dict(out.meta or {}))

  def _check_template(self, step: int, item: str, template) -> None:
    """Refuses a template whose paths or shapes differ from the stored ``item``'s.

    Orbax would refuse it too, with its own words (a tree-structure mismatch, or
    a shape and a ``strict=False`` that does not apply); this reads only the
    metadata, no array.
    """
    if not (self._step_dir(step) / item).is_dir():   # orbax's restore says so
      return
    # The item's own handler: a Checkpointer's metadata() wants the step's
    # _CHECKPOINT_METADATA in the item folder and logs a warning where it is not.
    stored = ocp.StandardCheckpointHandler().metadata(self._step_dir(step) / item)
    if stored is None:   # orbax's restore says why
      return
    diff = _template_difference(stored, template)
    if diff is not None:
      what = "a train state" if item == "state" else "an extra pytree"
      optimizer = ", with the optimizer the run was saved with" if item == "state" else ""
      raise SpecMismatchError(
          f"checkpoint {step} in {self.directory} holds {what} whose tree structure or "
          f"shapes differ from the template passed as {item}= to restore: {diff}. Pass a "
          f"template made for spec {self.spec.name!r} (the architecture saved there)"
          f"{optimizer}, or use another directory for another model.")

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

  def _drop_unsealed(self) -> None:
    """Removes the checkpoints a stopped run left unsealed, before anything reads them.

    Orbax writes a checkpoint and only then is it sealed (its checksums, written last,
    :meth:`_seal`); a run killed in between leaves one without ``checksums.json``. That is
    the run's own unfinished save, not a damaged one: the run resumes from the checkpoint
    before it (or from the start) and writes it again, bit for bit.
    """
    unsealed = (sorted(int(p.name) for p in self.directory.iterdir() if p.name.isdigit()
                       and p.is_dir() and not (p / integrity.MANIFEST).exists())
                if self.directory.is_dir() else [])
    if jax.process_index() == 0:
      for step in unsealed:
        log.warning("checkpoint %d in %s was not finished when its run stopped (it has no %s); "
                    "removed it: the run goes on from the checkpoint before it", step,
                    self.directory, integrity.MANIFEST)
        shutil.rmtree(self._step_dir(step))
    _sync("jaxdepth_checkpoint_unsealed_dropped")   # every process, whatever it saw

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
#
# Both siblings carry a marker, an empty directory named _MARK (the checksum manifest
# lists files only, so it is not part of the sealed model): D.saving gets it as soon as
# it is made, D just before it is renamed to D.previous, and D loses it once the new
# model is in place. Only a sibling with the marker, or an empty directory (nothing to
# lose), is ever read, moved or deleted as a copy of D; a file or directory of the
# user's that happens to be named D.saving or D.previous is refused, never touched. A
# marked directory is deleted marker last, so a deletion killed midway leaves it marked.

_MARK = ".jaxdepth-save_model"
_MODEL_FILES = {"spec.json", "variables", integrity.MANIFEST, _MARK}


def _beside(directory: pathlib.Path, what: str) -> pathlib.Path:
  return directory.with_name(f"{directory.name}.{what}")


def _rename(src: pathlib.Path, dst: pathlib.Path) -> None:
  os.replace(src, dst)


def _marked(path: pathlib.Path) -> bool:
  """True for a directory that save_model made or moved aside (it holds the marker)."""
  return not path.is_symlink() and (path / _MARK).is_dir()


def _ours(path: pathlib.Path) -> bool:
  """True for a sibling save_model may move or delete: marked, or an empty directory."""
  if path.is_symlink() or not path.is_dir():
    return False
  return _marked(path) or not any(path.iterdir())


def _unmark(path: pathlib.Path) -> None:
  try:
    os.rmdir(path / _MARK)
  except (FileNotFoundError, NotADirectoryError):
    pass


def _remove(path: pathlib.Path) -> None:
  """Deletes a sibling save_model made (nothing else), its marker last; failures are logged."""
  if not _ours(path):
    return
  try:
    for child in path.iterdir():
      if child.name == _MARK:
        continue
      if child.is_dir() and not child.is_symlink():
        shutil.rmtree(child)
      else:
        child.unlink()
    _unmark(path)
    path.rmdir()
  except OSError as e:
    log.warning("could not delete %s, left over from saving a model (%s); delete it by hand",
                path, e)


def _is_model(path: pathlib.Path) -> bool:
  return (path / "spec.json").is_file()


def _sealed(path: pathlib.Path) -> bool:
  return _is_model(path) and integrity.problem(path) is None


def _current_copy(directory: pathlib.Path) -> pathlib.Path | None:
  """The newest complete copy of the model saved as ``directory`` (see above)."""
  if _is_model(directory):
    return directory
  saving, previous = _beside(directory, "saving"), _beside(directory, "previous")
  if _marked(saving) and _sealed(saving):
    return saving
  if _marked(previous) and _is_model(previous):
    return previous
  return None


def _refuse_what_is_in_the_way(directory: pathlib.Path) -> None:
  """Raises if ``directory`` is a file, or a sibling save_model writes through is not its own."""
  if directory.exists() and not directory.is_dir():
    raise NotADirectoryError(f"cannot save a model as {directory}: it is a file; give a "
                             f"directory (a new or empty one, or one holding a saved model)")
  for what in ("saving", "previous"):
    path = _beside(directory, what)
    if not (path.exists() or path.is_symlink()) or _ours(path):
      continue
    if path.is_symlink():
      kind = "a symbolic link"
    elif path.is_dir():
      names = sorted(p.name for p in path.iterdir())
      kind = f"a directory holding {names[:5]}{' ...' if len(names) > 5 else ''}"
    else:
      kind = "a file"
    raise FileExistsError(
        f"cannot save a model as {directory}: {path} is in the way. save_model writes "
        f"through {directory.name}.saving and {directory.name}.previous beside the model "
        f"directory, and {path.name} is {kind} that save_model did not write, so it is left "
        f"alone. Move {path} away (or rename it), or save the model under another name.")


def _put_back(directory: pathlib.Path) -> None:
  """Completes or undoes an interrupted save of ``directory`` (process 0 only).

  Only siblings that save_model marked as its own are moved or deleted (see above).
  """
  saving, previous = _beside(directory, "saving"), _beside(directory, "previous")
  _unmark(directory)   # killed after marking D to move it aside, or after the new one came in
  current = _current_copy(directory)
  if current is not None and current != directory and not (
      directory.is_dir() and any(directory.iterdir())):
    _rename(current, directory)   # replaces an empty directory, never anything else
    _unmark(directory)
  if _ours(previous) and (_is_model(directory) or not _is_model(previous)):
    _remove(previous)
  if _ours(saving):
    _remove(saving)


def _key(k) -> str:
  """One step of a pytree path as orbax names it (a dict key, field name or index)."""
  for attr in ("key", "name", "idx"):
    if hasattr(k, attr):
      return str(getattr(k, attr))
  return str(k)


def _flat_shapes(tree) -> dict[str, tuple[int, ...]]:
  """``{"params/conv/kernel": shape}`` for every leaf: arrays, ShapeDtypeStructs or
  orbax's ArrayMetadata alike (dataclass fields and NamedTuples named as orbax
  stores them, as dict keys)."""
  def shape(leaf):
    dtype = getattr(leaf, "dtype", None)
    if dtype is not None and jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key):
      return tuple(jax.eval_shape(jax.random.key_data, leaf).shape)   # stored as key data
    return tuple(np.shape(leaf))
  return {"/".join(_key(k) for k in path): shape(leaf)
          for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


def _template_difference(stored, template) -> str | None:
  """Names the first path whose presence or shape differs between a stored pytree
  (orbax metadata) and a restore template, or ``None``."""
  a, b = _flat_shapes(stored), _flat_shapes(template)
  for path, want in b.items():
    if path not in a:
      return f"{path!r} (shape {want}) is in the template but not in the checkpoint"
    if a[path] != want:
      return f"{path!r} is saved with shape {a[path]} but the template has {want}"
  for path, have in a.items():
    if path not in b:
      return f"{path!r} (shape {have}) is in the checkpoint but not in the template"
  return None


def _variables_difference(stored, expected, *, given: bool = False) -> str | None:
  """Names the first node whose variables differ from those a spec expects.

  ``stored`` is what was saved (or, with ``given``, the variables passed to
  :func:`save_model`); ``expected`` holds the spec's shapes.
  """
  flat = _flat_shapes

  def node(path):   # "params/layer1/0/conv1/kernel" -> "layer1/0/conv1"
    return "/".join(path.split("/")[1:-1]) or path

  a, b = flat(stored), flat(expected)
  for path, want in b.items():
    if path not in a:
      return (f"node {node(path)!r} has no {path!r} in the variables (shape {want} expected)"
              if given else f"node {node(path)!r} has no saved {path!r} (shape {want} expected)")
    if a[path] != want:
      return (f"node {node(path)!r}: {path!r} has shape {a[path]} in the variables but the "
              f"spec needs {want}" if given else
              f"node {node(path)!r}: {path!r} is saved with shape {a[path]} but spec.json needs "
              f"{want}")
  for path, have in a.items():
    if path not in b:
      return (f"node {node(path)!r}: {path!r} (shape {have}) is in the variables but the spec "
              f"has no such variable" if given else
              f"node {node(path)!r}: {path!r} (shape {have}) is saved but spec.json has no such "
              f"variable")
  return None


def _spec_shapes(spec: Spec):
  """The variables :func:`jaxdepth.network.init` makes for ``spec``, as shapes only."""
  return jax.eval_shape(lambda k: network.init(spec, k), jax.random.key(0))


def _without_empty(tree):
  """``tree`` without the collections and sub-dicts that hold no arrays.

  A train state of a BatchNorm-free model holds ``"batch_stats": {}``; saved as is, it
  would give the stored tree an entry that the spec's variables (what :func:`load_model`
  restores into) do not have.
  """
  if not isinstance(tree, Mapping):
    return tree
  return {k: _without_empty(v) for k, v in tree.items() if jax.tree.leaves(v)}


def _restore_target(target, stored):
  """``target`` plus the entries of ``stored`` (orbax metadata) that hold no arrays.

  Models saved before :func:`save_model` dropped empty entries may hold such an entry
  (``"batch_stats": {}``), and orbax restores only into a tree of the stored structure.
  """
  if not hasattr(stored, "items") or not isinstance(target, Mapping):
    return target
  out = dict(target)
  for k, v in stored.items():
    if k in out:
      out[k] = _restore_target(out[k], v)
    elif not jax.tree.leaves(v):
      out[k] = v
  return out


def save_model(directory: str | os.PathLike, spec: Spec, variables, *,
               overwrite: bool = False) -> pathlib.Path:
  """Saves a model as ``directory/spec.json`` + ``directory/variables`` (orbax), sealed.

  The model is written beside (``<directory>.saving``), sealed with a checksum
  manifest (:mod:`jaxdepth.integrity`) and renamed into place, the old one moved
  aside to ``<directory>.previous`` meanwhile, so a process killed at any point
  leaves either the previous model or the new one loadable. Those two names are
  save_model's own: a file or directory of yours by either name is never touched
  (the save is refused instead).

  Args:
    directory: the model directory (created).
    spec: the architecture.
    variables: ``{"params": ..., "batch_stats": ...}``, as :func:`jaxdepth.network.init`
      makes them for ``spec`` (checked before anything is written). Entries that hold no
      arrays (the ``"batch_stats": {}`` of a BatchNorm-free model) are not saved.
    overwrite: replace a model already saved there.

  Returns:
    The directory.

  Raises:
    SpecMismatchError: the variables do not fit ``spec`` (the node is named).
    NotADirectoryError: ``directory`` is a file.
    FileExistsError: a model is there and ``overwrite`` is false, the directory
      holds other files than a saved model (never replaced), or something that
      save_model did not write is named ``<directory>.saving`` or ``<directory>.previous``.
  """
  check_spec(spec, "save_model(directory, spec, variables)")
  directory = pathlib.Path(directory).absolute()
  diff = _variables_difference(variables, _spec_shapes(spec), given=True)
  if diff is not None:
    raise SpecMismatchError(
        f"cannot save the model as {directory}: the variables do not fit spec {spec.name!r}: "
        f"{diff}. Nothing was written. Pass the variables made for this spec (by "
        f"jaxdepth.init, or returned with it by a method), or the spec they were made for.")
  _refuse_what_is_in_the_way(directory)
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
  variables = _without_empty(variables)
  saving, previous = _beside(directory, "saving"), _beside(directory, "previous")
  if main:
    saving.mkdir(parents=True)
    (saving / _MARK).mkdir()
  _sync("jaxdepth_save_model_mkdir")
  if jax.process_count() > 1:   # host values: every process calls, orbax writes them once
    variables = jax.tree.map(np.asarray, jax.device_get(variables))
  with _ctrl_c_held(), ocp.StandardCheckpointer() as ckptr:   # no orbax thread left half-way
    ckptr.save(saving / "variables", variables, force=True)
  _sync("jaxdepth_save_model_written")
  if main:
    (saving / "spec.json").write_text(spec.to_json(indent=1))
    integrity.write_manifest(saving)
    aside = directory.exists()
    if aside:
      (directory / _MARK).mkdir(exist_ok=True)
      _rename(directory, previous)
    _rename(saving, directory)
    _unmark(directory)
    if aside:
      _remove(previous)
  _sync("jaxdepth_save_model_done")
  return directory


def _unreadable_variables(source: pathlib.Path) -> str | None:
  """Says which part of ``source/variables`` is missing or cut short, else ``None``.

  Looked at before orbax reads the variables (orbax reports a missing file as
  variables that do not fit, among tracebacks from its closed event loop): the
  directory must be there, and every ``variables/`` file that the checksum manifest
  lists must be there with the size it was written with. The bytes themselves are
  compared only when loading with ``verify``.
  """
  variables = source / "variables"
  if not variables.is_dir():
    return ("its variables/ directory is missing" if not variables.exists() else
            "variables is not a directory")
  try:
    listed = json.loads((source / integrity.MANIFEST).read_bytes())["files"]
    sizes = {name: int(e["size"]) for name, e in listed.items()
             if name.startswith("variables/")}
  except (OSError, ValueError, KeyError, TypeError, AttributeError):
    return None   # no manifest (an older jaxdepth) or a garbled one: orbax finds out
  for name, size in sorted(sizes.items()):
    path = source / name
    if not path.is_file():
      return f"{name} is missing"
    have = path.stat().st_size
    if have != size:
      return (f"{name} has {have} bytes where {size} were written "
              + ("(shorter than written: truncated or replaced)" if have < size else
                 "(overwritten)"))
  return None


def _first_words(e: BaseException, limit: int = 200) -> str:
  """``Type: first line`` of an orbax error, without TensorStore's spec dump after it."""
  lines = str(e).strip().splitlines()
  words = lines[0].split(" See full TensorStore details")[0].rstrip(" .") if lines else ""
  words = words if len(words) <= limit else words[:limit - 3] + "..."
  return f"{type(e).__name__}: {words}" if words else type(e).__name__


def _damaged_variables(source: pathlib.Path, problem: str) -> DamagedModelError:
  return DamagedModelError(
      f"the saved variables of the model in {source} are missing or damaged: {problem}. "
      f"Save the model again, or load it from the run that made it.")


def load_spec(directory: str | os.PathLike, *, verify: bool = True) -> Spec:
  """The spec of a model written by :func:`save_model`, its files checked as
  :func:`load_model` checks them, without reading the variables.

  It touches only this host's files (no orbax, no collective): in a multi-process
  run, where each process checks its own inputs before they agree to go on, a
  process may refuse while another reads this.

  Raises:
    FileNotFoundError, DamagedModelError: as :func:`load_model`.
  """
  return _checked_model(directory, verify)[1]


def _checked_model(directory, verify: bool) -> tuple[pathlib.Path, Spec]:
  """The current copy of the model saved in ``directory``, checked, and its spec."""
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
          f"the model in {source} is damaged: {problem}. Save the model again, or load it from "
          f"the run that made it. To read it unchecked anyway, from Python only: "
          f"load_model(..., verify=False) (a model saved by an older jaxdepth has no "
          f"checksums); the command line always checks and has no option to skip it.")
  problem = _unreadable_variables(source)
  if problem is not None:
    raise _damaged_variables(source, problem)
  return source, Spec.from_json((source / "spec.json").read_text())


def load_model(directory: str | os.PathLike, *, sharding: jax.sharding.Sharding | None = None,
               verify: bool = True) -> tuple[Spec, dict[str, Any]]:
  """Loads a model written by :func:`save_model`.

  If a save into ``directory`` was interrupted, the newest complete copy is read
  (the sealed new one, else the previous one).

  Args:
    directory: the model directory.
    sharding: where the arrays go (default: the first local device).
    verify: check the files against the checksums saved with them first. Without,
      a missing ``variables/`` directory, or a file of it missing or of another size
      than written, is still refused (orbax cannot read them).

  Returns:
    ``(spec, variables)``, ready for :func:`jaxdepth.forward`.

  Raises:
    FileNotFoundError: no model is saved there (the message names the saved models
      in its subdirectories: a run's ``chosen/``, ``chosen_merged/``).
    DamagedModelError: the files do not match their checksums, or the saved
      variables are missing or unreadable.
    SpecMismatchError: the variables do not fit the saved spec (the node is named).
  """
  source, spec = _checked_model(directory, verify)
  sharding = sharding or jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  target = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding),
                        _spec_shapes(spec))
  with ocp.StandardCheckpointer() as ckptr:
    try:
      stored = ckptr.metadata(source / "variables").item_metadata
    except Exception as e:  # pylint: disable=broad-except  # orbax lets parse errors through
      raise _damaged_variables(
          source, f"orbax could not read their metadata ({type(e).__name__}: {e})") from e
    if stored is None:   # orbax logged why and went on
      raise _damaged_variables(source, "orbax could not read their metadata "
                                       "(variables/_METADATA or the files it names)")
    diff = _variables_difference(stored, target)
    if diff is not None:
      raise SpecMismatchError(f"the variables in {source} do not fit its spec.json: {diff}")
    try:
      variables = ckptr.restore(source / "variables", _restore_target(target, stored))
    except Exception as e:  # pylint: disable=broad-except  # orbax/TensorStore read errors
      # Without a manifest (an older jaxdepth) a file cut short is found only here.
      raise _damaged_variables(source, f"orbax could not read them ({_first_words(e)})") from e
  return spec, _without_empty(variables)
