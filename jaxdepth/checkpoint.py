"""Checkpoints of a run and saved models, on orbax.

Two things are stored:

* **Run checkpoints** (:class:`Checkpointer`, over ``orbax.checkpoint.CheckpointManager``).
  Each step directory holds the items ``spec`` (the architecture as JSON),
  ``state`` (the train state: step, params, batch_stats, optimizer state, rng),
  optionally ``extra`` (an arbitrary pytree such as a method's masks or
  accumulated statistics) and ``meta`` (an arbitrary JSON dict). Orbax writes a step into a temporary
  directory and renames it when complete, so a run killed at any point leaves the
  previous checkpoints intact and never a half-written one. Restoring checks the
  stored spec against the expected one first and refuses another architecture
  with a :class:`SpecMismatchError` that names the node that differs.
* **Saved models** (:func:`save_model`, :func:`load_model`): ``spec.json`` beside an
  orbax checkpoint of the variables. ``load_model(dir)`` rebuilds both with no
  Python beyond jaxdepth, which is how a shallow model produced by a method is
  shipped.

Every process of a multi-host run must call :meth:`Checkpointer.save` and
:meth:`Checkpointer.restore` (orbax coordinates the writes).
"""
from __future__ import annotations

import os
import pathlib
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

from jaxdepth import network
from jaxdepth.spec import Spec

__all__ = ["Checkpointer", "Restored", "SpecMismatchError", "NonFiniteStateError",
           "spec_difference", "save_model", "load_model", "all_finite"]


class SpecMismatchError(ValueError):
  """A checkpoint holds another architecture than the one expected."""


