"""Checkpoint integrity: every kind of file a checkpoint holds, damaged three ways.

A tiny CNN is fitted on digits once with checkpoints every 8 steps; each case
copies that work directory, damages one file of its latest checkpoint (a flipped
bit, a truncation, garbled JSON) and fits again: the run must report the damaged
checkpoint by name, resume from the intact one before it and end bit-identical to
an uninterrupted run. With no intact checkpoint left it must refuse, changing
nothing. A checkpoint left unsealed by a killed run is an unfinished save, dropped.
"""
import hashlib
import json
import logging
import os
import pathlib
import re
import shutil
import signal

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdepth import checkpoint, data, integrity, network, optim, training
from jaxdepth import spec as S

SPEC = S.Spec((8, 8, 1), (
    S.Conv("conv", features=4, kernel=3, padding=1), S.BatchNorm("bn"), S.Act("relu"),
    S.Pool("pool", "max", window=2), S.Flatten("flatten"), S.Dense("fc", features=10)),
    name="tiny")
RECIPE = optim.Recipe(epochs=2, batch_size=64, optimizer="sgd", lr=0.05, momentum=0.9,
                      milestones=(1,))
EVERY = 8


def _fit(dataset, workdir=None):
  return training.fit(SPEC, network.init(SPEC, jax.random.key(0)), dataset, RECIPE, seed=1,
                      progress=False, workdir=workdir,
                      checkpoint_every_steps=EVERY if workdir else None)


@pytest.fixture(scope="module")
def digits():
  return data.load("digits")


@pytest.fixture(scope="module")
def reference(digits):
  """An uninterrupted run, nothing written."""
  return _fit(digits)


@pytest.fixture(scope="module")
def finished(digits, tmp_path_factory):
  """The work directory of the same run, with its checkpoints."""
  workdir = tmp_path_factory.mktemp("finished")
  _fit(digits, workdir)
  return workdir


def _same(a, b):
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def _steps(workdir):
  return sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit())


def _kinds(step_dir: pathlib.Path) -> dict[str, str]:
  """One file per kind in a checkpoint: ``{kind: relative path}``, kinds named by path
  with orbax's content-hash file names generalised."""
  out = {}
  for p in sorted(step_dir.rglob("*")):
    if p.is_file():
      rel = p.relative_to(step_dir).as_posix()
      out.setdefault(re.sub(r"[0-9a-f]{16,}", "<hash>", rel), rel)
  return out


def _is_json(path):
  try:
    json.loads(path.read_bytes())
    return True
  except ValueError:
    return False


