"""jaxdepth.host_memory: freed memory stays in the process, by mallopt or by GLIBC_TUNABLES."""
import os
import subprocess
import sys

import pytest

from jaxdepth import host_memory

_ALLOCATE_AND_FREE = """
import os, sys
from jaxdepth import host_memory
if sys.argv[1] == "keep_freed_memory":
  assert host_memory.keep_freed_memory()
def resident():
  return int(open("/proc/self/statm").read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
before = resident()
block = bytearray(256 << 20)   # 256 MiB, zero-filled: every page touched
grown = resident() - before
del block
print(grown >> 20, (resident() - before) >> 20)
"""


def _resident_mib(how, tunables=None):
  """MiB resident after 256 MiB were allocated, and after they were freed."""
  env = {k: v for k, v in os.environ.items() if k not in ("GLIBC_TUNABLES", host_memory.ENV)}
  if tunables is not None:
    env["GLIBC_TUNABLES"] = tunables
  done = subprocess.run([sys.executable, "-c", _ALLOCATE_AND_FREE, how], capture_output=True,
                        text=True, timeout=120, env=env, check=True)
  return tuple(int(n) for n in done.stdout.split())


def test_glibc_gives_a_large_freed_block_back_by_default():
  grown, after_free = _resident_mib("defaults")
  assert grown >= 240 and after_free < 16


@pytest.mark.parametrize("how, tunables", [("keep_freed_memory", None),
                                           ("tunables", host_memory.TUNABLES)])
def test_kept_memory_stays_in_the_process_after_free(how, tunables):
  grown, after_free = _resident_mib(how, tunables)
  assert grown >= 240 and after_free >= 240
