"""Packaging: the core imports and runs without the extras; the extras' errors say what to install;
pyproject's lower bounds are the tested versions pinned in constraints.txt; the wheel installs
only the package jaxdepth (its programs are jaxdepth.train), so a user's train.py shadows nothing."""
import ast
import fnmatch
import json
import os
import pathlib
import re
import subprocess
import sys
import tomllib

import numpy as np
import pytest

from jaxdepth import _optional, report

ROOT = pathlib.Path(__file__).resolve().parent.parent
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
EXTRA_MODULES = ("matplotlib", "PIL", "grain", "sklearn", "tensorflow_datasets", "tokenizers", "torch",
                 "safetensors")

# Runs in a fresh interpreter where importing any extra's module fails, as in an
# environment where only the core was installed.
_WITHOUT_EXTRAS = """
import sys
BLOCKED = {blocked!r}
class Blocker:
  def find_spec(self, name, path=None, target=None):
    if name.split(".")[0] in BLOCKED:
      raise ImportError(f"blocked: {{name}}")
sys.meta_path.insert(0, Blocker())
import jax, numpy as np
import jaxdepth
from jaxdepth import zoo
spec = zoo.digits_cnn()
variables = jaxdepth.init(spec, jax.random.key(0))
x = np.linspace(0, 1, 2 * 64, dtype=np.float32).reshape(2, 8, 8, 1)
out = jaxdepth.forward(spec, variables, x)
assert out.logits.shape == (2, 10), out.logits.shape
loaded = sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED)
assert not loaded, loaded
try:
  jaxdepth.data.load("digits")
except ImportError as error:
  print("DATA-ERROR:", error)
print("OK")
"""


def test_core_imports_and_runs_a_forward_pass_without_the_extras():
  code = _WITHOUT_EXTRAS.format(blocked=set(EXTRA_MODULES))
  done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                        env={"JAX_PLATFORMS": "cpu", "PATH": "/usr/bin:/bin"})
  assert done.returncode == 0, done.stderr[-3000:]
  assert done.stdout.strip().endswith("OK")
  assert "pip install 'jaxdepth[data]'" in done.stdout and "sklearn" in done.stdout


def test_require_names_the_extra_and_keeps_the_cause(monkeypatch):
  for name in ("sklearn", "sklearn.datasets"):   # a None entry makes the import fail
    monkeypatch.setitem(sys.modules, name, None)
  with pytest.raises(ImportError, match=r"the digits dataset needs .*'sklearn'.*jaxdepth\[data\]") as info:
    _optional.require("sklearn.datasets", "data", "the digits dataset")
  assert isinstance(info.value.__cause__, ImportError)
  assert _optional.require("json", "data", "x").dumps([1]) == "[1]"


def test_a_command_without_the_data_extra_says_what_to_install_and_exits_2(
    tmp_path, monkeypatch, capsys):
  """The README's first command without scikit-learn: one line and exit 2, not a traceback."""
  from jaxdepth.train import __main__ as cli  # pylint: disable=import-outside-toplevel
  for name in ("sklearn", "sklearn.datasets"):   # as if the data extra were absent
    monkeypatch.setitem(sys.modules, name, None)
  assert cli.main(["easier", "--workdir", str(tmp_path / "run"), "--no-progress",
                   "--no-compilation-cache"]) == 2
  err = capsys.readouterr().err
  assert err.startswith("error: the digits dataset needs the optional package 'sklearn'")
  assert "pip install 'jaxdepth[data]'" in err and "Traceback" not in err
  assert not (tmp_path / "run").exists()
  with pytest.raises(_optional.MissingExtraError):   # an ImportError still, for library users
    _optional.require("sklearn.datasets", "data", "the digits dataset")


def test_an_import_error_that_is_a_bug_keeps_its_traceback(monkeypatch):
  from jaxdepth.train import command  # pylint: disable=import-outside-toplevel

  def broken():
    raise ImportError("cannot import name 'gone' from 'jaxdepth'")
  with pytest.raises(ImportError, match="cannot import name 'gone'"):
    command.Session("fit", []).run(broken)


