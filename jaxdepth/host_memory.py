"""glibc's settings for XLA:CPU's host buffers: freed memory kept for the next step, huge pages.

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
system. The ``python -m train`` commands call it at start-up unless
``JAXDEPTH_KEEP_HOST_MEMORY=0``; call it first thing in a script of your own
(before JAX runs anything: threads created earlier keep their own arenas).
It does nothing where the C library is not glibc (macOS, musl).

Huge pages: with 4 KiB pages a MobileNetV2 step walks 2.7 GB of temporaries
through some 660,000 page-table entries. glibc asks the kernel for transparent
huge pages (2 MiB) on the memory it takes for the heap when the tunable
``glibc.malloc.hugetlb=1`` is set, which glibc reads once, when the process
starts (Linux's usual THP mode, ``madvise``, gives huge pages only to memory
asked for so). :data:`TUNABLES` is that tunable with the three settings above;
:func:`restart_with_tunables` starts the process again with them in
``GLIBC_TUNABLES`` (the ``python -m train`` commands do, first thing). Side by
side (``benchmarks/host_memory.py``, CIFAR, batch 128, a 2-core CPU), a
MobileNetV2 train step took 0.90-0.92 of its time with freed memory kept alone;
ResNet-18's, with 0.4 GB of temporaries, 0.95-1.08 in two runs: no change
beyond the noise.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

__all__ = ["ENV", "TUNABLES", "keep_freed_memory", "requested", "restart_with_tunables",
           "with_tunables"]

ENV = "JAXDEPTH_KEEP_HOST_MEMORY"

# keep_freed_memory()'s settings as glibc tunables, and transparent huge pages for the heap.
TUNABLES = ("glibc.malloc.arena_max=1:glibc.malloc.mmap_max=0:"
            "glibc.malloc.trim_threshold=18446744073709551615:glibc.malloc.hugetlb=1")

# glibc's mallopt parameters (malloc.h).
_M_TRIM_THRESHOLD, _M_MMAP_MAX, _M_ARENA_MAX = -1, -4, -8


def requested(environ=None) -> bool:
  """False when ``JAXDEPTH_KEEP_HOST_MEMORY`` is ``0``, ``off``, ``false`` or ``no``."""
  environ = os.environ if environ is None else environ
  return environ.get(ENV, "1").strip().lower() not in ("0", "off", "false", "no")


def keep_freed_memory() -> bool:
  """Makes glibc keep freed memory for reuse; returns whether it could (glibc only)."""
  libc = _glibc()
  if libc is None:
    return False
  mallopt = libc.mallopt
  mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
  return all(mallopt(param, value) == 1 for param, value in (
      (_M_ARENA_MAX, 1), (_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, -1)))   # -1: SIZE_MAX, never trim


def with_tunables(current: str | None) -> str:
  """``GLIBC_TUNABLES`` with :data:`TUNABLES` added to ``current`` (whose tunables keep their values)."""
  entries = [e for e in (current or "").split(":") if e]
  names = {e.split("=", 1)[0] for e in entries}
  return ":".join(entries + [t for t in TUNABLES.split(":") if t.split("=", 1)[0] not in names])


def restart_with_tunables() -> None:
  """Starts this process again, same command line, with :data:`TUNABLES` in ``GLIBC_TUNABLES``.

  Returns (doing nothing) when they are there already, when
  ``JAXDEPTH_KEEP_HOST_MEMORY`` is off, where the C library is not glibc, or
  where the interpreter cannot be started again (no ``sys.executable``). Call
  it first thing in a script's ``if __name__ == "__main__":`` block, before
  anything worth keeping happened: the process is replaced (same pid, stdin
  and files; ``sys.orig_argv`` runs again).
  """
  current = os.environ.get("GLIBC_TUNABLES")
  wanted = with_tunables(current)
  if (wanted == current or not requested() or _glibc() is None or not sys.executable
      or not sys.orig_argv):
    return
  os.environ["GLIBC_TUNABLES"] = wanted
  sys.stdout.flush()
  sys.stderr.flush()
  os.execv(sys.executable, sys.orig_argv)


def _glibc() -> ctypes.CDLL | None:
  """The C library where it is glibc, else None."""
  try:
    libc = ctypes.CDLL(ctypes.util.find_library("c"))
    libc.gnu_get_libc_version   # only glibc has it
    libc.mallopt
  except (OSError, AttributeError, TypeError):
    return None
  return libc
