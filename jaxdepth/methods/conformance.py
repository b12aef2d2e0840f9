"""Checks that a method keeps the protocol of :class:`~jaxdepth.methods.base.Method`.

:func:`jaxdepth.driver.run` calls them as the method's members return: the cheap members
(``units``, ``live_units``, ``init``, ``train_options``, ``options``) once before anything is
written or trained, and what an iteration returns (``measure``'s scores, ``decide``'s
:class:`~jaxdepth.methods.base.Decision`, ``export``'s and ``apply``'s pairs, the state's
structure, shapes and dtypes) before anything of that iteration is saved. A method of one's own
that breaks a rule is refused by name, with the rule (docs/methods/writing.md), instead of a
traceback once an iteration has trained, or a report of removals that were never made.
"""
from __future__ import annotations

import json
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxdepth import training
from jaxdepth.methods import base
from jaxdepth.spec import Spec

# The members of the method protocol (jaxdepth.methods.base.Method): its attributes, then its
# methods, in the order the protocol lists them.
_ATTRIBUTES = tuple(base.Method.__annotations__)
_MEMBERS = _ATTRIBUTES + tuple(n for n, v in vars(base.Method).items()
                               if callable(v) and not n.startswith("_"))
_WRITING = "docs/methods/writing.md"


def short(value, limit: int = 80) -> str:
  text = repr(value)
  return text if len(text) <= limit else text[:limit - 3] + "..."


def who(method, it: int | None = None) -> str:
  """``method 'name'`` (and the iteration) for the messages of the protocol checks."""
  return f"method {method.name!r}" + ("" if it is None else f", iteration {it}")


def check_method(method) -> None:
  """Refuses an object that is not a :class:`~jaxdepth.methods.base.Method`, naming the members
  it lacks (before anything is written, instead of an AttributeError once an iteration trained)."""
  cls = type(method).__name__
  missing = [n for n in _MEMBERS if not hasattr(method, n)]
  if missing:
    raise TypeError(f"{cls} is not a jaxdepth.methods.base.Method: it lacks "
                    f"{', '.join(missing)} (a method has {', '.join(_MEMBERS)}); see {_WRITING}")
  not_str = [n for n in _ATTRIBUTES if not isinstance(getattr(method, n), str)
             or not getattr(method, n)]
  if not_str:
    raise TypeError(f"{cls}: Method.{', Method.'.join(not_str)} must be a non-empty str, got "
                    f"{', '.join(short(getattr(method, n)) for n in not_str)}; see {_WRITING}")
  not_callable = [n for n in _MEMBERS[len(_ATTRIBUTES):] if not callable(getattr(method, n))]
  if not_callable:
    raise TypeError(f"{cls}: Method.{', Method.'.join(not_callable)} must be a method, got "
                    f"{', '.join(short(getattr(method, n)) for n in not_callable)}; see "
                    f"{_WRITING}")


def units(method, spec: Spec, member: str, *args) -> tuple[str, ...]:
  """``method.units(spec)`` or ``method.live_units(spec, state)``, checked: names (str)."""
  names = getattr(method, member)(spec, *args)
  if isinstance(names, str) or not isinstance(names, (tuple, list)) or not all(
      isinstance(u, str) for u in names):
    raise TypeError(f"{who(method)}: Method.{member} must return a tuple of {method.unit} names "
                    f"(str), got {short(names)}")
  return tuple(names)


def live_units(method, spec: Spec, state, all_units=None, it=None) -> tuple[str, ...]:
  """``method.live_units(spec, state)``, checked: names of units of ``method.units(spec)``."""
  live = units(method, spec, "live_units", state)
  all_units = units(method, spec, "units") if all_units is None else all_units
  unknown = [u for u in live if u not in all_units]
  if unknown:
    raise ValueError(f"{who(method, it)}: Method.live_units must return units of "
                     f"Method.units(spec), got {unknown}, which are not (units: {list(all_units)})")
  return live


def train_options(method, spec: Spec, state, it=None) -> training.TrainOptions:
  options = method.train_options(spec, state)
  if not isinstance(options, training.TrainOptions):
    raise TypeError(f"{who(method, it)}: Method.train_options must return a "
                    f"jaxdepth.methods.base.TrainOptions (e.g. TrainOptions(gates=...)), got a "
                    f"{type(options).__name__}: {short(options)}")
  return options


