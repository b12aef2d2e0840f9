"""Run configurations: Python files under ``train/configs/`` with a ``get_config()``.

A config file's docstring says how to run it and what it should reach
(big_vision style); ``get_config()`` returns a flat dict whose keys are those of
:data:`DEFAULTS` plus the fields of :class:`jaxdepth.optim.Recipe`. Keys it
leaves out take their defaults; unknown keys are refused by name. On the
command line, ``--set key=value`` overrides any key (values are Python
literals: ``--set lr=0.05 "milestones=(2, 4)" image_size=None``).
"""
from __future__ import annotations

import ast
import dataclasses
import importlib.util
import pathlib
from typing import Any

from jaxdepth import optim

__all__ = ["DEFAULTS", "CONFIG_DIR", "load", "override", "recipe_of", "parse_value"]

CONFIG_DIR = pathlib.Path(__file__).resolve().parent / "configs"

DEFAULTS: dict[str, Any] = {
    "model": "digits_cnn",        # a name of jaxdepth.zoo.names()
    "model_kwargs": {},           # extra keyword arguments of the zoo function
    "dataset": "digits",          # a name of jaxdepth.data.names()
    "data_dir": None,             # tfds data directory (prepared ArrayRecord files)
    "val_fraction": 0.1,          # held out of train where there is no official val split
    "split_seed": 0,
    "val_augment": False,         # the official code's quirk: val keeps train augmentation
    "image_size": None,           # side for variable-size datasets (default 224)
    "normalization": None,        # tfds: "imagenet" (default) or "cifar"
    "seed": 0,                    # init, data order, augmentation and dropout
    "dtype": "float32",           # compute dtype: "float32" or "bfloat16"
    "eval_batch_size": None,      # default: the training batch size
    "eval_every": 1,              # validate every this many epochs
    "checkpoint_every_steps": None,  # also checkpoint inside epochs
}

_RECIPE_KEYS = tuple(f.name for f in dataclasses.fields(optim.Recipe))


def _path(config: str | pathlib.Path) -> pathlib.Path:
  path = pathlib.Path(config)
  if path.suffix != ".py" and not path.exists():
    path = CONFIG_DIR / f"{config}.py"
  if not path.exists():
    known = ", ".join(sorted(p.stem for p in CONFIG_DIR.glob("*.py") if p.stem != "__init__"))
    raise FileNotFoundError(f"config {str(config)!r} not found; give a path to a .py file or "
                            f"one of: {known}")
  return path


def load(config: str | pathlib.Path, extra_defaults: dict[str, Any] | None = None
         ) -> dict[str, Any]:
  """Reads a config file (a path, or a name under ``train/configs/``) with defaults filled in.

  Args:
    config: the file or its name.
    extra_defaults: keys a command adds to :data:`DEFAULTS` and the recipe's
      (a method's settings), with their defaults.

  Returns:
    The config dict, with ``"config"`` set to the file's path.
  """
  path = _path(config)
  module_spec = importlib.util.spec_from_file_location(f"_jaxdepth_config_{path.stem}", path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  if not hasattr(module, "get_config"):
    raise AttributeError(f"config {path} has no get_config() function")
  values = module.get_config()
  if not isinstance(values, dict):
    raise TypeError(f"get_config() of {path} must return a dict, got {type(values).__name__}")
  defaults = {**DEFAULTS, **optim.Recipe().to_dict(), **(extra_defaults or {})}
  _check_keys(values, defaults, f"config {path}")
  return {**defaults, **values, "config": str(path)}


def _check_keys(values, known, where):
  unknown = sorted(set(values) - set(known))
  if unknown:
    raise KeyError(f"{where}: unknown keys {unknown}; known keys: {sorted(known)}")


def parse_value(text: str) -> Any:
  """A Python literal (number, tuple, None, True, ...) or else the text itself."""
  try:
    return ast.literal_eval(text)
  except (ValueError, SyntaxError):
    return text


def override(config: dict[str, Any], assignments: list[str]) -> dict[str, Any]:
  """Applies ``key=value`` assignments (see :func:`parse_value`) to a loaded config."""
  out = dict(config)
  for item in assignments:
    key, sep, value = item.partition("=")
    if not sep or not key:
      raise ValueError(f"--set expects key=value, got {item!r}")
    _check_keys({key}, {k for k in config if k != "config"}, "--set")
    out[key] = parse_value(value)
  return out


def recipe_of(config: dict[str, Any]) -> optim.Recipe:
  """The :class:`~jaxdepth.optim.Recipe` fields of a config."""
  return optim.Recipe.from_dict({k: config[k] for k in _RECIPE_KEYS})
