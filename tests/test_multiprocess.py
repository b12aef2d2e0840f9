"""Many processes and many devices compute what one process on one device computes.

Four processes run ``tests/_multiprocess_worker.py`` side by side:

* a pair launched as ``srun`` describes two tasks and joined the way ``--multihost``
  joins them (``jax.distributed`` on localhost, one CPU device each, collectives over
  gloo), each reading its own shard of every global batch;
* one process with two fake CPU devices: the same global batches over the same
  number of devices, the reference of the pair;
* one process with eight fake CPU devices.

Each trains a ``fit`` epoch (checkpointed by orbax from every process, then
restored by a second call) and takes EASIER's decision on it: the two-device
process on one device and on two, the eight-device process on eight. The pair
and the two-device process then run every method command on its digits default
with tiny settings (``_multiprocess_worker.COMMANDS``: EASIER, EGP, NEPENTHE,
LaCoOT, TLC), and each process keeps what it computed itself.

What holds, measured on CPU: the two processes of the pair hold bit-identical
parameters, method states and reports; they are bit-identical to the one process
with two devices too (``TOLERANCE`` is what the comparison allows). Two and eight
devices agree with one device after the ``fit`` epoch to ``DEVICE_TOLERANCE`` in
every parameter and BatchNorm statistic (measured 1.4e-6 and 7.2e-7: the order of
the float reductions changes with the device count), with the same entropies and
the same decision. Only process 0 writes reports, logs and plots; process 1 writes
its own parts of the orbax checkpoints and nothing else.

The ``fit`` check trains with SGD: with Adam the differences between device counts
reach 4e-4 within the epoch (Adam scales each step by the gradient's own size, so a
gradient near 0 can become a step of about the learning rate either way). From a
trained network they can grow faster still (a channel nearly constant over a batch
has a BatchNorm variance near 0, which scales its rounding differences by up to
``1/sqrt(epsilon)``): one more SGD epoch with the removed site gated off took them to
1.7e-2 between two devices and one.

A second, smaller launch (``tests/_cache_pair_worker.py``, two processes joined through
``JAX_COORDINATOR_ADDRESS``, ``JAX_NUM_PROCESSES`` and ``JAX_PROCESS_ID``) runs a train
step that one process loads from its persistent compilation cache while the other
compiles it, as hosts with caches of their own do.
"""
import json
import math
import os
import pathlib
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from jaxdepth import report

