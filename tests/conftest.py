"""Shared test set-up: two fake CPU devices and a persistent compilation cache.

Both must be configured before JAX initialises its backend, hence here.
"""
import os
import pathlib
import socket

import jax
import pytest

_CACHE = pathlib.Path(__file__).resolve().parent.parent / ".cache" / "jax"
jax.config.update("jax_num_cpu_devices", 2)
jax.config.update("jax_compilation_cache_dir", os.environ.get("JAX_COMPILATION_CACHE_DIR", str(_CACHE)))
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)


@pytest.fixture
def network_attempts(monkeypatch) -> list:
  """Every socket connection attempted during the test fails; the list collects their
  addresses (tests never download: a loader that tried would show up here)."""
  attempts = []

  def refuse(sock, address, *args, **kwargs):
    attempts.append(address)
    raise OSError(f"no network in tests (connection to {address})")
  monkeypatch.setattr(socket.socket, "connect", refuse)
  return attempts
