"""LaCoOT: pull each block's output distribution onto its input's, then drop whole blocks.

Quétu, Liao, Hezbri, Pizzati, Tartaglione, "LaCoOT: Layer Collapse through
Optimal Transport", ICCV 2025 (arXiv 2406.08933).

**The regularizer.** For a block ``k`` with input ``X_k`` and output ``Y_k``,
each flattened per sample to ``(B, D)``, and ``n`` unit directions
``θ_1..θ_n`` (the columns of a ``(D, n)`` matrix ``P``), the squared 1-D
2-Wasserstein distance of direction ``j`` between the projected samples, with
uniform weights and equal sample counts, is the sorted pairing::

    W_j² = (1/B) Σ_i (sort(X θ_j)_i − sort(Y θ_j)_i)²

The max-sliced distance is ``MSWD = sqrt(max_j W_j²)``, the sliced one
``SWD = sqrt(mean_j W_j²)``, and training minimises::

    L = CE + λ · mean_{k ∈ K} MSWD(X_k, Y_k),     θ ~ N(0, I_D) normalised, n = 50

The directions are not optimised: a fresh random set per step and block,
drawn from a key derived from the run seed and the step (a resumed run draws
the same). The 1-D problems are solved by ott-jax
(:func:`ott.tools.sliced.sliced_wasserstein` with a projection function that
multiplies by ``P``; it sorts both sides through
:func:`ott.solvers.linear.solve_univariate` and returns every slice's cost in
``UnivariateOutput.ot_costs``, here the ``W_j²``); the max, the mean and the
square root are taken here. The square root has a zero gradient at 0 (a
safe square root), where a plain one gives NaN.

**After training** (one training run, no fine-tuning): every block's distance
on the validation split (eval mode, full batches, the mean over batches; a
batch padded up to the device count compares its real rows alone, sorted
here: :func:`slice_costs`'s ``mask``);
blocks are then replaced by the identity one more at a time in a removal
order (:data:`ORDERS`, ascending distance by default; a block nested in one
the order removes earlier goes with it, uncounted, :func:`removal_order`), each
cumulative removal is evaluated, and the driver keeps the deepest one within its
tolerance.
During the run a removed block is a node gate at 0
(:func:`jaxdepth.network.forward`'s ``node_gates``: data, one compilation);
:func:`remove_units` takes it out of the spec for the saved model, whose
outputs equal the gated network's.

**Which blocks** (:func:`find_blocks`, :data:`PAIRINGS`): ``"block"`` (the
default) every residual block with an identity shortcut and equal input and
output shapes, and every transformer layer (a Swin or ViT layer: its attention
and MLP halves together, :func:`transformer_layers`), compared input against
output; ``"official"`` the pairings of the authors' code where they differ
(MobileNetV2: the depthwise ConvBN-ReLU6 sub-layer of every stride-1 expansion
block instead of the whole block; Swin-T: the layer's input against its MLP's
output before the stochastic depth and the residual addition,
:func:`compared_outputs`; for a ResNet the official pairs, consecutive
post-addition ReLU outputs, are exactly the input and output of each
identity-shortcut block).

The pieces are pure functions (:func:`max_sliced_wasserstein`,
:func:`regularizer`, :func:`find_blocks`, :func:`block_distances`,
:func:`removal_order`, :func:`remove_units`); :class:`LaCoOT` wires them into
:func:`jaxdepth.driver.run`.
"""
from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util
from ott.geometry import costs as ott_costs
from ott.tools import sliced as ott_sliced

from jaxdepth import network, threefry, training
from jaxdepth.explicit_axes import replicated
from jaxdepth import spec as S
from jaxdepth.methods import base
from jaxdepth.transformer import Attention, StochasticDepth, WindowAttention

__all__ = ["PAIRINGS", "ORDERS", "SCORES", "random_projections", "slice_costs",
           "max_sliced_wasserstein", "sliced_wasserstein", "Penalty", "real_tokens", "regularizer",
           "find_blocks", "transformer_layers", "official_units", "compared_outputs",
           "check_blocks", "block_distances", "removal_order", "remove_units", "LaCoOT"]

PAIRINGS = ("block", "official")
ORDERS = ("ascending", "deepest_first", "zscore", "shifted")
SCORES = ("sliced", "max_sliced")


# ------------------------------------------------------------------- distances


def random_projections(rng: jax.Array, dim: int, n_projections: int = 50) -> jax.Array:
  """``n_projections`` random unit directions in ``R^dim``, as the columns of ``(dim, n)``.

  ``θ ~ N(0, I_dim)`` normalised (uniform on the sphere); drawn as
  :func:`ott.tools.sliced.random_proj_sphere` draws them, so with the same key
  ``x @ random_projections(key, d, n)`` equals ``random_proj_sphere(x, n, key)``
  (the normals through :func:`jaxdepth.threefry.normal`: ``jax.random.normal``'s
  numbers, drawn several times faster on the CPU).
  """
  _check_count(n_projections)
  _check_key(rng)
  # Materialised once: the norm and the division both read the normals, and XLA fused
  # the whole Threefry hash into each of their passes and into a third, hashing every
  # number three times. CIFAR MobileNetV2's LaCoOT train step (13 blocks, 28 M normals)
  # took 0.936-0.950 of its time with the barrier, the same numbers bit for bit (2-core
  # CPU, steps taking turns, three runs of 8-16 rounds); ResNet-18's (1.5 M normals) the
  # same time within the noise.
  theta = jax.lax.optimization_barrier(threefry.normal(rng, (n_projections, dim)))
  theta = theta / jnp.linalg.norm(theta, axis=1, keepdims=True)
  return theta.T


def _check_key(rng):
  """Raises a clear error unless ``rng`` is a JAX key (typed, or raw ``uint32`` key data).

  An int seed is refused rather than taken as ``jax.random.key(seed)``: the
  directions must be fresh per step and block (keys folded from the run's key),
  and a fixed seed passed on every call would draw the same ones each time.
  """
  what = network.not_a_key(rng)
  if what is not None:
    raise TypeError(f"rng must be a JAX key, e.g. jax.random.key(0); got {what}")


