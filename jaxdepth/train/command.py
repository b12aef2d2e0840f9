"""What every python -m jaxdepth command shares: flags, settings, work directory, exits.

A command is a module with a ``main(argv) -> int`` registered in
``jaxdepth/train/__main__.py``; its configs are the ``jaxdepth/train/configs/<command>_*.py``
files (``python -m jaxdepth list`` finds them). With this module it is short::

    NAME, DEFAULT_CONFIG = "mymethod", "mymethod_digits"
    METHOD_DEFAULTS = {"iterations": config_dict.placeholder(int), "tolerance": 1.0}

    def main(argv=None):
      argv = sys.argv[1:] if argv is None else list(argv)
      session = command.Session(NAME, argv)        # exits and the resume line
      return session.run(lambda: _main(session, argv))

    def _main(session, argv):
      parser = argparse.ArgumentParser(prog=f"python -m jaxdepth {NAME}")
      command.add_run_arguments(parser, config_help="...", workdir_help="...")
      command.add_launch_arguments(parser)
      args = command.start(session, parser, argv)   # None: --list was answered
      if args is None:
        return 0
      cfg, workdir, ds, spec = command.prepare(     # every setting checked first
          session, args, args.config or DEFAULT_CONFIG, extra_defaults=METHOD_DEFAULTS)
      ...                                           # the work: jaxdepth.driver.run(...)
      return 0

:class:`Session` turns the ways a run can stop into one paragraph and an exit
code:

====  =========================================================================
code  meaning
====  =========================================================================
0     done
1     training diverged (NaN or infinite loss); nothing past the last good checkpoint
      is written, and a lower learning rate needs another work directory (a kept
      checkpoint resumes only with the same settings)
2     bad settings or arguments, a missing optional extra, or a work directory holding
      another run
73    the work directory is read-only (or not writable)
74    the disk is full
75    another process of a multi-process launch stopped during training (killed, or
      stopped by its own error): this one leaves at once instead of waiting for jax to
      abort it
130   interrupted (Ctrl-C, SIGINT)
143   stopped by SIGTERM (``kill``, ``timeout``, a scheduler's ``scancel`` or time limit)
====  =========================================================================

For 73, 74, 75, 130 and 143 the paragraph says that the checkpoints already written are
intact and gives the exact command that resumes the run.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import errno
import hashlib
import json
import logging
import math
import os
import pathlib
import re
import shlex
import signal
import socket
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, NamedTuple

try:
  import fcntl
except ImportError:   # not POSIX: work directories are not locked
  fcntl = None

from jaxdepth.train import config as config_lib

__all__ = ["EXIT_OK", "EXIT_DIVERGED", "EXIT_USAGE", "EXIT_READ_ONLY", "EXIT_DISK_FULL",
           "EXIT_INTERRUPTED", "EXIT_TERMINATED", "EXIT_PEER_LOST", "INIT_TIMEOUT_ENV",
           "init_timeout", "plain", "add_run_arguments",
           "add_launch_arguments", "parse", "resolve", "model_settings_left_out", "left_out_note",
           "maybe_initialize_distributed",
           "set_up_runtime", "compute_dtype", "dataset_and_spec",
           "check_data", "start", "Prepared", "prepare", "pretrained_problems", "workdir_problems",
           "initial_variables", "default_workdir", "has_checkpoints", "PATH_KEYS",
           "same_setting", "meaning", "dataset_as_recorded", "recorded_paths", "storage_failure",
           "Session", "interpreter", "mismatch_in_cli_terms", "listing", "message",
           "IDENTITY_KEYS", "MethodConfigs", "method_parser",
           "add_iteration_arguments", "check_iterations", "main_process_say", "latencies_at"]

LOCK_FILE = ".lock"   # in a work directory, held by the command running there

EXIT_OK = 0
EXIT_DIVERGED = 1
EXIT_USAGE = 2
EXIT_READ_ONLY = 73      # sysexits EX_CANTCREAT
EXIT_DISK_FULL = 74      # sysexits EX_IOERR
EXIT_INTERRUPTED = 130   # 128 + SIGINT, what shells report for Ctrl-C
EXIT_TERMINATED = 143    # 128 + SIGTERM, what shells report for kill
EXIT_PEER_LOST = 75      # sysexits EX_TEMPFAIL: another process of the launch stopped

# What jax's error says when a collective or the coordination service lost another process.
PEER_LOST_SIGNS = ("gloo", "connection reset", "connection closed", "connection refused",
                   "broken pipe", "heartbeat", "coordination")

EXIT_CODES_HELP = ("exit codes: 0 done; 1 training diverged (nothing past the last good "
                   "checkpoint is written; a kept checkpoint resumes only with the same "
                   "settings, so rerun with a lower learning rate in another --workdir, or "
                   "after deleting the workdir); "
                   "2 bad settings, a missing extra, a workdir holding another run, or an "
                   "unreadable image; "
                   "73 workdir read-only; 74 disk full; 75 another process of a multi-process "
                   "launch stopped during training; 130 interrupted (Ctrl-C); 143 stopped by "
                   "SIGTERM (73, 74, 75, 130, 143 and the unreadable image print the command that "
                   "resumes).")


def plain(doc: str) -> str:
  """A docstring as plain text for ``--help``: no ``:role:`x``` markup, no double backquotes."""
  doc = re.sub(r":[a-z]+:`~?([^`]+)`", lambda m: m.group(1).split(".")[-1]
               if m.group(0).count("~") else m.group(1), doc)
  return doc.replace("``", "")


# ------------------------------------------------------------------------- flags


def add_run_arguments(p: argparse.ArgumentParser, *, config_help: str,
                      workdir_help: str) -> None:
  """``--config``, ``--model``, ``--dataset``, ``--workdir``, ``--data-dir``, ``--seed``, ``--dtype``."""
  p.add_argument("--config", help=config_help)
  p.add_argument("--model", help="a zoo model, your Flax module as path/to/file.py:Class, a "
                                 "saved model's directory (the run starts from its weights: "
                                 "a run's model/, chosen/ or chosen_merged/) or a spec JSON "
                                 "file (the same as --config.model=NAME)")
  p.add_argument("--dataset", help="a dataset name (the same as --config.dataset=NAME)")
  p.add_argument("--workdir", help=workdir_help)
  p.add_argument("--data-dir", "--data_dir", dest="data_dir", help="tfds data directory")
  p.add_argument("--seed", help="the same as --config.seed=N")
  p.add_argument("--dtype", help="compute dtype, float32 or bfloat16 (--config.dtype)")
  p.add_argument("--pretrained", metavar="FILE",
                 help="start from torchvision weights: a .safetensors state dict (or a .pth "
                      "where torch is installed); docs/weights.md says how to export one; for "
                      "a text encoder, a Hugging Face model folder (config.json, "
                      "model.safetensors; docs/text.md) (the same as --config.pretrained=FILE)")


def add_launch_arguments(p: argparse.ArgumentParser) -> None:
  """``--config.KEY=VALUE`` (documented; parsed by :func:`parse`), ``--multihost``, ``--no-progress``,
  ``--compilation-cache``, ``--no-compilation-cache``, ``--list``."""
  p.add_argument("--config.KEY=VALUE", dest="_doc_only", metavar="", default=None,
                 help="override one config key, read as that key's type "
                      "(--config.epochs=2 --config.milestones=2,4 --config.image_size=None)")
  p.add_argument("--set", dest="legacy_overrides", nargs="+", action="extend", default=[],
                 metavar="KEY=VALUE", help="the same as --config.KEY=VALUE, several at once")
  p.add_argument("--multihost", action="store_true",
                 help="call jax.distributed.initialize() (multi-process runs)")
  p.add_argument("--no-progress", dest="progress", action="store_false",
                 help="no progress output (the per-iteration lines stay)")
  p.add_argument("--compilation-cache", metavar="DIR",
                 help="directory of the persistent compilation cache (default: "
                      "$JAXDEPTH_COMPILATION_CACHE, else ~/.cache/jaxdepth/jax)")
  p.add_argument("--no-compilation-cache", action="store_true",
                 help="compile everything afresh (no persistent compilation cache)")
  p.add_argument("--list", action="store_true",
                 help="list this command's configs, the models and the datasets, then exit")


def parse(parser: argparse.ArgumentParser, argv: list[str]) -> argparse.Namespace:
  """Parses ``argv``; ``--config.KEY=VALUE`` (or ``--config.KEY VALUE``) go to ``args.overrides``.

  ``args.overrides`` is a list of ``(key, text)``: the ``--config.KEY`` assignments in
  command-line order, then the ``--set`` ones in theirs (``args.spelled`` holds how each
  was written). A key given twice in one spelling takes the last value; a key that two
  spellings (``--config.KEY``, ``--set``, a flag such as ``--seed``) give different
  values is refused by :func:`resolve`.
  """
  rest, overrides, spelled = [], [], []
  i = 0
  while i < len(argv):
    token = argv[i]
    if token.startswith("--config."):
      key, sep, text = token[len("--config."):].partition("=")
      if not sep:
        if i + 1 >= len(argv):
          parser.error(f"{token} needs a value: {token}=VALUE")
        if argv[i + 1].startswith("--"):   # another option, not a value (-1 still is one)
          parser.error(f"{token} needs a value: {token}=VALUE ({argv[i + 1]} after it is an "
                       f"option; a value that starts with -- goes after =)")
        text, i = argv[i + 1], i + 1
      overrides.append((key, text))
      spelled.append(f"--config.{key}={text}")
    else:
      rest.append(token)
    i += 1
  args = parser.parse_args(rest)
  for item in args.legacy_overrides:
    key, sep, text = item.partition("=")
    if not sep or not key:
      parser.error(f"--set expects KEY=VALUE, got {item!r}")
    overrides.append((key, text))
    spelled.append(f"--set {item}")
  args.overrides, args.spelled = overrides, spelled
  return args


def _flag(key: str) -> str:
  """The dedicated flag that sets ``key`` (``data_dir``: ``--data-dir``)."""
  return "--" + key.replace("_", "-")


def _conflicts(assignments: list[tuple[str, str]], spelled: list[str]) -> list[str]:
  """One line per key that two spellings (``--config.KEY``, ``--set``, a flag) give
  different values: which wins is not for the order of the command line to decide."""
  given: dict[str, dict[str, tuple[str, str]]] = {}
  for (key, text), written in zip(assignments, spelled):
    kind = "--config" if written.startswith("--config.") else written.split()[0]
    given.setdefault(key, {})[kind] = (text.strip(), written)   # the last of each spelling
  out = []
  for key, kinds in given.items():
    values = list(kinds.values())
    other = next((w for t, w in values[1:] if t != values[0][0]), None)
    if other is not None:
      out.append(f"{values[0][1]} and {other} give {key} two values; give it once")
  return out


def resolve(config: str | pathlib.Path, args: argparse.Namespace, *,
            extra_defaults: Mapping[str, Any] | None = None,
            flags: tuple[str, ...] = (), model_keys: tuple[str, ...] = ()) -> dict[str, Any]:
  """The config file, then the ``--config.KEY`` overrides, then the dedicated ``flags`` of ``args``.

  Every value is type-checked against its key (:func:`jaxdepth.train.config.override`);
  :func:`prepare` then checks the ranges. When the command line names another model
  than the config's own, the config's :data:`jaxdepth.train.config.MODEL_KEYS` and ``model_keys``
  (a command's own keys for its model) that it does not set take their defaults
  (:func:`model_settings_left_out`). A key that two spellings
  (``--config.KEY``, ``--set``, a flag) give different values is refused.

  Raises:
    jaxdepth.train.config.ConfigError: one line per problem.
  """
  return _resolve(config, args, extra_defaults=extra_defaults, flags=flags,
                  model_keys=model_keys)[0]


def _resolve(config, args, *, extra_defaults, flags, model_keys=()
             ) -> tuple[dict[str, Any], str | None]:
  """:func:`resolve`, and the note saying which settings for the config's own model were
  left out (None: none)."""
  cfg = config_lib.load(config, extra_defaults)
  flagged = [(k, str(getattr(args, k))) for k in ("model", "dataset", "data_dir", "seed",
                                                   "dtype", "pretrained", *flags)
             if getattr(args, k, None) is not None]
  assignments = list(args.overrides) + flagged
  spelled = getattr(args, "spelled", None)
  if spelled is None or len(spelled) != len(args.overrides):
    spelled = [f"--config.{k}={t}" for k, t in args.overrides]
  spelled = [*spelled, *(f"{_flag(k)} {t}" for k, t in flagged)]
  conflicts = _conflicts(assignments, spelled)
  if conflicts:
    raise config_lib.ConfigError(conflicts)
  out = config_lib.override(cfg, assignments, spelled)
  left_out = model_settings_left_out(cfg, out["model"], assignments, extra_defaults,
                                     model_keys=model_keys)
  if left_out:   # again over the defaults: ``--config.model_kwargs.width=16`` adds to none
    base = config_lib.defaults(extra_defaults)
    for key in left_out:
      cfg[key] = base[key]
    out = config_lib.override(cfg, assignments, spelled)
    return config_lib.to_dict(out), left_out_note(cfg["model"], out, left_out)
  return config_lib.to_dict(out), None


def model_settings_left_out(cfg, model: str, assignments: list[tuple[str, str]],
                            extra_defaults: Mapping[str, Any] | None = None, *,
                            model_keys: tuple[str, ...] = ()) -> dict[str, Any]:
  """The settings of config ``cfg`` for its own model that ``model``, another one, does not take.

  A config's :data:`jaxdepth.train.config.MODEL_KEYS` (``model_kwargs={"width": 8}``,
  ``skip=("relu",)``, ...) belong to its model: given another ``--model`` (a zoo name,
  a file, a saved model, a spec JSON) they would size the user's module or name its
  sites, so each one that differs from its default and that no ``assignments`` sets
  whole (``--config.skip=relu`` keeps it) goes back to its default
  (``--config.model_kwargs.width=16`` then adds to the default's none). ``model_keys``
  are a command's own keys that belong to the model too (EASIER's ``iterations``, one
  per site of the config's model: ``--iterations N`` keeps it).

  Returns:
    ``{key: the config's value}`` of the keys that take their defaults; empty for the
    config's own model.
  """
  if same_setting("model", cfg["model"], model):
    return {}
  base = config_lib.defaults(extra_defaults)
  given = {key for key, _ in assignments}
  return {key: _plain(cfg[key]) for key in (*config_lib.MODEL_KEYS, *model_keys)
          if key in cfg and key not in given and _plain(cfg[key]) != _plain(base[key])}


def _plain(value):
  return value.to_dict() if hasattr(value, "to_dict") else value


def left_out_note(own: str, cfg, left_out: Mapping[str, Any]) -> str:
  """The note saying which settings for the config's own model ``own`` another model
  (``cfg["model"]``) left out, and what they are now.

  A saved model fixes its own architecture and weights and a spec file its architecture
  (``model_kwargs``, ``pretrained`` are refused for them): the note advises setting only
  the others.
  """
  config = pathlib.Path(cfg["config"]).stem
  was = ", ".join(f"{k}={v!r}" for k, v in left_out.items())
  now = ", ".join(f"{k}={_plain(cfg[k])!r}" for k in left_out)
  kind = config_lib.model_kind(cfg["model"])
  fixed = {"model_kwargs": "architecture", **({"pretrained": "weights"} if kind == "saved"
                                               else {})} if kind in ("saved", "spec") else {}
  fixed = {k: what for k, what in fixed.items() if k in left_out}
  rest = [k for k in left_out if k not in fixed]
  advice = "set them for this model with --config.KEY=VALUE"
  if fixed:
    what = "saved model" if kind == "saved" else "spec file"
    own_ones = " and ".join(f"{w} ({k})" for k, w in fixed.items())
    advice = f"the {what} {cfg['model']!r} fixes its own {own_ones}" + (
        f"; set {', '.join(rest)} for it with --config.KEY=VALUE" if rest else "")
  return (f"note: --model {cfg['model']!r} is not the model of config {config} ({own}): its "
          f"settings for {own} ({was}) are left out, so {now}; {advice}")


def maybe_initialize_distributed(multihost: bool) -> None:
  """``jax.distributed.initialize()`` for a multi-process launch (before any device use).

  Called with ``--multihost`` or when ``JAX_COORDINATOR_ADDRESS`` is set, once per
  process (a later call, e.g. a second command in the same process, does nothing).
  On Cloud TPU VMs, under SLURM, Open MPI or Kubernetes jax finds the coordinator,
  the process count and this process's id by itself; elsewhere set
  ``JAX_COORDINATOR_ADDRESS=host:port``, ``JAX_NUM_PROCESSES`` and
  ``JAX_PROCESS_ID`` for each process. CPU processes talk through gloo.

  Raises:
    jaxdepth.train.config.ConfigError: ``JAX_NUM_PROCESSES`` or ``JAX_PROCESS_ID`` is not an
      integer, the id is not in ``[0, JAX_NUM_PROCESSES)`` (a process outside the
      range waits for ever for a launch that cannot start), ``JAX_COORDINATOR_ADDRESS``
      is not ``host:port`` (or, for process 0, its port is in use), ``JAXDEPTH_INIT_TIMEOUT``
      is not a positive whole number of seconds, jax finds no launch to join (no cluster it
      knows, no ``JAX_COORDINATOR_ADDRESS``), no coordinator answers at
      ``JAX_COORDINATOR_ADDRESS`` within that timeout (a process other than 0, which checks
      before joining), or joining fails (Open MPI 5 without mpi4py).

  Every process first prints one line: the launch it joins and how long it waits for the
  others (``JAXDEPTH_INIT_TIMEOUT`` seconds, jax's default 300, passed to jax as
  ``initialization_timeout``). A process that is missing when that time is up (a
  ``JAX_NUM_PROCESSES`` larger than the processes started) cannot be reported here: jax
  ends every process of the launch with SIGABRT (exit code 134) and a native stack.
  """
  if not (multihost or os.environ.get("JAX_COORDINATOR_ADDRESS")):
    return
  trigger = "--multihost" if multihost else "JAX_COORDINATOR_ADDRESS"
  import jax  # pylint: disable=import-outside-toplevel
  if jax.distributed.is_initialized():
    return
  kwargs = {}
  for key, variable in (("num_processes", "JAX_NUM_PROCESSES"),
                        ("process_id", "JAX_PROCESS_ID")):
    text = os.environ.get(variable)
    if text:
      try:
        kwargs[key] = int(text)
      except ValueError:
        raise config_lib.ConfigError(
            f"{variable}={text!r}: must be an integer (the {key.replace('_', ' ')} of this "
            f"multi-process launch); set it or unset it to let jax detect it") from None
  count, index = kwargs.get("num_processes"), kwargs.get("process_id")
  if (count is not None and count < 1) or (index is not None and (
      index < 0 or (count is not None and index >= count))):
    raise config_lib.ConfigError(
        f"JAX_PROCESS_ID={index} with JAX_NUM_PROCESSES={count}: process ids are 0-based, "
        f"0 to {'JAX_NUM_PROCESSES - 1' if count is None else max(count - 1, 0)}, one per "
        f"process of the launch (the first process is 0)")
  problem = _coordinator_problem(index)
  if problem:
    raise config_lib.ConfigError(problem)
  timeout = init_timeout()
  address = os.environ.get("JAX_COORDINATOR_ADDRESS", "").strip()
  launch = (f"a launch of {count} process{'es' if count != 1 else ''}" if count is not None
            else "a multi-process launch")
  _say_error(f"joining {launch}{f' at {address}' if address else ''}"
             f"{f' as process {index}' if index is not None else ''}; waiting up to {timeout} s "
             f"for the others ({INIT_TIMEOUT_ENV})")
  start_time = time.monotonic()
  if address and index is not None and index != 0 and not _coordinator_answers(address, timeout):
    raise config_lib.ConfigError(
        f"JAX_COORDINATOR_ADDRESS={address!r}: no coordinator answered there in {timeout} s. "
        f"Start process 0 of this launch (JAX_PROCESS_ID=0), where the coordinator listens, and "
        f"check that the address names process 0's host and the port every process was given "
        f"(and that no firewall or http_proxy stands between them); {INIT_TIMEOUT_ENV} sets how "
        f"long to wait")
  kwargs["initialization_timeout"] = max(1, math.ceil(timeout - (time.monotonic() - start_time)))
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  way_out = ("leave --multihost out" if multihost else "unset JAX_COORDINATOR_ADDRESS")
  try:
    jax.distributed.initialize(**kwargs)
  except ValueError as e:   # e.g. 'coordinator_address should be defined.'
    raise config_lib.ConfigError(
        f"{trigger}: jax could not join a multi-process launch ({e}). Outside a Cloud TPU "
        f"VM, SLURM, Open MPI or Kubernetes job, set JAX_COORDINATOR_ADDRESS=host:port, "
        f"JAX_NUM_PROCESSES and JAX_PROCESS_ID for each process (docs/launch.md), or "
        f"{way_out} to run on this process's devices") from None
  except RuntimeError as e:   # JaxRuntimeError too: no coordinator, a busy port, no mpi4py
    first = (str(e).strip().splitlines() or [type(e).__name__])[0].rstrip(".")
    advice = ("Install mpi4py in every process's environment (pip install mpi4py; no jaxdepth "
              "extra has it)" if "mpi4py" in first else
              "Check that JAX_COORDINATOR_ADDRESS (or the address jax derives from the cluster) "
              "names the host of process 0 and a free port that every process can reach (pick "
              "another port if it is in use), and that every process of the launch was started")
    raise config_lib.ConfigError(
        f"{trigger}: jax.distributed.initialize() failed ({first}). {advice}; or {way_out} to "
        f"run on this process's devices (docs/launch.md)") from None


INIT_TIMEOUT_ENV = "JAXDEPTH_INIT_TIMEOUT"
DEFAULT_INIT_TIMEOUT = 300   # jax.distributed.initialize's own default, in seconds


def init_timeout() -> int:
  """How long (seconds) a process waits for the others of its launch: ``JAXDEPTH_INIT_TIMEOUT``,
  else 300 (jax's default).

  Raises:
    jaxdepth.train.config.ConfigError: the value is not a positive whole number.
  """
  text = os.environ.get(INIT_TIMEOUT_ENV, "").strip()
  if not text:
    return DEFAULT_INIT_TIMEOUT
  if not (text.isascii() and text.isdigit()) or int(text) < 1:
    raise config_lib.ConfigError(
        f"{INIT_TIMEOUT_ENV}={text!r}: must be a whole number of seconds, 1 or more (how long "
        f"each process of a launch waits for the others; unset, {DEFAULT_INIT_TIMEOUT})")
  return int(text)


def _coordinator_answers(address: str, timeout: float) -> bool:
  """Whether a TCP connection to ``address`` (``host:port``, checked) opens within ``timeout``
  seconds, tried every half second: process 0's coordinator listens there."""
  host, _, port = address.rpartition(":")
  host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
  deadline = time.monotonic() + timeout
  while True:
    try:
      with socket.create_connection((host, int(port)), timeout=5):
        return True
    except OSError:
      if time.monotonic() + 0.5 > deadline:
        return False
      time.sleep(0.5)


def _port_number(text: str) -> int | None:
  """``text`` as a TCP port (1 to 65535), else None."""
  return int(text) if text.isdigit() and 1 <= int(text) <= 65535 else None


def _coordinator_problem(process_id: int | None) -> str | None:
  """What is wrong with ``JAX_COORDINATOR_ADDRESS`` (or ``JAX_COORDINATOR_PORT``), else None.

  Checked before ``jax.distributed.initialize()``, which crashes on such a mistake (an
  IndexError without a port; a segfault in gRPC with a port that is not a number). For
  process 0 (``JAX_PROCESS_ID=0``) the port must be free on this host: the coordinator
  listens there.
  """
  address = os.environ.get("JAX_COORDINATOR_ADDRESS")
  if not address:
    text = os.environ.get("JAX_COORDINATOR_PORT")   # the port of an address jax derives
    if text and _port_number(text.strip()) is None:
      return (f"JAX_COORDINATOR_PORT={text!r}: must be a port number from 1 to 65535 (the "
              f"coordinator's port on the first host of the launch), or unset")
    return None
  host, colon, port = address.strip().rpartition(":")
  bracketed = host.startswith("[") and host.endswith("]")   # an IPv6 host: [::1]
  if (not colon or not host or _port_number(port) is None
      or (any(c in host for c in ":[]") and not bracketed)):
    return (f"JAX_COORDINATOR_ADDRESS={address!r}: must be host:port, the host of process 0 and "
            f"a free port from 1 to 65535 (e.g. 10.0.0.1:1234, or [::1]:1234 for an IPv6 host)")
  if process_id == 0 and not os.environ.get("JAX_COORDINATOR_BIND_ADDRESS"):
    try:   # where jax's coordinator binds: every address, this port
      with socket.socket(socket.AF_INET6 if socket.has_ipv6 else socket.AF_INET) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        probe.bind(("::" if socket.has_ipv6 else "", int(port)))
    except OSError as e:
      if e.errno == errno.EADDRINUSE:
        return (f"JAX_COORDINATOR_ADDRESS={address!r}: port {port} is in use on this host "
                f"(process 0, where the coordinator listens); pick a free port for every "
                f"process of the launch")
  return None


def compute_dtype(name: str):
  """The ``dtype`` argument of the training functions for a config's ``"dtype"``."""
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  return {"float32": None, "bfloat16": jnp.bfloat16}[name]


@contextlib.contextmanager
def _quiet_absl() -> Iterator[None]:
  """tfds warns through absl logging while it looks for files; the error says what matters."""
  logger = logging.getLogger("absl")
  level = logger.level
  logger.setLevel(logging.ERROR)
  try:
    yield
  finally:
    logger.setLevel(level)


def dataset_and_spec(cfg: Mapping[str, Any]):
  """The config's dataset (:func:`jaxdepth.data.load`) and its model: the zoo model sized for
  it, the user's module converted, or a saved model's or spec file's spec (which must fit it).

  Raises:
    jaxdepth.train.config.ConfigError: the dataset is not prepared (one paragraph saying
      how to prepare it), unknown, or the model refuses its arguments.
  """
  from jaxdepth import convert, data, zoo  # pylint: disable=import-outside-toplevel
  try:
    with _quiet_absl():
      ds = data.load(cfg["dataset"], data_dir=cfg["data_dir"], val_fraction=cfg["val_fraction"],
                     split_seed=cfg["split_seed"], val_augment=cfg["val_augment"],
                     image_size=cfg["image_size"], normalization=cfg["normalization"],
                     layout=cfg["layout"], **_text_options(cfg))
  except (data.DatasetNotPrepared, KeyError, ValueError, FileNotFoundError, NotADirectoryError
          ) as e:
    text = " ".join(message(e).split())
    if text.startswith("text datasets need a tokenizer"):   # the library's words for tokenizer=
      text = (f"--dataset {cfg['dataset']} is a text dataset and needs a tokenizer: give "
              f"--config.tokenizer=PATH (a Hugging Face tokenizer.json, or the model folder "
              f"holding it) or --pretrained FOLDER (a Hugging Face model folder, whose "
              f"tokenizer.json is used)")
    raise config_lib.ConfigError(text) from e
  kind = config_lib.model_kind(cfg["model"])
  if kind in ("saved", "spec"):
    spec = _stored_spec(cfg["model"], kind, ds)
    _check_tokenizer(cfg, ds, spec)
    return ds, spec
  try:
    if kind == "module":   # the user's own Flax module, converted
      spec = convert.from_file(cfg["model"], input_shape=ds.input_shape,
                               num_classes=ds.num_classes, seed=cfg["seed"],
                               model_kwargs=cfg["model_kwargs"]).spec
    else:
      spec = zoo.get(cfg["model"], num_classes=ds.num_classes, input_shape=ds.input_shape,
                     **cfg["model_kwargs"])
  except (KeyError, TypeError, ValueError) as e:
    raise config_lib.ConfigError(_model_refused(cfg, ds, e)) from e
  if tuple(spec.output_shape) != (ds.num_classes,):
    raise config_lib.ConfigError(
        f"--config.model={cfg['model']!r} gives {tuple(spec.output_shape)} outputs; the dataset "
        f"{cfg['dataset']!r} has {ds.num_classes} classes: end the model in one output per class "
        f"(a module whose constructor takes num_classes is given the dataset's)")
  _check_tokenizer(cfg, ds, spec)
  return ds, spec


def _stored_spec(model: str, kind: str, ds):
  """The spec of a saved model's directory (``kind="saved"``) or of a spec JSON file, which
  must take the dataset's inputs and give one output per class (a text model of another
  length is told the ``--config.max_length`` it takes).

  Read from this host's files only (:func:`jaxdepth.checkpoint.load_spec`, no orbax): in a
  multi-process launch every process checks its inputs before they agree to go on, and a
  collective here would leave a process that refused earlier waiting for the others."""
  from jaxdepth import checkpoint  # pylint: disable=import-outside-toplevel
  from jaxdepth.spec import Spec  # pylint: disable=import-outside-toplevel
  from jaxdepth.text import takes_token_ids  # pylint: disable=import-outside-toplevel
  try:
    spec = (checkpoint.load_spec(model) if kind == "saved" else
            Spec.from_json(pathlib.Path(model).read_text()))
  except (OSError, ValueError, KeyError, TypeError) as e:   # damaged or mismatched: ValueError
    raise config_lib.ConfigError(f"--config.model={model!r}: {message(e)}") from e
  if (takes_token_ids(spec) and len(spec.input_shape) == len(ds.input_shape) == 1
      and tuple(spec.input_shape) != tuple(ds.input_shape)
      and tuple(spec.output_shape) == (ds.num_classes,)):   # only the text length differs
    raise config_lib.ConfigError(
        f"--config.model={model!r} takes {spec.input_shape[0]} tokens per example, but the "
        f"dataset is tokenized to {ds.input_shape[0]}: use --config.max_length="
        f"{spec.input_shape[0]} (the model's length)")
  if (tuple(spec.input_shape) != tuple(ds.input_shape)
      or tuple(spec.output_shape) != (ds.num_classes,)):
    raise config_lib.ConfigError(
        f"--config.model={model!r} takes inputs {tuple(spec.input_shape)} and gives "
        f"{tuple(spec.output_shape)} outputs; the dataset has inputs {tuple(ds.input_shape)} "
        f"and {ds.num_classes} classes: give a model made for this dataset (or the dataset "
        f"the model was made for, --dataset)")
  return spec


def _model_refused(cfg: Mapping[str, Any], ds, error: Exception) -> str:
  """Why the model could not be built, with its arguments and the dataset's input shape.

  A config's own ``model_kwargs`` are left out for another ``--model`` (:func:`resolve`);
  those given on the command line may not apply: a refused keyword argument says how to
  replace or clear them.
  """
  model = cfg["model"]
  reason = message(error).removeprefix(f"model {model!r}: ")
  text = (f"model {model!r} with model_kwargs {cfg['model_kwargs']!r} for {cfg['dataset']!r} "
          f"(inputs {tuple(ds.input_shape)}, {ds.num_classes} classes): {reason}")
  if isinstance(error, TypeError) and cfg["model_kwargs"]:
    text += ("; give the model's own keyword arguments with --set \"model_kwargs={...}\", "
             "or none with --set \"model_kwargs={}\"")
  return text


def _check_tokenizer(cfg: Mapping[str, Any], ds, spec) -> None:
  """The tokenizer's ids and token types must fit the model's tables
  (:func:`jaxdepth.text.inputs.check_vocabulary`), and a RoBERTa-style encoder, which
  numbers positions from its padding id, needs a tokenizer that pads with that id (else
  padding tokens would be read as real ones)."""
  from jaxdepth.text import TokenPositionEmbedding  # pylint: disable=import-outside-toplevel
  from jaxdepth.text.inputs import check_vocabulary  # pylint: disable=import-outside-toplevel
  try:
    check_vocabulary(spec, ds)
  except ValueError as e:
    raise config_lib.ConfigError(f"--model {cfg['model']!r} with this tokenizer: {e}") from e
  encoder = getattr(ds.train, "encoder", None)
  pad = getattr(encoder, "pad_id", None)
  for path, node in spec.walk():
    if isinstance(node, TokenPositionEmbedding) and node.padding_idx is not None and (
        pad is not None and pad != node.padding_idx):
      raise config_lib.ConfigError(
          f"model {cfg['model']!r} numbers positions from padding id {node.padding_idx} "
          f"({path}), but the tokenizer pads with id {pad}; use the model's own tokenizer "
          f"(--config.tokenizer=FOLDER)")


def _text_options(cfg: Mapping[str, Any]) -> dict[str, Any]:
  """``tokenizer`` and ``max_length`` of :func:`jaxdepth.data.load`: those of the config,
  the tokenizer defaulting to the ``pretrained`` model folder for a text dataset (an
  image dataset refuses them if set)."""
  from jaxdepth.data import glue  # pylint: disable=import-outside-toplevel
  text = cfg["dataset"] in glue.RECIPES
  tokenizer, pretrained = cfg["tokenizer"], cfg["pretrained"]
  if text and tokenizer is None and pretrained is not None and pathlib.Path(pretrained).is_dir():
    tokenizer = pretrained
  options: dict[str, Any] = {}
  if tokenizer is not None:
    options["tokenizer"] = tokenizer
  if text or cfg["max_length"] != config_lib.DEFAULTS["max_length"]:
    options["max_length"] = cfg["max_length"]
  return options


def plural(n: int, noun: str) -> str:
  """``plural(1, "epoch")`` is ``"1 epoch"``, ``plural(2, "site")`` ``"2 sites"``."""
  return f"{n} {noun}" + ("s" if n != 1 else "")


def data_and_devices(ds, workdir: pathlib.Path, mesh) -> str:
  """The end of a command's first line: the splits' sizes, the devices, the work directory."""
  import jax  # pylint: disable=import-outside-toplevel
  return (f"train/val/test {ds.train.num_examples}/{ds.val.num_examples if ds.val else 0}/"
          f"{ds.test.num_examples}; {mesh.devices.size} {jax.devices()[0].platform} device(s); "
          f"workdir {workdir}")


def method_summary(title: str, spec, ds, cfg: Mapping[str, Any], workdir: pathlib.Path, mesh, *,
                   removable: str, schedule: str = "per iteration") -> str:
  """A method command's first line: ``title`` (the method and its settings) on the model and
  data, what it may remove, its epochs (``schedule`` says when), then :func:`data_and_devices`."""
  from jaxdepth import costs  # pylint: disable=import-outside-toplevel
  return (f"{title} on {spec.name}/{ds.name} with {pathlib.Path(cfg['config']).stem}: "
          f"{costs.count_params(spec):,} parameters, {removable}; "
          f"{plural(cfg['epochs'], 'epoch')} {schedule}; {data_and_devices(ds, workdir, mesh)}")


def message(error: Exception) -> str:
  """The text of an error (a KeyError's str() would add quotes)."""
  return str(error.args[0]) if isinstance(error, KeyError) and error.args else str(error)


def no_sites(cfg: Mapping[str, Any], spec, method: str) -> list[str]:
  """The problem of a model without an activation site (nothing for ``method`` to remove)."""
  if spec.sites():
    return []
  from jaxdepth import spec as spec_lib  # pylint: disable=import-outside-toplevel
  return [f"--config.model={cfg['model']!r}: {spec.name} has no activation site for {method} to "
          f"remove; a site is an activation of the network "
          f"({', '.join(a for a in spec_lib.ACTIVATIONS if a != 'identity')})"]


def one_site(cfg: Mapping[str, Any], spec, method: str, why: str) -> list[str]:
  """The problem of a model with a single activation site, for a method that cannot
  remove the last one (``why`` says so)."""
  if len(spec.sites()) != 1:
    return []
  return [f"--config.model={cfg['model']!r}: {spec.name} has a single activation site "
          f"({spec.sites()[0]}); {why}; use a model with two or more sites"]


def check_data(cfg: Mapping[str, Any], ds, *, devices: int, processes: int = 1) -> list[str]:
  """Problems of the batch sizes against the device count, the process count and the splits."""
  out = []
  bs = cfg["batch_size"]
  for key in ("batch_size", "eval_batch_size", "entropy_batch_size"):   # the last: EGP's
    value = cfg.get(key)
    if value is None:
      continue
    for count, what in ((devices, "devices"), (processes, "processes")):
      if count > 1 and value % count:
        out.append(f"--config.{key}={value}: the global batch must split evenly over the "
                   f"{count} {what}; use a multiple of {count}, e.g. "
                   f"{max(count, value // count * count)}")
        break
  train = ds.train.num_examples
  if bs > train:
    val = ds.val.num_examples if cfg.get("val_fraction") and ds.val is not None else 0
    held_out = (f" (--config.val_fraction={cfg['val_fraction']} holds out {val:,} for "
                f"validation; lower it or the batch size)" if bs <= train + val else "")
    out.append(f"--config.batch_size={bs}: larger than the {train:,} examples of the training "
               f"split of {ds.name}, so an epoch would have no step; use at most {train}"
               f"{held_out}")
  return out


def start(session: "Session", parser: argparse.ArgumentParser, argv: list[str]
          ) -> argparse.Namespace | None:
  """Parses ``argv``; answers ``--list`` (then returns None); joins a multi-process launch;
  lets SIGTERM stop the run (:meth:`Session.stop_on_sigterm`)."""
  args = parse(parser, argv)
  if args.list:
    print(listing(registered_commands(), only=session.command))
    return None
  set_up_runtime(args)
  maybe_initialize_distributed(args.multihost)
  session.stop_on_sigterm()
  return args


def set_up_runtime(args: argparse.Namespace) -> None:
  """What a command sets before JAX runs anything: host memory kept, the compilation cache.

  glibc keeps freed memory (:mod:`jaxdepth.host_memory`; off with
  ``JAXDEPTH_KEEP_HOST_MEMORY=0``) and the persistent compilation cache is on
  (:mod:`jaxdepth.compilation_cache`; ``--compilation-cache DIR`` puts it
  elsewhere, ``--no-compilation-cache`` turns it off). A cache directory that
  cannot be made or written to is one warning, and the run compiles without it
  (JAX would warn at every compilation).
  """
  from jaxdepth import compilation_cache, host_memory  # pylint: disable=import-outside-toplevel
  if host_memory.requested():
    host_memory.keep_freed_memory()
  path = None if args.no_compilation_cache else (
      args.compilation_cache or compilation_cache.directory())
  if path is not None:
    try:
      path = pathlib.Path(path).expanduser()
      ensure_writable(path)
    except OSError as e:
      _say_error(f"warning: the compilation cache {path} cannot be used ({e.strerror or e}); "
                 f"compiling without it (--compilation-cache DIR puts it elsewhere)")
      path = None
  compilation_cache.enable(path)


class Prepared(NamedTuple):
  """What :func:`prepare` returns: the checked settings, the work directory, the data, the model."""
  cfg: dict[str, Any]
  workdir: pathlib.Path
  dataset: Any
  spec: Any


def prepare(session: "Session", args: argparse.Namespace, config: str, *,
            extra_defaults: Mapping[str, Any] | None = None, flags: tuple[str, ...] = (),
            model_keys: tuple[str, ...] = (),
            check: Callable[[dict[str, Any]], list[str]] | None = None,
            check_model: Callable[[dict[str, Any], Any, Any], list[str]] | None = None
            ) -> Prepared:
  """Everything a command does before its work, every problem reported at once.

  The config (:func:`resolve`), its shared keys (:func:`jaxdepth.train.config.check`) and
  the command's own (``check(cfg)``), the work directory (``--workdir`` or
  :func:`default_workdir`, recorded in ``session`` for the resume line), the
  dataset and model (:func:`dataset_and_spec`), the batch sizes against the
  devices and the splits (:func:`check_data`) and the command's checks that need
  the model (``check_model(cfg, spec, dataset)``); finally process 0 makes sure
  the work directory is writable and locks it (:meth:`Session.hold`).

  In a multi-process launch every process stops when any one refuses (its own
  files, the lock process 0 takes): the others would wait for it in the run's
  first collective. So does every process when they disagree on the settings (a
  different ``--config.KEY``, ``--workdir`` or copy of the data on one host), which
  would otherwise train different runs that wait for each other for ever
  (:func:`_disagreement`); both are one all-gather, before any work.

  Raises:
    jaxdepth.train.config.ConfigError: one line per problem.
  """
  import jax  # pylint: disable=import-outside-toplevel
  failure = prepared = None
  try:
    prepared = _prepare_here(session, args, config, extra_defaults=extra_defaults, flags=flags,
                             model_keys=model_keys, check=check, check_model=check_model)
  except Exception as e:  # pylint: disable=broad-except  # raised below, after the others know
    failure = e
  if jax.process_count() > 1:
    settings = None if failure is not None else _settings(prepared)
    tables = _gather_settings(settings)
    if failure is None and any(table[0] for table in tables):
      raise config_lib.ConfigError(
          f"another process of this launch refused the run before any work (its output says "
          f"why); process {jax.process_index()} stops too")
    problem = None if failure is not None else _disagreement(tables, settings,
                                                             jax.process_index())
    if problem:
      raise config_lib.ConfigError(problem)
  if failure is not None:
    raise failure
  return prepared


_MAX_KEYS = 256   # settings named one by one when processes disagree (the digest covers all)


def _settings(prepared: Prepared) -> dict[str, Any]:
  """What every process of a launch must agree on: the settings with their paths resolved
  (but not where the config file and the data are read from: what is read is compared), the
  work directory and the data (:func:`jaxdepth.training.data_identity`)."""
  from jaxdepth import training  # pylint: disable=import-outside-toplevel
  cfg = prepared.cfg
  # Compared by what they name (:func:`meaning`), not as spelled; the layout the folder's
  # detection picks is in the data identity.
  out = {k: meaning(k, v, cfg["dataset"]) for k, v in cfg.items()
         if k not in ("config", "data_dir", "layout")}
  out["--workdir"] = os.path.realpath(prepared.workdir)
  out["the data"] = training.data_identity(prepared.dataset)
  return out


def _hash(value, words: int) -> list[int]:
  """The first ``words`` 32-bit words of the sha256 of ``value``'s JSON."""
  import numpy as np  # pylint: disable=import-outside-toplevel
  raw = hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).digest()
  return [int(x) for x in np.frombuffer(raw[:4 * words], "<i4")]


def _gather_settings(settings: dict[str, Any] | None):
  """Every process's ``[refused, digest of settings (8 words), key count, one hash per key]``
  (``settings`` None: this process refused), in process order: one all-gather, every
  process calls it."""
  import numpy as np  # pylint: disable=import-outside-toplevel
  from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel
  table = np.zeros(10 + _MAX_KEYS, np.int32)
  if settings is None:
    table[0] = 1
  else:
    keys = sorted(settings)[:_MAX_KEYS]
    table[1:9] = _hash(settings, 8)
    table[9] = len(keys)
    table[10:10 + len(keys)] = [_hash([k, settings[k]], 1)[0] for k in keys]
  return np.asarray(multihost_utils.process_allgather(table)).reshape(-1, table.size)


def _disagreement(tables, settings: Mapping[str, Any], index: int) -> str | None:
  """The problem when the processes' settings (``tables``, :func:`_gather_settings`) are not
  all process 0's, else None. Naming the keys: a process with process 0's settings names,
  for each other process, its keys whose value that one does not have; a process that
  differs names its own against process 0."""
  differ = [q for q in range(1, len(tables)) if list(tables[q][1:9]) != list(tables[0][1:9])]
  if not differ:
    return None
  keys = sorted(settings)[:_MAX_KEYS]
  mine = [_hash([k, settings[k]], 1)[0] for k in keys]

  def named(other: int) -> list[str]:
    theirs = set(tables[other][10:10 + tables[other][9]].tolist())
    return [k for k, h in zip(keys, mine) if h not in theirs]

  parts = []
  for q in differ[:8]:
    what = named(q) if index not in differ else named(0) if q == index else []
    parts.append(f"process {q} differs from process 0" + (f" in {', '.join(what)}" if what
                                                          else ""))
  more = f" (and {len(differ) - 8} more processes)" if len(differ) > 8 else ""
  return (f"the processes of this launch were given different settings: {'; '.join(parts)}"
          f"{more}. Every process must run the same command with the same config, "
          f"--config.KEY values and --workdir, and read the same data (docs/launch.md); process "
          f"{index} stops, as every process does")


def _prepare_here(session, args, config, *, extra_defaults, flags, model_keys, check,
                  check_model) -> Prepared:
  """:func:`prepare` on this process alone."""
  import jax  # pylint: disable=import-outside-toplevel
  # Another method's shipped config is refused even when its keys are known here (EGP's and
  # NEPENTHE's are the same): run under this command's name, it would be the other method.
  # A fit config (a training recipe) is what every method's configs build on: it is taken.
  owner = _owner_of_config(config, session.command)
  refused = config_lib.ConfigError(
      f"--config {config} is a config of python -m jaxdepth {owner}, not of {session.command}: "
      f"run it there, or pick one of python -m jaxdepth {session.command} --list")
  if owner not in (None, "fit"):
    raise refused
  try:
    cfg, note = _resolve(config, args, extra_defaults=extra_defaults, flags=flags,
                         model_keys=model_keys)
  except config_lib.ConfigError as e:
    if owner is None:
      raise
    raise refused from e
  if note and jax.process_index() == 0:
    _say_error(note)
  workdir = pathlib.Path(args.workdir) if args.workdir else default_workdir(session.command, cfg)
  problems = config_lib.check(cfg) + (check(cfg) if check else [])
  problems += pretrained_problems(cfg, resuming=workdir if has_checkpoints(workdir) else None)
  problems += workdir_problems(args.workdir)
  if problems:
    raise config_lib.ConfigError(problems)
  session.workdir = workdir
  cfg = dataset_as_recorded(cfg, workdir)
  ds, spec = dataset_and_spec(cfg)
  problems = check_data(cfg, ds, devices=jax.device_count(), processes=jax.process_count())
  problems += check_model(cfg, spec, ds) if check_model else []
  if problems:
    raise config_lib.ConfigError(problems)
  if jax.process_index() == 0:
    made = directories_to_make(workdir)
    try:
      ensure_writable(workdir)
    except NotADirectoryError as e:
      raise config_lib.ConfigError(f"--workdir {str(workdir)!r}: {e.strerror}; give a directory "
                                   f"for the run") from e
    session.hold(workdir, made=made)
  return Prepared(cfg, workdir, ds, spec)


_URL = re.compile(r"^[a-z][a-z0-9+.-]*://", re.IGNORECASE)


def workdir_problems(workdir: str | None) -> list[str]:
  """The problem of ``--workdir``: a URL (``gs://``, ``s3://``, ...), which pathlib would take
  for a local folder named ``gs:`` (made, trained in, then refused by orbax at the first
  checkpoint)."""
  if workdir is None or not _URL.match(str(workdir)):
    return []
  return [f"--workdir {str(workdir)!r}: object stores are not supported as work directories; "
          f"mount a POSIX shared file system (NFS, Filestore, Lustre, ...) on every host "
          f"and give its path (docs/launch.md)"]


def pretrained_problems(cfg: Mapping[str, Any], resuming: pathlib.Path | None = None
                        ) -> list[str]:
  """The problem of ``cfg["pretrained"]``: a file that is not there (or a folder
  without the Hugging Face ``model.safetensors``). ``resuming``: the work directory whose
  checkpoints the run resumes from; its run started from the file, and a digest of the
  weights it started from is part of the run, so the file must still be there."""
  path = cfg["pretrained"]
  if resuming and path is not None and not pathlib.Path(path).exists():
    return [f"--config.pretrained={path!r}: no such file or folder; the run in {resuming} "
            f"started from it, and its checkpoints resume only with those weights, unchanged, "
            f"at that path (a digest of the weights a run starts from is part of the run): "
            f"put them back, or use another --workdir"]
  if path is not None and not str(path).strip():   # pathlib reads "" as "."
    return [f"--config.pretrained={path!r}: empty; give a file or folder of weights, or "
            f"--config.pretrained=None to start from a random initialisation"]
  if path is None or pathlib.Path(path).is_file():
    return []
  if pathlib.Path(path).is_dir():
    if (pathlib.Path(path) / "model.safetensors").is_file():
      return []
    return [f"--config.pretrained={path!r}: a folder without model.safetensors; a Hugging "
            f"Face model folder holds config.json and model.safetensors (docs/text.md)"]
  if pathlib.Path(path).suffix in (".safetensors", ".pth"):
    return [f"--config.pretrained={path!r}: no such file. Export torchvision's weights to a "
            f".safetensors file as docs/weights.md shows and give its path (--pretrained FILE), "
            f"or --config.pretrained=None to start from a random initialisation"]
  return [f"--config.pretrained={path!r}: no such file or folder; give a Hugging Face model "
          f"folder holding config.json and model.safetensors (docs/text.md) or a torchvision "
          f".safetensors (or .pth) file (docs/weights.md), or --config.pretrained=None to start "
          f"from a random initialisation"]


def initial_variables(cfg: Mapping[str, Any], spec):
  """The variables a run starts from: a saved model's own (``--model DIR``), else
  ``network.init(spec, key(seed))``, with the weights of
  ``cfg["pretrained"]`` (:func:`jaxdepth.weights.torchvision.load`) when it names a file;
  a text encoder's from a Hugging Face folder or its ``model.safetensors``
  (:func:`jaxdepth.weights.huggingface.load`), the folder's ``config.json`` (where it has
  one) describing the model's encoder.

  Raises:
    jaxdepth.train.config.ConfigError: the file does not fit the model (the first missing,
      unexpected or mis-shaped tensor) or cannot be read; a ``config.json`` that
      jaxdepth cannot run or that describes another encoder than the model; torchvision
      weights for a model that has no torchvision name map.
  """
  import jax  # pylint: disable=import-outside-toplevel
  from jaxdepth import network  # pylint: disable=import-outside-toplevel
  if config_lib.model_kind(cfg["model"]) == "saved":     # fine-tuning a saved model
    from jaxdepth import checkpoint  # pylint: disable=import-outside-toplevel
    return checkpoint.load_model(cfg["model"])[1]
  if cfg["pretrained"] is None:
    return network.init(spec, jax.random.key(cfg["seed"]))
  from jaxdepth.text import takes_token_ids  # pylint: disable=import-outside-toplevel
  from jaxdepth.weights import StateDictError, huggingface, torchvision  # pylint: disable=import-outside-toplevel
  path = pathlib.Path(cfg["pretrained"])
  if takes_token_ids(spec):
    if path.is_dir():
      _check_hf_config(cfg, spec, path / huggingface.CONFIG_FILE)
      path = path / huggingface.WEIGHTS_FILE
  elif path.is_dir():
    raise config_lib.ConfigError(
        f"--config.pretrained={cfg['pretrained']!r} is a folder: an image model starts from a "
        f"torchvision .safetensors (or .pth) file, the folder's file itself "
        f"(docs/weights.md); a Hugging Face model folder loads onto a text encoder only")
  else:
    _check_torchvision_model(cfg, spec)
  variables = network.init(spec, jax.random.key(cfg["seed"]))
  try:
    if takes_token_ids(spec):
      return huggingface.load(spec, path, template=variables,
                              new_head=cfg["pretrained_new_head"])
    return torchvision.load(spec, cfg["pretrained"], template=variables,
                            new_head=cfg["pretrained_new_head"])
  except (StateDictError, ImportError) as e:
    raise config_lib.ConfigError(f"--config.pretrained={cfg['pretrained']!r}: {e}") from e


def _check_hf_config(cfg: Mapping[str, Any], spec, config_path: pathlib.Path) -> None:
  """Refuses a Hugging Face folder whose ``config.json`` jaxdepth cannot run or that describes
  another encoder than ``spec``: its tensors would load onto any encoder of their shapes,
  whatever its activation, ``layer_norm_eps`` or padding id, and compute another function."""
  import json  # pylint: disable=import-outside-toplevel
  from jaxdepth.weights import StateDictError, huggingface  # pylint: disable=import-outside-toplevel
  if not config_path.is_file():
    return
  where = f"--config.pretrained={cfg['pretrained']!r}"
  try:
    config = json.loads(config_path.read_text())
  except (OSError, ValueError) as e:   # json.JSONDecodeError is a ValueError
    raise config_lib.ConfigError(f"{where}: {config_path} is not readable JSON ({e}); "
                                 f"save_pretrained writes the folder's config.json") from e
  if not isinstance(config, Mapping):
    raise config_lib.ConfigError(f"{where}: {config_path} holds a {type(config).__name__}, "
                                 f"not the JSON object of a Hugging Face config")
  try:
    differences = huggingface.config_differences(spec, config, where=huggingface.CONFIG_FILE)
  except StateDictError as e:
    raise config_lib.ConfigError(f"{where}: {e}") from e
  except ValueError as e:
    raise config_lib.ConfigError(f"{where}: {e}; jaxdepth's BERT/RoBERTa encoders cannot run "
                                 f"this checkpoint") from e
  if differences:
    length, classes = spec.input_shape[0], spec.output_shape[0]
    raise config_lib.ConfigError(
        f"{where}: its config.json describes another encoder than --model {cfg['model']!r}: "
        f"{'; '.join(differences)}. Give the --model that config.json describes (the zoo's "
        f"bert_base is bert-base-uncased, roberta_base roberta-base), or its spec as a file: "
        f"write jaxdepth.weights.huggingface.spec_from_hf(config, max_length={length}, "
        f"num_classes={classes}).to_json() to model.json and pass --model model.json")


# The zoo models that torchvision's weights load onto (jaxdepth.weights.torchvision).
_TORCHVISION_MODELS = ("resnet18", "resnet18_imagenet", "resnet20", "mobilenet_v2",
                       "mobilenet_v2_imagenet", "vgg16_bn", "swin_t", "swin_t_imagenet",
                       "digits_swin")


def _check_torchvision_model(cfg: Mapping[str, Any], spec) -> None:
  """Refuses ``--pretrained FILE`` for a model without a torchvision name map (the library's
  way out, ``architecture=``, has no flag)."""
  from jaxdepth.weights import StateDictError, torchvision  # pylint: disable=import-outside-toplevel
  try:
    torchvision.architecture_of(spec)
  except StateDictError as e:
    raise config_lib.ConfigError(
        f"--config.pretrained={cfg['pretrained']!r}: --model {cfg['model']!r} (spec "
        f"{spec.name!r}) has no torchvision name map. --pretrained loads torchvision's "
        f"ResNet-18, MobileNetV2, VGG-16-bn and Swin-T weights onto the zoo's "
        f"{', '.join(_TORCHVISION_MODELS[:-1])} and {_TORCHVISION_MODELS[-1]} (or a spec "
        f"file of one), and a Hugging Face folder onto a text encoder. To start another "
        f"model from weights of your own, place them on its variables in Python "
        f"(jaxdepth.weights.assign with a name map of yours, docs/weights.md), save it with "
        f"jaxdepth.save_model(DIR, spec, variables) and pass --model DIR without --pretrained"
        ) from e


# --------------------------------------------------------------------- workdir


def default_workdir(method: str, cfg: Mapping[str, Any]) -> pathlib.Path:
  """``runs/<method>-<model>-<dataset>-seed<seed>``: another seed is another run."""
  return pathlib.Path("runs") / config_lib.run_name(method, cfg)


def has_checkpoints(workdir: pathlib.Path) -> bool:
  """Whether ``workdir/checkpoints`` holds an orbax step (a numbered directory, sealed or not:
  a run's unfinished save, which opening the checkpoints removes, counts too)."""
  directory = pathlib.Path(workdir) / "checkpoints"
  return directory.is_dir() and any(p.name.isdigit() for p in directory.iterdir())


# Config keys that name files or folders: a run compares them resolved, so that a resume may
# spell them another way (``d``, ``d/``, ``./d``, ``/abs/d``: tab completion, another cwd).
PATH_KEYS = ("model", "pretrained", "tokenizer")


def _resolved(key: str, value):
  """``value`` of ``key`` as an absolute path where it names one (``file.py:Class`` with its
  file resolved); a zoo name, ``None`` or any other key's value as it is."""
  if key not in PATH_KEYS or not isinstance(value, str):
    return value
  if key == "model":
    kind = config_lib.model_kind(value)
    if kind == "module":
      path, _, attr = value.rpartition(":")
      return f"{pathlib.Path(path).resolve()}:{attr}"
    if kind not in ("saved", "spec"):
      return value
  return str(pathlib.Path(value).resolve())


def _folder(value) -> pathlib.Path | None:
  """The resolved folder of a ``folder:<path>`` dataset, or ``None`` (another dataset)."""
  from jaxdepth.data import FOLDER_PREFIX  # pylint: disable=import-outside-toplevel
  if not isinstance(value, str) or not value.startswith(FOLDER_PREFIX):
    return None
  return pathlib.Path(value[len(FOLDER_PREFIX):]).resolve()


def same_setting(key: str, stored, asked, dataset: str | None = None) -> bool:
  """Whether a run's stored ``key`` is the asked one: the same value, or the same
  :func:`meaning` (``--model d/`` resumes ``--model d``, ``--config.normalization=imagenet`` a
  cifar10 run started without it)."""
  return stored == asked or meaning(key, stored, dataset) == meaning(key, asked, dataset)


def meaning(key: str, value, dataset: str | None = None):
  """``value`` of ``key`` as what it names: :data:`PATH_KEYS` resolved, a ``folder:<path>``
  dataset its resolved folder (recorded as given: it is the dataset's name), and
  ``normalization`` ``None`` the default of ``dataset`` (where it is given)."""
  if key == "dataset" and _folder(value) is not None:
    return str(_folder(value))
  if key == "normalization" and dataset is not None and value is None:
    from jaxdepth import data  # pylint: disable=import-outside-toplevel
    return data.default_normalization(dataset)
  return _resolved(key, value)


def dataset_as_recorded(cfg: Mapping[str, Any], workdir: pathlib.Path) -> Mapping[str, Any]:
  """``cfg`` with its ``folder:`` dataset spelled as the run in ``workdir`` recorded it, where
  both name the same folder (``folder:d`` resumes as ``folder:./d/`` or ``folder:/abs/d``:
  the dataset's name is part of a run's identity)."""
  try:
    stored = json.loads((pathlib.Path(workdir) / "run.json").read_text()).get("dataset")
  except (OSError, ValueError, AttributeError):   # none yet (or not a run's): nothing to match
    return cfg
  if stored != cfg["dataset"] and same_setting("dataset", stored, cfg["dataset"]):
    return {**cfg, "dataset": stored}
  return cfg


def recorded_paths(cfg: Mapping[str, Any]) -> dict[str, Any]:
  """``cfg`` with its :data:`PATH_KEYS` resolved, as ``run.json`` records them."""
  return {k: _resolved(k, v) for k, v in cfg.items()}


def _recorded_info(cfg: Mapping[str, Any], keys: tuple[str, ...],
                   workdir: pathlib.Path) -> dict[str, Any]:
  """The config keys ``keys`` as a method run records them (``info``, part of its identity):
  paths resolved, or spelled as the ``run.json`` there has them when they mean the same
  (:func:`same_setting`: a run.json written before paths were resolved resumes, and so does a
  run started without ``normalization`` asked with its default spelled out); one written
  before a key joined :data:`IDENTITY_KEYS` resumes with any value of it."""
  try:
    stored = json.loads((workdir / "run.json").read_text()).get("info") or {}
  except (OSError, ValueError, AttributeError):   # none yet (or not a run's): the driver says
    stored = {}
  # A key the run.json there does not record predates it (its run resumes with any).
  keys = [k for k in keys if not stored or k in stored]
  return {k: stored[k] if k in stored and same_setting(k, stored[k], cfg[k], cfg.get("dataset"))
          else _resolved(k, cfg[k]) for k in keys}


def directories_to_make(workdir: pathlib.Path) -> list[pathlib.Path]:
  """The directories that making ``workdir`` creates, absolute and normalised, outermost first.

  Each level of ``workdir`` as written that is not there yet: ``nx/../mine`` makes ``nx``
  (``mkdir -p`` walks it), not ``mine`` where that folder is there already.
  """
  out = []
  for i in range(1, len(workdir.parts) + 1):
    path = pathlib.Path(os.path.abspath(pathlib.Path(*workdir.parts[:i])))
    if not path.exists() and path not in out:
      out.append(path)
  return out


def ensure_writable(workdir: pathlib.Path) -> None:
  """Creates ``workdir`` and writes (then removes) a probe file; raises OSError if it cannot.

  Raises:
    NotADirectoryError: ``workdir``, or a directory above it, is a file (the
      exception's ``filename``).
  """
  for path in (workdir, *workdir.parents):
    if path.exists() and not path.is_dir():
      raise NotADirectoryError(errno.ENOTDIR, f"{str(path)!r} is a file, not a directory",
                               str(path))
  workdir.mkdir(parents=True, exist_ok=True)
  # Unique across hosts (containers often give every process the same pid): the directory
  # may be shared, a compilation cache that every process of a launch probes at once.
  probe = workdir / f".write-test-{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex}"
  probe.write_bytes(b"")
  probe.unlink(missing_ok=True)


# ------------------------------------------------------------------------ exits

_DISK_FULL = (errno.ENOSPC, errno.EDQUOT)
_READ_ONLY = (errno.EROFS, errno.EACCES, errno.EPERM)


def default_config(name: str, fallback: str, model: str | None, dataset: str | None,
                   extra_defaults: Mapping[str, Any] | None = None) -> str:
  """The one ``<name>_*`` config for ``model`` and ``dataset``, else ``fallback``.

  ``None`` matches any model (dataset); with neither given, or when no config or
  several match, the answer is ``fallback`` (the command's digits default).
  """
  if model is None and dataset is None:
    return fallback
  matches = []
  for config in command_configs(name, registered_commands()):
    values = config_lib.to_dict(config_lib.load(config, extra_defaults))
    if (model or values["model"]) == values["model"] and (
        dataset or values["dataset"]) == values["dataset"]:
      matches.append(config)
  return matches[0] if len(matches) == 1 else fallback


# The config keys beyond the recipe that make a run what it is (stored in run.json).
IDENTITY_KEYS = ("model", "model_kwargs", "val_fraction", "split_seed", "val_augment",
                 "image_size", "normalization", "layout", "tokenizer", "dtype", "max_length")


def run_method(method, spec, ds, cfg: Mapping[str, Any], workdir: pathlib.Path, *, mesh, dtype,
               progress: bool, say: Callable[[str], None], latency: bool = True,
               info_keys: tuple[str, ...] = IDENTITY_KEYS, eval_batch_size: int | None = None):
  """:func:`jaxdepth.driver.run` with a method config's settings.

  ``latency=False`` (``--no-latency``) times nothing: the report has no latency.
  The ``info_keys`` of the config are recorded in the run's identity, paths resolved
  (:func:`same_setting`: ``--model d`` resumes a run started with ``--model d/``).

  A ``ValueError`` the settings cause inside the run becomes a
  :class:`jaxdepth.train.config.ConfigError` (exit code 2); a work directory of another
  run (said in the command line's terms where its initial weights differ,
  :func:`mismatch_in_cli_terms`) and a full or read-only disk keep their own exits.
  """
  from jaxdepth import checkpoint, data, driver  # pylint: disable=import-outside-toplevel
  # Given on a resume too: their digest is checked against the run's, and a run whose only
  # checkpoint was never sealed (removed as unfinished) starts again from them.
  variables = initial_variables(cfg, spec)
  try:
    return driver.run(
        method, spec, ds, config_lib.recipe_of(cfg), workdir, variables=variables,
        iterations=cfg["iterations"],
        tolerance=cfg["tolerance"], seed=cfg["seed"], mesh=mesh, dtype=dtype,
        eval_batch_size=eval_batch_size or cfg["eval_batch_size"], progress=progress,
        checkpoint_epochs=cfg["checkpoint_epochs"],
        fit_options={"eval_every": cfg["eval_every"],
                     "checkpoint_every_steps": cfg["checkpoint_every_steps"]},
        info=_recorded_info(cfg, info_keys, workdir), latency_batches=None if latency else (),
        say=say)
  except driver.RunMismatchError as e:
    said = mismatch_in_cli_terms(e, cfg, workdir)
    if said is e:
      raise
    raise said from e
  except (checkpoint.SpecMismatchError, data.UnreadableImageError):
    raise
  except ValueError as e:
    if storage_failure(e):
      raise
    raise config_lib.ConfigError(str(e)) from e


def mismatch_in_cli_terms(error: Exception, cfg: Mapping[str, Any], workdir: pathlib.Path
                          ) -> Exception:
  """A :class:`jaxdepth.training.RunMismatchError` whose initial variables differ
  (``error.settings`` holds ``"variables"``), said in the command line's terms: the
  library's advice (``variables=``, ``None``) names nothing a command has. Other errors
  as they are.
  """
  from jaxdepth import driver  # pylint: disable=import-outside-toplevel
  settings = getattr(error, "settings", ())
  if "variables" not in settings:
    return error
  if any(k != "variables" for k in settings):   # those differences say it; the weights follow
    return config_lib.ConfigError(str(error).replace(driver.VARIABLES_HINT, ""))
  differs = f"not the ones the run in {workdir} started from (their digest differs)"
  if cfg["pretrained"] is not None:
    text = (f"--config.pretrained={cfg['pretrained']!r}: the weights there are {differs}: put "
            f"back the file it started from, or use another --workdir")
  elif config_lib.model_kind(cfg["model"]) == "saved":
    text = (f"--model {cfg['model']!r}: the saved model's weights are {differs}: put back the "
            f"model it started from, or use another --workdir")
  else:
    text = (f"the run in {workdir} started from other weights than a random initialisation "
            f"with --seed {cfg['seed']} (from --pretrained weights or a saved --model, most "
            f"likely): give the --pretrained FILE or --model DIR it started from, or use "
            f"another --workdir")
  return config_lib.ConfigError(text)


# -------------------------------------------------------------- method commands

@dataclasses.dataclass(frozen=True)
class MethodConfigs:
  """The configs of a method command: ``jaxdepth/train/configs/<name>_*.py`` with the method's keys.

  Attributes:
    name: the command (``"easier"``); without ``--config``, ``--model`` and
      ``--dataset`` pick its config, else ``<name>_digits``.
    defaults: the method's keys beyond those of ``python -m jaxdepth fit``, with
      their defaults.
    flags: the command's flags that set config keys (``--iterations`` sets
      ``iterations``).
    model_keys: the method's keys that belong to the config's model, left out for
      another ``--model`` (:func:`model_settings_left_out`).
  """
  name: str
  defaults: Mapping[str, Any]
  flags: tuple[str, ...] = ()
  model_keys: tuple[str, ...] = ()

  def load(self, config: str | pathlib.Path) -> dict[str, Any]:
    """A config with every default filled in."""
    return config_lib.to_dict(config_lib.load(config, self.defaults))

  def default_config(self, model: str | None = None, dataset: str | None = None) -> str:
    """The one config of this command for ``model`` and ``dataset``, else ``<name>_digits``."""
    return default_config(self.name, f"{self.name}_digits", model, dataset, self.defaults)

  def config_of(self, args: argparse.Namespace) -> str:
    """``--config``, else :meth:`default_config` for the model and dataset the command line
    gives (``--model`` or ``--config.model=``/``--set model=``, the same for the dataset)."""
    given = dict(args.overrides)   # the last assignment of each key
    return args.config or self.default_config(args.model or given.get("model"),
                                              args.dataset or given.get("dataset"))

  def resolve(self, args: argparse.Namespace) -> dict[str, Any]:
    """The config file, then ``--config.KEY=VALUE``, then the dedicated flags (:func:`resolve`)."""
    return resolve(self.config_of(args), args, extra_defaults=self.defaults, flags=self.flags,
                   model_keys=self.model_keys)

  def workdir(self, cfg: Mapping[str, Any]) -> pathlib.Path:
    """The default work directory (:func:`default_workdir`)."""
    return default_workdir(self.name, cfg)

  def prepare(self, session: "Session", args: argparse.Namespace, *,
              check: Callable[[dict[str, Any]], list[str]] | None = None,
              check_model: Callable[[dict[str, Any], Any, Any], list[str]] | None = None
              ) -> Prepared:
    """:func:`prepare` with this command's config and checks."""
    return prepare(session, args, self.config_of(args), extra_defaults=self.defaults,
                   flags=self.flags, model_keys=self.model_keys, check=check,
                   check_model=check_model)


def method_parser(name: str, doc: str) -> argparse.ArgumentParser:
  """Method command ``name``'s parser: ``doc`` as help, the exit codes, :func:`add_run_arguments`."""
  p = argparse.ArgumentParser(prog=f"python -m jaxdepth {name}", description=plain(doc),
                              epilog=EXIT_CODES_HELP,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  add_run_arguments(
      p, config_help=f"a config file, or the name of one in jaxdepth/train/configs/ ({name}_*; default: "
                     f"the one for --model/--dataset, else {name}_digits)",
      workdir_help=f"run directory (default: runs/{name}-<model>-<dataset>-seed<seed>)")
  p.add_argument("--no-latency", dest="latency", action="store_false",
                 help="time nothing: the report leaves out the eval latency of the dense, "
                      "chosen and merged models (each is otherwise compiled and timed at batch "
                      "1 and at the eval batch, which on a CPU can take longer than a short "
                      "run's training)")
  return p


def add_iteration_arguments(p: argparse.ArgumentParser, *, iterations_help: str) -> None:
  """``--iterations`` and ``--tolerance``, the two settings a run may change when resumed."""
  p.add_argument("--iterations", help=iterations_help)
  p.add_argument("--tolerance",
                 help="allowed validation-accuracy drop of the chosen model, in points "
                      "(default: the config's, else 1)")


def check_iterations(cfg: Mapping[str, Any], *, default: str) -> list[str]:
  """Problems of ``iterations`` (``default``: what leaving it out means) and ``tolerance``."""
  out = []
  it, tol = cfg["iterations"], cfg["tolerance"]
  if it is not None and not (isinstance(it, int) and not isinstance(it, bool) and it >= 1):
    out.append(f"--iterations {it!r}: iterations must be an integer >= 1 (or leave it out: "
               f"{default})")
  if not (isinstance(tol, (int, float)) and not isinstance(tol, bool) and math.isfinite(tol)
          and tol >= 0):
    out.append(f"--tolerance {tol!r}: tolerance must be a finite number of accuracy points "
               f">= 0, e.g. 1 (100 accepts any drop)")
  return out


def main_process_say() -> Callable[..., None]:
  """``print`` on process 0, silence on the others (one copy of every line)."""
  import jax  # pylint: disable=import-outside-toplevel
  return print if jax.process_index() == 0 else (lambda *a, **k: None)


def latencies_at(report: Mapping[str, Any], workdir: pathlib.Path, batch: int
                 ) -> dict[str, Any]:
  """Eval latency of the dense, chosen and merged models at ``batch``, in milliseconds.

  The figures of the run's report (``chosen.merged.latency``: the driver times
  the three models side by side at batch 1 and at the evaluation batch) when it
  holds ``batch``; otherwise the saved models are timed the same way
  (:func:`jaxdepth.driver.latencies_ms`), in the run's compute dtype (the
  report's ``"dtype"``; float32 when it has none). Every process must call it:
  each times its own copy, and process 0's figures are the ones written.

  Returns:
    ``{"batch": batch, "dense_ms": ..., "chosen_ms": ..., "merged_ms": ...}`` (a
    model not saved is left out).
  """
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  from jaxdepth import checkpoint, driver  # pylint: disable=import-outside-toplevel
  rows = ((report.get("chosen") or {}).get("merged") or {}).get("latency") or []
  for row in rows:
    if row["batch"] == batch:
      return dict(row)
  models = {name: checkpoint.load_model(workdir / path)
            for name, path in (("dense", "iterations/000/model"), ("chosen", "chosen"),
                               ("merged", "chosen_merged"))
            if (workdir / path / "spec.json").exists()}
  dtype = report.get("dtype", "float32")
  return driver.latencies_ms(models, (batch,),
                             dtype=None if dtype == "float32" else jnp.dtype(dtype))[0]


def _chain(error: BaseException) -> Iterator[BaseException]:
  seen, todo = set(), [error]
  while todo:
    e = todo.pop()
    if e is None or id(e) in seen:
      continue
    seen.add(id(e))
    yield e
    todo += [e.__cause__, e.__context__, *getattr(e, "exceptions", ())]


def storage_failure(error: BaseException) -> str | None:
  """``"disk_full"``, ``"read_only"`` or ``None``: what a write error means.

  Looks through the exception's causes and contexts: Python raises ``OSError``
  with an errno; orbax and tensorstore raise ``ValueError`` or ``RuntimeError``
  whose text carries the system's message (``RESOURCE_EXHAUSTED: ... No space
  left on device``). An accelerator's out-of-memory ``RESOURCE_EXHAUSTED`` is
  not a full disk and gives ``None``.
  """
  for e in _chain(error):
    if isinstance(e, OSError) and e.errno in _DISK_FULL:
      return "disk_full"
    if isinstance(e, OSError) and e.errno in _READ_ONLY:
      return "read_only"
  for e in _chain(error):
    text = str(e)
    if "No space left on device" in text or "Disk quota exceeded" in text:
      return "disk_full"
    if "Read-only file system" in text or "Permission denied" in text:
      return "read_only"
  return None


def _detail(error: BaseException) -> str:
  lines = [line.strip() for line in str(error).splitlines() if line.strip()]
  text = lines[0] if lines else type(error).__name__
  return text if len(text) <= 200 else text[:197] + "..."


def interpreter() -> str:
  """This Python as a shell here runs it: relative to the current folder when it lies under
  it (``.venv/bin/python``), else its absolute path (``python`` when Python cannot tell)."""
  exe = sys.executable
  if not exe:
    return "python"
  try:
    cwd = os.getcwd()
  except OSError:   # the current folder was removed
    return exe
  if os.path.commonpath([os.path.abspath(exe), cwd]) != cwd:
    return exe
  rel = os.path.relpath(exe, cwd)
  return rel if os.sep in rel else os.path.join(".", rel)   # a bare name would be looked up


class Session:
  """One call of a command: its arguments (for the resume line) and, once known, its workdir.

  Args:
    command: the command's name (``fit``, ``easier``, ...).
    argv: its arguments, as given.
  """

  def __init__(self, command: str, argv: list[str]):
    self.command = command
    self.argv = list(argv)
    self.workdir: pathlib.Path | None = None
    self._lock: int | None = None   # the file descriptor holding the workdir's lock
    # The workdir and the highest directory this call created for it (it or one above).
    self._made: tuple[pathlib.Path, list[pathlib.Path]] | None = None
    self._sigterm = None        # SIGTERM's handler before stop_on_sigterm(), once installed
    self._terminated = False    # SIGTERM came
    self._leave = False         # another process of the launch is gone: os._exit at the end

  def hold(self, workdir: pathlib.Path, *,
           made: bool | Sequence[pathlib.Path] = False) -> None:
    """Locks ``workdir`` for the rest of this call, so that no second command runs in it.

    An exclusive ``flock`` on ``workdir/.lock`` (an empty file), released when the
    call ends or the process dies. Two runs in one directory would overwrite each
    other's checkpoints (a job started again while the first still runs). Where
    the file system has no locks, the run goes on without one. ``made``: what this call
    created, ``workdir`` (True) or the directories :func:`directories_to_make` listed; if it
    then refuses the run (exit 2) before writing anything there, they go again (as far as
    they are empty; a directory that was there stays), but only once this call holds the
    lock (refused it, the directory stays to the run holding it).

    Raises:
      jaxdepth.train.config.ConfigError: another process holds the lock.
    """
    if fcntl is not None:
      fd = os.open(workdir / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
      try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        self._lock = fd
      except BlockingIOError:
        os.close(fd)
        raise config_lib.ConfigError(
            f"{workdir} is in use: another run holds its lock ({workdir / LOCK_FILE}). Wait "
            f"for it to end or stop it, then run this command again (it resumes from the last "
            f"checkpoint), or give another --workdir") from None
      except OSError:   # no locks on this file system
        os.close(fd)
    # Only once the directory is this call's: refused, a call that created the directory
    # but lost the lock to another would take away the directory that one runs in.
    here = pathlib.Path(os.path.abspath(workdir))
    made = [here] if made is True else [pathlib.Path(os.path.abspath(p)) for p in made or ()]
    self._made = (here, made) if made else None

  def _release(self) -> None:
    if self._lock is not None:
      os.close(self._lock)   # closing the descriptor drops the flock
      self._lock = None

  def stop_on_sigterm(self) -> None:
    """SIGTERM (``kill``, ``timeout``, a scheduler's ``scancel`` or time limit) stops the run
    as Ctrl-C does: the paragraph with the resume command, exit code 143.

    In a one-process run the signal goes to SIGINT's handler, so it is held as Ctrl-C is
    while a checkpoint is handed to orbax; a second SIGTERM ends the process at once. That
    holds for a launch of one process joined through ``jax.distributed`` too (whose
    preemption service nothing asks with one process). A launch of several processes keeps
    jax's preemption service, which ``jax.distributed.initialize`` installs: a SIGTERM to any
    process reaches all, and every process checkpoints and stops at the same training step
    (:class:`jaxdepth.training.Preempted`); a process that stopped alone would wait for the
    others for ever. Only from the main thread (where Python handles signals); the previous
    handler is back when the call ends.
    """
    import jax  # pylint: disable=import-outside-toplevel
    if (threading.current_thread() is not threading.main_thread()
        or (jax.distributed.is_initialized()   # jax's preemption service has SIGTERM
            and jax.process_count() > 1)):
      return
    previous = signal.signal(signal.SIGTERM, self._on_sigterm)
    if self._sigterm is None:
      self._sigterm = signal.SIG_DFL if previous is None else previous   # None: set in C

  def _on_sigterm(self, signum, frame) -> None:
    del signum
    self._terminated = True
    signal.signal(signal.SIGTERM, signal.SIG_DFL)   # a second SIGTERM ends the process
    training = sys.modules.get("jaxdepth.training")   # not loaded: nothing trains yet
    if training is not None:   # the interrupt below is lost if it lands in a gc callback
      training.request_stop()
    ctrl_c = signal.getsignal(signal.SIGINT)
    if not callable(ctrl_c):   # ignored (a background job of a script) or set in C
      raise KeyboardInterrupt
    ctrl_c(signal.SIGTERM, frame)   # raises KeyboardInterrupt, or holds it during a save

  def resume_line(self) -> str:
    """The exact command that resumes this run (``--workdir`` made explicit), run by this
    Python (:func:`interpreter`): a bare ``python`` may be none, or another one."""
    argv = list(self.argv)
    if self.workdir is not None and not any(a == "--workdir" or a.startswith("--workdir=")
                                            for a in argv):
      argv += ["--workdir", str(self.workdir)]
    return shlex.join([interpreter(), "-m", "jaxdepth", self.command, *argv])

  def _stopped(self, what: str, advice: str) -> str:
    where = f" in {self.workdir}" if self.workdir is not None else ""
    return (f"{what} Nothing was lost: the checkpoints already written{where} are complete "
            f"(a checkpoint being written is discarded on resume). {advice}\n"
            f"    {self.resume_line()}")

  def run(self, body: Callable[[], int]) -> int:
    """``body()``, with every expected way of stopping turned into a paragraph and an exit code."""
    code = None
    try:
      code = self._run(body)
      return code
    finally:
      if code == EXIT_USAGE:   # while the lock is held: a run taking it then keeps its directory
        self._forget_made_workdir()
      self._release()
      if self._sigterm is not None:
        signal.signal(signal.SIGTERM, self._sigterm)
        self._sigterm = None
        training = sys.modules.get("jaxdepth.training")
        if self._terminated and training is not None:   # handled: a later call trains again
          training.clear_stop()
      if self._leave:   # jax's shutdown barrier would wait for the lost process, then abort
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)   # pylint: disable=protected-access

  def _forget_made_workdir(self) -> None:
    """Removes the workdir this call created, when a refusal left nothing in it but the lock
    (bad input writes nothing, e.g. weights found not to fit after the directory was made),
    and the empty directories it created on the way too (``runs/``, ``new1/new2/``, ``nx/`` of
    ``nx/../mine``); never one that was there before."""
    if self._made is None:
      return
    workdir, made = self._made   # absolute and normalised: ``nx/..`` is no ``nx``
    if workdir in made:   # one that was there keeps its lock file, as after any run
      if not workdir.is_dir() or set(os.listdir(workdir)) - {LOCK_FILE}:
        return
      (workdir / LOCK_FILE).unlink(missing_ok=True)
    for path in reversed(made):   # innermost first
      try:
        path.rmdir()   # only an empty one: another process may have put something there
      except OSError:
        return

  def _run(self, body: Callable[[], int]) -> int:
    try:
      return body()
    except KeyboardInterrupt as e:
      from jaxdepth import training  # pylint: disable=import-outside-toplevel
      if self._terminated or isinstance(e, training.Preempted):
        _say_error(self._stopped("Stopped by SIGTERM.", "Resume with the same command:"))
        return EXIT_TERMINATED
      _say_error(self._stopped("Interrupted (Ctrl-C).", "Resume with the same command:"))
      return EXIT_INTERRUPTED
    except config_lib.ConfigError as e:
      for line in e.lines:
        _say_error(f"error: {line}")
      return EXIT_USAGE
    except Exception as e:  # pylint: disable=broad-except
      kind = storage_failure(e)
      if kind == "disk_full":
        _say_error(self._stopped(
            f"The disk is full: a write to the work directory failed ({_detail(e)}).",
            "Free some space and resume with:"))
        return EXIT_DISK_FULL
      if kind == "read_only":
        _say_error(self._stopped(
            f"The work directory{'' if self.workdir is None else ' ' + str(self.workdir)} is "
            f"read-only or not writable ({_detail(e)}).",
            "Make it writable (or give another --workdir to start over) and resume with:"))
        return EXIT_READ_ONLY
      return self._known(e)

  def _known(self, e: Exception) -> int:
    from jaxdepth import _optional, checkpoint, data, training  # pylint: disable=import-outside-toplevel
    if isinstance(e, _optional.MissingExtraError):   # what to install; other ImportErrors are bugs
      _say_error(f"error: {e}")
      return EXIT_USAGE
    if isinstance(e, (data.UnreadableImageError, data.DatasetNotPrepared)):   # read by a batch
      _say_error(self._stopped(f"error: {e}.", "Then resume with:"))
      return EXIT_USAGE
    if isinstance(e, training.NonFiniteLossError):
      if e.kept is not None and self.workdir is not None:   # the run's identity holds the lr
        _say_error(f"error: {e.what} That checkpoint resumes only with the same settings, the "
                   f"learning rate among them, and would diverge again: run again with a lower "
                   f"--config.lr in another --workdir (or after deleting {self.workdir}), or "
                   f"check the data.")
      else:
        _say_error(f"error: {e}")
      return EXIT_DIVERGED
    if isinstance(e, checkpoint.NonFiniteStateError):   # diverged with a finite loss
      _say_error(f"error: {e}. Training diverged: the loss stayed finite but the parameters, "
                 f"the BatchNorm statistics or the optimizer's state overflowed; lower the "
                 f"learning rate or check the data.")
      return EXIT_DIVERGED
    if isinstance(e, (training.RunMismatchError, checkpoint.SpecMismatchError,
                      checkpoint.DamagedCheckpointError, checkpoint.DamagedModelError)):
      _say_error(f"error: {e}")
      return EXIT_USAGE
    lost = _peer_lost(e)
    if lost is not None:
      import jax  # pylint: disable=import-outside-toplevel
      _say_error(f"error: another process of this launch stopped during training ({lost}); "
                 f"its own output says why")
      _say_error(self._stopped(f"Process {jax.process_index()} stopped too.",
                               "Run the same launch again (every process) to resume; this "
                               "process's command:"))
      self._leave = True
      return EXIT_PEER_LOST
    raise e


def _peer_lost(error: BaseException) -> str | None:
  """The first line of jax's error (up to 300 characters) when ``error`` says that a
  collective or jax's coordination service lost another process of a multi-process launch
  (one killed, or stopped by its own error), else None."""
  import jax  # pylint: disable=import-outside-toplevel
  if not jax.distributed.is_initialized() or jax.process_count() == 1:
    return None
  for e in _chain(error):
    text = str(e).strip()
    if (isinstance(e, jax.errors.JaxRuntimeError)
        and any(sign in text.lower() for sign in PEER_LOST_SIGNS)):
      first = (text.splitlines() or [type(e).__name__])[0].rstrip(".")
      return first if len(first) <= 300 else first[:297] + "..."
  return None


def _say_error(text: str) -> None:
  print(text, file=sys.stderr, flush=True)


# ----------------------------------------------------------------------- listing


def _owner_of_config(config: str | pathlib.Path, command: str) -> str | None:
  """The other command whose shipped configs include ``config`` (a name, or the path of a
  file under ``jaxdepth/train/configs/``), else None."""
  path = pathlib.Path(config)
  if path.suffix == ".py" and path.resolve().parent == config_lib.CONFIG_DIR:
    config = path.stem
  config = str(config)
  commands = registered_commands()
  owners = [c for c in commands if c != command and config in command_configs(c, commands)]
  return owners[0] if owners else None


def registered_commands() -> Mapping[str, Any]:
  """The commands of ``python -m jaxdepth`` (:data:`jaxdepth.train.__main__.COMMANDS`)."""
  import importlib  # pylint: disable=import-outside-toplevel
  return importlib.import_module("jaxdepth.train.__main__").COMMANDS


def command_configs(command: str, commands: Mapping[str, Any]) -> list[str]:
  """The configs of ``command``: ``<command>_*`` files; ``fit`` takes those of no other command."""
  others = tuple(f"{c}_" for c in commands if c != "fit")
  if command == "fit":
    return config_lib.available(exclude=others)
  return config_lib.available(prefix=f"{command}_")


def listing(commands: Mapping[str, str], only: str | None = None) -> str:
  """The configs of each command (or of ``only``) with their descriptions, the models, the datasets."""
  from jaxdepth import data, zoo  # pylint: disable=import-outside-toplevel
  lines = []
  for name in [only] if only else commands:
    lines.append(f"configs of python -m jaxdepth {name} (--config NAME, or a path to a .py file):")
    for config in command_configs(name, commands):
      lines.append(f"  {config:28s} {config_lib.description(config)}")
    lines.append("")
  lines.append("models (--model NAME): " + ", ".join(zoo.names()) + "; or path/to/file.py:Class "
               "(your Flax module), a saved model's directory, a spec JSON file")
  lines.append("datasets (--dataset NAME): " + ", ".join(data.names()))
  return "\n".join(lines)