ROOT = pathlib.Path(__file__).resolve().parents[1]
WORKER = pathlib.Path(__file__).with_name("_multiprocess_worker.py")
CACHE_PAIR_WORKER = pathlib.Path(__file__).with_name("_cache_pair_worker.py")
METHODS = ("easier", "egp", "nepenthe", "lacoot", "tlc")
TOLERANCE = 1e-6          # the pair against one process with two devices (measured 0)
DEVICE_TOLERANCE = 1e-5   # 2 or 8 devices against 1, absolute (measured 1.4e-6)
TIMEOUT = 900
CACHE_PAIR_TIMEOUT = 240   # a pair takes about 10 s on an idle 2-core CPU


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def _env(**extra) -> dict[str, str]:
  env = {k: v for k, v in os.environ.items()
         if not k.startswith(("XLA_", "MP_", "JAX_", "SLURM_", "OMPI_", "KUBERNETES_"))}
  env.update(JAX_PLATFORMS="cpu",   # the workers share the test session's compile cache
             JAX_COMPILATION_CACHE_DIR=str(jax.config.jax_compilation_cache_dir),
             JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
             JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0", **extra)
  return env


def _run_all(root: pathlib.Path) -> None:
  """Starts the four workers; fails (stopping the others) as soon as one fails."""
  port = _free_port()
  jobs = {
      "one": dict(MP_DEVICES="2", MP_MESHES="1,2", MP_COMMANDS="1"),
      "eight": dict(MP_DEVICES="8", MP_MESHES="8"),
      # The pair is launched as srun describes a job of two tasks on two nodes.
      **{f"two_{i}": dict(SLURM_JOB_ID="1", SLURM_STEP_NODELIST="localhost", SLURM_NTASKS="2",
                          SLURM_PROCID=str(i), SLURM_LOCALID="0",
                          JAX_COORDINATOR_PORT=str(port), MP_COMMANDS="1")
         for i in range(2)}}
  procs = {}
  for name, extra in jobs.items():
    workdir = root / name.split("_")[0]
    log = open(root / f"{name}.log", "w")   # noqa: SIM115 (closed with the process)
    procs[name] = (subprocess.Popen(
        [sys.executable, str(WORKER)], stdout=log, stderr=subprocess.STDOUT,
        env=_env(MP_WORKDIR=str(workdir), MP_OUT=str(root / name), **extra)), log)
  deadline = time.monotonic() + TIMEOUT
  try:
    while any(p.poll() is None for p, _ in procs.values()):
      failed = [n for n, (p, _) in procs.items() if p.poll() not in (None, 0)]
      assert not failed and time.monotonic() < deadline, (
          f"worker {failed or 'timeout'}:\n"
          + "\n".join((root / f"{n}.log").read_text()[-3000:] for n in failed or procs))
      time.sleep(0.5)
    failed = [n for n, (p, _) in procs.items() if p.returncode]
    assert not failed, "\n".join((root / f"{n}.log").read_text()[-3000:] for n in failed)
  finally:
    for p, log in procs.values():
      if p.poll() is None:
        p.kill()
        p.wait()
      log.close()


def _results(root: pathlib.Path) -> dict:
  out = {}
  for name in ("one", "eight", "two_0", "two_1"):
    facts = json.loads((root / f"{name}.json").read_text())
    facts["arrays"] = dict(np.load(root / f"{name}.npz"))
    out[name] = facts
  return out


def _close(a, b, tol: float, where: str = "") -> None:
  """JSON values equal, numbers to ``tol`` (relative to max(1, |b|))."""
  if isinstance(a, dict):
    assert isinstance(b, dict) and a.keys() == b.keys(), where
    for k in a:
      _close(a[k], b[k], tol, f"{where}/{k}")
  elif isinstance(a, list):
    assert isinstance(b, list) and len(a) == len(b), where
    for i, (x, y) in enumerate(zip(a, b)):
      _close(x, y, tol, f"{where}/{i}")
  elif isinstance(a, float) and isinstance(b, (int, float)) and not isinstance(b, bool):
    assert math.isclose(a, b, rel_tol=0, abs_tol=tol * max(1.0, abs(b))), (where, a, b)
  else:
    assert a == b, (where, a, b)


def _holds(big, small) -> bool:
  """Whether JSON ``big`` has every key of ``small`` with its value (lists item by item)."""
  if isinstance(small, dict):
    return isinstance(big, dict) and all(k in big and _holds(big[k], v) for k, v in small.items())
  if isinstance(small, list):
    return (isinstance(big, list) and len(big) == len(small)
            and all(_holds(b, x) for b, x in zip(big, small)))
  return big == small


def _fake_devices_train_what_one_device_trains(out):
  one, eight = out["one"], out["eight"]
  assert (one["devices"], eight["devices"], one["processes"]) == (2, 8, 1)
  ref = {k[2:]: v for k, v in one["arrays"].items() if k.startswith("1/")}
  assert {k.split("/")[0] for k in ref} == {"fit", "again", "gates"}
  for devices, facts in (("2", one), ("8", eight)):
    for k, want in ref.items():
      np.testing.assert_allclose(facts["arrays"][f"{devices}/{k}"], want, rtol=0,
                                 atol=DEVICE_TOLERANCE, err_msg=f"{devices} devices: {k}")
    library = facts[f"library{devices}"]
    assert library["removed"] == one["library1"]["removed"]
    _close(library["entropies"], one["library1"]["entropies"], DEVICE_TOLERANCE, "entropies")
    _close(library["history"], one["library1"]["history"], DEVICE_TOLERANCE, "history")
  # A second fit over the same work directory restores the finished run and trains nothing.
  for devices, facts in (("1", one), ("2", one), ("8", eight)):
    arrays = facts["arrays"]
    for k in (k for k in arrays if k.startswith(f"{devices}/fit/")):
      np.testing.assert_array_equal(arrays[k], arrays[k.replace("/fit/", "/again/")])


def _the_two_processes_hold_identical_values(out):
  first, second = out["two_0"], out["two_1"]
  assert (first["process"], second["process"], first["processes"], first["devices"]) == (
      0, 1, 2, 2)
  assert first["arrays"].keys() == second["arrays"].keys()
  for k in first["arrays"]:
    np.testing.assert_array_equal(first["arrays"][k], second["arrays"][k], err_msg=k)
  for name in ("library2", *METHODS):
    assert first[name] == second[name], name   # decisions, scores, accuracies, costs


def _two_processes_compute_what_one_process_computes(out):
  pair, one = out["two_0"], out["one"]
  assert pair["arrays"].keys() == {k for k in one["arrays"] if not k.startswith("1/")}
  for k, want in one["arrays"].items():
    if not k.startswith("1/"):
      np.testing.assert_allclose(pair["arrays"][k], want, rtol=0, atol=TOLERANCE, err_msg=k)
  for name in ("library2", *METHODS):
    _close(pair[name], one[name], TOLERANCE, name)


def _the_method_ran_its_digits_default_on_two_processes(root, out, method):
  rep = out["two_0"][method]
  assert rep["finished"] and rep["method"] == method
  assert len(rep["iterations"]) == {"egp": 1, "tlc": 1}.get(method, 2)
  # What process 0 wrote is what every process computed (EGP's report adds pruning facts).
  written = json.loads((root / "two" / method / "report.json").read_text())
  assert _holds(report.without_timings(written), rep)
  # EASIER timed the three models on every process; the others ran with --no-latency.
  rows = written["chosen"]["merged"].get("latency")
  assert ([r["batch"] for r in rows] == [1, 64]) if method == "easier" else rows is None
  if method in ("easier", "lacoot", "tlc"):
    assert rep["iterations"][0]["removed_now"], "the first iteration removes a unit"
  else:
    assert rep["iterations"][0]["decision"]["pruned_weights"] == 0
    assert sum(rep["iterations"][0]["decision"]["amounts"].values()) > 0


def _only_process_zero_writes_reports_logs_and_plots(out):
  first, second = set(out["two_0"]["written"]), set(out["two_1"]["written"])
  # Process 1 writes its own parts of the orbax checkpoints, nothing else.
  assert second and all("/checkpoints/" in p for p in second), sorted(second)[:10]
  for method in METHODS:
    assert {f"{method}/report.json.tmp", f"{method}/report.md", f"{method}/run.json.tmp",
            f"{method}/accuracy.png"} <= first, method
  assert {"egp/sparsity.png", "lacoot/lacoot.json", "lacoot/block_distances.png", "tlc/tlc.json.tmp",
          "tlc/loss_gaps.png"} <= first


def test_many_processes_and_devices_compute_what_one_computes(tmp_path):
  # One test, so that the four workers run once whichever xdist worker takes it.
  _run_all(tmp_path)
  out = _results(tmp_path)
  _fake_devices_train_what_one_device_trains(out)
  _the_two_processes_hold_identical_values(out)
  _two_processes_compute_what_one_process_computes(out)
  for method in METHODS:
    _the_method_ran_its_digits_default_on_two_processes(tmp_path, out, method)
  _only_process_zero_writes_reports_logs_and_plots(out)


def _start_pair(argv: list[str], envs: list[dict[str, str]], args: list[list[str]] | None = None
                ) -> list[subprocess.Popen]:
  """Starts ``argv`` (then ``args[i]``) as a two-process launch joined through
  ``JAX_COORDINATOR_ADDRESS``, process i with the extra environment ``envs[i]``."""
  port = _free_port()
  return [subprocess.Popen(
      [*argv, *(args[i] if args else [])], cwd=ROOT, text=True, stdout=subprocess.PIPE,
      stderr=subprocess.STDOUT,
      env={**_env(JAX_COORDINATOR_ADDRESS=f"localhost:{port}", JAX_NUM_PROCESSES="2",
                  JAX_PROCESS_ID=str(i)), **extra})
      for i, extra in enumerate(envs)]


def _launch_pair(argv: list[str], envs: list[dict[str, str]], args: list[list[str]] | None = None,
                 timeout: float = CACHE_PAIR_TIMEOUT) -> list[tuple[int, str]]:
  """Runs :func:`_start_pair`'s launch to its end: ``(exit code, output)`` of each (SIGKILLed at
  the ``timeout``)."""
  procs = _start_pair(argv, envs, args)
  try:
    outs = [p.communicate(timeout=timeout)[0] for p in procs]
  except subprocess.TimeoutExpired:
    raise AssertionError(f"the pair did not finish in {timeout} s") from None
  finally:
    for p in procs:
      p.kill()
      p.wait()
  return [(p.returncode, out) for p, out in zip(procs, outs)]


def _run_cache_pair(caches: list[pathlib.Path]) -> list[dict]:
  """Runs ``_cache_pair_worker.py`` as a two-process launch, process i with cache ``caches[i]``."""
  ran = _launch_pair([sys.executable, str(CACHE_PAIR_WORKER)],
                     [{"JAX_COMPILATION_CACHE_DIR": str(cache)} for cache in caches])
  assert all(code == 0 for code, _ in ran), "\n".join(out[-3000:] for _, out in ran)
  return [json.loads(out.strip().splitlines()[-1]) for _, out in ran]


def test_processes_run_a_program_together_when_only_one_found_it_in_its_cache(tmp_path):
  """One process loads the train step from its persistent compilation cache, the other
  compiles it (a node-local cache, a process started later): both must run the same
  program. With jax 0.12.1 both wait forever in the first step; pyproject.toml
  excludes that version."""
  warm, cold = tmp_path / "warm", tmp_path / "cold"   # cold stays empty: only process 0 writes
  both_compiled = _run_cache_pair([warm, warm])
  entries = sorted(p.name for p in warm.iterdir())
  assert entries
  mixed = _run_cache_pair([warm, cold])
  assert sorted(p.name for p in warm.iterdir()) == entries   # process 0 compiled nothing
  assert both_compiled[0] == both_compiled[1] == mixed[0] == mixed[1]
  assert len(mixed[0]["losses"]) == 2 and all(math.isfinite(x) for x in mixed[0]["losses"])


def test_launch_settings_come_from_the_environment(monkeypatch):
  from jaxdepth.train import command
  from jaxdepth.train import config as config_lib
  calls = []
  monkeypatch.setattr(jax.distributed, "is_initialized", lambda: bool(calls))
  monkeypatch.setattr(jax.distributed, "initialize", lambda **kw: calls.append(kw))
  monkeypatch.setattr(jax.config, "update", lambda name, value: None)   # gloo: not here
  monkeypatch.setattr(command, "_coordinator_answers", lambda address, timeout: True)
  for name in ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID",
               "JAXDEPTH_INIT_TIMEOUT"):
    monkeypatch.delenv(name, raising=False)
  command.maybe_initialize_distributed(False)              # a one-process run
  assert calls == []
  command.maybe_initialize_distributed(True)               # --multihost: jax detects it all
  assert calls == [{"initialization_timeout": 300}]        # jax's default
  calls.clear()
  monkeypatch.setenv("JAX_COORDINATOR_ADDRESS", "coordinator-host:1234")   # read by jax itself
  monkeypatch.setenv("JAX_NUM_PROCESSES", "4")
  monkeypatch.setenv("JAX_PROCESS_ID", "3")
  monkeypatch.setenv("JAXDEPTH_INIT_TIMEOUT", "20")
  command.maybe_initialize_distributed(False)
  command.maybe_initialize_distributed(True)               # a second command: nothing more
  assert len(calls) == 1 and calls[0].pop("initialization_timeout") in (19, 20)
  assert calls == [{"num_processes": 4, "process_id": 3}]
  calls.clear()
  for bad in ("0", "-5", "1.5", "soon"):
    monkeypatch.setenv("JAXDEPTH_INIT_TIMEOUT", bad)
    monkeypatch.setattr(jax.distributed, "is_initialized", lambda: False)
    with pytest.raises(config_lib.ConfigError, match=rf"^JAXDEPTH_INIT_TIMEOUT={bad!r}: must be a "
                       rf"whole number of seconds, 1 or more"):
      command.maybe_initialize_distributed(False)
  monkeypatch.setattr(jax.distributed, "is_initialized", lambda: bool(calls))
  monkeypatch.delenv("JAXDEPTH_INIT_TIMEOUT")
  monkeypatch.setenv("JAX_PROCESS_ID", "three")
  with pytest.raises(config_lib.ConfigError, match="JAX_PROCESS_ID='three': must be an integer"):
    command.maybe_initialize_distributed(False)
  # Numbered from 1 by mistake: the last process is refused, not left waiting for ever.
  for bad in ("4", "-1"):
    monkeypatch.setenv("JAX_PROCESS_ID", bad)
    with pytest.raises(config_lib.ConfigError, match=rf"JAX_PROCESS_ID={bad} with "
                       rf"JAX_NUM_PROCESSES=4: process ids are 0-based, 0 to 3"):
      command.maybe_initialize_distributed(False)
  assert calls == []
  # --multihost where jax finds no launch: what to set, not jax's bare ValueError.
  for name in ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID"):
    monkeypatch.delenv(name)

  def no_launch(**_):
    raise ValueError("coordinator_address should be defined.")
  monkeypatch.setattr(jax.distributed, "is_initialized", lambda: False)
  monkeypatch.setattr(jax.distributed, "initialize", no_launch)
  with pytest.raises(config_lib.ConfigError, match=r"could not join a multi-process launch "
                     r"\(coordinator_address should be defined.\). .* set JAX_COORDINATOR_ADDRESS"
                     r".* or leave --multihost out"):
    command.maybe_initialize_distributed(True)
  monkeypatch.setenv("JAX_COORDINATOR_ADDRESS", "coordinator-host:1234")   # the trigger named
  with pytest.raises(config_lib.ConfigError, match=r"^JAX_COORDINATOR_ADDRESS: jax could not "
                     r"join .* or unset JAX_COORDINATOR_ADDRESS to run"):
    command.maybe_initialize_distributed(False)


