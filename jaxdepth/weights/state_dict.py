"""Reading PyTorch state dicts and placing their tensors on jaxdepth variables.

A *state dict* is PyTorch's flat ``{key: tensor}`` of a model's parameters and
buffers (``model.state_dict()``); here it is a ``{key: numpy array}``.
:func:`read_state_dict` reads one from

* a **safetensors** file (recognised by its header, whatever its suffix): a
  JSON table of tensors and their raw bytes, read without executing anything;
* a PyTorch checkpoint (``torch.save``, a pickle inside a zip) through
  ``torch.load(weights_only=True)``, PyTorch's loader that rebuilds tensors and
  plain containers only and refuses any other pickled object. It needs torch;
  jaxdepth never unpickles a file itself.

:func:`assign` then places the tensors on a template of the variables
(``network.init(spec, key)`` or its ``jax.eval_shape``) through a *name map*:
``{source key: Target(variable path, transform)}``, where the transform turns
PyTorch's layout into Flax's (:func:`conv_kernel`: OIHW to HWIO;
:func:`dense_kernel`: ``(out, in)`` to ``(in, out)``). A key may also be a
tuple of source keys that one transform combines into one variable (e.g.
separate query, key and value projections into one packed kernel), and a
value ``None`` marks a buffer that is known and not imported (BatchNorm's
``num_batches_tracked``). Every way a file can fail to fit (a tensor missing,
one the name map does not know, one of the wrong shape) raises one
:class:`StateDictError` naming the first such tensor and what to do.
"""
from __future__ import annotations

import difflib
import os
import pathlib
import re
import struct
import zipfile
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from jaxdepth import _optional

__all__ = ["StateDictError", "Target", "read_state_dict", "assign", "as_is", "conv_kernel",
           "dense_kernel", "linear_entries", "layer_norm_entries", "under", "EXPORT_HINT"]

SEP = "/"

# What to run where torch is installed, to turn a checkpoint into a safetensors file.
EXPORT_HINT = ("on a machine with torch: import torch, safetensors.torch; "
               "sd = torch.load('model.pth', map_location='cpu', weights_only=True); "
               "safetensors.torch.save_file({k: v.contiguous() for k, v in sd.items()}, "
               "'model.safetensors')")


class StateDictError(ValueError):
  """A file that is not a readable state dict, or a state dict that does not fit the variables.

  Attributes:
    key: the source tensor at fault, when there is one.
    target: the variable path it was meant for, when known.
  """

  def __init__(self, message: str, *, key: str | None = None, target: str | None = None):
    super().__init__(message)
    self.key, self.target = key, target


# ----------------------------------------------------------------- transforms


def as_is(x: np.ndarray) -> np.ndarray:
  """The tensor unchanged (biases, BatchNorm and LayerNorm parameters, running statistics).

  PyTorch's ``running_var`` is the running mean of the *unbiased* batch variance
  and Flax's ``var`` of the biased one; both are used the same way in eval mode,
  ``(x - mean) / sqrt(var + eps)``, so the value is taken as it is.
  """
  return x


def conv_kernel(w: np.ndarray) -> np.ndarray:
  """A PyTorch conv weight ``(out, in / groups, kh, kw)`` as a Flax kernel ``(kh, kw, in / groups, out)``."""
  if w.ndim != 4:
    raise ValueError(f"a conv weight has 4 axes (out, in, kh, kw), this one {w.ndim}")
  return np.transpose(w, (2, 3, 1, 0))


def dense_kernel(w: np.ndarray) -> np.ndarray:
  """A PyTorch ``Linear`` weight ``(out, in)`` as a Flax Dense kernel ``(in, out)``."""
  if w.ndim != 2:
    raise ValueError(f"a Linear weight has 2 axes (out, in), this one {w.ndim}")
  return w.T


class Target(NamedTuple):
  """Where a source tensor goes.

  Attributes:
    path: the variable's path, collections first, ``/``-separated
      (``"params/layer1/0/conv1/kernel"``, ``"batch_stats/bn1/var"``).
    transform: ``(*source arrays) -> array`` in the variable's layout (one
      argument per source key).
  """
  path: str
  transform: Callable[..., np.ndarray] = as_is


