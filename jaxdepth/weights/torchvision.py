"""torchvision's state dicts on jaxdepth's zoo models: ResNet-18, MobileNetV2, VGG-16-bn, Swin-T.

:func:`name_map` builds, from a spec, the ``{torchvision key: Target}`` map
that :func:`jaxdepth.weights.state_dict.assign` applies, by walking the spec's
nodes that hold variables and translating each node path into torchvision's
module name:

=================  =================================  ==================================
architecture       jaxdepth node                      torchvision module
=================  =================================  ==================================
``resnet``         ``layer2/0/conv1``                 ``layer2.0.conv1``
                   ``layer2/0/shortcut_conv``, ``_bn`` ``layer2.0.downsample.0``, ``.1``
``mobilenet_v2``   ``features/0/conv``, ``bn``        ``features.0.0``, ``.1``
                   ``features/k/conv/expand/conv``    ``features.k.conv.0.0``
                   ``features/k/conv/depthwise/bn``   ``features.k.conv.1.1`` (``.0.1`` at k=1)
                   ``features/k/conv/project``, ``_bn`` ``features.k.conv.2``, ``.3``
                   ``classifier/fc``                  ``classifier.1``
``vgg``            ``features/i``, ``classifier/i``   ``features.i``, ``classifier.i``
``swin``           ``features/0/proj``, ``norm``      ``features.0.0``, ``.2``
                   ``features/s/b/attention/norm``    ``features.s.b.norm1``
                   ``features/s/b/attention/attn``    ``features.s.b.attn``
                   ``features/s/b/mlp/norm``          ``features.s.b.norm2``
                   ``features/s/b/mlp/fc1``, ``fc2``  ``features.s.b.mlp.0``, ``.3``
=================  =================================  ==================================

(other paths are the same with ``.`` for ``/``). Per node: a conv's ``weight``
becomes ``kernel`` (OIHW to HWIO) and ``bias`` stays; a Linear's ``weight`` is
transposed; BatchNorm's ``weight``, ``bias``, ``running_mean``,
``running_var`` become ``params/.../scale``, ``bias`` and
``batch_stats/.../mean``, ``var`` (``num_batches_tracked`` is not imported);
LayerNorm's ``weight`` becomes ``scale``; Swin's attention keeps ``qkv``,
``proj`` and ``relative_position_bias_table`` (its ``relative_position_index``
buffer is recomputed, not imported). The first Linear after a flatten (VGG's
``classifier.0``) has its input columns reordered from PyTorch's ``(C, H, W)``
flattening to jaxdepth's channel-last ``(H, W, C)``.

:func:`load` reads a file (or takes a state dict) and returns the variables.
"""
from __future__ import annotations

import functools
import os
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np

from jaxdepth import network
from jaxdepth import spec as S
from jaxdepth.transformer import nodes as T
from jaxdepth.weights import state_dict as sd
from jaxdepth.weights.state_dict import StateDictError, Target

__all__ = ["ARCHITECTURES", "HEADS", "architecture_of", "name_map", "load"]

ARCHITECTURES = ("resnet", "mobilenet_v2", "vgg", "swin")

# The classifier head of each architecture (variables under params/<head>).
HEADS = {"resnet": "fc", "mobilenet_v2": "classifier/fc", "vgg": "classifier/6", "swin": "head"}


def architecture_of(spec: S.Spec) -> str:
  """The torchvision family of a zoo spec, from its name (``resnet18_imagenet`` -> ``resnet``)."""
  name = spec.name
  for arch, test in (("resnet", name.startswith("resnet")),
                     ("mobilenet_v2", name.startswith("mobilenet_v2")),
                     ("vgg", name.startswith("vgg")), ("swin", "swin" in name)):
    if test:
      return arch
  raise StateDictError(f"no torchvision name map for the spec {name!r}: torchvision weights "
                       f"load onto the zoo's resnet18, mobilenet_v2, vgg16_bn and swin_t "
                       f"(and their variants); for a spec built like one of them under another "
                       f"name, pass architecture= one of {', '.join(ARCHITECTURES)}")


# ----------------------------------------------------------- module names


def _resnet_module(spec, path: str) -> str:
  key = path.replace(S.SEP, ".")
  for ours, theirs in (("shortcut_conv", "downsample.0"), ("shortcut_bn", "downsample.1")):
    if key.endswith("." + ours):
      return key[:-len(ours)] + theirs
  return key


