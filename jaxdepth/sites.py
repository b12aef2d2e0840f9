"""Which weight layer feeds an activation site (EGP and NEPENTHE prune it).

A site's pre-activation is made by the nearest Conv or Dense before it, through
per-channel nodes only (BatchNorm, Dropout, stochastic depth, identity sites);
another live site, a pooling, a normalisation over channels (LayerNorm) or a
residual block in between means no weight layer feeds it directly. A Sequential
is only a name scope: the search goes on through its boundary. In a Concat each
branch is a chain of its own; a site first in the Concat's ``post`` reads the
concatenation, which no single weight layer makes.
For a site right after a residual addition (ResNet's ``relu2``, first in the
block's ``post``) it is the last weight layer of the branch (``conv2``), the
papers' ``convK`` for ``reluK``. Examples: ResNet ``layer1/0/relu1 ->
layer1/0/conv1``; Swin ``features/1/0/mlp/gelu -> features/1/0/mlp/fc1``;
MobileNetV2 ``features/2/conv/expand/relu6 -> features/2/conv/expand/conv``.
"""
from __future__ import annotations

from jaxdepth import spec as S

__all__ = ["weight_layer", "weight_layers", "flat_leaves"]

_PER_CHANNEL = (S.BatchNorm, S.Dropout)


def _passes(node: S.Node) -> bool:
  """Whether a node between a weight layer and a site keeps the layer the site's feeder."""
  return isinstance(node, _PER_CHANNEL) or (isinstance(node, S.Act) and node.fn == "identity")


def flat_leaves(nodes, prefix: str) -> list[tuple[str, S.Node]]:
  """``(path, node)`` of a node list with its Sequentials opened (a Sequential is
  only a name scope, so a conv inside one still feeds the site after it); Blocks
  and Concats stay whole."""
  out = []
  for n in nodes:
    if isinstance(n, S.Sequential):
      out += flat_leaves(n.layers, prefix + n.name + S.SEP)
    else:
      out.append((prefix + n.name, n))
  return out


def _scopes(spec: S.Spec):
  """Every flat ``[(path, node)]`` list of ``spec`` (Sequentials opened); a Block
  gives its branch followed by its post (what feeds ``post[0]`` is the branch) and
  its shortcut; a Concat each branch and its post (what feeds ``post[0]`` is the
  concatenation: no single layer)."""
  def rec(nodes, prefix):
    flat = flat_leaves(nodes, prefix)
    yield flat
    for path, n in flat:
      scope = path + S.SEP
      if isinstance(n, S.Block):
        yield from rec(n.branch + n.post, scope)
        yield from rec(n.shortcut, scope)
      elif isinstance(n, S.Concat):
        for branch in n.branches:
          yield from rec(branch, scope)
        yield from rec(n.post, scope)

  yield from rec(spec.layers, "")


def _feeder(spec: S.Spec, site: str, scopes) -> str | None:
  for flat in scopes:
    paths = [p for p, _ in flat]
    if site not in paths:
      continue
    for path, n in reversed(flat[:paths.index(site)]):
      if isinstance(n, (S.Conv, S.Dense)):
        return path
      if not _passes(n):
        break
    return None
  return None


def weight_layers(spec: S.Spec) -> dict[str, str | None]:
  """``{site: weight layer or None}`` for every live site, in call order.

  ``None``: no Conv or Dense feeds the site through per-channel nodes only.
  Downsampling shortcut convs and a final classifier feed no site.

  Examples: ResNet ``relu -> conv1``, ``layerX/Y/reluK -> layerX/Y/convK``;
  MobileNetV2 every ReLU6 to its ConvBNReLU6's conv; Swin and ViT every MLP's
  GELU to the MLP's ``fc1``.
  """
  scopes = list(_scopes(spec))
  return {s: _feeder(spec, s, scopes) for s in spec.sites()}


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
  layer = _feeder(spec, site, list(_scopes(spec)))
  if layer is None:
    raise ValueError(f"site {site!r} of {spec.name!r} is not fed by a Conv or Dense layer "
                     f"through per-channel nodes only; it has no weight layer of its own")
  return layer