@pytest.mark.parametrize("address", ["localhost", "localhost:abc", "localhost:70000", "::1:1234",
                                     "localhost:"])
def test_a_mistyped_coordinator_address_is_refused_before_jax_reads_it(address, monkeypatch):
  """jax crashes on these (an IndexError without a port, a segfault in gRPC on ``abc``)."""
  from jaxdepth.train import command
  from jaxdepth.train import config as config_lib
  monkeypatch.setattr(jax.distributed, "is_initialized", lambda: False)
  monkeypatch.setattr(jax.distributed, "initialize", lambda **kw: pytest.fail("initialized"))
  monkeypatch.setattr(jax.config, "update", lambda name, value: None)
  monkeypatch.setenv("JAX_COORDINATOR_ADDRESS", address)
  monkeypatch.setenv("JAX_NUM_PROCESSES", "2")
  monkeypatch.setenv("JAX_PROCESS_ID", "1")
  with pytest.raises(config_lib.ConfigError, match=rf"^JAX_COORDINATOR_ADDRESS={address!r}: must "
                     rf"be host:port, the host of process 0 and a free port from 1 to 65535"):
    command.maybe_initialize_distributed(False)


def test_coordinator_port_and_address_checks(monkeypatch):
  """A derived address's port (``JAX_COORDINATOR_PORT``), an IPv6 host, process 0's busy port,
  and what jax raises when joining fails (a coordinator not reachable, Open MPI 5 without
  mpi4py) are one ``error:`` line each, not a traceback."""
  from jaxdepth.train import command
  from jaxdepth.train import config as config_lib
  calls = []
  monkeypatch.setattr(jax.distributed, "is_initialized", lambda: False)
  monkeypatch.setattr(jax.distributed, "initialize", lambda **kw: calls.append(kw))
  monkeypatch.setattr(jax.config, "update", lambda name, value: None)
  monkeypatch.setattr(command, "_coordinator_answers", lambda address, timeout: True)
  for name in ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID",
               "JAX_COORDINATOR_PORT", "JAX_COORDINATOR_BIND_ADDRESS", "JAXDEPTH_INIT_TIMEOUT"):
    monkeypatch.delenv(name, raising=False)
  monkeypatch.setenv("JAX_COORDINATOR_PORT", "http")
  with pytest.raises(config_lib.ConfigError, match=r"^JAX_COORDINATOR_PORT='http': must be a port "
                     r"number from 1 to 65535"):
    command.maybe_initialize_distributed(True)
  monkeypatch.setenv("JAX_COORDINATOR_PORT", "1234")
  command.maybe_initialize_distributed(True)
  monkeypatch.setenv("JAX_COORDINATOR_ADDRESS", "[::1]:1234")
  monkeypatch.setenv("JAX_NUM_PROCESSES", "2")
  monkeypatch.setenv("JAX_PROCESS_ID", "1")
  command.maybe_initialize_distributed(False)
  assert calls == [{"initialization_timeout": 300},
                   {"num_processes": 2, "process_id": 1, "initialization_timeout": 300}]
  with socket.socket() as busy:   # process 0's coordinator could not listen there
    busy.bind(("", 0))
    busy.listen()
    port = busy.getsockname()[1]
    monkeypatch.setenv("JAX_COORDINATOR_ADDRESS", f"localhost:{port}")
    monkeypatch.setenv("JAX_PROCESS_ID", "0")
    with pytest.raises(config_lib.ConfigError, match=rf"port {port} is in use on this host .*pick "
                       rf"a free port"):
      command.maybe_initialize_distributed(False)
  assert len(calls) == 2

  def unreachable(**_):
    raise jax.errors.JaxRuntimeError("DEADLINE_EXCEEDED: Barrier timed out\nmore")
  monkeypatch.setattr(jax.distributed, "initialize", unreachable)
  monkeypatch.setenv("JAX_PROCESS_ID", "1")
  with pytest.raises(config_lib.ConfigError, match=r"^JAX_COORDINATOR_ADDRESS: jax.distributed."
                     r"initialize\(\) failed \(DEADLINE_EXCEEDED: Barrier timed out\)\. Check that "
                     r"JAX_COORDINATOR_ADDRESS .* free port .* or unset JAX_COORDINATOR_ADDRESS"):
    command.maybe_initialize_distributed(False)


