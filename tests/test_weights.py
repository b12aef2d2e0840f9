"""jaxdepth.weights.state_dict: reading safetensors and PyTorch checkpoints, assigning by name map."""
import pathlib
import pickle
import sys
import types
import zipfile

import numpy as np
import pytest
from safetensors import numpy as safe_numpy

from jaxdepth.weights import state_dict as sd
from jaxdepth.weights.state_dict import StateDictError, Target

RNG = np.random.default_rng(0)


def _template():
  return {"params": {"conv": {"kernel": np.zeros((3, 3, 2, 4), np.float32),
                              "bias": np.zeros((4,), np.float32)},
                     "bn": {"scale": np.zeros((4,), np.float32),
                            "bias": np.zeros((4,), np.float32)},
                     "fc": {"kernel": np.zeros((4, 5), np.float32),
                            "bias": np.zeros((5,), np.float32)}},
          "batch_stats": {"bn": {"mean": np.zeros((4,), np.float32),
                                 "var": np.zeros((4,), np.float32)}}}


NAME_MAP = {
    "conv.weight": Target("params/conv/kernel", sd.conv_kernel),
    "conv.bias": Target("params/conv/bias"),
    "bn.weight": Target("params/bn/scale"),
    "bn.bias": Target("params/bn/bias"),
    "bn.running_mean": Target("batch_stats/bn/mean"),
    "bn.running_var": Target("batch_stats/bn/var"),
    "bn.num_batches_tracked": None,
    "fc.weight": Target("params/fc/kernel", sd.dense_kernel),
    "fc.bias": Target("params/fc/bias"),
}


def _tensors(**changes):
  t = {"conv.weight": RNG.normal(size=(4, 2, 3, 3)).astype(np.float32),
       "conv.bias": RNG.normal(size=4).astype(np.float32),
       "bn.weight": RNG.normal(size=4).astype(np.float32),
       "bn.bias": RNG.normal(size=4).astype(np.float32),
       "bn.running_mean": RNG.normal(size=4).astype(np.float32),
       "bn.running_var": RNG.uniform(0.5, 2, size=4).astype(np.float32),
       "bn.num_batches_tracked": np.array(7, np.int64),
       "fc.weight": RNG.normal(size=(5, 4)).astype(np.float32),
       "fc.bias": RNG.normal(size=5).astype(np.float32)}
  t.update(changes)
  return {k: v for k, v in t.items() if v is not None}


def test_assign_places_every_tensor_in_flax_layout():
  t = _tensors()
  out = sd.assign(_template(), t, NAME_MAP)
  # A conv weight w[o, i, kh, kw] is the Flax kernel k[kh, kw, i, o]: check elementwise.
  k = np.asarray(out["params"]["conv"]["kernel"])
  for o, i, a, b in [(0, 0, 0, 0), (3, 1, 2, 0), (2, 0, 1, 2)]:
    assert k[a, b, i, o] == t["conv.weight"][o, i, a, b]
  np.testing.assert_array_equal(out["params"]["fc"]["kernel"], t["fc.weight"].T)
  np.testing.assert_array_equal(out["batch_stats"]["bn"]["var"], t["bn.running_var"])
  np.testing.assert_array_equal(out["params"]["bn"]["scale"], t["bn.weight"])
  assert out["params"]["conv"]["kernel"].dtype == np.float32


def test_assign_output_equals_a_numpy_forward_of_the_torch_layout():
  """Conv (NCHW, OIHW) + eval BN + Linear in numpy on the torch tensors, against Flax on the assigned ones."""
  import jax
  import flax.linen as nn
  t = _tensors()
  out = sd.assign(_template(), t, NAME_MAP)
  x = RNG.normal(size=(2, 2, 5, 5)).astype(np.float32)   # NCHW

  pad = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)))
  conv = np.zeros((2, 4, 5, 5), np.float32)
  for a in range(3):
    for b in range(3):
      conv += np.einsum("nihw,oi->nohw", pad[:, :, a:a + 5, b:b + 5], t["conv.weight"][:, :, a, b])
  conv += t["conv.bias"][None, :, None, None]
  bn = ((conv - t["bn.running_mean"][None, :, None, None])
        / np.sqrt(t["bn.running_var"][None, :, None, None] + 1e-5)
        * t["bn.weight"][None, :, None, None] + t["bn.bias"][None, :, None, None])
  want = bn.mean(axis=(2, 3)) @ t["fc.weight"].T + t["fc.bias"]

  class Net(nn.Module):
    @nn.compact
    def __call__(self, x):
      x = nn.Conv(4, (3, 3), padding=1, name="conv")(x)
      x = nn.BatchNorm(use_running_average=True, epsilon=1e-5, name="bn")(x)
      return nn.Dense(5, name="fc")(x.mean(axis=(1, 2)))

  got = jax.jit(Net().apply)(out, x.transpose(0, 2, 3, 1))
  np.testing.assert_allclose(got, want, atol=1e-5)


