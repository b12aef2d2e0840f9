"""Optimizer recipes of the papers, as optax transformations.

A :class:`Recipe` is the table row of a training schedule (EASIER's
appendix Table 4 and the TLC scripts, ``docs/methods/``): epochs, batch size, optimizer,
learning rate, momentum, weight decay, MultiStep milestones. :func:`make_optimizer`
turns it into an ``optax.GradientTransformation`` that does what the papers'
PyTorch code does, step for step:

* ``sgd``: ``torch.optim.SGD(momentum=m, weight_decay=wd)`` with
  ``MultiStepLR(milestones, gamma)``. PyTorch adds the L2 term to the gradient
  *before* the momentum buffer::

      g_t = grad_t + wd * w_t
      b_t = m * b_{t-1} + g_t              (b_0 = g_0)
      w_{t+1} = w_t - lr_t * b_t

  which is ``chain(add_decayed_weights(wd), trace(m), scale(-lr_t))``.
  ``lr_t = lr * gamma ** #{milestones <= epoch(t)}``: the learning rate drops
  at the first step of each milestone epoch, as ``MultiStepLR`` stepped once per
  epoch does. The schedule counts optimizer steps, so it needs ``steps_per_epoch``.
* ``adam``: ``torch.optim.Adam`` (``eps`` outside the square root); a non-zero
  ``weight_decay`` is PyTorch's L2 term added to the gradient. EASIER's
  Flowers-102/DTD/Aircraft recipe uses no weight decay and no schedule.
* ``adamw``: ``torch.optim.AdamW``, decoupled decay ``w -= lr * wd * w``.
* ``adamw_hf``: ``transformers.AdamW`` (``correct_bias=True``), TLC's BERT and
  RoBERTa scripts' optimizer. Its epsilon sits outside the bias correction of
  the second moment, and its decay reads the weight after the step::

      w' = w - lr * sqrt(1 - b2^t) / (1 - b1^t) * m_t / (sqrt(v_t) + eps)
      w_{t+1} = w' - lr * wd * w'

  which is Adam with ``eps / sqrt(1 - b2^t)`` for ``eps``: the first steps'
  updates of small gradients differ from ``adamw``'s (by 30 % at step 1 for a
  gradient of 1e-6 with ``eps`` 1e-8).

Weight decay applies to every parameter (BatchNorm scale and bias and biases
included), as ``optimizer(model.parameters(), weight_decay=...)`` does.

Example::

    recipe = Recipe(epochs=160, batch_size=128, optimizer="sgd", lr=0.1,
                    momentum=0.9, weight_decay=1e-4, milestones=(80, 120))
    tx = make_optimizer(recipe, steps_per_epoch=352)
"""
from __future__ import annotations

import dataclasses
import math
import operator
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import traverse_util

__all__ = ["Recipe", "OPTIMIZERS", "make_schedule", "make_optimizer", "apply_masks",
           "keep_masked"]

OPTIMIZERS = ("sgd", "adam", "adamw", "adamw_hf")
_ADAMS = ("adam", "adamw", "adamw_hf")


