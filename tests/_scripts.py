"""Loads a script of the repository (benchmarks/, scripts/) as a module, for tests of its pieces."""
import importlib.util
import pathlib
import types

ROOT = pathlib.Path(__file__).resolve().parent.parent


def load(relative_path: str) -> types.ModuleType:
  """The module of ``ROOT / relative_path``, executed once per call."""
  path = ROOT / relative_path
  spec = importlib.util.spec_from_file_location(path.stem, path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module