def test_report_without_matplotlib_writes_json_and_markdown_and_says_plots_were_skipped(
    tmp_path, monkeypatch):
  monkeypatch.setitem(sys.modules, "matplotlib", None)   # as if the plots extra were absent
  monkeypatch.setattr(report, "table", lambda r: "the table\n")  # its content is not at issue here
  assert not report.plots_available()
  with pytest.warns(UserWarning, match=r"no plots .*jaxdepth\[plots\]"):
    written = report.write(tmp_path, {"method": "easier", "iterations": [{"iteration": 0}]})
  assert set(written) == {"json", "markdown"}
  assert sorted(p.name for p in tmp_path.iterdir()) == ["report.json", "report.md"]
  with pytest.raises(ImportError, match=r"plotting a report needs .*'matplotlib'.*jaxdepth\[plots\]"):
    report._pyplot()  # pylint: disable=protected-access


def test_egp_report_without_matplotlib_writes_its_table_and_skips_the_sparsity_plot(
    tmp_path, monkeypatch):
  from jaxdepth.methods import egp_report  # pylint: disable=import-outside-toplevel
  monkeypatch.setitem(sys.modules, "matplotlib", None)   # as if the plots extra were absent
  monkeypatch.setattr(report, "table", lambda r: "the table\n")  # its content is not at issue here
  pruning = {"nonzero_params": 60, "params": 100, "nominal_sparsity": 0.5, "global_sparsity": 0.4,
             "zero_entropy": [], "merged": {"macs": 900, "nonlinear_depth": 2}}
  rep = {"method": "egp", "iterations": [   # a layer's sparsity: plot_sparsity would draw it
      {"iteration": 0, "params": 100, "pruning": pruning,
       "decision": {"layer_sparsity": {"conv": 0.4}, "global_sparsity": 0.4}}]}
  with pytest.warns(UserWarning, match=r"no plots .*jaxdepth\[plots\]"):
    written = egp_report.write(tmp_path, rep)
  assert set(written) == {"json", "markdown"}
  assert sorted(p.name for p in tmp_path.iterdir()) == ["report.json", "report.md"]
  assert (tmp_path / "report.md").read_text().endswith(
      "## Pruning\n\n" + egp_report.table(rep))
  assert "| 0 | 50.0 | 40.0 | 60 / 100 | 900 | 2 | – |" in egp_report.table(rep)


@pytest.mark.parametrize("command,args", [
    ("tlc", ["--config.iterations=1", "--accuracy-threshold", "0", "--config.rank_batch_size=64",
             "--config.model_kwargs={'width': 8}"]),
    ("lacoot", ["--iterations", "1", "--n-projections", "8", "--config.model_kwargs={'width': 4}",
                "--config.milestones=()"])])
def test_method_commands_without_matplotlib_finish_print_their_tables_and_resume(
    command, args, tmp_path, monkeypatch, capsys):
  from jaxdepth.train import __main__ as cli  # pylint: disable=import-outside-toplevel
  monkeypatch.setitem(sys.modules, "matplotlib", None)   # as if the plots extra were absent
  argv = [command, "--workdir", str(tmp_path), "--no-progress", "--no-latency",
          "--config.epochs=1", *args]
  for _ in range(2):   # the run, then the same command again (it resumes the finished run)
    with pytest.warns(UserWarning, match=r"no plots .*jaxdepth\[plots\]"):
      assert cli.main(argv) == 0
    rep = json.loads((tmp_path / "report.json").read_text())
    assert report.table(rep) in capsys.readouterr().out
  assert (tmp_path / f"{command}.json").exists()
  assert not list(tmp_path.glob("*.png"))


def test_with_matplotlib_plots_are_available():
  assert report.plots_available()
  plt = report._pyplot()  # pylint: disable=protected-access
  import matplotlib  # pylint: disable=import-outside-toplevel
  assert plt.__name__ == "matplotlib.pyplot" and matplotlib.get_backend().lower() == "agg"