@dataclasses.dataclass(frozen=True)
class Recipe:
  """A training schedule (hashable, JSON round trip through :meth:`to_dict`).

  Attributes:
    epochs: passes over the training split.
    batch_size: global batch size (over every device and process).
    optimizer: one of :data:`OPTIMIZERS`.
    lr: base learning rate.
    momentum: SGD momentum in ``[0, 1)`` (ignored by Adam).
    nesterov: Nesterov momentum for SGD (needs ``momentum > 0``).
    weight_decay: L2 (``sgd``, ``adam``) or decoupled (``adamw``, ``adamw_hf``) decay,
      ``>= 0``.
    milestones: epochs at which the learning rate is multiplied by ``gamma``.
    gamma: the MultiStep factor, ``> 0``.
    b1: Adam's first-moment decay, in ``[0, 1)``.
    b2: Adam's second-moment decay, in ``[0, 1)``.
    eps: Adam's epsilon (added to the square root, as in PyTorch), ``> 0`` for the Adams
      (at 0 a zero gradient entry, a dead channel's, gives a 0 / 0 update).
    augment: train with the dataset's augmentation.

  A value out of its range or of another type (``"0.1"``, ``"false"``, a milestone of 2.5)
  is refused when the recipe is built, by field name; numpy and 0-d jax scalars become
  Python ``int``, ``float`` and ``bool`` (the recipe is written to JSON).
  """
  epochs: int = 160
  batch_size: int = 128
  optimizer: str = "sgd"
  lr: float = 0.1
  momentum: float = 0.9
  nesterov: bool = False
  weight_decay: float = 0.0
  milestones: tuple[int, ...] = ()
  gamma: float = 0.1
  b1: float = 0.9
  b2: float = 0.999
  eps: float = 1e-8
  augment: bool = True

  def __post_init__(self):
    # numpy or 0-d jax scalars (np.int64 from np.arange, np.float32) become Python ones: the
    # recipe is written to JSON (run.json, checkpoints) and compared there.
    for f in dataclasses.fields(self):
      object.__setattr__(self, f.name, _field_value(f.name, getattr(self, f.name)))
    if self.optimizer not in OPTIMIZERS:
      raise ValueError(f"recipe optimizer must be one of {OPTIMIZERS}, got {self.optimizer!r}")
    if self.epochs < 0:
      raise ValueError(f"recipe epochs must be an int >= 0, got {self.epochs!r}")
    if self.batch_size <= 0:
      raise ValueError(f"recipe batch_size must be a positive int, got {self.batch_size!r}")
    if not (math.isfinite(self.lr) and self.lr > 0):
      raise ValueError(f"recipe lr must be a finite number > 0, got {self.lr!r}")
    if not (math.isfinite(self.weight_decay) and self.weight_decay >= 0):
      raise ValueError(f"recipe weight_decay must be a finite number >= 0, got "
                       f"{self.weight_decay!r}")
    # Adam divides by sqrt(v) + eps: with eps = 0 a weight whose gradient is exactly 0 (a dead
    # channel) gets 0 / 0, a NaN update
    if self.optimizer in _ADAMS and not (math.isfinite(self.eps) and self.eps > 0):
      raise ValueError(f"recipe eps must be a finite number > 0 for {self.optimizer} (it keeps "
                       f"a zero gradient's update from being 0 / 0), e.g. 1e-8, got {self.eps!r}")
    if not (math.isfinite(self.eps) and self.eps >= 0):
      raise ValueError(f"recipe eps must be a finite number >= 0, got {self.eps!r}")
    # b1 or b2 = 1 keeps Adam's moment at 0 and divides it by 1 - 1 ** t = 0: NaN weights
    for name in ("momentum", "b1", "b2"):
      value = getattr(self, name)
      if not 0 <= value < 1:
        raise ValueError(f"recipe {name} must be in [0, 1), got {value!r}")
    if self.nesterov and (self.optimizer != "sgd" or self.momentum == 0):
      raise ValueError(f"recipe nesterov=True needs optimizer='sgd' and momentum in (0, 1) "
                       f"(as torch.optim.SGD), got optimizer={self.optimizer!r}, "
                       f"momentum={self.momentum!r}")
    if not (math.isfinite(self.gamma) and self.gamma > 0):
      raise ValueError(f"recipe gamma (the learning-rate factor at each milestone) must be a "
                       f"finite number > 0, e.g. 0.1, got {self.gamma!r}")
    if list(self.milestones) != sorted(set(self.milestones)) or any(
        m <= 0 for m in self.milestones):
      raise ValueError(f"recipe milestones must be increasing positive epochs, got "
                       f"{self.milestones!r}")

  def to_dict(self) -> dict[str, Any]:
    d = dataclasses.asdict(self)
    d["milestones"] = list(self.milestones)
    return d

  @classmethod
  def from_dict(cls, d: dict[str, Any]) -> Recipe:
    """Builds a recipe from a dict; unknown keys are refused by name."""
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(d) - names
    if unknown:
      raise ValueError(f"unknown recipe fields {sorted(unknown)}; known: {sorted(names)}")
    return cls(**d)

  def replace(self, **changes) -> Recipe:
    return dataclasses.replace(self, **changes)


_INTS = ("epochs", "batch_size")
_BOOLS = ("nesterov", "augment")


def _field_value(name: str, value):
  """``value`` of the recipe field ``name`` as a Python value of the field's type; a value of
  another type is refused naming the field (``"0.1"``, a bool for a number, 2.5 epochs)."""
  def refuse(what):
    return ValueError(f"recipe {name} must be {what}, got {value!r} ({type(value).__name__})")

  if name == "optimizer":
    if not isinstance(value, str):
      raise refuse(f"one of {OPTIMIZERS}")
    return str(value)
  if name in _BOOLS:
    if not isinstance(value, (bool, np.bool_)):
      raise refuse("True or False")
    return bool(value)
  if name == "milestones":
    if isinstance(value, (str, bytes)) or not hasattr(value, "__iter__"):
      raise refuse("a tuple of epochs, e.g. (80, 120)")
    try:
      return tuple(_integer(m) for m in value)
    except (TypeError, ValueError):
      raise refuse("a tuple of whole epochs, e.g. (80, 120)") from None
  if name in _INTS:
    try:
      return _integer(value, whole_floats=False)
    except (TypeError, ValueError):
      raise refuse("an int") from None
  if isinstance(value, (str, bytes, bool, np.bool_)) or np.ndim(value) != 0:
    raise refuse("a number")
  try:
    number = float(value)
  except (TypeError, ValueError):
    raise refuse("a number") from None
  if isinstance(value, (int, float)):
    return number
  try:   # np.float32(0.05) is 0.05, the shortest decimal of its own precision
    return float(str(np.asarray(value)))
  except ValueError:
    return number