def check_state_leaves(method, state, member: str, it=None) -> None:
  """Refuses a method state that is not a pytree of arrays (what orbax checkpoints)."""
  for path, leaf in jax.tree_util.tree_flatten_with_path(state)[0]:
    if not isinstance(leaf, (jax.Array, np.ndarray, np.generic, bool, int, float)):
      raise TypeError(
          f"{who(method, it)}: the method state must be a pytree (dicts, lists, tuples) of "
          f"arrays, checkpointed with the variables (jaxdepth.methods.base.Method), but "
          f"Method.{member} returned one where state{jax.tree_util.keystr(path)} is a "
          f"{type(leaf).__name__} ({short(leaf)}); hold names as indices or masks over "
          f"Method.units(spec) in an array")


def _layout(state) -> list:
  """Each leaf's ``(path, shape, dtype)``, read on the host (nothing leaves the device)."""
  return [(jax.tree_util.keystr(path), tuple(jnp.shape(x)), jnp.result_type(x))
          for path, x in jax.tree_util.tree_flatten_with_path(state)[0]]


def state_layout(state) -> tuple[Any, list]:
  """The tree structure of ``state`` and each leaf's ``(path, shape, dtype)``."""
  return jax.tree.structure(state), _layout(state)


def check_state_layout(method, state, initial, it) -> None:
  """Refuses a state from ``apply`` whose tree structure, shapes or dtypes are not those of
  ``method.init(spec)`` (``initial``, its :func:`state_layout`): a resumed run restores the
  state into that template."""
  rule = ("the method state keeps method.init(spec)'s tree structure, shapes and dtypes across "
          "iterations (a resumed run restores it into init(spec)); keep fixed-size arrays (e.g. "
          "a removal order of len(units) entries, -1 where none yet) instead of growing ones")
  (structure, layout), (structure0, layout0) = state_layout(state), initial
  if structure != structure0:
    raise ValueError(f"{who(method, it)}: Method.apply returned a state of another tree "
                     f"structure than init(spec)'s ({structure}, init(spec): {structure0}); "
                     f"{rule}")
  for (path, shape, dtype), (_, shape0, dtype0) in zip(layout, layout0):
    if (shape, dtype) != (shape0, dtype0):
      raise ValueError(f"{who(method, it)}: Method.apply returned a state whose "
                       f"state{path} has shape {shape} and dtype {dtype}, but init(spec)'s has "
                       f"shape {shape0} and dtype {dtype0}; {rule}")


def pair(method, value, member: str, it, first: str = "") -> tuple[Any, Any]:
  """``value`` checked as the 2-tuple a protocol member returns."""
  if not isinstance(value, (tuple, list)) or isinstance(value, base.Decision) or len(value) != 2:
    raise TypeError(f"{who(method, it)}: Method.{member} must return a pair "
                    f"({first or 'variables'}, {'variables' if first else 'state'}), got a "
                    f"{type(value).__name__}: {short(value)}")
  return tuple(value)


def json_problem(value, path: str = "") -> str | None:
  """Where ``value`` is not JSON (``"['x'] is a float32"``), or None where it is."""
  if value is None or isinstance(value, (bool, int, float, str)):
    return None
  if isinstance(value, (list, tuple)):
    return next((p for i, v in enumerate(value) if (p := json_problem(v, f"{path}[{i}]"))),
                None)
  if isinstance(value, dict):
    bad = [k for k in value if not isinstance(k, (str, int, float, bool)) and k is not None]
    if bad:
      return f"{path} has a key of type {type(bad[0]).__name__} ({short(bad[0])})"
    return next((p for k, v in value.items() if (p := json_problem(v, f"{path}[{k!r}]"))),
                None)
  return f"{path} is a {type(value).__name__} ({short(value)})"