def _damage(path: pathlib.Path, how: str):
  raw = path.read_bytes()
  if how == "flip":      # one bit, in the middle
    i = len(raw) // 2
    raw = raw[:i] + bytes([raw[i] ^ 0x10]) + raw[i + 1:]
  elif how == "truncate":
    raw = raw[:len(raw) // 2]
  else:                  # garbled: still text of the same length, no longer the JSON written
    raw = (b'{"garbled": [' + b" " * len(raw))[:len(raw)]
  path.write_bytes(raw)


def _resumed_warnings(digits, reference, workdir, caplog) -> list[str]:
  """Fits again in ``workdir``, which must end bit-identical to ``reference``; returns the
  warnings jaxdepth logged meanwhile."""
  caplog.clear()
  with caplog.at_level(logging.WARNING, logger="jaxdepth"):
    resumed = _fit(digits, workdir)
  _same(reference.variables, resumed.variables)
  assert [r["train_loss"] for r in resumed.history] == [r["train_loss"] for r in reference.history]
  return [r.getMessage() for r in caplog.records if r.name == "jaxdepth"]


def _digest(directory):
  return {p.relative_to(directory).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
          for p in sorted(directory.rglob("*")) if p.is_file()}


def test_checkpoints_are_sealed_and_the_kinds_are_many(finished):
  steps = _steps(finished)
  total = RECIPE.epochs * data.load("digits").train.num_batches(64, drop_remainder=True)
  assert steps == [total - EVERY, total]     # keep=2 of 8, 16, 24, 32
  for s in steps:
    assert integrity.problem(finished / "checkpoints" / str(s)) is None
  kinds = _kinds(finished / "checkpoints" / str(steps[-1]))
  # spec, meta (JSON items), state and extra (array items), orbax's and our metadata
  assert {"checksums.json", "spec/metadata", "meta/metadata", "_CHECKPOINT_METADATA"} <= set(kinds)
  assert any(k.startswith("state/") for k in kinds) and any(k.startswith("extra/") for k in kinds)


@pytest.mark.parametrize("how", ["flip", "truncate", "garble"])
def test_a_damaged_latest_checkpoint_is_reported_and_the_run_ends_bit_identical(
    digits, reference, finished, tmp_path, caplog, how):
  latest = _steps(finished)[-1]
  kinds = _kinds(finished / "checkpoints" / str(latest))
  tried = 0
  for kind, rel in kinds.items():
    if how == "garble" and not _is_json(finished / "checkpoints" / str(latest) / rel):
      continue
    workdir = tmp_path / f"{tried}"
    shutil.copytree(finished, workdir)
    ckdir = workdir / "checkpoints"
    _damage(ckdir / str(latest) / rel, how)
    warned = _resumed_warnings(digits, reference, workdir, caplog)
    assert len(warned) == 1, (kind, warned)
    assert re.search(rf"checkpoint {latest} in .*checkpoints is damaged: .*resuming from "
                     rf"checkpoint {latest - EVERY}", warned[0]), (kind, warned)
    # The damaged copy is kept aside, the rewritten latest and the one before are intact.
    assert _digest(ckdir / f"damaged-{latest}") != _digest(finished / "checkpoints" / str(latest))
    assert _steps(workdir) == [latest - EVERY, latest]
    for s in _steps(workdir):
      assert integrity.problem(ckdir / str(s)) is None
    tried += 1
  assert tried >= (3 if how == "garble" else 10)


def test_with_no_intact_checkpoint_left_the_run_refuses_and_changes_nothing(
    digits, finished, tmp_path):
  workdir = tmp_path / "run"
  shutil.copytree(finished, workdir)
  ckdir = workdir / "checkpoints"
  for s in _steps(workdir):
    _damage(ckdir / str(s) / "state" / "_METADATA", "flip")
  before = _digest(workdir)
  with pytest.raises(checkpoint.DamagedCheckpointError,
                     match=rf"no intact checkpoint is left in {re.escape(str(ckdir))} "
                           rf"\(checkpoint 40: state/_METADATA does not match.*checkpoint 32: "
                           rf".*Nothing was changed.*move it away"):
    _fit(digits, workdir)
  assert _digest(workdir) == before


@pytest.mark.parametrize("unsealed", ["latest", "every"])
def test_an_unsealed_checkpoint_is_an_unfinished_save_and_the_run_ends_bit_identical(
    digits, reference, finished, tmp_path, caplog, unsealed):
  """A run killed after orbax wrote a checkpoint and before its seal (checksums.json, written
  last; a half-written checksums.json.tmp may be there) resumes from the checkpoint before it,
  or, when that was the only one, starts afresh: no refusal, nothing moved aside as damaged."""
  workdir = tmp_path / "run"
  shutil.copytree(finished, workdir)
  ckdir = workdir / "checkpoints"
  steps = _steps(workdir)
  for s in (steps[-1:] if unsealed == "latest" else steps):
    manifest = ckdir / str(s) / integrity.MANIFEST
    manifest.rename(manifest.with_name(integrity.MANIFEST + ".tmp"))
  warned = _resumed_warnings(digits, reference, workdir, caplog)
  dropped = steps[-1:] if unsealed == "latest" else steps
  assert len(warned) == len(dropped) and all(
      re.search(rf"checkpoint {s} in .*checkpoints was not finished when its run stopped", w)
      for s, w in zip(dropped, warned)), warned
  assert not [p for p in ckdir.iterdir() if p.name.startswith("damaged")]
  assert _steps(workdir) == steps
  for s in _steps(workdir):
    assert integrity.problem(ckdir / str(s)) is None


def _state(seed=0):
  tx = optim.make_optimizer(RECIPE, 5)
  return training.TrainState.create(network.init(SPEC, jax.random.key(seed)), tx, seed)


def test_the_nan_guard_names_only_an_intact_checkpoint_and_keep_spares_it(tmp_path):
  good = _state()
  with checkpoint.Checkpointer(tmp_path, SPEC, keep=2, async_save=False) as ckpt:
    ckpt.save(1, good)
    ckpt.save(2, good)
  _damage(tmp_path / "2" / "meta" / "metadata", "garble")
  bad = good.replace(params=jax.tree.map(lambda x: x * jnp.nan, good.params))
  with checkpoint.Checkpointer(tmp_path, SPEC, keep=2) as ckpt:
    assert ckpt.latest_step() == 2 and ckpt.latest_intact_step() == 1
    with pytest.raises(checkpoint.NonFiniteStateError, match="latest good checkpoint is 1$"):
      ckpt.save(3, bad)
    with pytest.raises(checkpoint.DamagedCheckpointError, match=r"checkpoint 2 .* is damaged: "
                       r"meta/metadata does not match its checksum"):
      ckpt.meta(2)
    # Saving 3 keeps 2 and 3 and deletes 1 only because 3 is known intact.
    ckpt.save(3, good)
    ckpt.wait()
    assert ckpt.all_steps() == [2, 3]
    out = ckpt.restore(_state(seed=1))        # 3 is intact: nothing is moved aside
    assert out.step == 3 and (tmp_path / "2").is_dir()
  with checkpoint.Checkpointer(tmp_path, SPEC, keep=1) as ckpt:
    ckpt.save(4, good)
    ckpt.wait()
    assert ckpt.all_steps() == [4] and ckpt.latest_intact_step() == 4


@pytest.mark.parametrize("async_save", [False, True])
def test_ctrl_c_during_a_save_comes_after_the_checkpoint_is_handed_over(tmp_path, async_save):
  """Ctrl-C (SIGINT) arriving while orbax takes a checkpoint is held until the save is handed
  over (sealed, when saving synchronously), then raised: orbax's threads are never cut off
  half-way, which printed their tracebacks after the command's "Interrupted" paragraph."""
  state = _state()
  with checkpoint.Checkpointer(tmp_path, SPEC, async_save=async_save) as ckpt:
    save = ckpt._manager.save

    def interrupted_save(*args, **kwargs):
      os.kill(os.getpid(), signal.SIGINT)      # Ctrl-C, delivered before orbax starts
      return save(*args, **kwargs)
    ckpt._manager.save = interrupted_save
    with pytest.raises(KeyboardInterrupt):
      ckpt.save(1, state)
    ckpt.wait()
  assert integrity.problem(tmp_path / "1") is None
  assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