def _check_count(n_projections):
  if not isinstance(n_projections, (int, np.integer)) or n_projections < 1:
    raise ValueError(f"n_projections must be an int >= 1 (directions to project on), got "
                     f"{n_projections!r}")


def _project(z: jax.Array, projections: jax.Array) -> jax.Array:
  """ott-jax's ``proj_fn``: ``(B, D) @ (D, n) -> (B, n)``, whole on every device where
  Explicit mesh axes shard the batch (:func:`jaxdepth.explicit_axes.replicated`: JAX sorts
  only along unsharded axes, and the sorted pairing needs every sample)."""
  return replicated(z @ projections)


def _flat(x, what):
  x = jnp.asarray(x)
  if x.ndim < 2:
    raise ValueError(f"{what} must be a batch (B, ...) of samples, got shape {x.shape}")
  if x.shape[0] < 2:
    raise ValueError(f"{what} holds {x.shape[0]} sample; a distance between distributions of "
                     f"samples needs a batch of at least 2")
  return x.reshape(x.shape[0], -1).astype(jnp.float32)


def slice_costs(x, y, *, projections=None, rng=None, n_projections: int = 50,
                mask=None) -> jax.Array:
  """Every direction's squared 1-D 2-Wasserstein distance ``W_j²``, shape ``(n,)``.

  Args:
    x: ``(B, ...)`` samples (flattened per sample to ``(B, D)``).
    y: ``(B', ...)`` samples with the same ``D`` (``B' = B`` in LaCoOT).
    projections: ``(D, n)`` unit directions as columns (``x @ projections`` are
      the projected samples); a constant (no gradient flows into it).
    rng: a JAX key (``jax.random.key(...)``, not an int seed) to draw
      ``n_projections`` directions when ``projections`` is not given
      (:func:`random_projections`).
    n_projections: how many directions to draw.
    mask: ``(B,)`` flags of the real samples of a padded batch, the same rows on
      both sides (``B' = B``; at least 2 real): the padded rows weigh 0 and the
      real ones ``1/n`` (``None``: every row is real).

  Returns:
    ``W_j²`` for each direction, from :func:`ott.tools.sliced.sliced_wasserstein`
    (uniform weights; sorted pairing when ``B = B'``); with ``mask``, the sorted
    pairing of the real rows alone (:func:`_real_costs`).

  Raises:
    ValueError: fewer than 2 samples, different feature sizes, projections of
      the wrong shape, or neither ``projections`` nor ``rng`` (ott-jax would
      silently use the same fixed key on every call); a ``mask`` that is not
      one flag per sample of both sides.
    TypeError: ``rng`` is not a JAX key (e.g. an int).
  """
  x, y = _flat(x, "x"), _flat(y, "y")
  if x.shape[1] != y.shape[1]:
    raise ValueError(f"x and y must have the same number of features per sample, got "
                     f"{x.shape[1]} and {y.shape[1]}")
  if mask is not None and (x.shape[0] != y.shape[0] or jnp.shape(mask) != (x.shape[0],)):
    raise ValueError(f"mask must flag the real rows of x and y, one per sample of both: x and "
                     f"y of {x.shape[0]} and {y.shape[0]} samples, mask of shape "
                     f"{jnp.shape(mask)}")
  dim = x.shape[1]
  if projections is None:
    if rng is None:
      raise ValueError("pass projections= (a (D, n) matrix of unit columns) or rng= (a key to "
                       "draw them); without either, ott-jax would use one fixed key on every call")
    projections = random_projections(rng, dim, n_projections)
  projections = jnp.asarray(projections, jnp.float32)
  if projections.ndim != 2 or projections.shape[0] != dim or projections.shape[1] < 1:
    raise ValueError(f"projections must have shape (D, n) = ({dim}, n >= 1) for samples of "
                     f"{dim} features, got {projections.shape}")
  projections = jax.lax.stop_gradient(projections)
  if mask is not None:
    return _real_costs(_project(x, projections), _project(y, projections), mask)
  _, out = ott_sliced.sliced_wasserstein(x, y, proj_fn=_project, projections=projections)
  return out.ot_costs


def _real_costs(px: jax.Array, py: jax.Array, mask: jax.Array) -> jax.Array:
  """``W_j²`` of the rows of ``(B, n)`` projections that ``mask`` flags, on both sides.

  The padded rows sort last (``+inf``) and are then zeroed, so the ``i``-th
  smallest real values pair and the padding pairs with itself at cost 0; the
  costs are ott-jax's uniform solver's (its squared Euclidean cost per pair),
  summed and divided by the real count ``n``. Exact where ott-jax's weighted
  solver with weights ``1/n`` and 0 is not: its quantiles come from float32
  cumulative sums of the weights, and with 145 real samples of 160 it paired
  wrong values in 41 slices of 50 of one check (costs up to 1.4 % off).
  """
  mask = replicated(jnp.asarray(mask).astype(bool))
  count = jnp.sum(mask)
  real = (jnp.arange(px.shape[0]) < count)[:, None]

  def sort_real(z):
    return jnp.where(real, jnp.sort(jnp.where(mask[:, None], z, jnp.inf), axis=0), 0.0)

  cost = ott_costs.SqEuclidean()
  pair = jax.vmap(jax.vmap(lambda a, b: cost(a[None], b[None])), in_axes=(1, 1))
  return jnp.sum(pair(sort_real(px), sort_real(py)), axis=-1) / count


def _safe_sqrt(v: jax.Array) -> jax.Array:
  """``sqrt(v)`` for ``v >= 0`` whose gradient at 0 is 0 instead of NaN (∞ · 0)."""
  positive = v > 0
  return jnp.where(positive, jnp.sqrt(jnp.where(positive, v, 1.0)), 0.0)