def _mobilenet_module(spec, path: str) -> str:
  """Every name below the top level is its index in its parent (``features/0/bn`` ->
  ``features.0.1``, ``classifier/fc`` -> ``classifier.1``), except an inverted
  residual's body ``conv`` (a Sequential of Sequentials), which torchvision names ``conv``."""
  parts = path.split(S.SEP)
  out, parent = [parts[0]], spec.node(parts[0])
  for name in parts[1:]:
    children = parent.children()
    node = next(c for c in children if c.name == name)
    body = (name == "conv" and isinstance(node, S.Sequential)
            and any(isinstance(c, S.Sequential) for c in node.children()))
    out.append(name if body else str([c.name for c in children].index(name)))
    parent = node
  return ".".join(out)


def _vgg_module(spec, path: str) -> str:
  return path.replace(S.SEP, ".")


_SWIN_STEM = {"features.0.proj": "features.0.0", "features.0.norm": "features.0.2"}
_SWIN_LAYER = ((".attention.norm", ".norm1"), (".attention.attn", ".attn"),
               (".mlp.norm", ".norm2"), (".mlp.fc1", ".mlp.0"), (".mlp.fc2", ".mlp.3"))


def _swin_module(spec, path: str) -> str:
  key = path.replace(S.SEP, ".")
  if key in _SWIN_STEM:
    return _SWIN_STEM[key]
  for ours, theirs in _SWIN_LAYER:
    if key.endswith(ours):
      return key[:-len(ours)] + theirs
  return key


_MODULE_NAMES = {"resnet": _resnet_module, "mobilenet_v2": _mobilenet_module,
                 "vgg": _vgg_module, "swin": _swin_module}


# ------------------------------------------------------------- per node


def flattened_dense_kernel(map_shape: tuple[int, int, int]):
  """The transform of a Linear weight reading a flattened ``(H, W, C)`` map.

  PyTorch flattens NCHW maps as ``(C, H, W)``, jaxdepth channel-last maps as
  ``(H, W, C)``: ``kernel[(h W + w) C + c, o] = weight[o, (c H + h) W + w]``.
  """
  h, w, c = map_shape

  def transform(weight: np.ndarray) -> np.ndarray:
    if weight.ndim != 2 or weight.shape[1] != h * w * c:
      raise ValueError(f"it reads a flattened {c}-channel {h}x{w} map, {h * w * c} inputs")
    out = weight.shape[0]
    return weight.reshape(out, c, h, w).transpose(2, 3, 1, 0).reshape(h * w * c, out)
  return transform


def _entries(node: S.Node, ours: str, theirs: str, flattened) -> dict[str, Target | None]:
  p, b = f"params/{ours}", f"batch_stats/{ours}"
  if isinstance(node, S.Conv):
    out = {f"{theirs}.weight": Target(f"{p}/kernel", sd.conv_kernel)}
    if node.bias:
      out[f"{theirs}.bias"] = Target(f"{p}/bias")
    return out
  if isinstance(node, S.BatchNorm):
    return {f"{theirs}.weight": Target(f"{p}/scale"), f"{theirs}.bias": Target(f"{p}/bias"),
            f"{theirs}.running_mean": Target(f"{b}/mean"),
            f"{theirs}.running_var": Target(f"{b}/var"),
            f"{theirs}.num_batches_tracked": None}
  if isinstance(node, S.LayerNorm):
    return sd.layer_norm_entries(theirs, p)
  if isinstance(node, S.Dense):
    kernel = sd.dense_kernel if flattened is None else flattened_dense_kernel(flattened)
    return sd.linear_entries(theirs, p, bias=node.bias, kernel=kernel)
  if isinstance(node, T.WindowAttention):
    out = {f"{theirs}.relative_position_bias_table": Target(f"{p}/relative_position_bias_table"),
           f"{theirs}.relative_position_index": None,
           f"{theirs}.qkv.weight": Target(f"{p}/qkv/kernel", sd.dense_kernel)}
    if node.qkv_bias:
      out[f"{theirs}.qkv.bias"] = Target(f"{p}/qkv/bias")
    out[f"{theirs}.proj.weight"] = Target(f"{p}/proj/kernel", sd.dense_kernel)
    out[f"{theirs}.proj.bias"] = Target(f"{p}/proj/bias")
    return out
  return {}


