"""Keeps freed host memory in the process, so that XLA:CPU stops faulting its buffers in at every step.

XLA:CPU allocates the buffers of a jitted computation (its temporaries: 0.4 GB
for a CIFAR ResNet-18 train step at batch 128, 2.7 GB for MobileNetV2) from
the C allocator at every call and frees them after. glibc serves allocations
this large with fresh ``mmap`` pages and gives them back at ``free``, so every
step page-faults all of it in again, zero-filled by the kernel: on a 2-core CPU
that is about a third of a MobileNetV2 train step (656,000 page faults; 3.2 s of
CPU time per step against 2.0 s with the memory kept).

:func:`keep_freed_memory` tells glibc to keep what is freed (one arena, no
``mmap`` for large blocks, no trimming), so a step reuses the pages of the one
before. The process keeps its peak memory instead of returning it to the
system. The ``python -m jaxdepth`` commands call it at start-up unless
``JAXDEPTH_KEEP_HOST_MEMORY=0``; call it first thing in a script of your own
(before JAX runs anything: threads created earlier keep their own arenas).
It does nothing where the C library is not glibc (macOS, musl).

For a process you start, :data:`TUNABLES` is the same as ``GLIBC_TUNABLES``
(glibc reads it when the process starts). Measured side by side
(``benchmarks/host_memory.py``, CIFAR, batch 128, a 2-core CPU), a train step
with the memory kept took 0.70-0.73 of its time under glibc's defaults for
MobileNetV2, 0.83-0.86 for ResNet-18; transparent huge pages for the heap on top
(``glibc.malloc.hugetlb=1``) moved it by less than the noise (0.92-1.06 and
0.97-1.08), so the commands do not ask for them.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os

__all__ = ["ENV", "TUNABLES", "keep_freed_memory", "requested"]

ENV = "JAXDEPTH_KEEP_HOST_MEMORY"

# What keep_freed_memory() sets: (glibc tunable, mallopt parameter of malloc.h, value). One
# arena, no mmap for large blocks, never trim the heap (-1: SIZE_MAX).
_SETTINGS = (("arena_max", -8, 1), ("mmap_max", -4, 0), ("trim_threshold", -1, -1))

# The same settings as glibc tunables, for GLIBC_TUNABLES of a process one starts.
TUNABLES = ":".join(f"glibc.malloc.{name}={value % 2**64}" for name, _, value in _SETTINGS)


def requested(environ=None) -> bool:
  """False when ``JAXDEPTH_KEEP_HOST_MEMORY`` is ``0``, ``off``, ``false`` or ``no``."""
  environ = os.environ if environ is None else environ
  return environ.get(ENV, "1").strip().lower() not in ("0", "off", "false", "no")


def keep_freed_memory() -> bool:
  """Makes glibc keep freed memory for reuse; returns whether it could (glibc only)."""
  name = ctypes.util.find_library("c")
  try:
    libc = ctypes.CDLL(name)
    mallopt = libc.mallopt
    libc.gnu_get_libc_version   # only glibc has it
  except (OSError, AttributeError, TypeError):
    return False
  mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
  return all(mallopt(param, value) == 1 for _, param, value in _SETTINGS)