def max_sliced_wasserstein(x, y, *, projections=None, rng=None, n_projections: int = 50,
                           mask=None) -> jax.Array:
  """The max-sliced 2-Wasserstein distance ``sqrt(max_j W_j²)`` (LaCoOT's regularizer).

  The maximum is over the given or drawn directions (not optimised), as POT's
  ``max_sliced_wasserstein_distance`` with ``p=2``. Differentiable in ``x`` and
  ``y`` (through the sort; only the arg-max direction contributes), with a
  zero gradient where the distance is 0. See :func:`slice_costs` for the
  arguments.

  Returns:
    A float32 scalar.
  """
  costs = slice_costs(x, y, projections=projections, rng=rng, n_projections=n_projections,
                      mask=mask)
  return _safe_sqrt(jnp.maximum(jnp.max(costs), 0.0))


def sliced_wasserstein(x, y, *, projections=None, rng=None, n_projections: int = 50,
                       mask=None) -> jax.Array:
  """The sliced 2-Wasserstein distance ``sqrt(mean_j W_j²)`` (the official validation log).

  As POT's ``sliced_wasserstein_distance`` with ``p=2``; see :func:`slice_costs`.

  Returns:
    A float32 scalar.
  """
  costs = slice_costs(x, y, projections=projections, rng=rng, n_projections=n_projections,
                      mask=mask)
  return _safe_sqrt(jnp.maximum(jnp.mean(costs), 0.0))


# ------------------------------------------------------------------ regularizer


@dataclasses.dataclass(frozen=True)
class Penalty:
  """``λ · mean_k MSWD(X_k, Y_k)`` over captured ``{path: (X_k, Y_k)}``: a regularizer's ``fn``.

  Block ``k`` (position in ``paths``) draws its directions from ``fold_in(rng, k)``.
  Frozen and hashable, so compiled train steps are cached on it.

  Attributes:
    paths: the regularized nodes; ``X_k`` is the input of ``paths[k]``.
    weight: λ (>= 0).
    n_projections: directions per block and step.
    outputs: ``Y_k`` is the output of ``outputs[k]`` (``None``: of ``paths[k]``;
      :func:`compared_outputs`). A unit gated to 0 passes its input on, so its
      own output gives ``Y_k = X_k`` (distance 0, no gradient); another node's
      output, computed inside it, does not know the gate: leave a removed unit
      out of ``paths`` when ``outputs`` names other nodes.
  """
  paths: tuple[str, ...]
  weight: float = 1.0
  n_projections: int = 50
  outputs: tuple[str, ...] | None = None

  @property
  def capture(self) -> tuple[str, ...]:
    """Every node whose input or output the penalty reads."""
    return tuple(dict.fromkeys(self.paths + (self.outputs or ())))

  def __call__(self, captured, mask, rng) -> jax.Array:
    # Training batches are full (fit drops the remainder): uniform weights. A text batch's
    # mask flags its real tokens, whose positions alone are compared.
    tokens = mask if getattr(mask, "ndim", 0) == 2 else None
    outputs = self.outputs or self.paths
    distances = [max_sliced_wasserstein(real_tokens(captured[p][0], tokens),
                                        real_tokens(captured[q][1], tokens),
                                        rng=jax.random.fold_in(rng, k),
                                        n_projections=self.n_projections)
                 for k, (p, q) in enumerate(zip(self.paths, outputs))]
    return self.weight * jnp.mean(jnp.stack(distances))


def real_tokens(z: jax.Array, tokens: jax.Array | None) -> jax.Array:
  """``z`` with a text batch's padding positions set to 0 (``tokens``: its ``(B, L)``
  real-token flags; ``None`` or another shape than ``z``'s leading axes: ``z`` unchanged).

  A padding position's hidden state depends on the padding ids, not on the sentence, and
  reaches no real token; zeroed on both sides it adds nothing to a distance.
  """
  if tokens is None or tuple(z.shape[:-1]) != tuple(tokens.shape):
    return z
  return z * (tokens != 0)[..., None].astype(z.dtype)


def regularizer(paths, weight: float = 1.0, n_projections: int = 50, outputs=None
                ) -> training.Regularizer:
  """LaCoOT's loss term as a :class:`~jaxdepth.training.Regularizer` over ``paths``.

  Args:
    paths: node paths (e.g. :func:`find_blocks`), captured in the training forward pass.
    weight: λ (>= 0).
    n_projections: directions drawn per block and step (>= 1).
    outputs: one node path per block whose output is compared with the block's
      input (``None``: the block's own output; :func:`compared_outputs`).

  Returns:
    ``Regularizer("lacoot", capture=..., fn=Penalty(...))``; its key is
    ``fold_in(step key, 1)``, a function of the seed and the step.

  Raises:
    ValueError: λ < 0, fewer than 1 projection, no path, ``outputs`` of another length.
  """
  paths = S.site_paths(paths, "paths", "node paths")
  if not paths:
    raise ValueError("the LaCoOT regularizer needs at least one block to regularize")
  _check_weight(weight)
  _check_count(n_projections)
  outputs = _check_outputs(paths, outputs)
  penalty = Penalty(paths, float(weight), int(n_projections),
                    None if outputs == paths else outputs)
  name = f"lacoot(weight={float(weight)},n={int(n_projections)})"
  if penalty.outputs is not None:
    name = name[:-1] + f",outputs={','.join(penalty.outputs)})"
  return training.Regularizer(name, penalty.capture, penalty)


def _check_outputs(paths, outputs) -> tuple[str, ...]:
  if outputs is None:
    return tuple(paths)
  outputs = tuple(outputs)
  if len(outputs) != len(paths):
    raise ValueError(f"outputs names {len(outputs)} nodes for {len(paths)} blocks; give one "
                     f"output node per block")
  return outputs


