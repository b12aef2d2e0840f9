"""Imports of optional dependencies (the ``pyproject.toml`` extras), failing with what to install.

The core (specs, the executor, statistics, training steps, methods, surgery)
needs only jax, flax, optax, orbax and numpy. Reading datasets needs the
``data`` extra (grain, tensorflow-datasets, Pillow, scikit-learn for digits,
tokenizers for GLUE);
PNG plots need ``plots`` (matplotlib). Modules import those lazily through
:func:`require`, so ``import jaxdepth`` works without them. A missing one is a
:class:`MissingExtraError` (an ImportError), which ``python -m jaxdepth`` reports as one
line and exit code 2, as it does bad settings.
"""
from __future__ import annotations

import importlib
import types


class MissingExtraError(ImportError):
  """An optional dependency is not installed; the message names the extra to install."""


def require(module: str, extra: str, purpose: str) -> types.ModuleType:
  """Imports ``module``, or raises a :class:`MissingExtraError` naming the extra to install.

  Args:
    module: dotted module name, e.g. ``"PIL.Image"``.
    extra: the jaxdepth extra that provides it, e.g. ``"data"``.
    purpose: what needs it, for the message (e.g. ``"reading image folders"``).

  Returns:
    The imported module.

  Raises:
    MissingExtraError: ``module`` cannot be imported (the ImportError is its cause).
  """
  try:
    return importlib.import_module(module)
  except ImportError as error:
    raise MissingExtraError(
        f"{purpose} needs the optional package '{module.split('.')[0]}', which is not installed; "
        f"install jaxdepth's '{extra}' extra: pip install 'jaxdepth[{extra}]' "
        f"(or pip install -e '.[{extra}]' in a clone)") from error