def linear_entries(key: str, params: str, *, bias: bool, kernel: Callable = dense_kernel
                   ) -> dict[str, Target]:
  """A PyTorch ``Linear`` named ``key`` onto the Dense variables under ``params``."""
  out = {f"{key}.weight": Target(f"{params}/kernel", kernel)}
  if bias:
    out[f"{key}.bias"] = Target(f"{params}/bias")
  return out


def layer_norm_entries(key: str, params: str) -> dict[str, Target]:
  """A PyTorch ``LayerNorm`` named ``key`` onto the LayerNorm variables under ``params``."""
  return {f"{key}.weight": Target(f"{params}/scale"), f"{key}.bias": Target(f"{params}/bias")}


# ------------------------------------------------------------------- reading


def _safetensors_header(head: bytes, size: int) -> bool:
  """Whether a file of ``size`` bytes starting with ``head`` is laid out as safetensors:
  a little-endian u64 header length ``n``, then ``n`` bytes of JSON starting with ``{``."""
  if len(head) < 9:
    return False
  n = struct.unpack("<Q", head[:8])[0]
  return 0 < n <= size - 8 and head[8:9] == b"{"


def _is_zip(head: bytes) -> bool:
  return head.startswith(b"PK\x03\x04")


def _is_torch_checkpoint(path: pathlib.Path, head: bytes) -> bool:
  """``torch.save``'s zip container (a zip holding ``<name>/data.pkl``, which tells it from
  any other zip, a numpy ``.npz`` among them), or its legacy bare pickle (protocol 2+)."""
  if head[:1] == b"\x80":
    return True
  if not _is_zip(head):
    return False
  try:
    with zipfile.ZipFile(path) as z:
      names = z.namelist()
  except (zipfile.BadZipFile, OSError) as e:   # a download cut short, most likely
    raise StateDictError(f"{path} starts as a zip archive (a PyTorch checkpoint's container) but "
                         f"cannot be read as one ({e}): it is damaged or truncated; download or "
                         f"export it again") from e
  return any(n.count("/") == 1 and n.endswith("/data.pkl") for n in names)


def read_state_dict(path: str | os.PathLike) -> dict[str, np.ndarray]:
  """The tensors of a safetensors file or of a PyTorch checkpoint, as numpy arrays.

  Args:
    path: a ``.safetensors`` file (recognised by its header), or a
      ``torch.save`` file (``.pth``, ``.pt``) holding a state dict, or a dict
      holding one under ``"state_dict"``, ``"model_state_dict"`` or ``"model"``
      (read with ``torch.load(weights_only=True)``, which needs torch).

  Returns:
    ``{key: array}`` (sorted by key for safetensors, in the state dict's order for
    torch); bfloat16 tensors as ``ml_dtypes.bfloat16`` arrays (safetensors) or
    float32 (torch).

  Raises:
    StateDictError: no such file, a file that is neither, a damaged file, or a
      PyTorch checkpoint while torch is not installed (the message gives the
      three lines that export it to safetensors where torch is).
  """
  path = pathlib.Path(path)
  if not path.is_file():
    raise StateDictError(f"{path}: no such file; give the path of a .safetensors file (or of a "
                         f"PyTorch .pth state dict where torch is installed)")
  size = path.stat().st_size
  with open(path, "rb") as f:
    head = f.read(16)
  if _safetensors_header(head, size):
    return _read_safetensors(path)
  if path.suffix == ".safetensors":
    raise StateDictError(f"{path} is named .safetensors but is not a safetensors file (it does "
                         f"not start with a header length and a JSON table); it may be "
                         f"truncated or of another format. Export it again: {EXPORT_HINT}")
  if _is_torch_checkpoint(path, head):
    return _read_torch(path)
  if _is_zip(head):
    raise StateDictError(
        f"{path} is neither a safetensors file nor a PyTorch checkpoint: a zip archive without "
        f"torch.save's <name>/data.pkl (a numpy .npz is such a zip, and not a weights format "
        f"jaxdepth reads). Save the arrays as safetensors, with the state dict's names as keys: "
        f"safetensors.numpy.save_file(dict(numpy.load({path.name!r})), "
        f"{path.stem + '.safetensors'!r}); or export the model's state dict to safetensors "
        f"{EXPORT_HINT}")
  raise StateDictError(f"{path} is neither a safetensors file nor a PyTorch checkpoint (it starts "
                       f"with {head[:8]!r}); export the model's state dict to safetensors "
                       f"{EXPORT_HINT}")


