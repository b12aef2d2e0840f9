"""Run configurations: Python files under ``train/configs/`` with a ``get_config()``.

A config file's docstring says how to run it and what it should reach
(big_vision style); ``get_config()`` returns a flat dict whose keys are those of
:data:`DEFAULTS` plus the fields of :class:`jaxdepth.optim.Recipe`. Keys it
leaves out take their defaults; unknown keys are refused by name. On the
command line, ``--set key=value`` overrides any key (values are Python
literals: ``--set lr=0.05 "milestones=(2, 4)" image_size=None``).

The commands (``train/fit.py``, ``train/easier.py``) share the flags, the
config resolution and the dataset/model loading defined at the end.
"""
from __future__ import annotations

import argparse
import ast
import dataclasses
import importlib.util
import pathlib
import re
from typing import Any

from jaxdepth import optim

__all__ = ["DEFAULTS", "CONFIG_DIR", "RUN_FLAGS", "load", "override", "recipe_of", "parse_value",
           "add_run_arguments", "add_launch_arguments", "resolve", "run_name", "compute_dtype",
           "error_message", "dataset_and_spec"]

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


# ------------------------------------------------------- what the commands share

RUN_FLAGS = ("model", "dataset", "data_dir", "seed", "dtype")


def add_run_arguments(p: argparse.ArgumentParser, *, workdir_help: str) -> None:
  """The flags of :data:`RUN_FLAGS`, plus ``--workdir``."""
  p.add_argument("--model", help="a zoo model (overrides the config's)")
  p.add_argument("--dataset", help="a dataset name (overrides the config's)")
  p.add_argument("--workdir", help=workdir_help)
  p.add_argument("--data-dir", "--data_dir", dest="data_dir", help="tfds data directory")
  p.add_argument("--seed", type=int, help="overrides the config's seed")
  p.add_argument("--dtype", choices=("float32", "bfloat16"), help="compute dtype")


def add_launch_arguments(p: argparse.ArgumentParser) -> None:
  """``--set``, ``--multihost`` and ``--no-progress``."""
  p.add_argument("--set", dest="overrides", nargs="+", action="extend", default=[],
                 metavar="KEY=VALUE", help="override config keys, e.g. --set epochs=2 lr=0.01")
  p.add_argument("--multihost", action="store_true",
                 help="call jax.distributed.initialize() (multi-process runs)")
  p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bars")


def resolve(config: str | pathlib.Path, args: argparse.Namespace, *,
            extra_defaults: dict[str, Any] | None = None,
            flags: tuple[str, ...] = RUN_FLAGS) -> dict[str, Any]:
  """The config file, then ``args.overrides`` (``--set``), then the given ``flags`` of ``args``."""
  cfg = override(load(config, extra_defaults), args.overrides)
  for key in flags:
    if getattr(args, key) is not None:
      cfg[key] = getattr(args, key)
  return cfg


def run_name(cfg: dict[str, Any]) -> str:
  """``<model>-<dataset>`` as a file name."""
  return re.sub(r"[^A-Za-z0-9_.-]+", "_", f"{cfg['model']}-{cfg['dataset']}").strip("_")


def compute_dtype(name: str):
  """The ``dtype`` argument of the training functions for a config's ``"dtype"``."""
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  return {"float32": None, "bfloat16": jnp.bfloat16}[name]


def error_message(error: Exception) -> str:
  """The text of an error (a KeyError's str() would add quotes)."""
  return str(error.args[0]) if isinstance(error, KeyError) and error.args else str(error)


def dataset_and_spec(cfg: dict[str, Any]):
  """The config's dataset (:func:`jaxdepth.data.load`) and the zoo model sized for it.

  Raises what those raise on bad settings: ``jaxdepth.data.DatasetNotPrepared``,
  ``KeyError``, ``TypeError``, ``ValueError``, ``FileNotFoundError``.
  """
  from jaxdepth import data, zoo  # pylint: disable=import-outside-toplevel
  ds = data.load(cfg["dataset"], data_dir=cfg["data_dir"], val_fraction=cfg["val_fraction"],
                 split_seed=cfg["split_seed"], val_augment=cfg["val_augment"],
                 image_size=cfg["image_size"], normalization=cfg["normalization"])
  spec = zoo.get(cfg["model"], num_classes=ds.num_classes, input_shape=ds.input_shape,
                 **cfg["model_kwargs"])
  return ds, spec
