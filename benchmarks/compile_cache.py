"""A ``python -m jaxdepth`` command run twice with the persistent compilation cache: the second compiles nothing.

Runs each command twice in fresh processes, with a new, empty cache directory
(``--compilation-cache``) and a new work directory each time, and counts in each
run what XLA was asked to compile and what the cache answered (JAX's
``/jax/compilation_cache/*`` monitoring events):

* ``executables``: the programs the run needed from XLA (compiled or loaded);
* ``cache_hits``: those loaded from the persistent cache;
* ``compiled``: those XLA compiled (``executables`` minus ``cache_hits``);
* ``compile_s``: the seconds spent getting executables (compiling or loading);
* ``wall_s``: the whole command, imports included.

The first run fills the cache; the claim is ``compiled == 0`` in the second.
With ``--no-cache-too``, a third run with ``--no-compilation-cache`` gives the
cost of compiling everything again for comparison. Prints one JSON object.

Run::

    python benchmarks/compile_cache.py [--commands fit easier] [--no-cache-too]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

from jaxdepth.train.__main__ import COMMANDS

# Runs in the child: counts the cache's events around the command's main().
_CHILD = r"""
import json, sys
from jax import monitoring
counts, seconds = {}, {}
def _count(e):
  counts[e] = counts.get(e, 0) + 1
monitoring.register_event_listener(lambda e, **_: _count(e))
def _duration(e, d, **_):
  _count(e)
  seconds[e] = seconds.get(e, 0.0) + d
monitoring.register_event_duration_secs_listener(_duration)
from jaxdepth.train.__main__ import main
code = main(sys.argv[1:])
built = counts.get("/jax/core/compile/backend_compile_duration", 0)
hits = counts.get("/jax/compilation_cache/cache_hits", 0)
print("COMPILATIONS " + json.dumps({
    "exit": code, "executables": built, "cache_hits": hits, "compiled": built - hits,
    "compile_s": round(seconds.get("/jax/core/compile/backend_compile_duration", 0.0), 2)}))
sys.exit(code)
"""


def run_once(command, workdir, cache_args):
  argv = [sys.executable, "-c", _CHILD, command, "--workdir", workdir, "--no-progress", *cache_args]
  tic = time.perf_counter()
  proc = subprocess.run(argv, capture_output=True, text=True, check=False)
  wall = time.perf_counter() - tic
  lines = [l for l in proc.stdout.splitlines() if l.startswith("COMPILATIONS ")]
  if proc.returncode != 0 or not lines:
    raise RuntimeError(f"python -m jaxdepth {command} failed (exit {proc.returncode}):\n"
                       f"{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
  result = json.loads(lines[-1][len("COMPILATIONS "):])
  del result["exit"]
  return {**result, "wall_s": round(wall, 2)}


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--commands", nargs="+", default=["fit"], choices=list(COMMANDS),
                      help="python -m jaxdepth commands to run with their default config")
  parser.add_argument("--no-cache-too", action="store_true",
                      help="also run each once with --no-compilation-cache")
  args = parser.parse_args(argv)
  out = {"load_average_1min": round(os.getloadavg()[0], 2), "commands": {}}
  for command in args.commands:
    with tempfile.TemporaryDirectory() as tmp:
      cache = ["--compilation-cache", os.path.join(tmp, "cache")]
      runs = {"first": run_once(command, os.path.join(tmp, "run1"), cache),
              "second": run_once(command, os.path.join(tmp, "run2"), cache)}
      if args.no_cache_too:
        runs["no_cache"] = run_once(command, os.path.join(tmp, "run3"),
                                    ["--no-compilation-cache"])
    out["commands"][command] = runs
  out["load_average_1min_end"] = round(os.getloadavg()[0], 2)
  print(json.dumps(out))


if __name__ == "__main__":
  main()
