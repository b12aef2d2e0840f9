"""Which weight layer feeds an activation site (EGP prunes it, TLC masks it).

A site's pre-activation is made by the nearest Conv or Dense before it, through
per-channel nodes only (BatchNorm, Dropout, stochastic depth, identity sites).
For a site right after a residual addition (ResNet's ``relu2``, first in the
block's ``post``) it is the last weight layer of the branch (``conv2``), the
papers' ``convK`` for ``reluK``. Examples: ResNet ``layer1/0/relu1 ->
layer1/0/conv1``; Swin ``features/1/0/mlp/gelu -> features/1/0/mlp/fc1``;
MobileNetV2 ``features/2/conv/expand/relu6 -> features/2/conv/expand/conv``.
"""
from __future__ import annotations

from jaxdepth import spec as S

__all__ = ["weight_layer"]

_PER_CHANNEL = (S.BatchNorm, S.Dropout, S.Act)


def _scopes(spec: S.Spec):
  """``(prefix, nodes)`` for every node list of ``spec``; a Block gives its branch
  followed by its post (what feeds ``post[0]`` is the branch), and its shortcut."""
  def rec(nodes, prefix):
    yield prefix, tuple(nodes)
    for n in nodes:
      yield from inside(n, prefix + n.name + S.SEP)

  def inside(n, prefix):
    if isinstance(n, S.Block):
      yield prefix, n.branch + n.post
      yield prefix, n.shortcut
      for c in n.children():
        yield from inside(c, prefix + c.name + S.SEP)
    elif isinstance(n, S.Sequential):
      yield from rec(n.layers, prefix)

  yield from rec(spec.layers, "")


def weight_layer(spec: S.Spec, site: str) -> str:
  """The path of the Conv or Dense layer whose output feeds ``site``.

  Args:
    spec: the architecture.
    site: a live site of ``spec`` (``spec.sites()``).

  Returns:
    The weight layer's path.

  Raises:
    KeyError: ``site`` is not a live site.
    ValueError: no weight layer feeds it through per-channel nodes only (e.g. a
      site right after a pooling or an attention node).
  """
  if site not in spec.sites():
    raise KeyError(f"{site!r} is not a live site of {spec.name!r}; live sites: "
                   f"{list(spec.sites())}")
  prefix, _, name = site.rpartition(S.SEP)
  prefix = prefix + S.SEP if prefix else ""
  for scope, nodes in _scopes(spec):
    names = [n.name for n in nodes]
    if scope != prefix or name not in names:
      continue
    for n in reversed(nodes[:names.index(name)]):
      if isinstance(n, (S.Conv, S.Dense)):
        return scope + n.name
      if not isinstance(n, _PER_CHANNEL):
        break
  raise ValueError(f"site {site!r} of {spec.name!r} is not fed by a Conv or Dense layer "
                   f"through per-channel nodes only; it has no weight layer of its own")