def test_open_mpi_5_without_mpi4py_is_refused_naming_it(tmp_path):
  """What mpirun of Open MPI 5 sets, with --multihost: jax needs mpi4py (in no extra). In a
  subprocess: jax refuses to initialize once the test session has used a device."""
  env = {k: v for k, v in os.environ.items() if not k.startswith(("JAX_", "OMPI_", "SLURM_"))}
  env.update(JAX_PLATFORMS="cpu", OMPI_VERSION="5.0.3", OMPI_COMM_WORLD_SIZE="1",
             OMPI_COMM_WORLD_RANK="0", OMPI_COMM_WORLD_LOCAL_RANK="0")
  code = "import sys; sys.modules['mpi4py'] = None; from jaxdepth.train import __main__ as cli; " \
         "sys.exit(cli.main(sys.argv[1:]))"
  done = subprocess.run([sys.executable, "-c", code, "fit", "--multihost", "--workdir",
                         str(tmp_path / "run"), "--no-progress", "--no-compilation-cache"],
                        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
  assert done.returncode == 2, done.stderr[-3000:]
  assert "Traceback" not in done.stderr
  assert ("error: --multihost: jax.distributed.initialize() failed (Open MPI 5 or newer requires "
          "mpi4py for distributed initialization). Install mpi4py in every process's environment "
          "(pip install mpi4py; no jaxdepth extra has it); or leave --multihost out") in done.stderr
  assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("workdir", ["gs://my-bucket/runs/r1", "s3://b/r", "GS://b/r"])
def test_an_object_store_workdir_is_refused_and_nothing_is_made(workdir, tmp_path, monkeypatch,
                                                                 capsys):
  """pathlib would take ``gs://b/r`` for the local folder ``gs:/b/r``: trained in, then refused
  by orbax at the first checkpoint."""
  from jaxdepth.train import __main__ as cli  # pylint: disable=import-outside-toplevel
  monkeypatch.chdir(tmp_path)
  assert cli.main(["fit", "--workdir", workdir, "--no-progress", "--no-compilation-cache",
                   "--config.epochs=1"]) == 2
  err = capsys.readouterr().err
  assert (f"error: --workdir {workdir!r}: object stores are not supported as work directories; "
          f"mount a POSIX shared file system") in err and "and give its path" in err
  assert list(tmp_path.iterdir()) == []


def test_when_one_process_refuses_the_run_the_others_stop_too(tmp_path):
  """Process 0 alone checks and locks the work directory: held by another run, it refuses,
  and process 1, which found nothing wrong itself, must stop with it instead of waiting for it
  in the first train step."""
  import fcntl  # pylint: disable=import-outside-toplevel
  workdir = tmp_path / "run"
  workdir.mkdir()
  with open(workdir / ".lock", "wb") as other:          # another run holds the directory
    fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)
    ran = _launch_pair([sys.executable, "-m", "jaxdepth", "fit", "--workdir", str(workdir),
                        "--no-progress", "--config.epochs=1"], [{}, {}])
  assert [code for code, _ in ran] == [2, 2], "\n".join(out for _, out in ran)
  assert f"{workdir} is in use: another run holds its lock" in ran[0][1]
  assert ("another process of this launch refused the run before any work (its output says "
          "why); process 1 stops too") in ran[1][1]
  assert sorted(p.name for p in workdir.iterdir()) == [".lock"]