def test_assign_skips_known_buffers_whether_present_or_not():
  out = sd.assign(_template(), _tensors(**{"bn.num_batches_tracked": None}), NAME_MAP)
  assert set(out) == {"params", "batch_stats"}


def test_missing_tensor_is_named_with_the_nearest_key():
  t = _tensors()
  t["bn.runing_var"] = t.pop("bn.running_var")
  with pytest.raises(StateDictError, match=r"has no tensor 'bn.running_var' \(for batch_stats/bn/var\).*"
                                           r"nearest name in the file is 'bn.runing_var'"):
    sd.assign(_template(), t, NAME_MAP, what="ckpt.safetensors")


def test_misshaped_tensor_names_both_shapes_and_the_way_out():
  t = _tensors(**{"fc.weight": np.zeros((7, 4), np.float32)})
  with pytest.raises(StateDictError) as e:
    sd.assign(_template(), t, NAME_MAP)
  msg = str(e.value)
  assert "'fc.weight' (7, 4) becomes (4, 7) for params/fc/kernel, which expects (4, 5)" in msg
  assert "another width, kernel size or number of classes" in msg
  assert (e.value.key, e.value.target) == ("fc.weight", "params/fc/kernel")


def test_wrong_rank_is_a_state_dict_error():
  t = _tensors(**{"conv.weight": np.zeros((4, 2, 9), np.float32)})
  with pytest.raises(StateDictError, match=r"'conv.weight' \(4, 2, 9\) cannot be converted for "
                                           r"params/conv/kernel, which expects \(3, 3, 2, 4\)"):
    sd.assign(_template(), t, NAME_MAP)


def test_unexpected_tensor_is_the_first_unknown_one_and_counts_the_rest():
  t = _tensors(**{"layer9.weight": np.zeros(3, np.float32), "layer10.weight": np.zeros(1)})
  with pytest.raises(StateDictError, match=r"holds tensor 'layer9.weight' \(3,\), which this "
                                           r"architecture does not have \(and 1 more"):
    sd.assign(_template(), t, NAME_MAP)


def test_missing_is_reported_before_unexpected():
  t = _tensors(**{"conv.weight": None, "extra": np.zeros(1)})
  with pytest.raises(StateDictError, match="has no tensor 'conv.weight'"):
    sd.assign(_template(), t, NAME_MAP)


def test_keep_leaves_template_values_and_skips_their_tensors():
  template = _template()
  template["params"]["fc"]["kernel"] = np.full((4, 5), 3.0, np.float32)
  t = _tensors(**{"fc.weight": np.zeros((1000, 4), np.float32)})   # another number of classes
  out = sd.assign(template, t, NAME_MAP, keep=("params/fc",))
  np.testing.assert_array_equal(out["params"]["fc"]["kernel"], 3.0)
  np.testing.assert_array_equal(out["params"]["conv"]["bias"], t["conv.bias"])
  with pytest.raises(StateDictError, match="keep='params/head' names no variable"):
    sd.assign(template, t, NAME_MAP, keep=("params/head",))


def test_keep_needs_template_values_not_shapes():
  import jax
  abstract = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), _template())
  with pytest.raises(StateDictError, match=r"the template's params/fc/(bias|kernel) is a "
                                           r"ShapeDtypeStruct, not an array.*jaxdepth.init"):
    sd.assign(abstract, _tensors(), NAME_MAP, keep=("params/fc",))
  abstract["params"]["fc"] = _template()["params"]["fc"]   # values where kept: enough
  out = sd.assign(abstract, _tensors(), NAME_MAP, keep=("params/fc",))
  np.testing.assert_array_equal(out["params"]["fc"]["kernel"], 0.0)


