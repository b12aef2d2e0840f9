"""JAX's persistent compilation cache, on by default for the ``python -m train`` commands.

XLA compiles every jitted step the first time a process runs it (a CIFAR
ResNet-18 train step: seconds on a CPU). With the persistent cache, compiled
executables are written to a directory and a later process running the same
computation on the same backend loads them instead of compiling: a second run of
the same command compiles nothing.

Where the cache lives (:func:`directory`), first match wins:

1. ``JAXDEPTH_COMPILATION_CACHE=off`` (or ``0``, ``false``, ``no``, empty): no cache;
2. ``JAXDEPTH_COMPILATION_CACHE=/some/dir``: that directory;
3. ``JAX_COMPILATION_CACHE_DIR=/some/dir`` (JAX's own variable): that directory;
4. ``$XDG_CACHE_HOME/jaxdepth/jax``, i.e. ``~/.cache/jaxdepth/jax`` by default.

The commands take ``--compilation-cache DIR`` and ``--no-compilation-cache``,
which win over the environment. Library code never turns the cache on by
itself; call :func:`enable` (before the first compilation) to use it elsewhere.
Every entry is cached, however quick its compilation: the many small
computations of a run add up too.
"""
from __future__ import annotations

import os
import pathlib

import jax

__all__ = ["ENV", "OFF", "directory", "enable"]

ENV = "JAXDEPTH_COMPILATION_CACHE"
OFF = ("", "off", "0", "false", "no", "none")


def directory(environ=None) -> pathlib.Path | None:
  """The cache directory the environment asks for, or ``None`` for no cache (module docstring)."""
  environ = os.environ if environ is None else environ
  if ENV in environ:
    value = environ[ENV].strip()
    return None if value.lower() in OFF else pathlib.Path(value).expanduser()
  if environ.get("JAX_COMPILATION_CACHE_DIR"):
    return pathlib.Path(environ["JAX_COMPILATION_CACHE_DIR"]).expanduser()
  base = environ.get("XDG_CACHE_HOME") or pathlib.Path("~/.cache").expanduser()
  return pathlib.Path(base) / "jaxdepth" / "jax"


def enable(path: str | os.PathLike | None) -> pathlib.Path | None:
  """Turns JAX's persistent compilation cache on at ``path`` (``None``: turns it off).

  Every computation is cached, whatever its compile time or size. Call it
  before the first compilation of the process. Returns the directory used.
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