def test_report_plots_keep_the_backend_of_a_program_that_uses_pyplot(tmp_path):
  import matplotlib  # pylint: disable=import-outside-toplevel
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
  before, open_figures = matplotlib.get_backend(), plt.get_fignums()
  plt.switch_backend("svg")   # the program's own choice (a notebook: its inline backend)
  try:
    entry = {"iteration": 0, "units_removed": 0, "units_total": 2, "val_accuracy": 0.9,
             "test_accuracy": 0.8}
    path = report.plot_accuracy({"iterations": [entry], "tolerance_points": 1.0},
                                tmp_path / "accuracy.png")
    assert matplotlib.get_backend() == "svg"
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert plt.get_fignums() == open_figures   # the report's figure is closed: never shown
  finally:
    plt.switch_backend(before)


def _requirements():
  reqs = list(PYPROJECT["project"]["dependencies"])
  for extra, items in PYPROJECT["project"]["optional-dependencies"].items():
    reqs += [r for r in items if not r.startswith("jaxdepth[")]
  return reqs


def _pins():
  lines = (ROOT / "constraints.txt").read_text().splitlines()
  pins = dict(line.split("==") for line in lines if line and not line.startswith("#"))
  return {re.sub(r"[-_.]+", "-", k).lower(): v for k, v in pins.items()}


def test_lower_bounds_are_the_pinned_tested_versions():
  pins = _pins()
  for req in _requirements():
    m = re.fullmatch(r"([A-Za-z0-9_.\-]+)>=([0-9.]+)(,!=[0-9.]+)*", req)
    assert m, f"{req!r}: declare a tested lower bound, 'name>=version' (and any '!=version')"
    name, low = re.sub(r"[-_.]+", "-", m[1]).lower(), m[2]
    assert pins.get(name) == low, f"{name}: pyproject says >={low}, constraints.txt pins {pins.get(name)}"


def _top_level_imports(path):
  tree = ast.parse(path.read_text())
  for node in tree.body:   # module level only: lazy imports inside functions are allowed
    if isinstance(node, ast.Import):
      yield from (a.name.split(".")[0] for a in node.names)
    elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
      yield node.module.split(".")[0]


def test_no_module_of_the_library_imports_an_extra_at_import_time():
  offenders = [f"{p.relative_to(ROOT)}: {m}" for p in sorted((ROOT / "jaxdepth").rglob("*.py"))
               for m in _top_level_imports(p) if m in EXTRA_MODULES]
  assert not offenders, offenders


def test_extras_are_installed_here_as_the_test_extra_promises():
  assert {"data", "plots", "weights", "demo", "test"} <= set(PYPROJECT["project"]["optional-dependencies"])
  import matplotlib, PIL, grain, sklearn, tensorflow_datasets, safetensors  # noqa: F401,E401  pylint: disable=import-outside-toplevel,multiple-imports
  assert np.__version__ == _pins()["numpy"]


def _packages(include):
  """The packages setuptools' ``find_packages(ROOT, include=include)`` finds: directories with an
  ``__init__.py`` reached through packages only, named dotted and kept where a pattern matches."""
  found, todo = [], [(ROOT, "")]
  while todo:
    directory, prefix = todo.pop()
    for sub in sorted(p for p in directory.iterdir() if p.is_dir()):
      name = prefix + sub.name
      if "." in sub.name or not (sub / "__init__.py").is_file():
        continue   # setuptools neither takes nor descends into a directory that is no package
      if any(fnmatch.fnmatchcase(name, pattern) for pattern in include):
        found.append(name)
      todo.append((sub, name + "."))
  return sorted(found)


def test_the_wheel_installs_the_single_top_level_package_jaxdepth():
  """A top-level ``train`` (the programs' old home) was shadowed by any user's train.py."""
  include = PYPROJECT["tool"]["setuptools"]["packages"]["find"]["include"]
  packages = _packages(include)
  assert {name.split(".")[0] for name in packages} == {"jaxdepth"}, packages
  assert {"jaxdepth", "jaxdepth.train", "jaxdepth.train.configs"} <= set(packages)
  try:
    import setuptools  # pylint: disable=import-outside-toplevel
  except ImportError:
    pass   # not installed here: the walk above mirrors its find_packages
  else:
    assert sorted(setuptools.find_packages(str(ROOT), include=include)) == packages