def _integer(value, whole_floats: bool = True) -> int:
  """``value`` as a Python int: an integer of any kind but bool, or (``whole_floats``) a
  float with a whole value (a milestone of 2.0 is epoch 2, as the command line reads it)."""
  if isinstance(value, (bool, np.bool_)):
    raise TypeError(value)
  if whole_floats and isinstance(value, (float, np.floating)):
    if not float(value).is_integer():
      raise ValueError(value)
    return int(value)
  return operator.index(value)


def make_schedule(recipe: Recipe, steps_per_epoch: int) -> optax.Schedule:
  """The learning rate as a function of the optimizer step (MultiStep decay).

  Args:
    recipe: the schedule's ``lr``, ``milestones`` (epochs) and ``gamma``.
    steps_per_epoch: optimizer steps in one epoch.

  Returns:
    ``step -> lr * gamma ** #{m in milestones : step >= m * steps_per_epoch}``.
  """
  if steps_per_epoch <= 0:
    raise ValueError(f"steps_per_epoch must be positive, got {steps_per_epoch}; is the "
                     f"training split smaller than one batch of {recipe.batch_size}?")
  if not recipe.milestones:
    return optax.constant_schedule(recipe.lr)
  return optax.piecewise_constant_schedule(
      recipe.lr, {m * steps_per_epoch: recipe.gamma for m in recipe.milestones})


def make_optimizer(recipe: Recipe, steps_per_epoch: int) -> optax.GradientTransformation:
  """A fresh optax optimizer for ``recipe`` (see the module docstring for the math).

  Args:
    recipe: the training schedule.
    steps_per_epoch: optimizer steps per epoch (for the milestone schedule).

  Returns:
    An ``optax.GradientTransformation``; ``tx.init(params)`` gives a zero state.
  """
  lr = make_schedule(recipe, steps_per_epoch)
  decay = [optax.add_decayed_weights(recipe.weight_decay)] if recipe.weight_decay else []
  if recipe.optimizer == "sgd":
    return optax.chain(*decay, optax.sgd(lr, momentum=recipe.momentum or None,
                                         nesterov=recipe.nesterov))
  if recipe.optimizer == "adam":
    return optax.chain(*decay, optax.adam(lr, b1=recipe.b1, b2=recipe.b2, eps=recipe.eps))
  if recipe.optimizer == "adamw":
    return optax.adamw(lr, b1=recipe.b1, b2=recipe.b2, eps=recipe.eps,
                       weight_decay=recipe.weight_decay)
  return optax.chain(_scale_by_hf_adam(recipe.b1, recipe.b2, recipe.eps),
                     optax.scale_by_learning_rate(lr),
                     _decay_after_step(lr, recipe.weight_decay))


def _scale_by_hf_adam(b1: float, b2: float, eps: float) -> optax.GradientTransformation:
  """``sqrt(1 - b2^t) / (1 - b1^t) * m_t / (sqrt(v_t) + eps)``: ``transformers.AdamW``'s
  step direction (``optax.scale_by_adam`` puts ``eps`` after the bias correction)."""
  def init(params):
    zeros = optax.tree.zeros_like(params)
    return optax.ScaleByAdamState(count=jnp.zeros([], jnp.int32), mu=zeros, nu=zeros)

  def update(updates, state, params=None):
    del params
    mu = optax.tree.update_moment(updates, state.mu, b1, 1)
    nu = optax.tree.update_moment_per_elem_norm(updates, state.nu, b2, 2)
    count = optax.safe_increment(state.count)
    t = count.astype(jnp.float32)
    scale = jnp.sqrt(1 - b2 ** t) / (1 - b1 ** t)
    updates = jax.tree.map(lambda m, v: scale * m / (jnp.sqrt(v) + eps), mu, nu)
    return updates, optax.ScaleByAdamState(count=count, mu=mu, nu=nu)

  return optax.GradientTransformation(init, update)


def _decay_after_step(lr, weight_decay: float) -> optax.GradientTransformation:
  """Adds ``-lr_t * wd * (w + u)`` to the step ``u``: ``transformers.AdamW`` decays the weight
  after its Adam step (``torch.optim.AdamW`` before it)."""
  if not weight_decay:
    return optax.identity()
  schedule = lr if callable(lr) else optax.constant_schedule(lr)

  def init(params):
    del params
    return optax.ScaleByScheduleState(count=jnp.zeros([], jnp.int32))

  def update(updates, state, params=None):
    rate = schedule(state.count) * weight_decay
    updates = jax.tree.map(lambda u, w: u - rate * (w + u), updates, params)
    return updates, optax.ScaleByScheduleState(count=optax.safe_increment(state.count))

  return optax.GradientTransformation(init, update)