def test_processes_given_different_settings_stop_before_any_work(tmp_path):
  """Process 1 given another --config.epochs: the two would train different runs and wait for
  each other for ever; both must stop with exit code 2, naming the setting."""
  workdir = tmp_path / "run"
  ran = _launch_pair([sys.executable, "-m", "jaxdepth", "fit", "--workdir", str(workdir),
                      "--no-progress"], [{}, {}],
                     [["--config.epochs=2"], ["--config.epochs=3"]], timeout=120)
  assert [code for code, _ in ran] == [2, 2], "\n".join(out[-3000:] for _, out in ran)
  for _, out in ran:
    assert ("error: the processes of this launch were given different settings: process 1 "
            "differs from process 0 in epochs. Every process must run the same command") in out
  assert not workdir.exists()


def test_processes_agree_on_what_settings_mean_not_on_how_they_are_spelled(tmp_path,
                                                                              monkeypatch):
  """The settings the processes of a launch compare: a work directory reached through a
  symlink, a folder dataset spelled another way, the dataset's default normalization spelled
  out and the layout the folder's detection picks were each refused as a difference."""
  from jaxdepth import data   # pylint: disable=import-outside-toplevel
  from jaxdepth.train import command, config as config_lib   # pylint: disable=import-outside-toplevel
  (tmp_path / "runs").mkdir()
  (tmp_path / "link").symlink_to(tmp_path / "runs")
  (tmp_path / "images").mkdir()
  monkeypatch.chdir(tmp_path)
  ds = data.load("digits")
  cfg = config_lib.to_dict(config_lib.load("digits")) | {"dataset": "folder:images"}

  def settings(workdir, **changes):
    return command._settings(command.Prepared({**cfg, **changes}, pathlib.Path(workdir), ds,  # pylint: disable=protected-access
                                              None))

  first = settings(tmp_path / "runs" / "w")
  assert settings("link/w", dataset=f"folder:{tmp_path / 'images'}/", normalization="imagenet",
                  layout="classes") == first
  assert settings("link/w", epochs=cfg["epochs"] + 1) != first