def _check_weight(weight):
  if not isinstance(weight, (int, float, np.floating)) or not weight >= 0 or not math.isfinite(
      weight):
    raise ValueError(f"the LaCoOT weight λ must be a finite number >= 0, got {weight!r}")


# -------------------------------------------------------------------- blocks


def find_blocks(spec: S.Spec, pairing: str = "block") -> tuple[str, ...]:
  """The removable units of ``spec``, in call order.

  Args:
    spec: the architecture.
    pairing: ``"block"``: every :class:`~jaxdepth.spec.Block` with an identity
      shortcut whose input and output shapes are equal (ResNet-18: the four
      ``layerS/1`` and ``layer1/0``; ResNet-20: every stride-1 equal-width
      block; MobileNetV2: the ten stride-1 inverted residuals with a skip
      connection), a transformer layer counting as one unit
      (:func:`transformer_layers`; Swin-T: the 12 ``features/s/b``).
      ``"official"``: :func:`official_units`.

  Returns:
    Node paths.
  """
  if pairing not in PAIRINGS:
    raise ValueError(f"unknown LaCoOT pairing {pairing!r}; expected one of {PAIRINGS}")
  if pairing == "official":
    return official_units(spec)
  shapes = spec.shapes()
  layers = set(transformer_layers(spec))
  out = []
  for p, n in spec.walk():
    if any(p.startswith(layer + S.SEP) for layer in layers):
      continue   # a half of a transformer layer: the layer is the unit
    if p in layers or (isinstance(n, S.Block) and n.identity_shortcut
                       and shapes[p][0] == shapes[p][1]):
      out.append(p)
  return tuple(out)


def _holds(node: S.Node, kinds) -> bool:
  return isinstance(node, kinds) or any(_holds(c, kinds) for c in node.children())


def transformer_layers(spec: S.Spec) -> tuple[str, ...]:
  """The transformer layers of ``spec`` in call order (Swin-T: ``features/s/b``).

  A transformer layer is a :class:`~jaxdepth.spec.Sequential` of residual
  blocks with identity shortcuts (its attention half and its MLP half), one of
  which holds an attention node; it keeps its input shape, so it can become the
  identity as a whole (torchvision's ``SwinTransformerBlock``, LaCoOT's Swin unit).
  """
  shapes = spec.shapes()
  return tuple(
      p for p, n in spec.walk()
      if isinstance(n, S.Sequential) and len(n.layers) > 1
      and all(isinstance(c, S.Block) and c.identity_shortcut for c in n.layers)
      and _holds(n, (Attention, WindowAttention)) and shapes[p][0] == shapes[p][1])


def _is_swin(spec: S.Spec) -> bool:
  """Whether ``spec`` has windowed attention (a Swin transformer)."""
  return any(isinstance(n, WindowAttention) for _, n in spec.walk())


def _mlp_output(spec: S.Spec, layer: str) -> str:
  """The last node of the layer's MLP half before its stochastic depth (Swin's ``mlp[4]``)."""
  mlp = spec.node(layer).layers[-1]
  branch = [n for n in mlp.branch if not isinstance(n, StochasticDepth)]
  return layer + S.SEP + mlp.name + S.SEP + branch[-1].name


def compared_outputs(spec: S.Spec, units, pairing: str = "block") -> tuple[str, ...]:
  """The node whose output is compared with each unit's input (``Y_k``), one per unit.

  ``"block"``: the unit itself (its input against its output). ``"official"``
  on a Swin transformer (an architecture with windowed attention): for a
  transformer layer, the last node of its MLP half before the stochastic depth
  (``features/s/b/mlp/drop2``, torchvision's ``mlp[4]``): the authors' code
  hooks the input of ``norm1`` (the layer's input) and the output of
  ``mlp[4]``, the MLP branch before its residual addition, not the layer's
  output. Other units and architectures: the unit itself.
  """
  units = tuple(units)
  if pairing not in PAIRINGS:
    raise ValueError(f"unknown LaCoOT pairing {pairing!r}; expected one of {PAIRINGS}")
  if pairing == "block" or not _is_swin(spec):
    return units
  layers = set(transformer_layers(spec))
  return tuple(_mlp_output(spec, u) if u in layers else u for u in units)


def official_units(spec: S.Spec) -> tuple[str, ...]:
  """The units the authors' code regularizes and removes, for the architectures it covers.

  * MobileNetV2 (``mobilenet_v2_*`` specs): the depthwise ConvBN-ReLU6
    ``features/i/conv/depthwise`` of every inverted residual with an expansion
    layer and stride 1 (13 on the CIFAR variant, 12 on the ImageNet one); its
    input and output have the same shape, so it can become the identity.
  * ResNet-18 (``resnet18_*`` specs): the four ``layerS/1``. The official
    pairs are consecutive post-addition ReLU outputs (``layerS/0``'s and
    ``layerS/1``'s), which are exactly ``layerS/1``'s input and output;
    ``layer1/0``, also an identity-shortcut block on the CIFAR stem, is not
    among them.
  * Swin (an architecture with windowed attention; Swin-T: 12): every
    transformer layer (:func:`transformer_layers`); what its input is compared
    with is :func:`compared_outputs`.

  Raises:
    ValueError: an architecture the authors' code does not cover.
  """
  if _is_swin(spec):
    return transformer_layers(spec)
  if spec.name.startswith("mobilenet_v2"):
    shapes = spec.shapes()
    out = []
    for path, node in spec.walk():
      if not (isinstance(node, S.Sequential) and path.endswith("/conv/depthwise")):
        continue
      expand = path[:-len("depthwise")] + "expand"
      if expand in shapes and shapes[path][0] == shapes[path][1]:
        out.append(path)
    return tuple(out)
  if spec.name.startswith("resnet18"):
    return tuple(p for p in find_blocks(spec, "block") if p.split(S.SEP)[-1] == "1")
  raise ValueError(f"no official LaCoOT pairing for {spec.name!r} (the authors' code covers "
                   f"ResNet-18, MobileNetV2 and Swin-T); use pairing='block'")