def _read_safetensors(path: pathlib.Path) -> dict[str, np.ndarray]:
  safe = _optional.require("safetensors", "weights", "reading safetensors files")
  try:
    with safe.safe_open(str(path), framework="numpy") as f:
      out = {k: f.get_tensor(k) for k in f.keys()}
  except Exception as e:  # safetensors raises its own error types (SafetensorError, ...)
    if isinstance(e, (MemoryError, KeyboardInterrupt)):
      raise
    raise StateDictError(f"{path}: not a readable safetensors file ({type(e).__name__}: {e}); "
                         f"it may be damaged or truncated. Export it again: {EXPORT_HINT}"
                         ) from e
  return out


_NESTED_KEYS = ("state_dict", "model_state_dict", "model")


def _read_torch(path: pathlib.Path) -> dict[str, np.ndarray]:
  try:
    import torch  # pylint: disable=import-outside-toplevel
  except ImportError:
    raise StateDictError(
        f"{path} is a PyTorch checkpoint (a pickle); jaxdepth reads it only through "
        f"torch.load(weights_only=True), and torch is not installed here. Install torch, or "
        f"convert the file to safetensors {EXPORT_HINT}, and pass the .safetensors file"
        ) from None
  try:
    obj = torch.load(str(path), map_location="cpu", weights_only=True)
  except Exception as e:  # pickle.UnpicklingError for objects weights_only refuses, and others
    if isinstance(e, (MemoryError, KeyboardInterrupt)):
      raise
    raise StateDictError(
        f"{path}: torch.load(weights_only=True) refused it ({type(e).__name__}: "
        f"{_reason(e)}). A checkpoint that pickles whole modules or other objects is not read; "
        f"load it in PyTorch and save model.state_dict() instead") from e
  state = _state_dict_of(obj, torch)
  if state is None:
    raise StateDictError(
        f"{path} holds a {type(obj).__name__}, not a state dict: expected a dict of tensors, "
        f"or a dict with one under {' or '.join(repr(k) for k in _NESTED_KEYS)}; save "
        f"model.state_dict() instead")
  return {k: _torch_to_numpy(v, torch) for k, v in state.items()}


def _reason(error: Exception) -> str:
  """The gist of torch.load's refusal: its first sentence and the global it refused."""
  text = re.sub(r"\x1b\[[0-9;]*m", "", str(error))
  first = text.strip().split(". ")[0].splitlines()[0] if text.strip() else ""
  refused = re.search(r"Unsupported global: [^\s]+ [^\s]+", text)
  return first + (f"; {refused.group(0)}" if refused else "")


def _state_dict_of(obj, torch) -> Mapping[str, Any] | None:
  def is_state(d):
    return isinstance(d, Mapping) and d and all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in d.items())
  if is_state(obj):
    return obj
  if isinstance(obj, Mapping):
    for key in _NESTED_KEYS:
      if is_state(obj.get(key)):
        return obj[key]
  return None


def _torch_to_numpy(t, torch) -> np.ndarray:
  t = t.detach().cpu()
  if t.dtype == torch.bfloat16:   # numpy has no bfloat16; float32 holds it exactly
    t = t.float()
  return t.numpy()


# ----------------------------------------------------------------- assigning


def _shape(x) -> tuple[int, ...]:
  return tuple(int(d) for d in x.shape)


def _sources(key: str | tuple[str, ...]) -> tuple[str, ...]:
  return (key,) if isinstance(key, str) else tuple(key)


def _near(key: str, keys: Sequence[str]) -> str:
  close = difflib.get_close_matches(key, keys, n=1, cutoff=0.6)
  return f"; the nearest name in the file is {close[0]!r}" if close else ""


def under(path: str, prefixes: Sequence[str]) -> bool:
  """Whether the variable ``path`` is one of ``prefixes`` or inside one."""
  return any(path == p or path.startswith(p + SEP) for p in prefixes)


