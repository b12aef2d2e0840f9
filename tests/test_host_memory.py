"""jaxdepth.host_memory: glibc's tunables, and the restart that puts them in place."""
import os
import subprocess
import sys

from jaxdepth import host_memory

_SHOW = """
import os, sys
from jaxdepth import host_memory
print("start", os.getpid(), os.environ.get("GLIBC_TUNABLES"), flush=True)
host_memory.restart_with_tunables()
print("running", os.getpid(), os.environ.get("GLIBC_TUNABLES"), sys.argv[1:])
"""


def _run(environ):
  env = {k: v for k, v in os.environ.items() if k not in ("GLIBC_TUNABLES", host_memory.ENV)}
  done = subprocess.run([sys.executable, "-c", _SHOW, "an", "argument"], capture_output=True,
                        text=True, timeout=120, env={**env, **environ}, check=True)
  return [line.split(" ", 2) for line in done.stdout.splitlines()]


def test_tunables_are_added_and_those_already_set_keep_their_values():
  assert host_memory.with_tunables(None) == host_memory.TUNABLES
  assert host_memory.with_tunables("") == host_memory.TUNABLES
  assert host_memory.with_tunables(host_memory.TUNABLES) == host_memory.TUNABLES
  mine = "glibc.malloc.hugetlb=0:glibc.cpu.x86_rep_movsb_threshold=4096"
  assert host_memory.with_tunables(mine) == (
      mine + ":glibc.malloc.arena_max=1:glibc.malloc.mmap_max=0:"
      "glibc.malloc.trim_threshold=18446744073709551615")


def test_the_process_starts_again_once_with_the_tunables_and_its_command_line():
  (start, pid, before), (again, pid_again, _), (running, pid_running, after) = _run({})
  assert (start, before, again, running) == ("start", "None", "start", "running")
  assert pid == pid_again == pid_running                 # the same process, replaced
  assert after == f"{host_memory.TUNABLES} ['an', 'argument']"


def test_no_restart_when_the_tunables_are_set_or_host_memory_is_left_alone():
  ours = _run({"GLIBC_TUNABLES": "glibc.malloc.hugetlb=0"})
  assert [line[0] for line in ours] == ["start", "start", "running"]   # the others were missing
  assert ours[-1][2].startswith("glibc.malloc.hugetlb=0:glibc.malloc.arena_max=1:")
  assert [line[0] for line in _run({"GLIBC_TUNABLES": host_memory.TUNABLES})] == [
      "start", "running"]
  left_alone = _run({host_memory.ENV: "0"})
  assert [line[0] for line in left_alone] == ["start", "running"]
  assert left_alone[-1][2] == "None ['an', 'argument']"
