"""Imports of optional dependencies (the ``pyproject.toml`` extras), failing with what to install.

The core (specs, the executor, statistics, training steps, methods, surgery)
needs only jax, flax, optax, orbax and numpy. Reading datasets needs the
``data`` extra (grain, tensorflow-datasets, Pillow, scikit-learn for digits,
tokenizers for GLUE);
PNG plots need ``plots`` (matplotlib). Modules import those lazily through
:func:`require`, so ``import jaxdepth`` works without them.
"""
from __future__ import annotations

import importlib
import types


def require(module: str, extra: str, purpose: str) -> types.ModuleType:
  """Imports ``module``, or raises an ImportError that names the extra to install.

  Args:
    module: dotted module name, e.g. ``"PIL.Image"``.
    extra: the jaxdepth extra that provides it, e.g. ``"data"``.
    purpose: what needs it, for the message (e.g. ``"reading image folders"``).

  Returns:
    The imported module.
  """
  try:
    return importlib.import_module(module)
  except ImportError as error:
    raise ImportError(
        f"{purpose} needs the optional package '{module.split('.')[0]}', which is not installed; "
        f"install jaxdepth's '{extra}' extra: pip install 'jaxdepth[{extra}]' "
        f"(or pip install -e '.[{extra}]' in a clone)") from error
