"""Run configurations: ml_collections ``ConfigDict`` files under ``jaxdepth/train/configs/``.

A config file has a docstring (its first line is the one-line description that
``python -m jaxdepth list`` shows; the rest says how to run it and what it should
reach, big_vision style) and a ``get_config()`` that returns an
``ml_collections.ConfigDict``. It sets the keys it needs; keys it leaves out
take the defaults of :func:`defaults` (the run keys of :data:`DEFAULTS`, the
fields of :class:`jaxdepth.optim.Recipe` and the command's own keys). Configs
derive from one another by calling the parent's ``get_config()`` and changing
a few keys::

    from jaxdepth.train.configs import cifar10_resnet18

    def get_config():
      config = cifar10_resnet18.get_config()
      config.model = "mobilenet_v2"
      return config

On the command line ``--config NAME_OR_PATH`` selects a file (a shipped config's name,
else the path of your own ``.py`` file) and ``--config.KEY=VALUE`` overrides one
key; the value is read as the key's type (``--config.lr=0.05``,
``--config.milestones=2,4``, ``--config.image_size=None``, a tuple of names
comma-separated: ``--config.skip=relu``, ``--config.blocks=layer1/1,layer2/1``)
and a value of another type is refused by name, as are unknown keys and, in a
file, None for a key that takes no None.
"""
from __future__ import annotations

import ast
import copy
import dataclasses
import difflib
import importlib.util
import math
import pathlib
import re
import traceback
import typing
from collections.abc import Mapping
from typing import Any

import ml_collections
from ml_collections import config_dict

from jaxdepth import optim

__all__ = ["CONFIG_DIR", "DEFAULTS", "MODEL_KEYS", "FREE_KEYS", "DTYPES", "ConfigError",
           "defaults", "load", "override", "to_dict", "recipe_of", "available", "description",
           "check", "run_name"]

CONFIG_DIR = pathlib.Path(__file__).resolve().parent / "configs"

# Keys every command shares. A ``placeholder(T)`` is None by default and takes a T.
DEFAULTS: dict[str, Any] = {
    "model": "digits_cnn",        # a zoo name, path/to/file.py:Class, a saved model, a spec JSON
    "model_kwargs": {},           # extra keyword arguments of the zoo function
    "dataset": "digits",          # a name of jaxdepth.data.names(), or folder:<path>
    "data_dir": config_dict.placeholder(str),  # tfds data directory (prepared ArrayRecord files)
    "val_fraction": 0.1,          # held out of train where there is no official val split
    "split_seed": 0,
    "val_augment": False,         # the official code's quirk: val keeps train augmentation
    "image_size": config_dict.placeholder(int),      # side for variable-size datasets (224)
    "normalization": config_dict.placeholder(str),   # tfds: "imagenet" (default) or "cifar"
    "layout": config_dict.placeholder(str),  # folder:<path>: "splits", "domains" or "classes"
                                             # (None: detected from the folder)
    "seed": 0,                    # init, data order, augmentation and dropout
    "dtype": "float32",           # compute dtype: "float32" or "bfloat16"
    "eval_batch_size": config_dict.placeholder(int),  # default: the training batch size
    "eval_every": 1,              # validate every this many epochs
    "checkpoint_every_steps": config_dict.placeholder(int),  # also checkpoint inside epochs
    "pretrained": config_dict.placeholder(str),  # torchvision state dict to start from (.safetensors),
                                                 # or a Hugging Face model folder (text encoders)
    "pretrained_new_head": False,  # keep a fresh classifier head (another number of classes)
    "tokenizer": config_dict.placeholder(str),  # text datasets: tokenizer.json or a folder
                                                # holding one (default: the pretrained folder)
    "max_length": 128,            # text datasets: tokens per sequence
}

# Keys that belong to a config's own model: its constructor's arguments, the sites or blocks
# its method settings name, the weights file of its architecture. With another ``--model``
# those the command line does not set take their defaults (jaxdepth.train.command.resolve).
MODEL_KEYS = ("model_kwargs", "layers", "skip", "blocks", "pretrained")

