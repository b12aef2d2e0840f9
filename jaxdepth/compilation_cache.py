"""JAX's persistent compilation cache, on by default for the ``python -m jaxdepth`` commands.

XLA compiles every jitted step the first time a process runs it (a CIFAR
ResNet-18 train step: about 4 s on a 2-core CPU, 6-7 s with site statistics). With the
persistent cache, compiled executables are written to a directory and a later
process running the same computation on the same backend and versions loads
them instead of compiling: a second run of the same command compiles nothing
(``benchmarks/compile_cache.py`` measures it).

Where the cache lives (:func:`directory`), first match wins:

1. ``JAXDEPTH_COMPILATION_CACHE=off`` (or ``0``, ``false``, ``no``, empty) or
   ``JAX_ENABLE_COMPILATION_CACHE=false``: no cache;
2. ``JAXDEPTH_COMPILATION_CACHE=/some/dir``: that directory;
3. a directory JAX already has (``JAX_COMPILATION_CACHE_DIR=/some/dir``, or
   ``jax.config.update("jax_compilation_cache_dir", ...)`` earlier in the process);
4. ``$XDG_CACHE_HOME/jaxdepth/jax``, i.e. ``~/.cache/jaxdepth/jax`` by default.

The commands' ``--compilation-cache DIR`` and ``--no-compilation-cache`` win over
all of these. Library code never turns the cache on by itself; call
:func:`enable` (before the first compilation) to use it in a script. Every
computation is cached, however quick its compilation: a run's many small
computations add up too. Entries are keyed by the computation, the devices and
the jax/jaxlib versions, so a stale entry is never used; delete the directory
to reclaim its space.
"""
from __future__ import annotations

import os
import pathlib

import jax

__all__ = ["ENV", "OFF", "directory", "enable"]

ENV = "JAXDEPTH_COMPILATION_CACHE"
OFF = ("", "off", "0", "false", "no", "none")


def directory(environ=None) -> pathlib.Path | None:
  """The cache directory asked for by the environment and JAX's settings, or ``None`` (off).

  See the module docstring for the order of the rules. ``environ`` defaults to
  ``os.environ``.
  """
  environ = os.environ if environ is None else environ
  if ENV in environ:
    value = environ[ENV].strip()
    return None if value.lower() in OFF else pathlib.Path(value).expanduser()
  if not jax.config.jax_enable_compilation_cache:
    return None
  if jax.config.jax_compilation_cache_dir:
    return pathlib.Path(jax.config.jax_compilation_cache_dir).expanduser()
  base = environ.get("XDG_CACHE_HOME") or pathlib.Path("~/.cache").expanduser()
  return pathlib.Path(base) / "jaxdepth" / "jax"


def enable(path: str | os.PathLike | None) -> pathlib.Path | None:
  """Turns JAX's persistent compilation cache on at ``path`` (``None``: turns it off).

  Every computation is cached, whatever its compile time or size. Call it before
  the first compilation of the process (JAX decides once whether it uses a cache).

  Returns:
    The directory used, or ``None``.
  """
  if path is None:
    jax.config.update("jax_enable_compilation_cache", False)
    return None
  path = pathlib.Path(path).expanduser()
  jax.config.update("jax_enable_compilation_cache", True)
  jax.config.update("jax_compilation_cache_dir", str(path))
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
  jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
  return path