def test_the_console_script_is_the_cli_main_and_returns_an_exit_code(capsys):
  module, _, name = PYPROJECT["project"]["scripts"]["jaxdepth"].partition(":")
  import importlib  # pylint: disable=import-outside-toplevel
  main = getattr(importlib.import_module(module), name)
  assert main(["--help"]) == 0 and main([]) == 2   # sys.exit(main()) gets an int
  assert capsys.readouterr().out.startswith("usage: python -m jaxdepth <command>")


def test_no_module_of_the_library_imports_its_programs():
  """jaxdepth.train builds on the library; nothing of the library imports it back."""
  offenders = []
  for path in sorted((ROOT / "jaxdepth").rglob("*.py")):
    if path == ROOT / "jaxdepth" / "__main__.py" or ROOT / "jaxdepth" / "train" in path.parents:
      continue   # the programs themselves, and python -m jaxdepth that runs them
    for node in ast.walk(ast.parse(path.read_text())):   # lazy imports in functions too
      if isinstance(node, ast.Import):
        names = [a.name for a in node.names]
      elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
        names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
      else:
        continue
      offenders += [f"{path.relative_to(ROOT)}: {n}" for n in names
                    if n == "jaxdepth.train" or n.startswith("jaxdepth.train.")]
  assert not offenders, offenders


@pytest.mark.parametrize("user_file", ["train.py", "train/__init__.py"])
@pytest.mark.parametrize("module", ["jaxdepth", "jaxdepth.train"])
def test_the_cli_runs_from_a_folder_holding_the_users_own_train_module(tmp_path, user_file, module):
  """``python -m jaxdepth`` from a folder with the user's train.py (or train/) runs jaxdepth's CLI,
  not the user's script."""
  (tmp_path / user_file).parent.mkdir(parents=True, exist_ok=True)
  (tmp_path / user_file).write_text("print('THE USER SCRIPT RAN')\n")
  env = dict(os.environ, PYTHONPATH=str(ROOT), JAX_PLATFORMS="cpu")
  done = subprocess.run([sys.executable, "-m", module, "--help"], cwd=tmp_path, env=env,
                        capture_output=True, text=True, timeout=120)
  assert done.returncode == 0, done.stderr[-3000:]
  assert done.stdout.startswith("usage: python -m jaxdepth <command> [options]"), done.stdout
  assert "THE USER SCRIPT RAN" not in done.stdout + done.stderr


def test_python_m_jaxdepth_prints_its_usage_without_loading_jax_or_a_users_train(tmp_path):
  (tmp_path / "train.py").write_text("print('THE USER SCRIPT RAN')\n")
  env = dict(os.environ, PYTHONPATH=str(ROOT), JAX_PLATFORMS="cpu")
  code = ("import sys, runpy\nsys.argv = ['jaxdepth', '--help']\n"
          "try:\n  runpy.run_module('jaxdepth', run_name='__main__')\nexcept SystemExit:\n  pass\n"
          "print(sorted(m for m in sys.modules if m.split('.')[0] in ('jax', 'flax', 'train')))")
  done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env,
                        capture_output=True, text=True, timeout=120)
  assert done.returncode == 0, done.stderr[-3000:]
  assert done.stdout.strip().splitlines()[-1] == "[]", done.stdout


def test_a_users_model_file_imports_its_own_train_module_beside_it(tmp_path):
  """``--model mynet.py:MyNet`` where mynet.py does ``from train import ...`` (the user's
  train.py beside it): with the CLI's modules loaded, ``train`` is still the user's."""
  (tmp_path / "train.py").write_text("WIDTH = 3\n")
  (tmp_path / "mynet.py").write_text(
      "import flax.linen as nn\nfrom train import WIDTH\n\n"
      "class MyNet(nn.Module):\n  width: int = WIDTH\n\n  @nn.compact\n"
      "  def __call__(self, x):\n    return nn.Dense(self.width)(x.reshape(x.shape[0], -1))\n")
  code = ("from jaxdepth.train import __main__, command, fit\nfrom jaxdepth import convert\n"
          "print('WIDTH', convert.load_class('mynet.py:MyNet')().width)")
  done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True,
                        env=dict(os.environ, PYTHONPATH=str(ROOT), JAX_PLATFORMS="cpu"), timeout=300)
  assert done.returncode == 0, done.stderr[-3000:]
  assert done.stdout.strip().splitlines()[-1] == "WIDTH 3", done.stdout