# Keys that do not change what a run computes: they may differ when it resumes.
FREE_KEYS = ("config", "data_dir", "eval_batch_size", "eval_every", "checkpoint_every_steps",
             "epochs")

_RECIPE_KEYS = tuple(f.name for f in dataclasses.fields(optim.Recipe))
# Tuple keys of the recipe whose items are numbers (milestones: tuple[int, ...]).
_NUMBER_TUPLES = {name: typing.get_args(hint)[0]
                  for name, hint in typing.get_type_hints(optim.Recipe).items()
                  if typing.get_origin(hint) is tuple}
DTYPES = ("float32", "bfloat16")
SEED_MAX = 2**32 - 1   # jax.random.key keeps a seed's low 32 bits (jax_enable_x64 off)
NORMALIZATIONS = ("imagenet", "cifar")


class ConfigError(ValueError):
  """Bad settings; ``lines`` holds one line per problem (key, value, what to do)."""

  def __init__(self, lines: list[str] | str):
    self.lines = [lines] if isinstance(lines, str) else list(lines)
    super().__init__("\n".join(self.lines))


def defaults(extra: Mapping[str, Any] | None = None) -> ml_collections.ConfigDict:
  """Every key with its default: :data:`DEFAULTS`, the recipe's fields, then ``extra``.

  Args:
    extra: a command's own keys (a method's settings) with their defaults; use
      ``ml_collections.config_dict.placeholder(T)`` for a key that is None by
      default and takes a ``T``.
  """
  recipe = optim.Recipe()
  common = {**DEFAULTS, **{k: getattr(recipe, k) for k in _RECIPE_KEYS}}
  clash = sorted(set(extra or {}) & set(common))
  if clash:   # one key would set both the command's setting and the shared one
    raise ValueError(f"a command's own keys {clash} are keys of every command too; name them "
                     f"apart")
  values = {**common, **(extra or {})}
  return ml_collections.ConfigDict(copy.deepcopy(values))


def _path(config: str | pathlib.Path) -> pathlib.Path:
  """The file of ``--config``: a path ending in .py (your own config), else the name of a
  shipped one, even where the current directory holds a file or folder of that name (a
  data folder ``pacs/``)."""
  path = pathlib.Path(config)
  if path.suffix != ".py":
    path = CONFIG_DIR / f"{config}.py"
  if not path.is_file():
    raise ConfigError(f"--config {config}: no such config; give a path to a .py file or one of "
                      f"{', '.join(available())} (python -m jaxdepth list describes them)")
  return path


def _suggest(key: str, known) -> str:
  close = difflib.get_close_matches(key, sorted(known), n=1)
  return f"did you mean {close[0]!r}? " if close else ""


def _failed(path: pathlib.Path, what: str, error: Exception) -> ConfigError:
  """A config file's own error, with the line of the file it came from."""
  lines = [f.lineno for f in traceback.extract_tb(error.__traceback__)
           if pathlib.Path(f.filename) == path]
  own_syntax = isinstance(error, SyntaxError) and pathlib.Path(error.filename or "") == path
  line = error.lineno if own_syntax else (lines[-1] if lines else None)
  where = f" (line {line})" if line else ""
  text = error.msg if own_syntax else str(error)
  return ConfigError(f"config {path}: {what} failed{where}: {type(error).__name__}: {text}")


