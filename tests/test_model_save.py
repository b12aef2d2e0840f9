"""Saved models: atomic overwrite (killed at every step of a save, in-process and by
SIGKILL), checksums, and load errors that name the node."""
import os
import random
import re
import signal
import subprocess
import sys
import textwrap
import time

import jax
import numpy as np
import pytest

from jaxdepth import checkpoint, integrity, network
from jaxdepth import spec as S

SPEC = S.Spec((6, 6, 2), (
    S.Conv("conv", features=4, kernel=3, padding=1), S.BatchNorm("bn"), S.Act("relu"),
    S.Pool("pool", "global_avg"), S.Dense("fc", features=3)), name="small")


def _variables(seed):
  return network.init(SPEC, jax.random.key(seed))


def _which(directory, candidates) -> int:
  """Which of ``candidates`` the model saved in ``directory`` loads as (fails if none)."""
  spec, loaded = checkpoint.load_model(directory)
  assert spec == SPEC
  for i, want in enumerate(candidates):
    if all(np.array_equal(np.asarray(a), np.asarray(b))
           for a, b in zip(jax.tree.leaves(want), jax.tree.leaves(loaded), strict=True)):
      return i
  raise AssertionError(f"{directory} loads as neither the old nor the new model")


def _leftovers(directory):
  return sorted(p.name for p in directory.parent.iterdir() if p.name.startswith(directory.name + "."))


class _Killed(BaseException):
  pass


def test_a_save_stopped_at_every_step_leaves_the_old_or_the_new_model(tmp_path, monkeypatch):
  old, new, third = _variables(0), _variables(1), _variables(2)
  ops = {"rename": checkpoint._rename, "remove": checkpoint._remove,
         "seal": integrity.write_manifest}
  counter = {"left": None, "seen": []}

  def stop_before(name):
    def op(*args):
      if counter["left"] == 0:
        raise _Killed(name)
      if counter["left"] is not None:
        counter["left"] -= 1
      counter["seen"].append(name)
      return ops[name](*args)
    return op

  monkeypatch.setattr(checkpoint, "_rename", stop_before("rename"))
  monkeypatch.setattr(checkpoint, "_remove", stop_before("remove"))
  monkeypatch.setattr(integrity, "write_manifest", stop_before("seal"))
  outcomes, missing = [], 0
  for k in range(100):
    directory = tmp_path / f"k{k}" / "model"
    checkpoint.save_model(directory, SPEC, old)
    counter.update(left=k, seen=[])
    try:
      checkpoint.save_model(directory, SPEC, new, overwrite=True)
      completed = True
    except _Killed:
      completed = False
    counter["left"] = None
    missing += not directory.exists()
    outcomes.append(_which(directory, [old, new]))
    # The next save completes or undoes the interrupted one first, and leaves nothing beside.
    checkpoint.save_model(directory, SPEC, third, overwrite=True)
    assert _which(directory, [third]) == 0 and _leftovers(directory) == []
    if completed:
      break
  assert completed and k >= 4, counter["seen"]   # put back, seal, aside, in, delete
  # Once the new model has been renamed in, it stays; before, the old one loads.
  assert outcomes == sorted(outcomes) and outcomes[0] == 0 and outcomes[-1] == 1
  assert missing >= 1   # stopped between "old aside" and "new in": read from the sealed copy


_CHILD = textwrap.dedent("""
    import sys
    import jax
    from jaxdepth import checkpoint, network
    from jaxdepth import spec as S
    spec = S.Spec.from_json(sys.argv[2])
    versions = [network.init(spec, jax.random.key(i)) for i in (0, 1)]
    for i in range(10**6):
      checkpoint.save_model(sys.argv[1], spec, versions[i % 2], overwrite=True)
      print(i, flush=True)
""")


