"""The notebooks in ``notebooks/``: stored without outputs, listed in the README, and run end to end.

Each notebook runs in its own Jupyter kernel (nbclient; a fresh interpreter with
one CPU device, as a user's) with ``JAXDEPTH_NOTEBOOK_SMALL=1``, which its first
cell reads to pick small settings (fewer epochs and iterations). Its last cell
asserts what must hold whatever the settings (the run's decisions recomputed with
the method's own functions, the merged model equal to the chosen one, ...) and
prints ``all checks passed``; here the test also checks that every figure was
shown. The kernels share the test suite's persistent compilation cache.
"""
import json
import os
import pathlib
import sys

import jax
import nbformat
import pytest
from nbclient import NotebookClient

ROOT = pathlib.Path(__file__).resolve().parent.parent
NOTEBOOKS = ROOT / "notebooks"
# Every notebook, with the number of figures it shows (PNG outputs).
FIGURES = {"easier": 5, "egp": 5, "nepenthe": 4, "lacoot": 3, "tlc": 3, "surgery": 1}
KERNEL = "jaxdepth-tests"
# Lines a notebook prints with the small settings. EGP's bar chart plots the rounds applied:
# with 2 iterations only round 1 (it plotted [1, 2], the last decision never applied).
PRINTED = {"egp": ["rounds plotted: [1]"]}


def _read(name):
  return nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)


def test_every_notebook_is_tested_and_listed_in_the_readme():
  assert sorted(p.stem for p in NOTEBOOKS.glob("*.ipynb")) == sorted(FIGURES)
  readme = (ROOT / "README.md").read_text()
  missing = [name for name in FIGURES if f"notebooks/{name}.ipynb" not in readme]
  assert not missing, f"README does not list {missing}"


@pytest.mark.parametrize("name", sorted(FIGURES))
def test_notebook_is_stored_valid_and_without_outputs(name):
  nb = _read(name)
  nbformat.validate(nb)
  assert nb.metadata.kernelspec.name == "python3"
  code = [c for c in nb.cells if c.cell_type == "code"]
  assert all(not c.outputs and c.execution_count is None for c in code), (
      f"{name}.ipynb holds outputs or execution counts: clear all outputs before committing")
  assert "JAXDEPTH_NOTEBOOK_SMALL" in code[0].source   # the first cell picks the settings
  assert "all checks passed" in code[-1].source


@pytest.fixture
def kernel(tmp_path, monkeypatch):
  """A kernel spec running this interpreter, found before any other Jupyter knows of."""
  spec = tmp_path / "jupyter" / "kernels" / KERNEL
  spec.mkdir(parents=True)
  (spec / "kernel.json").write_text(json.dumps({
      "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
      "display_name": "jaxdepth tests", "language": "python"}))
  monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
  return KERNEL


@pytest.mark.parametrize("name", sorted(FIGURES))
def test_notebook_runs_with_small_settings(name, kernel, tmp_path):
  nb = _read(name)
  env = {k: v for k, v in os.environ.items() if not k.startswith(("XLA_", "JAX_"))}
  env.update(JAXDEPTH_NOTEBOOK_SMALL="1", JAX_PLATFORMS="cpu",
             JAX_COMPILATION_CACHE_DIR=jax.config.jax_compilation_cache_dir,
             JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
             JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")
  work = tmp_path / "work"   # the kernel's working directory: the runs go there
  work.mkdir()
  client = NotebookClient(nb, timeout=600, kernel_name=kernel,
                          resources={"metadata": {"path": str(work)}})
  client.execute(env=env)   # raises CellExecutionError, with the cell and its traceback
  figures = sum("image/png" in o.get("data", {})
                for c in nb.cells if c.cell_type == "code" for o in c.outputs)
  assert figures == FIGURES[name], f"{name}.ipynb showed {figures} figures"
  last = [c for c in nb.cells if c.cell_type == "code"][-1]
  assert any(o.output_type == "stream" and "all checks passed" in o.text for o in last.outputs)
  text = "".join(o.text for c in nb.cells if c.cell_type == "code" for o in c.outputs
                 if o.output_type == "stream")
  for line in PRINTED.get(name, []):
    assert line in text, f"{name}.ipynb did not print {line!r}"
  assert any((work / "runs").iterdir())