def test_several_sources_combine_into_one_variable():
  template = {"params": {"qkv": {"kernel": np.zeros((4, 12), np.float32)}}}
  ws = {n: RNG.normal(size=(4, 4)).astype(np.float32) for n in ("q.weight", "k.weight", "v.weight")}
  name_map = {("q.weight", "k.weight", "v.weight"):
              Target("params/qkv/kernel", lambda *w: np.concatenate([x.T for x in w], axis=1))}
  out = sd.assign(template, ws, name_map)
  np.testing.assert_array_equal(out["params"]["qkv"]["kernel"][:, 4:8], ws["k.weight"].T)
  with pytest.raises(StateDictError, match="has no tensor 'v.weight'"):
    sd.assign(template, {k: v for k, v in ws.items() if k != "v.weight"}, name_map)


def test_name_map_errors_name_the_variable():
  with pytest.raises(StateDictError, match="puts 'conv.weight' on 'params/conv1/kernel', which the "
                                           "variables do not have"):
    sd.assign(_template(), _tensors(), {**NAME_MAP, "conv.weight": Target("params/conv1/kernel")})
  with pytest.raises(StateDictError, match="puts 'fc.bias' on 'params/conv/bias', which another "
                                           "entry already sets"):
    sd.assign(_template(), _tensors(), {**NAME_MAP, "fc.bias": Target("params/conv/bias")})
  partial = {k: v for k, v in NAME_MAP.items() if k != "fc.bias"}
  with pytest.raises(StateDictError, match="no entry of the name map sets variable 'params/fc/bias'"):
    sd.assign(_template(), _tensors(**{"fc.bias": None}), partial)


def test_assign_accepts_an_abstract_template():
  import jax
  abstract = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), _template())
  t = _tensors()
  out = sd.assign(abstract, t, NAME_MAP)
  # The same arrays as from a concrete template (whose layout the test above checks).
  concrete = sd.assign(_template(), t, NAME_MAP)
  for got, want in zip(jax.tree.leaves(out), jax.tree.leaves(concrete), strict=True):
    assert isinstance(got, (np.ndarray, jax.Array)) and got.dtype == want.dtype
    np.testing.assert_array_equal(got, want)
  np.testing.assert_array_equal(out["params"]["fc"]["kernel"], t["fc.weight"].T)
  np.testing.assert_array_equal(out["batch_stats"]["bn"]["var"], t["bn.running_var"])


# ---------------------------------------------------------------------- reading


def test_safetensors_round_trip(tmp_path):
  t = _tensors()
  path = tmp_path / "w.safetensors"
  safe_numpy.save_file(t, str(path))
  back = sd.read_state_dict(path)
  assert set(back) == set(t)
  for k in t:
    np.testing.assert_array_equal(back[k], t[k])
  # Recognised by the header, whatever the name.
  other = tmp_path / "weights.bin"
  other.write_bytes(path.read_bytes())
  assert set(sd.read_state_dict(other)) == set(t)


def test_not_a_state_dict_file(tmp_path):
  path = tmp_path / "notes.txt"
  path.write_text("hello, these are not weights\n")
  with pytest.raises(StateDictError, match="neither a safetensors file nor a PyTorch checkpoint.*"
                                           "safetensors.torch.save_file"):
    sd.read_state_dict(path)
  with pytest.raises(StateDictError, match="no such file"):
    sd.read_state_dict(tmp_path / "absent.safetensors")


def test_a_zip_that_is_not_torch_save_is_neither(tmp_path, monkeypatch):
  monkeypatch.setitem(sys.modules, "torch", None)   # not sent to torch, installed or not
  path = tmp_path / "weights.npz"
  np.savez(path, **_tensors())
  with pytest.raises(StateDictError, match=r"weights.npz is neither a safetensors file nor a "
                                           r"PyTorch checkpoint: a zip archive without "
                                           r"torch.save's <name>/data.pkl \(a numpy .npz"):
    sd.read_state_dict(path)
  with pytest.raises(StateDictError, match=r"save_file\(dict\(numpy.load\('weights.npz'\)\), "
                                           r"'weights.safetensors'\)"):
    sd.read_state_dict(path)