def check_blocks(spec: S.Spec, paths) -> tuple[str, ...]:
  """Checks that every path is an identity-shortcut block with equal input/output shapes
  (or a transformer layer, :func:`transformer_layers`).

  Returns:
    The paths, as a tuple.

  Raises:
    KeyError: a path names no node.
    ValueError: no path, a repeated path, a node that is not a residual block,
      a projection shortcut, or different input and output shapes.
  """
  paths = (paths,) if isinstance(paths, str) else tuple(paths)
  if not paths:
    raise ValueError("no block given; name at least one identity-shortcut block")
  if len(set(paths)) != len(paths):
    raise ValueError(f"blocks repeated in {list(paths)}")
  shapes = spec.shapes()
  candidates = find_blocks(spec)
  layers = transformer_layers(spec)
  for p in paths:
    node = spec.node(p)
    if p in layers:
      continue
    if not isinstance(node, S.Block):
      raise ValueError(f"{p!r} is a {node.kind} node, not a residual block; LaCoOT removes "
                       f"identity-shortcut blocks: {list(candidates)}")
    if not node.identity_shortcut:
      raise ValueError(f"block {p!r} has a projection shortcut; only blocks with an identity "
                       f"shortcut can become the identity: {list(candidates)}")
    if shapes[p][0] != shapes[p][1]:
      raise ValueError(f"block {p!r} maps {shapes[p][0]} to {shapes[p][1]}; its input and "
                       f"output shapes must be equal: {list(candidates)}")
  return paths


# --------------------------------------------------------------- measurement


def check_distance_batch(batch_size: int, examples: int) -> None:
  """Refuses a batch of :func:`block_distances` that holds fewer than 2 examples of a
  split of ``examples``, or (with more than one batch) that the processes do not split."""
  real = min(batch_size, examples)
  if real < 2:
    raise ValueError(f"batch_size={batch_size} on a split of {examples} examples gives "
                     f"batches of {real}; a distance needs 2 samples or more: use a larger "
                     f"eval_batch_size (or hold out more validation data)")
  processes = jax.process_count()
  if real < examples and real % processes:
    raise ValueError(f"batch_size={batch_size} does not split over {processes} processes; use "
                     f"a multiple of {processes}")