class NonFiniteStateError(FloatingPointError):
  """Refused to save parameters holding NaN or infinity."""


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

  Example::

      with Checkpointer(workdir / "checkpoints", spec) as ckpt:
        if ckpt.latest_step() is not None:
          state, extra, meta = ckpt.restore(state, extra=extra)[1:]
        ...
        ckpt.save(step, state, extra=extra, meta={"epoch": 3})

  Args:
    directory: where the step directories go (created if needed).
    spec: the architecture every checkpoint here must hold.
    keep: how many of the latest checkpoints to keep.
    async_save: write in a background thread (the arrays are copied first, so the
      caller may go on training, and :meth:`wait` or :meth:`close` joins).
  """

  def __init__(self, directory: str | os.PathLike, spec: Spec, *, keep: int = 2,
               async_save: bool = True):
    self.directory = pathlib.Path(directory).absolute()
    self.spec = spec
    options = ocp.CheckpointManagerOptions(
        preservation_policy=ocp.checkpoint_managers.LatestN(keep),
        enable_async_checkpointing=async_save,
        cleanup_tmp_directories=True)
    self._manager = ocp.CheckpointManager(self.directory, options=options)

  def __enter__(self) -> Checkpointer:
    return self

  def __exit__(self, *exc):
    self.close()

  def latest_step(self) -> int | None:
    """The step of the newest complete checkpoint, or ``None``."""
    return self._manager.latest_step()

  def all_steps(self) -> list[int]:
    return list(self._manager.all_steps())

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
      raise NonFiniteStateError(
          f"refusing to save checkpoint {step} in {self.directory}: the state holds NaN or "
          f"infinite values; the latest good checkpoint is {self.latest_step()}")
    items = {"spec": ocp.args.JsonSave(self.spec.to_dict()),
             "state": ocp.args.StandardSave(state),
             "meta": ocp.args.JsonSave(dict(meta or {}))}
    if extra is not None:
      items["extra"] = ocp.args.StandardSave(extra)
    self._manager.save(int(step), args=ocp.args.Composite(**items))

  def stored_spec(self, step: int | None = None) -> Spec:
    """The architecture saved in checkpoint ``step`` (default: the latest)."""
    step = self._step(step)
    out = self._manager.restore(step, args=ocp.args.Composite(spec=ocp.args.JsonRestore()))
    return Spec.from_dict(out.spec)

  def meta(self, step: int | None = None) -> dict[str, Any]:
    """The JSON dict saved with checkpoint ``step`` (default: the latest)."""
    step = self._step(step)
    return self._manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore())).meta

  def restore(self, state, *, extra=None, step: int | None = None) -> Restored:
    """Reads checkpoint ``step`` (default: the latest) after checking its spec.

    Args:
      state: a template of the train state: arrays or ``jax.ShapeDtypeStruct``s
        whose shapes, dtypes and shardings the restored leaves take.
      extra: a template of the extra pytree, or ``None`` to skip it.
      step: which checkpoint.

    Returns:
      A :class:`Restored`.

    Raises:
      FileNotFoundError: there is no checkpoint.
      SpecMismatchError: the checkpoint holds another architecture.
    """
    step = self._step(step)
    _check_spec(self.stored_spec(step), self.spec, f"checkpoint {step} in {self.directory}")
    items = {"state": ocp.args.StandardRestore(_abstract(state)),
             "meta": ocp.args.JsonRestore()}
    if extra is not None:
      items["extra"] = ocp.args.StandardRestore(_abstract(extra))
    out = self._manager.restore(step, args=ocp.args.Composite(**items))
    return Restored(step, out.state, out.extra if extra is not None else None,
                    dict(out.meta or {}))

  def wait(self) -> None:
    """Blocks until pending asynchronous saves are written."""
    self._manager.wait_until_finished()

  def close(self) -> None:
    self._manager.wait_until_finished()
    self._manager.close()

  def _step(self, step):
    if step is None:
      step = self.latest_step()
    if step is None:
      raise FileNotFoundError(f"no checkpoint in {self.directory}")
    return step


# ----------------------------------------------------------------------- models


def save_model(directory: str | os.PathLike, spec: Spec, variables, *,
               overwrite: bool = False) -> pathlib.Path:
  """Saves a model as ``directory/spec.json`` + ``directory/variables`` (orbax).

  Args:
    directory: the model directory (created).
    spec: the architecture.
    variables: ``{"params": ..., "batch_stats": ...}``.
    overwrite: replace a model already saved there.

  Returns:
    The directory.
  """
  directory = pathlib.Path(directory).absolute()
  if (directory / "spec.json").exists() and not overwrite:
    raise FileExistsError(f"a model is already saved in {directory}; pass overwrite=True "
                          f"or choose another directory")
  directory.mkdir(parents=True, exist_ok=True)
  if jax.process_count() > 1:   # host values: every process calls, orbax writes them once
    variables = jax.tree.map(np.asarray, jax.device_get(dict(variables)))
  with ocp.StandardCheckpointer() as ckptr:
    ckptr.save(directory / "variables", dict(variables), force=True)
  if jax.process_index() == 0:
    tmp = directory / "spec.json.tmp"
    tmp.write_text(spec.to_json(indent=1))
    tmp.replace(directory / "spec.json")
  return directory


def load_model(directory: str | os.PathLike, *, sharding: jax.sharding.Sharding | None = None
               ) -> tuple[Spec, dict[str, Any]]:
  """Loads a model written by :func:`save_model`.

  Args:
    directory: the model directory.
    sharding: where the arrays go (default: the first local device).

  Returns:
    ``(spec, variables)``, ready for :func:`jaxdepth.forward`.
  """
  directory = pathlib.Path(directory).absolute()
  if not (directory / "spec.json").exists():
    raise FileNotFoundError(f"no saved model in {directory} (spec.json is missing)")
  spec = Spec.from_json((directory / "spec.json").read_text())
  shapes = jax.eval_shape(lambda k: network.init(spec, k), jax.random.key(0))
  sharding = sharding or jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  target = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding),
                        shapes)
  with ocp.StandardCheckpointer() as ckptr:
    try:
      variables = ckptr.restore(directory / "variables", target)
    except ValueError as e:
      raise SpecMismatchError(f"the variables in {directory} do not fit its spec.json: {e}"
                              ) from None
  return spec, dict(variables)