def test_a_truncated_zip_is_damaged_not_a_numpy_archive(tmp_path, monkeypatch):
  monkeypatch.setitem(sys.modules, "torch", None)
  whole = tmp_path / "whole.npz"
  np.savez(whole, **_tensors())
  cut = tmp_path / "weights.pth"            # a download cut short
  cut.write_bytes(whole.read_bytes()[:len(whole.read_bytes()) // 2])
  with pytest.raises(StateDictError, match=r"weights.pth starts as a zip archive .* it is damaged "
                                           r"or truncated; download or export it again") as e:
    sd.read_state_dict(cut)
  assert "numpy" not in str(e.value)


def test_truncated_safetensors_file(tmp_path):
  path = tmp_path / "w.safetensors"
  safe_numpy.save_file(_tensors(), str(path))
  data = path.read_bytes()
  path.write_bytes(data[:len(data) - 40])
  with pytest.raises(StateDictError, match="not a readable safetensors file"):
    sd.read_state_dict(path)
  bad = tmp_path / "junk.safetensors"
  bad.write_bytes(b"\x00" * 64)
  with pytest.raises(StateDictError, match="named .safetensors but is not a safetensors file"):
    sd.read_state_dict(bad)


class _Touch:
  """Unpickling this creates a file: proof that a pickle was (or was not) executed."""

  def __init__(self, marker):
    self.marker = marker

  def __reduce__(self):
    return (pathlib.Path.touch, (pathlib.Path(self.marker),))


def test_pickle_checkpoint_without_torch_is_refused_unread(tmp_path, monkeypatch):
  marker = tmp_path / "executed"
  legacy = tmp_path / "model.pth"
  legacy.write_bytes(pickle.dumps({"conv.weight": _Touch(marker)}, protocol=2))
  zipped = tmp_path / "model_zip.pth"
  with zipfile.ZipFile(zipped, "w") as z:   # torch.save's container
    z.writestr("archive/data.pkl", pickle.dumps(_Touch(marker), protocol=2))
  monkeypatch.setitem(sys.modules, "torch", None)   # import torch fails
  for path in (legacy, zipped):
    with pytest.raises(StateDictError, match=r"is a PyTorch checkpoint \(a pickle\).*torch is not "
                                             r"installed.*safetensors.torch.save_file"):
      sd.read_state_dict(path)
  assert not marker.exists()


class _FakeTensor:
  def __init__(self, array):
    self.array, self.dtype = array, array.dtype

  def detach(self):
    return self

  def cpu(self):
    return self

  def float(self):
    return _FakeTensor(self.array.astype(np.float32))

  def numpy(self):
    return self.array


def _fake_torch(result, calls):
  """A stand-in for torch with what read_state_dict uses: Tensor, bfloat16, load."""
  torch = types.ModuleType("torch")
  torch.Tensor = _FakeTensor
  torch.bfloat16 = "bfloat16"

  def load(path, **kwargs):
    calls.append((path, kwargs))
    if isinstance(result, Exception):
      raise result
    return result
  torch.load = load
  return torch


def test_pth_goes_through_torch_load_weights_only(tmp_path, monkeypatch):
  path = tmp_path / "model.pth"
  with zipfile.ZipFile(path, "w") as z:
    z.writestr("archive/data.pkl", b"\x80\x02}q\x00.")
  t = _tensors()
  calls = []
  monkeypatch.setitem(sys.modules, "torch", _fake_torch(
      {"epoch": 3, "state_dict": {k: _FakeTensor(v) for k, v in t.items()}}, calls))
  back = sd.read_state_dict(path)
  assert calls == [(str(path), {"map_location": "cpu", "weights_only": True})]
  assert list(back) == list(t)
  np.testing.assert_array_equal(back["fc.weight"], t["fc.weight"])


def test_pth_refused_by_weights_only_or_not_a_state_dict(tmp_path, monkeypatch):
  path = tmp_path / "model.pth"
  path.write_bytes(b"\x80\x02N.")
  refusal = pickle.UnpicklingError(   # the shape of torch 2.13's message
      "Weights only load failed. This file can still be loaded, to do so you have two options, "
      "\x1b[1mdo those steps only if you trust the source of the checkpoint\x1b[0m. \n\t(1) ...\n"
      "\tWeightsUnpickler error: Unsupported global: GLOBAL mymodule.Net was not an allowed "
      "global by default.")
  monkeypatch.setitem(sys.modules, "torch", _fake_torch(refusal, []))
  with pytest.raises(StateDictError) as e:
    sd.read_state_dict(path)
  assert ("refused it (UnpicklingError: Weights only load failed; Unsupported global: GLOBAL "
          "mymodule.Net). A checkpoint that pickles whole modules") in str(e.value)
  assert "save model.state_dict() instead" in str(e.value) and "\x1b" not in str(e.value)
  monkeypatch.setitem(sys.modules, "torch", _fake_torch([1, 2, 3], []))
  with pytest.raises(StateDictError, match="holds a list, not a state dict"):
    sd.read_state_dict(path)
