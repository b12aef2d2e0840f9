"""benchmarks/host_memory.py's settings and options (its steps are too big for a CPU test)."""
import io

import pytest

from jaxdepth import host_memory

import _scripts


@pytest.fixture(scope="module")
def benchmark():
  return _scripts.load("benchmarks/host_memory.py")


def _tunables(env):
  """``GLIBC_TUNABLES`` of an environment as ``{name: value}`` (``{}`` when unset)."""
  value = env.get("GLIBC_TUNABLES")
  return dict(item.split("=") for item in value.split(":")) if value else {}


def test_the_settings_differ_by_one_thing_each(benchmark, monkeypatch):
  envs = []

  class Popen:   # records the environment each worker starts with; the worker says it is ready
    def __init__(self, args, env, **kwargs):
      envs.append(env)
      self.stdout = io.StringIO('{"ready": true}\n')

  # The parent's own settings must not leak into a worker: every worker gets only its setting's.
  monkeypatch.setenv("GLIBC_TUNABLES", "glibc.malloc.hugetlb=1")
  monkeypatch.setenv(host_memory.ENV, "0")
  monkeypatch.setattr(benchmark.subprocess, "Popen", Popen)
  for tunables in benchmark.SETTINGS.values():
    benchmark.Worker("resnet18", tunables, 8)
  default, keep, huge_pages = envs
  assert "GLIBC_TUNABLES" not in default and host_memory.ENV not in default
  # keep: freed memory kept (one arena, no mmap for large blocks, no trimming), no huge pages.
  assert _tunables(keep) == {"glibc.malloc.arena_max": "1", "glibc.malloc.mmap_max": "0",
                             "glibc.malloc.trim_threshold": str(2**64 - 1)}
  # huge_pages: keep's settings and one more.
  assert _tunables(huge_pages) == {**_tunables(keep), "glibc.malloc.hugetlb": "1"}
  # Nothing else in the environment differs.
  rest = [{k: v for k, v in env.items() if k != "GLIBC_TUNABLES"} for env in envs]
  assert rest[0] == rest[1] == rest[2] and "PATH" in rest[0]


@pytest.mark.parametrize("option", ["--steps", "--repeats", "--batch"])
def test_a_block_of_no_steps_is_refused(benchmark, option, capsys):
  with pytest.raises(SystemExit):
    benchmark.parse_args([option, "0"])
  assert "must be positive" in capsys.readouterr().err