def name_map(spec: S.Spec, architecture: str | None = None) -> dict[str, Target | None]:
  """``{torchvision key: Target}`` for ``spec`` (see the module's table).

  Args:
    spec: a zoo ResNet-18, MobileNetV2, VGG-16-bn or Swin (or a spec built the
      same way: any depth, width or number of classes).
    architecture: one of :data:`ARCHITECTURES`; default :func:`architecture_of`.

  Raises:
    StateDictError: an unknown architecture, or a node holding variables that
      torchvision's model of that family does not have.
  """
  arch = architecture or architecture_of(spec)
  if arch not in _MODULE_NAMES:
    raise StateDictError(f"unknown architecture {arch!r}; expected one of "
                         f"{', '.join(ARCHITECTURES)}")
  module = _MODULE_NAMES[arch]
  shapes = spec.shapes()
  out: dict[str, Target | None] = {}
  flattened = None   # the (H, W, C) map a Flatten produced, until a Dense reads it
  for path, node in spec.walk():
    if isinstance(node, S.Flatten):
      flattened = shapes[path][0] if len(shapes[path][0]) == 3 else None
      continue
    entries = _entries(node, path, module(spec, path), flattened)
    if not entries and getattr(node, "param_count", lambda _: 0)(shapes[path][0]) > 0:
      raise StateDictError(f"node {path!r} ({node.kind}) has no counterpart in torchvision's "
                           f"{arch}; its variables cannot be imported")
    if isinstance(node, S.Dense):
      flattened = None
    out.update(entries)
  return out


# ------------------------------------------------------------------- load


def load(spec: S.Spec, source: str | os.PathLike | Mapping[str, np.ndarray], *,
         template: Mapping[str, Any] | None = None, new_head: bool = False,
         architecture: str | None = None) -> dict[str, Any]:
  """The variables of ``spec`` from a torchvision state dict.

  Example (weights exported from ``torchvision.models.resnet18(weights=...)``,
  see ``docs/weights.md``)::

      spec = zoo.resnet18(stem="imagenet", num_classes=1000)
      variables = torchvision.load(spec, "resnet18.safetensors")

  Args:
    spec: the zoo model (:func:`name_map`).
    source: a safetensors file, a ``.pth`` state dict (needs torch), or a
      ``{key: array}`` already read (:func:`~jaxdepth.weights.read_state_dict`).
    template: variables whose structure, shapes and dtypes to fill (default:
      those of ``network.init(spec, ...)``); with ``new_head`` its head values
      are kept, so pass your freshly initialised variables (arrays: a
      ``jax.eval_shape`` template has no values to keep and is refused).
    new_head: keep the template's classifier head (:data:`HEADS`) instead of
      importing the file's: fine-tuning on another number of classes (ImageNet
      weights on Flowers-102).
    architecture: one of :data:`ARCHITECTURES`; default from ``spec.name``.

  Returns:
    ``{"params": ..., "batch_stats": ...}`` for :func:`jaxdepth.forward`.

  Raises:
    StateDictError: an unreadable file, or the first missing, unexpected or
      mis-shaped tensor (a checkpoint of another architecture, width or number
      of classes).
  """
  arch = architecture or architecture_of(spec)
  names = name_map(spec, arch)
  if isinstance(source, Mapping):
    tensors, what = source, "the state dict"
  else:
    tensors, what = sd.read_state_dict(source), os.fspath(source)
  if template is None:
    make = functools.partial(network.init, spec, jax.random.key(0))
    template = make() if new_head else jax.eval_shape(make)
  head = f"params/{HEADS[arch]}"
  try:
    return sd.assign(template, tensors, names, keep=(head,) if new_head else (), what=what)
  except StateDictError as e:
    if not new_head and e.target is not None and sd.under(e.target, [head]):
      raise StateDictError(f"{e}. The classifier head ({head}) is the one that does not fit: "
                           f"to fine-tune on another number of classes, pass new_head=True "
                           f"(on the command line --config.pretrained_new_head=true) to keep "
                           f"a freshly initialised head", key=e.key, target=e.target) from None
    raise