def assign(template: Mapping[str, Any], tensors: Mapping[str, np.ndarray],
           name_map: Mapping[str | tuple[str, ...], Target | None], *,
           keep: Sequence[str] = (), what: str = "the state dict") -> dict[str, Any]:
  """``template`` with every variable replaced by its source tensor(s) from ``tensors``.

  Checks, in the name map's order then the file's: every source key is in
  ``tensors``, every converted tensor has its variable's shape, and every key
  of ``tensors`` is known to the name map. The first failure raises.

  Args:
    template: variables (``{"params": ..., "batch_stats": ...}``) whose leaves
      give each variable's shape and dtype (arrays or ``jax.ShapeDtypeStruct``).
    tensors: the state dict (:func:`read_state_dict`).
    name_map: ``{source key (or tuple of keys): Target}``; ``None`` marks a
      buffer that is not imported (it may be absent from ``tensors``).
    keep: variable path prefixes (``"params/fc"``) whose template values are
      kept and whose source tensors are skipped unchecked, e.g. a new
      classifier head for another number of classes. A prefix must name
      template variables, and those must be arrays (values to keep, not
      ``jax.ShapeDtypeStruct``).
    what: how messages name ``tensors`` (a file name).

  Returns:
    Variables of the template's structure, as jax arrays of the template's
    dtypes; the kept ones are the template's own leaves.

  Raises:
    StateDictError: a missing, mis-shaped or unexpected tensor, a name map
      targeting a variable the template lacks (or one variable twice), a
      template variable no entry sets, or a kept one without a value.
  """
  flat = traverse_util.flatten_dict(dict(template), sep=SEP)
  for prefix in keep:
    if not any(under(p, [prefix]) for p in flat):
      raise StateDictError(f"keep={prefix!r} names no variable; variable paths look like "
                           f"{next(iter(flat))!r}")
  for path, leaf in flat.items():
    if under(path, keep) and not isinstance(leaf, (np.ndarray, np.generic, jax.Array)):
      raise StateDictError(
          f"the template's {path} is a {type(leaf).__name__}, not an array: keeping the "
          f"template's values (new_head=True, or keep=) needs values; pass freshly initialised "
          f"variables, jaxdepth.init(spec, key), as the template, not their jax.eval_shape",
          target=path)
  keys = list(tensors)
  out: dict[str, Any] = {}
  known: set[str] = set()
  for key, target in name_map.items():
    sources = _sources(key)
    known.update(sources)
    if target is None:
      continue
    if target.path not in flat:
      raise StateDictError(f"the name map puts {key!r} on {target.path!r}, which the variables "
                           f"do not have: the name map was built for another architecture",
                           target=target.path)
    if target.path in out:
      raise StateDictError(f"the name map puts {key!r} on {target.path!r}, which another entry "
                           f"already sets", target=target.path)
    if under(target.path, keep):
      continue
    for source in sources:
      if source not in tensors:
        raise StateDictError(
            f"{what} has no tensor {source!r} (for {target.path}){_near(source, keys)}. "
            f"It is not a checkpoint of this architecture, or its names carry a prefix "
            f"(e.g. 'module.' from DataParallel: drop it from the keys before assigning)",
            key=source, target=target.path)
    arrays = [np.asarray(tensors[s]) for s in sources]
    got = ", ".join(f"{s!r} {_shape(a)}" for s, a in zip(sources, arrays))
    want = _shape(flat[target.path])
    try:
      value = target.transform(*arrays)
    except ValueError as e:
      raise StateDictError(f"{what}: tensor {got} cannot be converted for {target.path}, which "
                           f"expects {want} ({e}): a checkpoint of another architecture?",
                           key=sources[0], target=target.path) from e
    if _shape(value) != want:
      raise StateDictError(
          f"{what}: tensor {got} becomes {_shape(value)} for {target.path}, which expects "
          f"{want}: the checkpoint is of another width, kernel size or number of classes",
          key=sources[0], target=target.path)
    out[target.path] = jnp.asarray(value, dtype=flat[target.path].dtype)
  for key in keys:
    if key not in known:
      extra = sum(k not in known for k in keys) - 1
      raise StateDictError(
          f"{what} holds tensor {key!r} {_shape(tensors[key])}, which this architecture does "
          f"not have{f' (and {extra} more unknown tensors)' if extra else ''}: it is a "
          f"checkpoint of another architecture or depth", key=key)
  for path, leaf in flat.items():
    if path in out:
      continue
    if under(path, keep):
      out[path] = leaf
      continue
    raise StateDictError(f"no entry of the name map sets variable {path!r}; the name map is "
                         f"incomplete for this architecture", target=path)
  return traverse_util.unflatten_dict(out, sep=SEP)
