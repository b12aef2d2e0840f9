"""benchmarks/host_memory.py's settings and options (its steps are too big for a CPU test)."""
import pytest

from jaxdepth import host_memory

import _scripts


@pytest.fixture(scope="module")
def benchmark():
  return _scripts.load("benchmarks/host_memory.py")


def test_the_settings_differ_by_one_thing_each(benchmark):
  assert benchmark.SETTINGS["default"] is None
  assert benchmark.SETTINGS["keep"] == host_memory.TUNABLES
  assert benchmark.SETTINGS["huge_pages"] == host_memory.TUNABLES + ":glibc.malloc.hugetlb=1"


@pytest.mark.parametrize("option", ["--steps", "--repeats", "--batch"])
def test_a_block_of_no_steps_is_refused(benchmark, option, capsys):
  with pytest.raises(SystemExit):
    benchmark.parse_args([option, "0"])
  assert "must be positive" in capsys.readouterr().err