def block_distances(spec: S.Spec, variables, split, paths, *, rng: jax.Array,
                    batch_size: int = 256, n_projections: int = 50, node_gates=None,
                    mesh=None, dtype=None, outputs=None) -> dict[str, dict[str, float]]:
  """Every unit's sliced and max-sliced distance on ``split``, in eval mode.

  Per full batch of ``batch_size`` examples (the remainder is dropped; a split
  smaller than one batch is one batch of the whole split), every unit's input
  and output are captured in one forward pass and compared; the values are
  means over batches. A batch whose length the device count does not divide is
  padded up with masked rows that weigh nothing (``slice_costs(..., mask=)``),
  so the samples measured do not depend on the device count. The sliced
  distance uses the same directions for every batch and unit shape
  (``fold_in(rng, 0)``, as the official validation log with a fixed seed), the
  max-sliced one fresh directions per batch and unit (``fold_in(rng, 1)`` then
  the batch and the unit).

  Args:
    spec: the architecture.
    variables: its variables.
    split: a data split (usually validation).
    paths: the units.
    rng: a JAX key (not an int seed).
    batch_size: global batch size in real examples (padded up to a multiple of
      the device count; in a multi-process run each process reads its share,
      and with more than one batch the process count must divide it).
    n_projections: directions per distance.
    node_gates: gates of removed units (``{path: gate}``); a unit whose gate is 0
      passes its input on, so its distance is 0 (whatever node ``outputs`` names).
    mesh: device mesh (default: every device); Auto or Explicit axes (``jax.make_mesh``'s
      default), the same distances.
    dtype: compute dtype.
    outputs: the node whose output is compared with each unit's input
      (:func:`compared_outputs`; ``None``: the unit's own output).

  Returns:
    ``{path: {"sliced": d, "max_sliced": m}}`` in the order of ``paths``.
  """
  paths = S.site_paths(paths, "paths", "node paths")
  outputs = _check_outputs(paths, outputs)
  _check_count(n_projections)
  _check_key(rng)
  training.check_split(split, "block_distances")
  mesh = training.make_mesh() if mesh is None else mesh
  check_distance_batch(batch_size, split.num_examples)
  devices, processes = mesh.devices.size, jax.process_count()
  real = min(batch_size, split.num_examples)   # examples per batch
  whole = real == split.num_examples           # one batch: the pipeline pads it
  size = -(-real // devices) * devices         # the global batch, padded up
  fixed, fresh = jax.random.fold_in(rng, 0), jax.random.fold_in(rng, 1)
  one = _distances_step(spec, paths, outputs, n_projections, dtype)
  variables = training.replicate(variables, mesh)
  # Replicated whatever they came as: the gates of a method state and plain floats give
  # one program (and one compilation).
  gates = None if node_gates is None else training.replicate(
      {p: jnp.asarray(g, jnp.float32) for p, g in node_gates.items()}, mesh)
  total_sw = total_msw = 0.0
  count = 0
  # Each process reads its share of every global batch. Without padding (size == real) the
  # batches and the program are those of a run that never pads.
  process_kw = ({"process_index": jax.process_index(), "process_count": processes}
                if processes > 1 else {})
  batches = (split.batches(size // processes, drop_remainder=False, **process_kw) if whole
             else split.batches(real // processes, drop_remainder=True, **process_kw))
  for i, batch in enumerate(batches):
    batch = _padded(batch, size // processes)
    x = network.batch_inputs(spec, batch)       # images, or a text batch's token inputs
    inputs = (training.shard_batch(x, mesh) if isinstance(x, dict)
              else training.shard_batch({"image": x}, mesh)["image"])
    mask = training.shard_batch({"mask": batch["mask"]}, mesh)["mask"] if size > real else None
    sw, msw = one(variables, inputs, gates, i, fixed, fresh, mask)
    total_sw, total_msw, count = total_sw + sw, total_msw + msw, count + 1
  sw, msw = np.asarray(jax.device_get(total_sw)) / count, np.asarray(
      jax.device_get(total_msw)) / count
  return {p: {"sliced": float(sw[k]), "max_sliced": float(msw[k])} for k, p in enumerate(paths)}


def _padded(batch, length: int):
  """A host batch with its rows repeated from the last up to ``length``, the new ones masked.

  Repeated rather than zero rows: a text row of zeros has no token to attend to.
  """
  extra = length - len(batch["mask"])
  if extra <= 0:
    return batch
  out = {k: np.concatenate([v, np.repeat(v[-1:], extra, axis=0)]) for k, v in batch.items()}
  out["mask"][-extra:] = False
  return out


@functools.lru_cache(maxsize=8)
def _distances_step(spec: S.Spec, paths: tuple[str, ...], outputs: tuple[str, ...],
                    n_projections: int, dtype):
  """The jitted per-batch distances of :func:`block_distances`, one per architecture.

  The keys are arguments, not constants of the program: a second measurement of
  the same network (the command's report after the run's own) compiles nothing.
  """
  capture = tuple(dict.fromkeys(paths + outputs))

  @jax.jit
  def one(variables, inputs, gates, batch_index, fixed, fresh, mask):
    out = network.forward(spec, variables, inputs, capture=capture, node_gates=gates,
                          dtype=dtype)
    tokens = inputs.get("attention_mask") if isinstance(inputs, dict) else None
    sw, msw = [], []
    for k, (p, q) in enumerate(zip(paths, outputs)):
      y = out.captured[q][1]
      if q != p and gates is not None and p in gates:   # a removed unit's own output: its input
        y = jnp.where(gates[p] != 0, y, out.captured[p][0])
      x, y = real_tokens(out.captured[p][0], tokens), real_tokens(y, tokens)
      sw.append(sliced_wasserstein(x, y, rng=fixed, n_projections=n_projections, mask=mask))
      key = jax.random.fold_in(jax.random.fold_in(fresh, batch_index), k)
      msw.append(max_sliced_wasserstein(x, y, rng=key, n_projections=n_projections,
                                        mask=mask))
    return jnp.stack(sw), jnp.stack(msw)
  return one


def removal_order(distances: dict[str, float], rule: str = "ascending") -> tuple[str, ...]:
  """The order in which units are replaced by the identity, from their distances.

  Args:
    distances: ``{unit: d}`` of every unit, in call order.
    rule: ``"ascending"`` (smallest distance first, ties in call order; the
      default and the paper's idea); ``"deepest_first"`` (the official ResNet
      script: the last block first, whatever the distances); ``"zscore"`` (the
      official Swin-T script: ascending ``|d − mean d| / std d + pct(d) / 100``
      with the population std and ``pct`` the percentile rank, mean of the
      strict and weak ranks, so a block far *below* the mean goes late);
      ``"shifted"`` (the official MobileNetV2 script's off-by-one: units sorted
      by ascending distance, but the one at call position ``j`` removes the unit
      at ``j − 1``; the first position removes nothing and the last unit is
      never removed).

  A unit nested in one that comes earlier in the order (a path under another
  unit's path, ``block/block`` after ``block``) is left out: removing the outer
  unit removes it too, so its own turn would evaluate the same network again
  and count one removal more. One that comes before its outer unit keeps its
  place (removing it first changes the network).

  Returns:
    Unit names in removal order (all units, or all but the last for ``"shifted"``;
    less the units nested in an earlier one).
  """
  if rule not in ORDERS:
    raise ValueError(f"unknown LaCoOT removal order {rule!r}; expected one of {ORDERS}")
  if not isinstance(distances, dict):
    raise TypeError(f"distances must be a dict {{unit: distance}} in call order, got a "
                    f"{type(distances).__name__}")
  names = list(distances)
  if any(isinstance(v, dict) for v in distances.values()):   # what block_distances returns
    raise TypeError(f"distances maps each unit to one number; block_distances gives both "
                    f"kinds per unit: pass {{u: d['max_sliced'] for u, d in distances.items()}} "
                    f"(or 'sliced', one of {SCORES})")
  d = np.asarray([distances[u] for u in names], np.float64)
  ascending = [int(i) for i in np.argsort(d, kind="stable")]
  if rule == "ascending":
    order = [names[i] for i in ascending]
  elif rule == "deepest_first":
    order = list(reversed(names))
  elif rule == "shifted":
    order = [names[i - 1] for i in ascending if i > 0]
  else:
    std = d.std()
    z = np.abs(d - d.mean()) / std if std > 0 else np.zeros_like(d)
    pct = np.asarray([((d < v).sum() + (d <= v).sum()) * 50.0 / len(d) for v in d])
    score = z + pct / 100.0
    order = [names[int(i)] for i in np.argsort(score, kind="stable")]
  kept = []
  for u in order:
    if _outer(u, kept) is None:
      kept.append(u)
  return tuple(kept)


def _outer(unit: str, units) -> str | None:
  """The first of ``units`` that holds ``unit`` (its path is under it), or ``None``."""
  return next((v for v in units if unit.startswith(v + S.SEP)), None)


# ------------------------------------------------------------------- surgery


def remove_units(spec: S.Spec, variables, paths) -> tuple[S.Spec, dict[str, Any]]:
  """``(spec, variables)`` without the nodes at ``paths`` (each becomes the identity).

  Every node must keep its input shape (an identity-shortcut block, a
  depthwise sub-layer), so nothing else changes: the result computes exactly
  what the network with those nodes gated to 0 computes.

  Raises:
    KeyError: a path names no node.
    ValueError: a node whose output shape differs from its input shape.
    TypeError: ``variables`` is not the variables dict (``variables["params"]``).
  """
  training.check_variables(variables, "remove_units")
  paths = S.site_paths(paths, "paths", "node paths")
  if not paths:
    return spec, variables
  network.check_node_gates(spec, {p: 0.0 for p in paths})
  targets = set(paths)
  shallow = S.map_nodes(spec, lambda p, n: None if p in targets else n)
  out = {}
  for collection, tree in variables.items():
    flat = traverse_util.flatten_dict(dict(tree), sep=S.SEP)
    kept = {k: v for k, v in flat.items()
            if not any(k == p or k.startswith(p + S.SEP) for p in targets)}
    out[collection] = traverse_util.unflatten_dict(kept, sep=S.SEP)
  return shallow, out


# --------------------------------------------------------------------- method


@dataclasses.dataclass(frozen=True)
class LaCoOT:
  """LaCoOT as a :class:`~jaxdepth.methods.base.Method` for :func:`jaxdepth.driver.run`.

  Iteration 0 trains with the regularizer, measures every unit's validation
  distance and ranks the units (:func:`removal_order`); every later iteration
  trains nothing (``TrainOptions(epochs=0)``) and evaluates the network with
  one more unit gated to the identity, until the order's units all are. The state is
  ``{"gates": (n,) f32, "rank": (n,) i32, "distances": (n,) f32, "ranked": i32}``:
  a unit's gate (0 = removed), its place in the removal order (``-1``: not in
  it, never removed: the last unit under ``"shifted"``; ``-2``: nested in a unit
  the order removes before it, :func:`removal_order`, so removed with that one),
  its validation distance, and the stage: 0 before the ranking, 1 once it is made
  (after iteration 0), 2 once the order's last removal has been evaluated.

  The live units are those whose gate is on (a unit the order never reaches stays
  live, and in the saved model); none at stage 2, which ends the run. A unit nested
  in a removed one keeps its gate on: it is gone with the outer unit (export
  removes the outer node), is not counted as removed (the outer unit is), and once
  ranked is neither measured nor removed: when only such units are left, the
  next iteration removes nothing and ends the run.

  Attributes:
    weight: λ, the regularizer's weight (>= 0; 0 trains without it).
    n_projections: directions per distance.
    pairing: ``"block"`` or ``"official"`` (:func:`find_blocks`; what each unit's
      input is compared with: :func:`compared_outputs`).
    blocks: explicit unit paths (identity-shortcut blocks, transformer layers)
      instead of ``pairing``'s.
    order: the removal rule (:func:`removal_order`).
    score: the distance that ranks: ``"sliced"`` (fixed directions, the
      official ResNet log) or ``"max_sliced"``.
  """
  weight: float = 1.0
  n_projections: int = 50
  pairing: str = "block"
  blocks: tuple[str, ...] | None = None
  order: str = "ascending"
  score: str = "sliced"
  name: str = dataclasses.field(default="lacoot", init=False)
  unit: str = dataclasses.field(default="block", init=False)
  score_name: str = dataclasses.field(default="distances", init=False)

  def __post_init__(self):
    _check_weight(self.weight)
    _check_count(self.n_projections)
    if self.pairing not in PAIRINGS:
      raise ValueError(f"unknown LaCoOT pairing {self.pairing!r}; expected one of {PAIRINGS}")
    if self.order not in ORDERS:
      raise ValueError(f"unknown LaCoOT removal order {self.order!r}; expected one of {ORDERS}")
    if self.score not in SCORES:
      raise ValueError(f"unknown LaCoOT score {self.score!r}; expected one of {SCORES}")
    if self.blocks is not None:
      object.__setattr__(self, "blocks", (self.blocks,) if isinstance(self.blocks, str)
                         else tuple(self.blocks))

  def options(self) -> dict[str, Any]:
    return {"weight": float(self.weight), "n_projections": int(self.n_projections),
            "pairing": self.pairing, "blocks": None if self.blocks is None else list(self.blocks),
            "order": self.order, "score": self.score}

  def units(self, spec: S.Spec) -> tuple[str, ...]:
    if self.blocks is not None:
      return check_blocks(spec, self.blocks)
    return find_blocks(spec, self.pairing)

  def init(self, spec: S.Spec):
    n = len(self.units(spec))
    return {"gates": jnp.ones((n,), jnp.float32), "rank": jnp.full((n,), -1, jnp.int32),
            "distances": jnp.zeros((n,), jnp.float32), "ranked": jnp.zeros((), jnp.int32)}

  @staticmethod
  def _host(state):
    return {k: np.asarray(jax.device_get(v)) for k, v in state.items()}

  @staticmethod
  def _ranked(state) -> bool:
    return bool(state["ranked"])

  def _live_indices(self, state) -> list[int]:
    """The units whose gate is on, ranked or not; none once the order is done."""
    state = self._host(state)
    if int(state["ranked"]) == 2:
      return []
    return [i for i in range(len(state["gates"])) if state["gates"][i] != 0]

  def _in_play(self, state) -> list[int]:
    """The live units less those nested in a unit the order removes before them (rank
    ``-2``): what :meth:`measure` scores and :meth:`decide` may remove."""
    rank = self._host(state)["rank"]
    return [i for i in self._live_indices(state) if rank[i] != -2]

  def _checked_units(self, spec: S.Spec, state) -> tuple[str, ...]:
    """The units of ``spec``, once ``state`` is known to hold one entry per unit.

    Without the check a state made for another spec indexes past its arrays (JAX
    clamps the index) or stops short of the units, silently; one of another method
    (its keys checked first) on a bare key or with the blame on the spec.
    """
    base.check_state(self, spec, state)
    units = self.units(spec)
    sizes = {k: np.shape(state[k]) for k in ("gates", "rank", "distances") if k in state}
    wrong = {k: v for k, v in sizes.items() if v != (len(units),)}
    if wrong:
      k, shape = next(iter(wrong.items()))
      n = shape[0] if len(shape) == 1 else shape
      raise ValueError(f"the LaCoOT state holds {n} {k} for the {len(units)} units of "
                       f"{spec.name!r}: it belongs to another spec (or other blocks or "
                       f"pairing); make it with LaCoOT.init(spec)")
    return units

  def live_units(self, spec: S.Spec, state) -> tuple[str, ...]:
    units = self._checked_units(spec, state)
    return tuple(units[i] for i in self._live_indices(state))

  def default_iterations(self, spec: S.Spec) -> int:
    # The trained network, then one removal more each; "shifted" never removes the last unit.
    n = len(self.units(spec))
    return n if self.order == "shifted" else n + 1

  def node_gates(self, spec: S.Spec, state) -> dict[str, jax.Array]:
    """``{unit: gate}`` for :func:`jaxdepth.network.forward`."""
    return {u: state["gates"][i] for i, u in enumerate(self._checked_units(spec, state))}

  def train_options(self, spec: S.Spec, state) -> base.TrainOptions:
    gates = self.node_gates(spec, state)
    if self._ranked(self._host(state)):
      return base.TrainOptions(node_gates=gates, epochs=0)
    units = self.units(spec)
    reg = (regularizer(units, self.weight, self.n_projections,
                       compared_outputs(spec, units, self.pairing))
           if self.weight > 0 else None)
    return base.TrainOptions(node_gates=gates, regularizer=reg)

  def check_data(self, spec: S.Spec, dataset, *, eval_batch_size: int | None = None,
                 mesh=None) -> None:
    """Refuses, before training, a dataset without 2 validation examples (a distance's
    least) and an ``eval_batch_size`` (the distances' batch) that gives batches of fewer."""
    del spec, mesh   # the distance batches are padded up to the device count
    if dataset is None or dataset.val is None:
      raise ValueError("LaCoOT measures its distances on the validation split; the dataset "
                       "has none (load it with val_fraction > 0)")
    if dataset.val.num_examples < 2:
      raise ValueError(f"the validation split holds {dataset.val.num_examples} example(s); "
                       f"LaCoOT's distances need 2 samples or more: hold out more validation "
                       f"data (a larger val_fraction)")
    if eval_batch_size is not None:
      check_distance_batch(eval_batch_size, dataset.val.num_examples)

  def measure(self, spec: S.Spec, variables, state, context: base.Context) -> dict[str, float]:
    units = self._checked_units(spec, state)
    host = self._host(state)
    if self._ranked(host):   # the distances the ranking was made on
      return {units[i]: float(host["distances"][i]) for i in self._in_play(state)}
    self.check_data(spec, context.dataset)   # an own loop's context may come without the driver's
    values = block_distances(
        spec, variables, context.dataset.val, units, rng=context.rng,
        batch_size=context.eval_batch_size or 256, n_projections=self.n_projections,
        node_gates=self.node_gates(spec, state), mesh=context.mesh, dtype=context.dtype,
        outputs=compared_outputs(spec, units, self.pairing))
    return {u: v[self.score] for u, v in values.items()}

  def decide(self, scores: dict[str, float], state) -> base.Decision:
    host = self._host(state)
    if not self._ranked(host):
      order = removal_order(scores, self.order)
      return base.Decision(order[:1], {"order": list(order), "rule": self.order,
                                       "score": self.score, "distances": dict(scores)})
    live = self._in_play(state)
    if len(live) != len(scores):
      raise ValueError(f"{len(scores)} scores for {len(live)} live units (measure's: the live "
                       f"units less those nested in a unit removed before them)")
    names = dict(zip(live, scores))
    ranked = [i for i in live if host["rank"][i] >= 0]
    if not ranked:   # the order is done; a unit it never reaches stays
      kept = [names[i] for i in live]
      return base.Decision((), {"stop": f"the {self.order!r} removal order never removes "
                                        f"{', '.join(kept)}"} if kept else None)
    nxt = min(ranked, key=lambda i: host["rank"][i])
    return base.Decision((names[nxt],))

  def apply(self, spec: S.Spec, variables, state, decision: base.Decision):
    training.check_variables(variables, "LaCoOT.apply")
    units = self._checked_units(spec, state)
    host = self._host(state)
    unknown = [u for u in decision.remove if u not in units]
    if unknown:
      raise KeyError(f"cannot remove {unknown}: not units of {spec.name!r}: {list(units)}")
    live = self.live_units(spec, state)
    stale = [u for u in decision.remove if u not in live]
    if stale:
      why = "the removal order is done" if int(host["ranked"]) == 2 else "removed already"
      raise KeyError(f"cannot remove {stale}: not live units ({why}); live units: {list(live)}")
    rank, distances = host["rank"], host["distances"]
    if not self._ranked(host):
      order = decision.details["order"]
      rank = np.full(len(units), -1, np.int32)
      for r, u in enumerate(order):
        rank[units.index(u)] = r
      for i, u in enumerate(units):   # removed with the unit that holds it
        if rank[i] < 0 and _outer(u, order) is not None:
          rank[i] = -2
      scores = decision.details.get("distances")
      if scores is not None:
        distances = np.asarray([scores[u] for u in units], np.float32)
    gates = np.where([u in decision.remove for u in units], 0.0, host["gates"])
    # Nothing removed and no ranked unit left: the order's last removal was just evaluated.
    done = not decision.remove and not any(r >= 0 and g != 0 for r, g in zip(rank, gates))
    return variables, {"gates": jnp.asarray(gates, jnp.float32),
                       "rank": jnp.asarray(rank, jnp.int32),
                       "distances": jnp.asarray(distances, jnp.float32),
                       "ranked": jnp.asarray(2 if done else 1, jnp.int32)}

  def export(self, spec: S.Spec, variables, state):
    training.check_variables(variables, "LaCoOT.export")
    units = self._checked_units(spec, state)
    host = self._host(state)
    return remove_units(spec, variables, [u for i, u in enumerate(units)
                                          if host["gates"][i] == 0])