def test_sigterm_to_one_process_stops_every_process_of_a_launch_at_one_step(tmp_path):
  """jax's preemption service takes SIGTERM; nothing acted on it, and ``kill``, ``timeout``
  and ``scancel`` left the pair training (and a process stopping alone would wait for the
  other in its next collective). A SIGTERM to process 1 alone must stop both at the same
  step, checkpointed, with exit code 143 and the command that resumes."""
  workdir = tmp_path / "run"
  procs = _start_pair([sys.executable, "-m", "jaxdepth", "fit", "--workdir", str(workdir),
                       "--no-progress", "--config.epochs=500"], [{}, {}])
  try:
    deadline = time.monotonic() + 120
    while not (workdir / "checkpoints").is_dir() and time.monotonic() < deadline:   # training
      assert all(p.poll() is None for p in procs), [p.communicate()[0][-3000:] for p in procs]
      time.sleep(0.2)
    procs[1].send_signal(signal.SIGTERM)
    outs = [p.communicate(timeout=60)[0] for p in procs]
  except subprocess.TimeoutExpired:
    raise AssertionError("the pair did not stop within 60 s of SIGTERM") from None
  finally:
    for p in procs:
      p.kill()
      p.wait()
  assert [p.returncode for p in procs] == [143, 143], "\n".join(out[-3000:] for out in outs)
  assert "Stopped by SIGTERM. Nothing was lost" in outs[0]
  assert f"python -m jaxdepth fit --workdir {workdir} --no-progress --config.epochs=500" in outs[0]