def load(config: str | pathlib.Path, extra_defaults: Mapping[str, Any] | None = None
         ) -> ml_collections.ConfigDict:
  """Reads a config file (a path, or a name under ``jaxdepth/train/configs/``) over :func:`defaults`.

  Args:
    config: the file or its name.
    extra_defaults: keys a command adds (see :func:`defaults`).

  Returns:
    A ``ConfigDict`` holding every key (typed as its default), with ``"config"``
    set to the file's path.

  Raises:
    ConfigError: no such file, the file failing to import or its ``get_config()``
      to run (the line is named), no ``get_config()``, an unknown key or a value of
      the wrong type.
  """
  path = _path(config)
  module_spec = importlib.util.spec_from_file_location(f"_jaxdepth_config_{path.stem}", path)
  module = importlib.util.module_from_spec(module_spec)
  try:
    module_spec.loader.exec_module(module)
  except Exception as e:  # pylint: disable=broad-except
    raise _failed(path, "importing it", e) from e
  if not hasattr(module, "get_config"):
    raise ConfigError(f"config {path} has no get_config() function returning an "
                      f"ml_collections.ConfigDict")
  try:
    values = module.get_config()
  except Exception as e:  # pylint: disable=broad-except
    raise _failed(path, "get_config()", e) from e
  if not isinstance(values, (ml_collections.ConfigDict, Mapping)):
    raise ConfigError(f"get_config() of {path} must return an ml_collections.ConfigDict, got "
                      f"{type(values).__name__}")
  out = defaults(extra_defaults)
  problems = []
  for key, value in values.items():
    if key not in out:
      problems.append(f"config {path}: unknown key {key!r}; {_suggest(key, out.keys())}"
                      f"known keys: {', '.join(sorted(out.keys()))}")
      continue
    if value is None and not _nullable(out, key):   # a ConfigDict would take it silently
      problems.append(f"config {path}: {key}=None, but {key} takes {_type_words(out, key)} "
                      f"(default {out[key]!r}); set it to one or leave it out")
      continue
    try:
      out[key] = value.to_dict() if isinstance(value, ml_collections.ConfigDict) else value
    except TypeError:
      problems.append(f"config {path}: {key}={value!r} is not {_type_words(out, key)}")
  if problems:
    raise ConfigError(problems)
  out.config = str(path)
  return out


# -------------------------------------------------------------------- overrides


def _type_of(cfg: ml_collections.ConfigDict, key: str):
  value = cfg[key]
  if isinstance(value, (ml_collections.ConfigDict, dict)):
    return dict
  return cfg.get_type(key)


def _nullable(cfg: ml_collections.ConfigDict, key: str) -> bool:
  """Whether ``key`` takes None (its default is a ``placeholder``, or it is None now)."""
  field = cfg._fields.get(key)  # pylint: disable=protected-access
  return isinstance(field, config_dict.FieldReference) or cfg[key] is None


def _item_type(cfg: ml_collections.ConfigDict, key: str) -> type:
  """The items' type of a tuple key: the recipe's annotation, else its items now, else str."""
  if key in _NUMBER_TUPLES:
    return _NUMBER_TUPLES[key]
  items = cfg[key] or ()
  return int if items and all(_is_int(v) for v in items) else (
      float if items and all(_is_number(v) for v in items) else str)


def _type_words(cfg, key) -> str:
  kind = _type_of(cfg, key)
  tuples = {int: "a tuple of integers, e.g. 2,4 or ()", float: "a tuple of numbers, e.g. 0.5,1 "
            "or ()", str: "a tuple, e.g. layer1/1,layer2/1 or relu or ()"}
  words = {bool: "true or false", int: "an integer", float: "a number", str: "a string",
           tuple: tuples[_item_type(cfg, key)] if kind is tuple else None,
           dict: "a dict, e.g. {'width': 8}"}
  text = words.get(kind, "a Python literal")
  return f"{text} or None" if _nullable(cfg, key) and kind is not type(None) else text


def _parse(cfg: ml_collections.ConfigDict, key: str, text: str) -> Any:
  """``text`` read as the type of ``cfg[key]`` (raises ValueError with what to write)."""
  kind = _type_of(cfg, key)
  stripped = text.strip()
  if stripped in ("None", "none", "null") and _nullable(cfg, key):
    return None
  if kind is bool:
    low = stripped.lower()
    if low in ("true", "1", "yes"):
      return True
    if low in ("false", "0", "no"):
      return False
    raise ValueError
  if kind is int:
    return int(stripped)
  if kind is float:
    return float(stripped)
  if kind is str:
    if len(stripped) >= 2 and stripped[0] == stripped[-1] and stripped[0] in "'\"":
      return stripped[1:-1]
    return text
  if kind is tuple:
    return _parse_tuple(cfg, key, stripped)
  try:
    value = ast.literal_eval(stripped)
  except (ValueError, SyntaxError):
    if kind is dict:
      raise ValueError from None
    return text
  if kind is dict and not isinstance(value, dict):
    raise ValueError
  return value