def test_a_save_killed_by_sigkill_leaves_a_loadable_model(tmp_path):
  directory = tmp_path / "model"
  versions = [_variables(0), _variables(1)]
  rng = random.Random(0)
  for attempt in range(3):
    child = subprocess.Popen([sys.executable, "-c", _CHILD, str(directory), SPEC.to_json()],
                             stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                             env=dict(os.environ, JAX_PLATFORMS="cpu"))
    try:
      child.stdout.readline()        # one save completed: the clock starts now
      time.sleep(rng.uniform(0.0, 1.5))
    finally:
      child.send_signal(signal.SIGKILL)
      child.wait()
    _which(directory, versions)      # the old or the new model, whole
  checkpoint.save_model(directory, SPEC, _variables(2), overwrite=True)
  assert _which(directory, [_variables(2)]) == 0 and _leftovers(directory) == []


def test_a_damaged_model_is_refused_naming_the_file(tmp_path):
  directory = checkpoint.save_model(tmp_path / "model", SPEC, _variables(0))
  data_file = max((p for p in (directory / "variables").rglob("*") if p.is_file()),
                  key=lambda p: p.stat().st_size)
  raw = bytearray(data_file.read_bytes())
  raw[len(raw) // 2] ^= 1
  data_file.write_bytes(bytes(raw))
  rel = data_file.relative_to(directory).as_posix()
  with pytest.raises(checkpoint.DamagedModelError,
                     match=rf"damaged: {rel} does not match its checksum.*verify=False"):
    checkpoint.load_model(directory)


def test_load_spec_checks_the_files_and_reads_no_variables(tmp_path, monkeypatch):
  # The command line's per-process checks read a saved model's spec: through orbax, a
  # process refusing first left the others waiting in a collective (a multi-process hang).
  directory = checkpoint.save_model(tmp_path / "model", SPEC, _variables(0))

  def no_orbax(*args, **kwargs):
    raise AssertionError("orbax used")

  monkeypatch.setattr(checkpoint.ocp, "StandardCheckpointer", no_orbax)
  assert checkpoint.load_spec(directory) == SPEC
  data_file = max((p for p in (directory / "variables").rglob("*") if p.is_file()),
                  key=lambda p: p.stat().st_size)
  data_file.write_bytes(data_file.read_bytes()[:-1])
  with pytest.raises(checkpoint.DamagedModelError, match="damaged"):
    checkpoint.load_spec(directory)
  with pytest.raises(FileNotFoundError, match="no saved model in"):
    checkpoint.load_spec(tmp_path)


def test_variables_that_do_not_fit_the_spec_name_the_node(tmp_path):
  directory = checkpoint.save_model(tmp_path / "model", SPEC, _variables(0))
  wider = S.replace_node(SPEC, "conv", S.Conv("conv", features=5, kernel=3, padding=1))
  wider = S.replace_node(wider, "bn", S.BatchNorm("bn"))
  (directory / "spec.json").write_text(wider.to_json())
  with pytest.raises(checkpoint.SpecMismatchError,
                     match=r"do not fit its spec.json: node 'bn': 'batch_stats/bn/mean' is saved "
                           r"with shape \(4,\) but spec.json needs \(5,\)"):
    checkpoint.load_model(directory, verify=False)
  deeper = S.replace_node(SPEC, "fc", (S.Dense("fc", features=3), S.Dense("fc2", features=3)))
  (directory / "spec.json").write_text(deeper.to_json())
  with pytest.raises(checkpoint.SpecMismatchError, match=r"node 'fc2' has no saved "
                                                         r"'params/fc2/bias'"):
    checkpoint.load_model(directory, verify=False)


def test_save_model_never_replaces_a_directory_of_other_files(tmp_path):
  (tmp_path / "notes.txt").write_text("mine")
  with pytest.raises(FileExistsError, match=r"other files than a saved model \(\['notes.txt'\]"):
    checkpoint.save_model(tmp_path, SPEC, _variables(0), overwrite=True)
  assert (tmp_path / "notes.txt").read_text() == "mine"


def _snapshot(directory):
  """Every file below ``directory`` with its bytes (to check it was left alone)."""
  return {p.relative_to(directory).as_posix(): p.read_bytes()
          for p in sorted(directory.rglob("*")) if p.is_file()}


def _users_directory(path):
  (path / "sub").mkdir(parents=True)
  (path / "notes.txt").write_text("mine")
  (path / "sub" / "results.csv").write_text("a,b\n1,2\n")
  return _snapshot(path)


@pytest.mark.parametrize("what", ["previous", "saving"])
def test_save_model_leaves_a_users_directory_named_like_its_own_siblings_alone(tmp_path, what):
  model = tmp_path / "first" / "model"             # no model saved there yet
  theirs = model.with_name(f"model.{what}")
  before = _users_directory(theirs)
  def refused(theirs):
    return (rf"{theirs} is in the way.*a directory holding \['notes.txt', 'sub'\] that "
            rf"save_model did not write.*Move {theirs} away")
  with pytest.raises(FileExistsError, match=refused(theirs)):
    checkpoint.save_model(model, SPEC, _variables(0))
  assert _snapshot(theirs) == before and not model.exists()
  model = checkpoint.save_model(tmp_path / "second" / "model", SPEC, _variables(0))
  theirs = model.with_name(f"model.{what}")
  before, saved = _users_directory(theirs), _snapshot(model)
  with pytest.raises(FileExistsError, match=refused(theirs)):
    checkpoint.save_model(model, SPEC, _variables(1), overwrite=True)
  assert _snapshot(theirs) == before and _snapshot(model) == saved


def test_a_users_own_model_named_like_the_previous_copy_is_neither_loaded_nor_moved(tmp_path):
  theirs = checkpoint.save_model(tmp_path / "model.previous", SPEC, _variables(1))
  before = _snapshot(theirs)
  with pytest.raises(FileNotFoundError,
                     match=r"no saved model in .*model \(spec.json is missing\)"):
    checkpoint.load_model(tmp_path / "model")
  with pytest.raises(FileExistsError, match=r"model.previous is in the way"):
    checkpoint.save_model(tmp_path / "model", SPEC, _variables(0), overwrite=True)
  assert _snapshot(theirs) == before and not (tmp_path / "model").exists()
  assert _which(theirs, [_variables(1)]) == 0


def test_save_model_refuses_a_file_and_leaves_it_where_it_is(tmp_path):
  target = tmp_path / "afile"
  target.write_text("x")
  with pytest.raises(NotADirectoryError, match=rf"{target}: it is a file; give a directory"):
    checkpoint.save_model(target, SPEC, _variables(0), overwrite=True)
  assert target.read_text() == "x" and sorted(p.name for p in tmp_path.iterdir()) == ["afile"]


def test_save_model_refuses_variables_of_another_architecture_before_writing(tmp_path):
  other = S.replace_node(SPEC, "conv", S.Conv("conv", features=5, kernel=3, padding=1))
  with pytest.raises(checkpoint.SpecMismatchError,
                     match=r"variables do not fit spec 'small': node 'bn': 'batch_stats/bn/mean' "
                           r"has shape \(5,\) in the variables but the spec needs \(4,\)\. "
                           r"Nothing was written"):
    checkpoint.save_model(tmp_path / "new", SPEC, network.init(other, jax.random.key(0)))
  assert not (tmp_path / "new").exists() and _leftovers(tmp_path / "new") == []
  directory = checkpoint.save_model(tmp_path / "model", SPEC, _variables(0))
  before = _snapshot(directory)
  missing = {"params": _variables(1)["params"]}   # no batch_stats
  with pytest.raises(checkpoint.SpecMismatchError,
                     match=r"node 'bn' has no 'batch_stats/bn/mean' in the variables"):
    checkpoint.save_model(directory, SPEC, missing, overwrite=True)
  assert _snapshot(directory) == before and _leftovers(directory) == []


def test_entries_holding_no_arrays_are_not_saved_and_old_models_with_them_load(tmp_path,
                                                                               monkeypatch):
  # A BatchNorm-free model's train state holds "batch_stats": {} (the spec's variables do not).
  plain = S.Spec((6, 6, 2), (S.Conv("conv", features=4, kernel=3, padding=1), S.Act("relu"),
                             S.Pool("pool", "global_avg"), S.Dense("fc", features=3)), name="plain")
  params = network.init(plain, jax.random.key(0))["params"]
  with_empties = {"params": {**params, "unused": {}}, "batch_stats": {}}
  directory = checkpoint.save_model(tmp_path / "model", plain, with_empties)
  spec, loaded = checkpoint.load_model(directory)
  assert spec == plain and jax.tree.structure(loaded) == jax.tree.structure({"params": params})
  jax.tree.map(np.testing.assert_array_equal, loaded, {"params": params})
  with monkeypatch.context() as m:   # as an older save_model wrote it: the empty entries too
    m.setattr(checkpoint, "_without_empty", lambda tree: tree)
    older = checkpoint.save_model(tmp_path / "older", plain, with_empties)
  with checkpoint.ocp.StandardCheckpointer() as ckptr:
    assert "batch_stats" in ckptr.metadata(older / "variables").item_metadata.keys()
  spec, loaded = checkpoint.load_model(older)
  assert spec == plain and jax.tree.structure(loaded) == jax.tree.structure({"params": params})
  jax.tree.map(np.testing.assert_array_equal, loaded, {"params": params})


_LOAD_UNCHECKED = textwrap.dedent("""
    import sys
    from jaxdepth import checkpoint
    try:
      checkpoint.load_model(sys.argv[1], verify=False)
    except Exception as e:
      print(type(e).__name__, e, flush=True)
""")


def test_missing_or_damaged_variables_are_reported_as_such_without_orbax_tracebacks(tmp_path):
  directory = checkpoint.save_model(tmp_path / "model", SPEC, _variables(0))
  keep = tmp_path / "variables.bak"
  (directory / "variables").rename(keep)
  advice = r"\. Save the model again, or load it from the run that made it\."
  with pytest.raises(checkpoint.DamagedModelError,
                     match=r"saved variables of the model in .*model are missing or damaged: its "
                           r"variables/ directory is missing" + advice):
    checkpoint.load_model(directory, verify=False)
  keep.rename(directory / "variables")
  data_file = max((p for p in (directory / "variables" / "d").rglob("*") if p.is_file()),
                  key=lambda p: p.stat().st_size)
  rel = data_file.relative_to(directory).as_posix()
  data_file.unlink()
  # In a process of its own: orbax's tracebacks come from its threads, up to the exit.
  child = subprocess.run([sys.executable, "-c", _LOAD_UNCHECKED, str(directory)],
                         capture_output=True, text=True, timeout=600,
                         env=dict(os.environ, JAX_PLATFORMS="cpu"))
  assert child.returncode == 0, child.stderr
  assert child.stdout.startswith("DamagedModelError the saved variables of the model in ")
  assert f"are missing or damaged: {rel} is missing. Save the model again" in child.stdout
  assert "Event loop is closed" not in child.stderr
  # A model without checksums (an older jaxdepth) whose orbax metadata is cut short.
  older = checkpoint.save_model(tmp_path / "older", SPEC, _variables(0))
  (older / integrity.MANIFEST).unlink()
  meta = older / "variables" / "_METADATA"
  meta.write_bytes(meta.read_bytes()[:40])
  with pytest.raises(checkpoint.DamagedModelError,
                     match=r"are missing or damaged: orbax could not read their metadata"):
    checkpoint.load_model(older, verify=False)


def test_an_older_model_with_a_variables_file_cut_short_is_refused_as_damaged(tmp_path):
  # No checksums (an older jaxdepth): only orbax's read finds the file cut short, and its
  # error (a bare Exception with TensorStore's whole spec) is reported in a line.
  # Wide enough that the file holding the arrays is the largest of variables/.
  wide = S.Spec((6, 6, 2), (S.Conv("conv", features=32, kernel=3, padding=1),
                            S.Pool("pool", "global_avg"), S.Dense("fc", features=3)))
  older = checkpoint.save_model(tmp_path / "older", wide, network.init(wide, jax.random.key(0)))
  (older / integrity.MANIFEST).unlink()
  data_file = max((p for p in (older / "variables").rglob("*") if p.is_file()),
                  key=lambda p: p.stat().st_size)
  assert data_file.stat().st_size > 2000
  os.truncate(data_file, 100)
  # In a process of its own: orbax's reads of the other arrays, cancelled by the failed
  # one, complain when they are collected, whenever that is.
  child = subprocess.run([sys.executable, "-c", _LOAD_UNCHECKED, str(older)],
                         capture_output=True, text=True, timeout=600,
                         env=dict(os.environ, JAX_PLATFORMS="cpu"))
  assert child.returncode == 0, child.stderr
  assert re.fullmatch(r"DamagedModelError the saved variables of the model in .*older are missing "
                      r"or damaged: orbax could not read them \(\w+: [^\n]+\)\. Save the model "
                      r"again, or load it from the run that made it\.\n", child.stdout), child.stdout
  assert "TensorStore(" not in child.stdout and len(child.stdout) < 500


def test_a_file_shorter_than_written_is_called_truncated_or_replaced(tmp_path):
  # The size alone cannot tell a cut-short file from another, smaller one copied over it.
  directory = checkpoint.save_model(tmp_path / "model", SPEC, _variables(0))
  spec_file = directory / "spec.json"
  written = spec_file.stat().st_size
  other = S.Spec((6, 6, 2), (S.Pool("pool", "global_avg"),), name="o")
  spec_file.write_text(other.to_json())
  have = spec_file.stat().st_size
  assert have < written
  with pytest.raises(checkpoint.DamagedModelError,
                     match=rf"damaged: spec.json has {have} bytes where {written} were written "
                           r"\(shorter than written: truncated or replaced\)\. Save the model"):
    checkpoint.load_model(directory)
  # Unchecked, the variables' sizes are still compared with the manifest's.
  model = checkpoint.save_model(tmp_path / "model2", SPEC, _variables(0))
  data_file = max((p for p in (model / "variables" / "d").rglob("*") if p.is_file()),
                  key=lambda p: p.stat().st_size)
  size = data_file.stat().st_size
  os.truncate(data_file, 100)
  rel = data_file.relative_to(model).as_posix()
  with pytest.raises(checkpoint.DamagedModelError,
                     match=rf"missing or damaged: {rel} has 100 bytes where {size} were written "
                           r"\(shorter than written: truncated or replaced\)\. Save the model"):
    checkpoint.load_model(model, verify=False)


def test_the_damaged_model_advice_fits_python_and_the_command_line(tmp_path):
  directory = checkpoint.save_model(tmp_path / "model", SPEC, _variables(0))
  (directory / "spec.json").write_text((directory / "spec.json").read_text() + " ")
  with pytest.raises(checkpoint.DamagedModelError,
                     match=r"damaged: spec.json has \d+ bytes .*Save the model again.*from "
                           r"Python only: load_model\(\.\.\., verify=False\).*the command line "
                           r"always checks and has no option to skip it"):
    checkpoint.load_model(directory)


def test_ctrl_c_during_a_model_save_comes_after_orbax_has_written(tmp_path, monkeypatch):
  """Ctrl-C arriving while orbax writes a model's variables is held until orbax is done (its
  threads cut off half-way printed tracebacks after the command's "Interrupted" paragraph),
  then raised before the save is sealed: the model saved before stays the one loaded."""
  directory = checkpoint.save_model(tmp_path / "model", SPEC, _variables(0))
  save = checkpoint.ocp.StandardCheckpointer.save
  written = []

  def interrupted_save(self, *args, **kwargs):
    os.kill(os.getpid(), signal.SIGINT)        # Ctrl-C, delivered before orbax writes
    out = save(self, *args, **kwargs)
    written.append(True)                       # reached only if the signal was held
    return out
  monkeypatch.setattr(checkpoint.ocp.StandardCheckpointer, "save", interrupted_save)
  with pytest.raises(KeyboardInterrupt):
    checkpoint.save_model(directory, SPEC, _variables(1), overwrite=True)
  assert written == [True]
  assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
  assert _which(directory, [_variables(0), _variables(1)]) == 0