def _sigterm_once_training(procs: list[subprocess.Popen], workdir: pathlib.Path, signum: int,
                           to: int, wait: float = 60, committed: bool = False) -> list[str]:
  """Sends ``signum`` to ``procs[to]`` once ``workdir/checkpoints`` exists (training; with
  ``committed``, once a checkpoint is written whole, so that no save is in flight), then
  waits up to ``wait`` seconds for every process to end; their outputs."""

  def ready():
    ckpts = workdir / "checkpoints"
    return ckpts.is_dir() and (not committed or any(p.name.isdigit() for p in ckpts.iterdir()))

  try:
    deadline = time.monotonic() + 120
    while not ready() and time.monotonic() < deadline:
      assert all(p.poll() is None for p in procs), [p.communicate()[0][-3000:] for p in procs]
      time.sleep(0.2)
    procs[to].send_signal(signum)
    return [p.communicate(timeout=wait)[0] for p in procs]
  except subprocess.TimeoutExpired:
    raise AssertionError(f"the launch did not stop within {wait} s of signal {signum}") from None
  finally:
    for p in procs:
      p.kill()
      p.wait()


def test_sigterm_stops_a_launch_of_one_process_joined_through_jax_distributed(tmp_path):
  """With ``JAX_NUM_PROCESSES=1`` jax's preemption service took SIGTERM and nothing asked it
  (one process): ``kill`` and ``scancel`` left the run training. It must stop as a one-process
  run does: exit code 143 and the command that resumes."""
  workdir = tmp_path / "run"
  argv = [sys.executable, "-m", "jaxdepth", "fit", "--workdir", str(workdir), "--no-progress",
          "--config.epochs=500"]
  proc = subprocess.Popen(argv, cwd=ROOT, text=True, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT,
                          env=_env(JAX_COORDINATOR_ADDRESS=f"localhost:{_free_port()}",
                                   JAX_NUM_PROCESSES="1", JAX_PROCESS_ID="0"))
  out, = _sigterm_once_training([proc], workdir, signal.SIGTERM, 0)
  assert proc.returncode == 143, out[-3000:]
  assert "joining a launch of 1 process at localhost:" in out
  assert "Stopped by SIGTERM. Nothing was lost" in out and "Traceback" not in out
  assert f"python -m jaxdepth fit --workdir {workdir} --no-progress --config.epochs=500" in out