def _plain(value):
  """``value`` with every jax or numpy array or scalar turned into Python numbers and lists."""
  if isinstance(value, (jax.Array, np.ndarray, np.generic)):
    return np.asarray(jax.device_get(value)).tolist()   # 0-d: a Python scalar
  if isinstance(value, dict):
    return {k: _plain(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [_plain(v) for v in value]
  return value


def scores(method, measured, it) -> dict[str, Any]:
  """The scores of ``measure`` as JSON (jax and numpy numbers become Python ones), checked."""
  rule = ("Method.measure must return a dict {unit name: score}, a score being a number or a "
          "JSON object (jax and numpy scalars are taken)")
  if not isinstance(measured, dict) or not all(isinstance(k, str) for k in measured):
    raise TypeError(f"{who(method, it)}: {rule}, got {short(measured)}")
  plain = {k: _plain(v) for k, v in measured.items()}
  problem = json_problem(plain)
  if problem:
    raise TypeError(f"{who(method, it)}: {rule}, but scores{problem}")
  return plain


def check_decision(method, decision, live, it) -> None:
  """Refuses a :class:`~jaxdepth.methods.base.Decision` the driver cannot apply and report:
  not a Decision, ``remove`` a bare str (taken letter by letter), a name that is not a live unit
  (unknown, or removed already), a name given twice, details that are not JSON."""
  rule = (f"Method.decide must return a jaxdepth.methods.base.Decision whose remove is a tuple "
          f"of names of live {method.unit}s (method.live_units(spec, state)), each at most once")
  if not isinstance(decision, base.Decision):
    raise TypeError(f"{who(method, it)}: {rule}; got a {type(decision).__name__}: "
                    f"{short(decision)}")
  remove = decision.remove
  if isinstance(remove, str):
    raise ValueError(f"{who(method, it)}: {rule}; got Decision.remove={remove!r}, a bare str "
                     f"(it would be read letter by letter): write Decision(({remove!r},))")
  if not isinstance(remove, (tuple, list)) or not all(isinstance(u, str) for u in remove):
    raise ValueError(f"{who(method, it)}: {rule}; got Decision.remove={short(remove)}")
  unknown = [u for u in remove if u not in live]
  if unknown:
    raise ValueError(f"{who(method, it)}: {rule}; Decision.remove names {unknown}, not live "
                     f"(not a {method.unit} of the spec, or removed already; live: {list(live)})")
  twice = sorted({u for u in remove if remove.count(u) > 1}, key=remove.index)
  if twice:
    raise ValueError(f"{who(method, it)}: {rule}; Decision.remove names {twice} more than once")
  if decision.details is not None:
    problem = (json_problem(decision.details) if isinstance(decision.details, dict)
               else f" is a {type(decision.details).__name__}")
    if problem:
      raise TypeError(f"{who(method, it)}: Decision.details must be None or a JSON dict (it "
                      f"goes into the report), but details{problem}")


def default_iterations(method, spec: Spec) -> int:
  """``method.default_iterations(spec)``, checked: an int >= 1."""
  n = method.default_iterations(spec)
  if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
    raise TypeError(f"{who(method)}: Method.default_iterations must return an int >= 1, got "
                    f"{short(n)}")
  return int(n)


def options(method) -> dict[str, Any]:
  """``method.options()``, checked: a dict (of JSON settings, see :func:`as_stored`)."""
  settings = method.options()
  if not isinstance(settings, dict):
    raise TypeError(f"{who(method)}: Method.options must return a dict of JSON settings, got "
                    f"{short(settings)}")
  return settings


def as_stored(method, identity: dict[str, Any]) -> dict[str, Any]:
  """A run's identity as run.json holds it (tuples read back as lists), so that the same call
  compares equal on resume; refuses ``method.options()`` or ``info`` that is not JSON."""
  problem = json_problem(identity)
  if problem:
    where = problem.removeprefix("['method_options']").removeprefix("['info']")
    what = "method.options()" if problem.startswith("['method_options']") else "info"
    raise ValueError(f"{who(method)}: {what} must be JSON (it is stored in run.json and "
                     f"compared on resume), but {what}{where}; convert it (float(x), "
                     f"x.tolist(), ...)")
  return json.loads(json.dumps(identity))


def exported(method, value, it) -> tuple[Spec, Any]:
  """What ``method.export`` returned, checked: a pair (Spec, variables)."""
  spec, variables = pair(method, value, "export", it, first="spec")
  if not isinstance(spec, Spec):
    raise TypeError(f"{who(method, it)}: Method.export must return a pair (spec, variables) "
                    f"whose spec is a jaxdepth Spec, got a {type(spec).__name__}: {short(spec)}")
  return spec, variables


def applied(method, value, initial, it) -> tuple[Any, Any]:
  """What ``method.apply`` returned, checked: a pair (variables, state) whose state keeps
  ``initial``'s layout (:func:`state_layout` of ``method.init(spec)``)."""
  variables, state = pair(method, value, "apply", it)
  check_state_leaves(method, state, "apply", it)
  check_state_layout(method, state, initial, it)
  return variables, state
