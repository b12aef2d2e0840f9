"""benchmarks/host_memory.py's settings and options (its steps are too big for a CPU test)."""
import importlib.util
import pathlib

import pytest

from jaxdepth import host_memory

ROOT = pathlib.Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def benchmark():
  spec = importlib.util.spec_from_file_location("host_memory_benchmark",
                                                ROOT / "benchmarks" / "host_memory.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def test_the_settings_differ_by_one_thing_each(benchmark):
  assert benchmark.SETTINGS["default"] is None
  assert benchmark.SETTINGS["keep"] == host_memory.TUNABLES
  assert benchmark.SETTINGS["huge_pages"] == host_memory.TUNABLES + ":glibc.malloc.hugetlb=1"


@pytest.mark.parametrize("option", ["--steps", "--repeats", "--batch"])
def test_a_block_of_no_steps_is_refused(benchmark, option, capsys):
  with pytest.raises(SystemExit):
    benchmark.parse_args([option, "0"])
  assert "must be positive" in capsys.readouterr().err