def _parse_tuple(cfg: ml_collections.ConfigDict, key: str, text: str) -> tuple:
  """A Python literal (``2,4``, ``()``, ``"'relu',"``); for a tuple of strings also plain
  comma-separated names (``layer1/1,layer2/1``, ``relu``; empty items dropped)."""
  items = _item_type(cfg, key)
  try:
    value = ast.literal_eval(text)
  except (ValueError, SyntaxError):
    if items is not str:
      raise ValueError from None
    value = text
  if items is str and isinstance(value, str):
    return tuple(part.strip() for part in value.split(",") if part.strip())
  value = tuple(value) if isinstance(value, (tuple, list)) else (value,)
  if items is int:   # 2.0 is the integer 2, as the recipe reads it; 2.5 is refused
    value = tuple(int(v) if _is_number(v) and float(v).is_integer() else v for v in value)
  if items is not str and not all((_is_int if items is int else _is_number)(v) for v in value):
    raise ValueError
  if any(v is None for v in value):
    raise ValueError
  return value


def override(cfg: ml_collections.ConfigDict, assignments: list[tuple[str, str]],
             spelled: list[str] | None = None) -> ml_collections.ConfigDict:
  """Applies ``(key, text)`` overrides, each read as its key's type (see :func:`_parse`).

  ``key`` may be dotted into a dict key (``model_kwargs.width``). ``spelled`` says how
  each was written on the command line, for the error lines (default
  ``--config.KEY=TEXT``; ``--seed abc`` is named as the user typed it).

  Raises:
    ConfigError: one line per unknown key or ill-typed value.
  """
  out = copy.deepcopy(cfg)
  problems = []
  for i, (key, text) in enumerate(assignments):
    given = spelled[i] if spelled else f"--config.{key}={text}"
    head, _, rest = key.partition(".")
    if head not in out or head == "config":
      problems.append(f"{given}: no key {head!r} in config "
                      f"{pathlib.Path(out.get('config', '?')).stem}; {_suggest(head, out.keys())}"
                      f"known keys: {', '.join(sorted(k for k in out.keys() if k != 'config'))}")
      continue
    if rest:
      if _type_of(out, head) is not dict:
        problems.append(f"{given}: {head} is not a dict; write --config.{head}=VALUE")
        continue
      try:
        value = ast.literal_eval(text)
      except (ValueError, SyntaxError):
        value = text
      current = out[head]   # None: a placeholder dict not set yet
      inner = (current.to_dict() if isinstance(current, ml_collections.ConfigDict)
               else dict(current or {}))
      inner[rest] = value
      out[head] = inner
      continue
    try:
      out[head] = _parse(out, head, text)
    except (ValueError, TypeError):
      problems.append(f"{given}: {key} takes {_type_words(out, key)} "
                      f"(it is {out[key]!r} now)")
  if problems:
    raise ConfigError(problems)
  return out


def to_dict(cfg: ml_collections.ConfigDict) -> dict[str, Any]:
  """The plain dict of a config (nested ConfigDicts become dicts)."""
  return cfg.to_dict()


def recipe_of(cfg: Mapping[str, Any]) -> optim.Recipe:
  """The :class:`~jaxdepth.optim.Recipe` fields of a config."""
  return optim.Recipe.from_dict({k: cfg[k] for k in _RECIPE_KEYS})


# -------------------------------------------------------------------- discovery


def available(prefix: str | None = None, exclude: tuple[str, ...] = ()) -> list[str]:
  """Names of the config files under ``jaxdepth/train/configs/`` (optionally starting with ``prefix``)."""
  names = sorted(p.stem for p in CONFIG_DIR.glob("*.py") if not p.stem.startswith("_"))
  if prefix is not None:
    names = [n for n in names if n.startswith(prefix)]
  return [n for n in names if not n.startswith(exclude)] if exclude else names


