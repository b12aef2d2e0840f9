"""A numpy executor of specs: the independent oracle of the surgery tests.

``run(spec, variables, x)`` evaluates a spec in eval mode with plain numpy
(patches and einsum for convolutions), in float32 by default. The property
tests compare a network and what surgery made of it through this executor,
which is fast on tiny inputs (no compilation per random shape). The tests in
this file check it against the Flax executor, so it is a trustworthy oracle.
"""
from __future__ import annotations

import math

import jax
import numpy as np
import pytest

from jaxdepth import network
from jaxdepth import spec as S


def _get(variables, col, path):
  d = variables[col]
  for part in path.split("/"):
    d = d[part]
  return {k: np.asarray(v) for k, v in d.items()}


def conv(x, kernel, bias, stride, padding, groups):
  """Grouped 2-D correlation of NHWC ``x`` with an HWIO ``kernel``, zero padding."""
  (pt, pb), (pl, pr) = padding
  x = np.pad(x, ((0, 0), (pt, pb), (pl, pr), (0, 0)))
  kh, kw, ci, co = kernel.shape
  win = np.lib.stride_tricks.sliding_window_view(x, (kh, kw), axis=(1, 2))
  win = win[:, ::stride[0], ::stride[1]]                       # (B, Ho, Wo, C, kh, kw)
  b, ho, wo = win.shape[:3]
  win = win.reshape(b, ho, wo, groups, ci, kh, kw)
  k = kernel.reshape(kh, kw, ci, groups, co // groups)
  y = np.einsum("bhwgcij,ijcgo->bhwgo", win, k).reshape(b, ho, wo, co)
  return y + bias if bias is not None else y


def pool(x, node: S.Pool):
  if node.op == "global_avg":
    return x.mean(axis=(1, 2))
  if node.op == "adaptive_avg":
    oh, ow = node.output_size
    h, w = x.shape[1:3]
    out = np.zeros((x.shape[0], oh, ow, x.shape[3]), x.dtype)
    for i in range(oh):
      for j in range(ow):
        h0, h1 = (i * h) // oh, math.ceil((i + 1) * h / oh)
        w0, w1 = (j * w) // ow, math.ceil((j + 1) * w / ow)
        out[:, i, j] = x[:, h0:h1, w0:w1].mean(axis=(1, 2))
    return out
  (pt, pb), (pl, pr) = node.padding
  fill = -np.inf if node.op == "max" else 0.0
  x = np.pad(x, ((0, 0), (pt, pb), (pl, pr), (0, 0)), constant_values=fill)
  win = np.lib.stride_tricks.sliding_window_view(x, node.window, axis=(1, 2))
  win = win[:, ::node.stride[0], ::node.stride[1]]
  return win.max(axis=(-2, -1)) if node.op == "max" else win.mean(axis=(-2, -1))


def act(fn, x):
  if fn == "relu":
    return np.maximum(x, 0)
  if fn == "relu6":
    return np.clip(x, 0, 6)
  if fn == "gelu":
    return 0.5 * x * (1 + np.vectorize(math.erf)(x / np.sqrt(2)))
  return x


def run(spec: S.Spec, variables, x, dtype=np.float32):
  """Eval-mode output of ``spec`` on ``x`` computed with numpy in ``dtype``."""
  def cast(d):
    return {k: v.astype(dtype) for k, v in d.items()}

  def rec(nodes, x, prefix):
    for n in nodes:
      path = prefix + n.name
      if isinstance(n, S.Conv):
        p = cast(_get(variables, "params", path))
        x = conv(x, p["kernel"], p.get("bias"), n.stride, n.padding, n.groups)
      elif isinstance(n, S.Dense):
        p = cast(_get(variables, "params", path))
        x = x @ p["kernel"] + (p["bias"] if "bias" in p else 0)
      elif isinstance(n, S.BatchNorm):
        p, st = cast(_get(variables, "params", path)), cast(_get(variables, "batch_stats", path))
        x = (x - st["mean"]) / np.sqrt(st["var"] + dtype(n.epsilon)) * p["scale"] + p["bias"]
      elif isinstance(n, S.Act):
        x = act(n.fn, x)
      elif isinstance(n, S.Pool):
        x = pool(x, n)
      elif isinstance(n, S.Flatten):
        x = x.reshape(x.shape[0], -1)
      elif isinstance(n, S.Dropout):
        pass
      elif isinstance(n, S.Sequential):
        x = rec(n.layers, x, path + "/")
      elif isinstance(n, S.Block):
        y = rec(n.branch, x, path + "/") + rec(n.shortcut, x, path + "/")
        x = rec(n.post, y, path + "/")
      else:
        raise TypeError(f"reference executor does not know {n.kind}")
    return x.astype(dtype)
  return rec(spec.layers, np.asarray(x, dtype), "")


def random_variables(spec: S.Spec, seed: int = 0, *, bias_scale: float = 0.3):
  """Random variables for ``spec`` in the Flax layout, without compiling anything.

  Conv/dense kernels are scaled by ``1/sqrt(fan_in)``; biases, BatchNorm scale,
  shift and running statistics are random, so that folding is not trivial.
  """
  rng = np.random.default_rng(seed)
  shapes = spec.shapes()
  params, stats = {}, {}

  def put(tree, path, leaves):
    *parents, last = path.split("/")
    for p in parents:
      tree = tree.setdefault(p, {})
    tree[last] = leaves

  for path, n in spec.walk():
    c = shapes[path][0][-1]
    if isinstance(n, S.Conv):
      fan = n.kernel[0] * n.kernel[1] * c // n.groups
      leaves = {"kernel": rng.normal(0, 1 / math.sqrt(fan),
                                     (*n.kernel, c // n.groups, n.features))}
      if n.bias:
        leaves["bias"] = rng.normal(0, bias_scale, n.features)
      put(params, path, leaves)
    elif isinstance(n, S.Dense):
      leaves = {"kernel": rng.normal(0, 1 / math.sqrt(c), (c, n.features))}
      if n.bias:
        leaves["bias"] = rng.normal(0, bias_scale, n.features)
      put(params, path, leaves)
    elif isinstance(n, S.BatchNorm):
      put(params, path, {"scale": rng.uniform(0.5, 1.5, c), "bias": rng.normal(0, bias_scale, c)})
      put(stats, path, {"mean": rng.normal(0, bias_scale, c), "var": rng.uniform(0.5, 2.0, c)})
  cast = lambda t: jax.tree.map(lambda a: np.asarray(a, np.float32), t)  # noqa: E731
  out = {"params": cast(params)}
  if stats:
    out["batch_stats"] = cast(stats)
  return out


def relative(a, b) -> float:
  """``max |a - b| / max |a|``."""
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  assert a.shape == b.shape, (a.shape, b.shape)
  return float(np.max(np.abs(a - b)) / max(np.max(np.abs(a)), 1e-30))


# ------------------------------------------------------------------------- tests

_SPEC = S.Spec((7, 6, 4), (
    S.Conv("c1", features=6, kernel=3, stride=2, padding=((1, 0), (1, 1)), bias=True),
    S.BatchNorm("bn"), S.Act("r", fn="relu6"),
    S.Block("blk", branch=(S.Conv("dw", features=6, kernel=3, padding=1, groups=6),
                           S.Act("g", fn="gelu"),
                           S.Conv("pw", features=6, kernel=1, groups=2)),
            post=(S.Act("r2"),)),
    S.Pool("mp", "max", window=3, stride=1, padding=1),
    S.Pool("ap", "avg", window=2, stride=1),
    S.Pool("ad", "adaptive_avg", output_size=(3, 2)),
    S.Flatten("fl"), S.Dropout("do"), S.Dense("fc", features=5)))


@pytest.mark.parametrize("seed", [0, 1])
def test_reference_executor_matches_flax(seed):
  variables = random_variables(_SPEC, seed)
  x = np.random.default_rng(seed).normal(size=(3, 7, 6, 4)).astype(np.float32)
  ours = run(_SPEC, variables, x, dtype=np.float64)
  flax_out = np.asarray(network.forward(_SPEC, variables, x).logits)
  assert relative(ours, flax_out) < 1e-5


def test_random_variables_have_the_flax_structure():
  variables = random_variables(_SPEC)
  expected = jax.eval_shape(lambda k: network.init(_SPEC, k), jax.random.key(0))
  assert jax.tree.structure(variables) == jax.tree.structure(expected)
  assert jax.tree.map(np.shape, variables) == jax.tree.map(lambda s: s.shape, expected)