# ------------------------------------------------------------------ weight masks


def apply_masks(tree, masks):
  """``tree`` with every leaf that ``masks`` names set to 0 where its mask is 0.

  Args:
    tree: a nested dict of arrays (``params``, gradients or updates).
    masks: ``None``, or a nested dict with the same nesting holding a subset of
      ``tree``'s leaves: an element-wise array of the leaf's shape, non-zero
      (``True``, 1) where the weight is kept. Leaves it does not name are
      untouched.

  Returns:
    The masked tree (``jnp.where``, so a pruned entry is exactly ``+0.0`` whatever
    the unmasked value, NaN included).
  """
  if masks is None:
    return tree
  flat = traverse_util.flatten_dict(tree)
  flat_masks = traverse_util.flatten_dict(masks)
  unknown = [k for k in flat_masks if k not in flat]
  inner = [k for k in unknown if any(p[:len(k)] == k for p in flat)]
  if inner:
    k = inner[0]
    leaves = ['/'.join(map(str, p)) for p in flat if p[:len(k)] == k]
    raise KeyError(f"masks put an array at {'/'.join(map(str, k))!r}, a sub-tree of the params "
                   f"(leaves {leaves[:3]}), not a leaf: a mask goes at a leaf, with the leaf's "
                   f"shape (TLC's per-channel state['masks'] are not weight masks: pass "
                   f"TLC().train_options(spec, state).masks)")
  if unknown:
    raise KeyError(f"masks name leaves that are not in the tree: "
                   f"{['/'.join(map(str, k)) for k in unknown]}")
  for path, mask in flat_masks.items():
    leaf = flat[path]
    if mask.shape != leaf.shape:
      raise ValueError(f"mask of {'/'.join(map(str, path))} has shape {mask.shape}, the "
                       f"weight {leaf.shape}")
    flat[path] = jnp.where(mask, leaf, jnp.zeros((), leaf.dtype))
  return traverse_util.unflatten_dict(flat)


def keep_masked(inner: optax.GradientTransformation) -> optax.GradientTransformationExtraArgs:
  """Wraps ``inner`` so that pruned weights are exactly 0 after every update.

  The masks are data, passed to every update with the current weights
  (``tx.update(g, s, params, masks=masks)``; see :func:`apply_masks` for their
  form), so changing them recompiles nothing. With ``m`` the mask of a weight::

      g' = m * g                      the gradient
      u, s = inner.update(g', s, w)   momentum and Adam moments of a pruned weight see only 0
      u' = u where m, else -w         the update: w + u' is exactly +0.0 where pruned

  so after ``optax.apply_updates`` a pruned (finite) weight is bitwise ``+0.0``
  whatever it held before, whether or not ``params`` were zeroed first
  (:func:`apply_masks`), after any number of SGD(+momentum, +L2), Adam or AdamW
  steps; where it already is 0 the update is ``-0.0`` and the result the same.
  Without ``masks`` the wrapper is ``inner`` unchanged. The state is ``inner``'s
  (same structure), so a checkpoint of the wrapped optimizer restores into the
  plain one and back.

  Args:
    inner: any optax transformation.

  Returns:
    An ``optax.GradientTransformationExtraArgs`` taking ``masks=`` in ``update``;
    ``update`` raises ``TypeError`` for ``masks`` without ``params`` (the update
    that zeroes a pruned weight is ``-w``).
  """
  inner = optax.with_extra_args_support(inner)

  def update(updates, state, params=None, *, masks=None, **extra):
    if masks is not None and params is None:
      raise TypeError("keep_masked: update(updates, state, params, masks=masks) needs the "
                      "current params with masks (a pruned weight's update is -w, so that "
                      "it is exactly 0 after optax.apply_updates): pass them")
    updates, state = inner.update(apply_masks(updates, masks), state, params, **extra)
    return _zeroing_updates(updates, masks, params), state

  return optax.GradientTransformationExtraArgs(inner.init, update)


def _zeroing_updates(updates, masks, params):
  """``updates`` (masked by :func:`apply_masks` already: names and shapes checked) with
  every pruned entry ``-w``: ``w + (-w)`` is exactly ``+0.0`` for a finite ``w``."""
  if masks is None:
    return updates
  flat, flat_params = traverse_util.flatten_dict(updates), traverse_util.flatten_dict(params)
  for path, mask in traverse_util.flatten_dict(masks).items():
    u = flat[path]
    flat[path] = jnp.where(mask, u, -jnp.asarray(flat_params[path]).astype(u.dtype))
  return traverse_util.unflatten_dict(flat)