def description(name: str) -> str:
  """The first line of shipped config ``name``'s docstring (read without running the file)."""
  tree = ast.parse((CONFIG_DIR / f"{name}.py").read_text())
  doc = ast.get_docstring(tree) or ""
  return doc.strip().splitlines()[0] if doc.strip() else ""


# ------------------------------------------------------------------- validation


def _is_int(v) -> bool:
  return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v) -> bool:
  return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def check(cfg: Mapping[str, Any]) -> list[str]:
  """Problems of the shared keys and the recipe, one line each (key, value, what to do).

  Checks what can be checked without data or devices: types, ranges, names.
  """
  from jaxdepth import data, zoo  # pylint: disable=import-outside-toplevel
  out = []

  def bad(key, why):
    out.append(f"--config.{key}={cfg[key]!r}: {why}")

  def positive_int(key, advice, nullable=False):
    v = cfg[key]
    if not (nullable and v is None) and not (_is_int(v) and v >= 1):
      bad(key, f"use an integer >= 1{' or None' if nullable else ''} ({advice})")

  positive_int("epochs", "passes over the training split")
  positive_int("batch_size", "the global training batch, over every device")
  positive_int("eval_batch_size", "None: the training batch size", nullable=True)
  positive_int("eval_every", "validation runs every this many epochs; 1: after each")
  positive_int("checkpoint_every_steps", "None: a checkpoint per epoch only", nullable=True)
  positive_int("image_size", "the image side in pixels; None: the dataset's default",
               nullable=True)
  for key in ("seed", "split_seed"):
    if not (_is_int(cfg[key]) and cfg[key] >= 0):
      bad(key, "a seed must be an integer >= 0")
  if _is_int(cfg["seed"]) and cfg["seed"] > SEED_MAX:
    bad("seed", f"a seed must be at most 2**32 - 1 = {SEED_MAX}: jax.random.key keeps a seed's "
                f"low 32 bits, so it would draw the initialisation of seed "
                f"{cfg['seed'] % 2**32}")
  if not (_is_number(cfg["lr"]) and cfg["lr"] > 0):
    bad("lr", "the learning rate must be a number > 0, e.g. 0.05")
  if not (_is_number(cfg["momentum"]) and 0 <= cfg["momentum"] < 1):
    bad("momentum", "must be a number in [0, 1), e.g. 0.9")
  for key in ("b1", "b2"):
    if not (_is_number(cfg[key]) and 0 <= cfg[key] < 1):
      bad(key, "an Adam decay must be a number in [0, 1)")
  if not (_is_number(cfg["weight_decay"]) and cfg["weight_decay"] >= 0):
    bad("weight_decay", "must be a number >= 0")
  if cfg["optimizer"] in ("adam", "adamw", "adamw_hf"):
    if not (_is_number(cfg["eps"]) and cfg["eps"] > 0):
      bad("eps", f"{cfg['optimizer']}'s epsilon must be a number > 0, e.g. 1e-8 (at 0 a zero "
                 f"gradient, a dead channel's, gives a 0 / 0 update)")
  elif not (_is_number(cfg["eps"]) and cfg["eps"] >= 0):
    bad("eps", "must be a number >= 0")
  if not (_is_number(cfg["gamma"]) and cfg["gamma"] > 0):
    bad("gamma", "the learning-rate factor at each milestone must be a number > 0, e.g. 0.1")
  ms = cfg["milestones"]
  if not (isinstance(ms, (tuple, list)) and all(_is_int(m) and m >= 1 for m in ms)
          and list(ms) == sorted(set(ms))):
    bad("milestones", "must be increasing epochs >= 1, e.g. --config.milestones=80,120 "
                      "(or () for no decay)")
  if cfg["optimizer"] not in optim.OPTIMIZERS:
    bad("optimizer", f"use one of {', '.join(optim.OPTIMIZERS)}")
  if cfg["nesterov"] is True and not (cfg["optimizer"] == "sgd" and cfg["momentum"] != 0):
    bad("nesterov", f"Nesterov momentum needs --config.optimizer=sgd and --config.momentum in "
                    f"(0, 1) (as torch.optim.SGD), not optimizer {cfg['optimizer']!r} with "
                    f"momentum {cfg['momentum']!r}; leave it false")
  if not (_is_number(cfg["val_fraction"]) and 0 <= cfg["val_fraction"] < 1):
    bad("val_fraction", "the share of train held out for validation must be in [0, 1), e.g. 0.1")
  if cfg["dtype"] not in DTYPES:
    bad("dtype", f"use one of {', '.join(DTYPES)}")
  if cfg["normalization"] not in (None, *NORMALIZATIONS):
    bad("normalization", f"use one of {', '.join(NORMALIZATIONS)} or None")
  if cfg["layout"] is not None:
    if cfg["layout"] not in data.folders.LAYOUTS[1:]:   # "auto" is None here
      bad("layout", f"use one of {', '.join(data.folders.LAYOUTS[1:])}, or None to detect it "
                    f"from the folder")
    elif not str(cfg["dataset"]).startswith(data.FOLDER_PREFIX):
      bad("layout", f"the layout of an image folder (--dataset {data.FOLDER_PREFIX}<path>); "
                    f"{cfg['dataset']!r} is not one: leave it out")
  kind = model_kind(cfg["model"])
  if kind is None:
    missing = (isinstance(cfg["model"], str) and ("/" in cfg["model"] or cfg["model"].endswith(
        ".json")) and not pathlib.Path(cfg["model"]).exists())
    bad("model", ("no such file or directory; " if missing else "") +
        f"use one of {', '.join(zoo.names())} (python -m jaxdepth list), your own Flax module as "
        f"path/to/file.py:ClassName, a saved model's directory (a run's model/, chosen/ or "
        f"chosen_merged/) or a spec JSON file")
  if kind == "saved" and cfg["pretrained"] is not None:
    bad("pretrained", f"the saved model {cfg['model']!r} starts from its own weights; leave "
                      f"--pretrained out")
  if kind in ("saved", "spec") and isinstance(cfg["model_kwargs"], Mapping) and (
      cfg["model_kwargs"]):   # they size a zoo model or the user's module, not a stored spec
    what = "saved model" if kind == "saved" else "spec file"
    bad("model_kwargs", f"the {what} {cfg['model']!r} fixes its own architecture; leave "
                        f"model_kwargs out")
  if not (cfg["dataset"] in data.names() or str(cfg["dataset"]).startswith(data.FOLDER_PREFIX)):
    bad("dataset", f"use one of {', '.join(data.names())} (python -m jaxdepth list)")
  if not isinstance(cfg["pretrained_new_head"], bool):
    bad("pretrained_new_head", "use true or false")
  if not (_is_int(cfg["max_length"]) and cfg["max_length"] >= 2):
    bad("max_length", "tokens per sequence must be an integer >= 2, e.g. 128")
  if not isinstance(cfg["model_kwargs"], Mapping):
    bad("model_kwargs", "must be a dict of keyword arguments of the zoo function")
  return out


def model_kind(model) -> str | None:
  """What ``--config.model`` names: ``"zoo"`` (a name of ``jaxdepth.zoo``), ``"module"`` (your
  Flax module, ``path/to/file.py:ClassName``), ``"saved"`` (a directory: a model
  ``jaxdepth.save_model`` wrote, the run starts from its weights) or ``"spec"`` (a spec JSON
  file, initialised afresh); None for anything else."""
  from jaxdepth import convert, zoo  # pylint: disable=import-outside-toplevel
  if not isinstance(model, str):
    return None
  if model in zoo.names():
    return "zoo"
  if convert.is_file_reference(model):
    return "module"
  if model.endswith(".json") and pathlib.Path(model).is_file():
    return "spec"
  if pathlib.Path(model).is_dir():
    return "saved"
  return None


def run_name(method: str, cfg: Mapping[str, Any]) -> str:
  """``<method>-<model>-<dataset>-seed<seed>`` as a file name: what tells runs apart."""
  name = f"{method}-{cfg['model']}-{cfg['dataset']}-seed{cfg['seed']}"
  return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("_")