def test_a_process_whose_coordinator_never_answers_stops_with_one_error_line(tmp_path):
  """Process 1 started without process 0 waited silently for jax's 300 s, then jax aborted it
  (SIGABRT, exit code 134, a native stack). It must say what it waits for, wait
  ``JAXDEPTH_INIT_TIMEOUT`` seconds, and stop with exit code 2 naming what to check."""
  port = _free_port()   # nobody listens there
  started = time.monotonic()
  done = subprocess.run(
      [sys.executable, "-m", "jaxdepth", "fit", "--workdir", str(tmp_path / "run"),
       "--no-progress", "--config.epochs=1"], cwd=ROOT, capture_output=True, text=True,
      timeout=120, env=_env(JAX_COORDINATOR_ADDRESS=f"localhost:{port}", JAX_NUM_PROCESSES="2",
                            JAX_PROCESS_ID="1", JAXDEPTH_INIT_TIMEOUT="4"))
  took = time.monotonic() - started
  assert done.returncode == 2, done.stderr[-3000:]
  assert 4 <= took < 60, took
  assert (f"joining a launch of 2 processes at localhost:{port} as process 1; waiting up to 4 s "
          f"for the others (JAXDEPTH_INIT_TIMEOUT)") in done.stderr
  assert (f"error: JAX_COORDINATOR_ADDRESS='localhost:{port}': no coordinator answered there in "
          f"4 s. Start process 0 of this launch (JAX_PROCESS_ID=0)") in done.stderr
  assert "Check failure" not in done.stderr and "Traceback" not in done.stderr
  assert not (tmp_path / "run").exists()


def test_when_one_process_is_killed_the_other_stops_with_the_resume_command(tmp_path):
  """SIGKILL to process 1 while the pair trains: process 0 printed jax's traceback, then jax's
  shutdown barrier waited for the dead process and aborted it (exit code 134). It must stop
  at once with one error line, the resume command and exit code 75."""
  workdir = tmp_path / "run"
  procs = _start_pair([sys.executable, "-m", "jaxdepth", "fit", "--workdir", str(workdir),
                       "--no-progress", "--config.epochs=500"], [{}, {}])
  started = time.monotonic()
  # Once a checkpoint is committed: a process killed during a save leaves the others in orbax's
  # barrier until jax's coordination service misses its heartbeat, a minute or more later.
  outs = _sigterm_once_training(procs, workdir, signal.SIGKILL, 1, wait=180, committed=True)
  assert time.monotonic() - started < 300
  assert procs[0].returncode == 75, outs[0][-3000:]
  assert "error: another process of this launch stopped during training (" in outs[0]
  assert "Process 0 stopped too. Nothing was lost" in outs[0] and "Traceback" not in outs[0]
  assert f"python -m jaxdepth fit --workdir {workdir} --no-progress --config.epochs=500" in outs[0]
