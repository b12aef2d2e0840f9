"""jaxdepth.weights.torchvision: torchvision's state dicts on the zoo's models.

The state dicts are written here with numpy from torchvision's definitions of
the four models (exact key names and shapes, tested against torchvision's known
parameter counts), filled with random numbers; the imported jaxdepth models are
compared with independent numpy forwards that read the state dicts in PyTorch's
layout (NCHW maps, OIHW convs, (out, in) Linears, (C, H, W) flattening, Swin's
own relative position index buffer and shifted-window mask).
"""
import math

import jax
import numpy as np
import pytest
from safetensors import numpy as safe_numpy
from scipy import special

from jaxdepth import network, zoo
from jaxdepth import spec as S
from jaxdepth.transformer import models as tfm
from jaxdepth.weights import StateDictError
from jaxdepth.weights import torchvision as tv

# ------------------------------------------------ torchvision keys and shapes


def _conv(sd, name, out, inp, k, bias=False):
  sd[f"{name}.weight"] = (out, inp, k, k)
  if bias:
    sd[f"{name}.bias"] = (out,)


def _bn(sd, name, c):
  sd.update({f"{name}.weight": (c,), f"{name}.bias": (c,), f"{name}.running_mean": (c,),
             f"{name}.running_var": (c,), f"{name}.num_batches_tracked": ()})


def _linear(sd, name, out, inp, bias=True):
  sd[f"{name}.weight"] = (out, inp)
  if bias:
    sd[f"{name}.bias"] = (out,)


def tv_resnet18(classes):
  """torchvision.models.resnet18: BasicBlocks, downsample = 1x1 conv + BN."""
  sd = {}
  _conv(sd, "conv1", 64, 3, 7)
  _bn(sd, "bn1", 64)
  inp = 64
  for i, width in enumerate((64, 128, 256, 512), 1):
    for j in range(2):
      p = f"layer{i}.{j}"
      _conv(sd, f"{p}.conv1", width, inp, 3)
      _bn(sd, f"{p}.bn1", width)
      _conv(sd, f"{p}.conv2", width, width, 3)
      _bn(sd, f"{p}.bn2", width)
      if i > 1 and j == 0:
        _conv(sd, f"{p}.downsample.0", width, inp, 1)
        _bn(sd, f"{p}.downsample.1", width)
      inp = width
  _linear(sd, "fc", classes, 512)
  return sd


def tv_mobilenet_v2(classes):
  """torchvision.models.mobilenet_v2: Conv2dNormActivation = (conv, BN, ReLU6)."""
  sd = {}
  _conv(sd, "features.0.0", 32, 3, 3)
  _bn(sd, "features.0.1", 32)
  inp, idx = 32, 1
  for t, c, n, _ in ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1),
                     (6, 160, 3, 2), (6, 320, 1, 1)):
    for _ in range(n):
      hidden, p, k = inp * t, f"features.{idx}.conv", 0
      if t != 1:
        _conv(sd, f"{p}.0.0", hidden, inp, 1)
        _bn(sd, f"{p}.0.1", hidden)
        k = 1
      sd[f"{p}.{k}.0.weight"] = (hidden, 1, 3, 3)   # depthwise
      _bn(sd, f"{p}.{k}.1", hidden)
      _conv(sd, f"{p}.{k + 1}", c, hidden, 1)
      _bn(sd, f"{p}.{k + 2}", c)
      inp, idx = c, idx + 1
  _conv(sd, "features.18.0", 1280, 320, 1)
  _bn(sd, "features.18.1", 1280)
  _linear(sd, "classifier.1", classes, 1280)
  return sd


def tv_vgg16_bn(classes):
  """torchvision.models.vgg16_bn: features[i] conv (bias), [i+1] BN, [i+2] ReLU, 'M' pools."""
  sd, i, inp = {}, 0, 3
  for v in (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512,
            "M"):
    if v == "M":
      i += 1
      continue
    _conv(sd, f"features.{i}", v, inp, 3, bias=True)
    _bn(sd, f"features.{i + 1}", v)
    i, inp = i + 3, v
  _linear(sd, "classifier.0", 4096, 512 * 7 * 7)
  _linear(sd, "classifier.3", 4096, 4096)
  _linear(sd, "classifier.6", classes, 4096)
  return sd


def tv_swin(classes, *, patch=4, dim=96, depths=(2, 2, 6, 2), heads=(3, 6, 12, 24), window=7,
            channels=3):
  """torchvision.models.swin_t (SwinTransformer v1, ShiftedWindowAttention, PatchMerging)."""
  sd = {}
  _conv(sd, "features.0.0", dim, channels, patch, bias=True)
  sd["features.0.2.weight"] = sd["features.0.2.bias"] = (dim,)
  for i, (depth, h) in enumerate(zip(depths, heads)):
    d = dim * 2**i
    for j in range(depth):
      p = f"features.{2 * i + 1}.{j}"
      sd[f"{p}.norm1.weight"] = sd[f"{p}.norm1.bias"] = (d,)
      sd[f"{p}.attn.relative_position_bias_table"] = ((2 * window - 1)**2, h)
      sd[f"{p}.attn.relative_position_index"] = (window**4,)
      _linear(sd, f"{p}.attn.qkv", 3 * d, d)
      _linear(sd, f"{p}.attn.proj", d, d)
      sd[f"{p}.norm2.weight"] = sd[f"{p}.norm2.bias"] = (d,)
      _linear(sd, f"{p}.mlp.0", 4 * d, d)
      _linear(sd, f"{p}.mlp.3", d, 4 * d)
    if i < len(depths) - 1:
      p = f"features.{2 * i + 2}"
      _linear(sd, f"{p}.reduction", 2 * d, 4 * d, bias=False)
      sd[f"{p}.norm.weight"] = sd[f"{p}.norm.bias"] = (4 * d,)
  top = dim * 2**(len(depths) - 1)
  sd["norm.weight"] = sd["norm.bias"] = (top,)
  _linear(sd, "head", classes, top)
  return sd


def _parameters(shapes):
  buffers = ("running_mean", "running_var", "num_batches_tracked", "relative_position_index")
  return sum(math.prod(s) for k, s in shapes.items() if not k.endswith(buffers))


def test_the_torchvision_shapes_here_have_torchvisions_parameter_counts():
  assert _parameters(tv_resnet18(1000)) == 11_689_512
  assert _parameters(tv_mobilenet_v2(1000)) == 3_504_872
  assert _parameters(tv_vgg16_bn(1000)) == 138_365_992
  assert _parameters(tv_swin(1000)) == 28_288_354


def _torch_layout(shape):
  """The PyTorch shape of a Flax kernel: HWIO -> OIHW, (in, out) -> (out, in)."""
  if len(shape) == 4:
    return (shape[3], shape[2], shape[0], shape[1])
  return tuple(reversed(shape))


@pytest.mark.parametrize("model, torchvision", [
    ("resnet18_imagenet", tv_resnet18), ("resnet18", tv_resnet18),
    ("mobilenet_v2_imagenet", tv_mobilenet_v2), ("mobilenet_v2", tv_mobilenet_v2),
    ("vgg16_bn", tv_vgg16_bn), ("swin_t_imagenet", tv_swin), ("swin_t", tv_swin)])
def test_name_map_covers_every_torchvision_key_with_its_shape(model, torchvision):
  """Every key of torchvision's state dict (buffers included) and nothing else; each
  variable has the torchvision tensor's shape in Flax's layout. (CIFAR variants: the
  same keys; ResNet-18's 3x3 CIFAR stem is the one shape that differs.)"""
  spec = zoo.get(model, num_classes=1000)
  want = torchvision(1000)
  if model == "resnet18":
    want["conv1.weight"] = (64, 3, 3, 3)
  names = tv.name_map(spec)
  assert list(names) == list(want) or sorted(names) == sorted(want)
  template = jax.eval_shape(lambda: network.init(spec, jax.random.key(0)))
  flat = {"/".join(k.key for k in path): leaf
          for path, leaf in jax.tree_util.tree_flatten_with_path(template)[0]}
  covered = set()
  for key, target in names.items():
    if target is None:
      assert key.endswith(("num_batches_tracked", "relative_position_index")), key
      continue
    shape = flat[target.path].shape
    assert (_torch_layout(shape) if target.path.endswith("kernel") else shape) == want[key], key
    covered.add(target.path)
  assert covered == set(flat)


# ------------------------------------------------------------ random weights


def _relative_position_index(window):
  """torchvision's ShiftedWindowAttention.define_relative_position_index, in numpy."""
  coords = np.stack(np.meshgrid(np.arange(window), np.arange(window), indexing="ij"))
  flat = coords.reshape(2, -1)
  rel = (flat[:, :, None] - flat[:, None, :]).transpose(1, 2, 0).copy()
  rel[:, :, 0] += window - 1
  rel[:, :, 1] += window - 1
  rel[:, :, 0] *= 2 * window - 1
  return rel.sum(-1).reshape(-1).astype(np.int64)


def _random_state_dict(shapes, seed, window=None):
  rng = np.random.default_rng(seed)
  sd = {}
  for key, shape in shapes.items():
    if key.endswith("num_batches_tracked"):
      sd[key] = np.array(100, np.int64)
    elif key.endswith("relative_position_index"):
      sd[key] = _relative_position_index(window)
    elif key.endswith("running_var"):
      sd[key] = rng.uniform(0.5, 1.5, shape)
    elif key.endswith(("running_mean", "bias")):
      sd[key] = rng.normal(0, 0.1, shape)
    elif key.endswith("relative_position_bias_table"):
      sd[key] = rng.normal(0, 0.5, shape)
    elif len(shape) == 1:   # BN / LayerNorm weight
      sd[key] = rng.uniform(0.5, 1.5, shape)
    else:
      sd[key] = rng.normal(0, 1 / math.sqrt(math.prod(shape[1:])), shape)
    if sd[key].dtype == np.float64:
      sd[key] = sd[key].astype(np.float32)
  return sd


# --------------------------------------------- numpy forwards, PyTorch layout

def _conv2d(x, w, b=None, stride=1, pad=0, groups=1):
  """x (N, C, H, W), w (O, C / groups, kh, kw)."""
  x = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
  o, cg, kh, kw = w.shape
  win = np.lib.stride_tricks.sliding_window_view(x, (kh, kw), axis=(2, 3))[:, :, ::stride, ::stride]
  n, c, oh, ow = win.shape[:4]
  win = win.reshape(n, groups, cg, oh, ow, kh, kw)
  y = np.einsum("ngchwij,gocij->ngohw", win, w.reshape(groups, o // groups, cg, kh, kw))
  y = y.reshape(n, o, oh, ow)
  return y if b is None else y + b[None, :, None, None]


def _bn2d(x, sd, name, eps=1e-5):
  v = lambda k: sd[f"{name}.{k}"][None, :, None, None]   # noqa: E731
  return (x - v("running_mean")) / np.sqrt(v("running_var") + eps) * v("weight") + v("bias")


def _linear_np(x, sd, name):
  y = x @ sd[f"{name}.weight"].T
  return y + sd[f"{name}.bias"] if f"{name}.bias" in sd else y


def _relu(x):
  return np.maximum(x, 0)


def _maxpool(x, k, s, pad=0):
  x = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)), constant_values=-np.inf)
  return np.lib.stride_tricks.sliding_window_view(x, (k, k), axis=(2, 3))[:, :, ::s, ::s].max(
      axis=(-2, -1))


def _f64(sd):
  return {k: v.astype(np.float64) if v.dtype == np.float32 else v for k, v in sd.items()}


def np_resnet18(sd, x):
  sd = _f64(sd)
  x = _relu(_bn2d(_conv2d(x, sd["conv1.weight"], stride=2, pad=3), sd, "bn1"))
  x = _maxpool(x, 3, 2, 1)
  for i in range(1, 5):
    for j in range(2):
      p, s = f"layer{i}.{j}", 2 if i > 1 and j == 0 else 1
      y = _relu(_bn2d(_conv2d(x, sd[f"{p}.conv1.weight"], stride=s, pad=1), sd, f"{p}.bn1"))
      y = _bn2d(_conv2d(y, sd[f"{p}.conv2.weight"], pad=1), sd, f"{p}.bn2")
      if f"{p}.downsample.0.weight" in sd:
        x = _bn2d(_conv2d(x, sd[f"{p}.downsample.0.weight"], stride=s), sd, f"{p}.downsample.1")
      x = _relu(y + x)
  return _linear_np(x.mean(axis=(2, 3)), sd, "fc")


def np_mobilenet_v2(sd, x):
  sd = _f64(sd)
  relu6 = lambda z: np.clip(z, 0, 6)   # noqa: E731
  x = relu6(_bn2d(_conv2d(x, sd["features.0.0.weight"], stride=2, pad=1), sd, "features.0.1"))
  idx = 1
  for t, c, n, s in ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1),
                     (6, 160, 3, 2), (6, 320, 1, 1)):
    for j in range(n):
      p, stride, k, y = f"features.{idx}.conv", s if j == 0 else 1, 0, x
      if t != 1:
        y = relu6(_bn2d(_conv2d(y, sd[f"{p}.0.0.weight"]), sd, f"{p}.0.1"))
        k = 1
      w = sd[f"{p}.{k}.0.weight"]
      y = relu6(_bn2d(_conv2d(y, w, stride=stride, pad=1, groups=w.shape[0]), sd, f"{p}.{k}.1"))
      y = _bn2d(_conv2d(y, sd[f"{p}.{k + 1}.weight"]), sd, f"{p}.{k + 2}")
      x = x + y if stride == 1 and x.shape == y.shape else y
      idx += 1
  x = relu6(_bn2d(_conv2d(x, sd["features.18.0.weight"]), sd, "features.18.1"))
  return _linear_np(x.mean(axis=(2, 3)), sd, "classifier.1")


def _adaptive_avg(x, out):
  """PyTorch AdaptiveAvgPool2d: bin i covers [floor(i H / out), ceil((i + 1) H / out))."""
  n, c, h, w = x.shape
  y = np.zeros((n, c, out, out))
  for i in range(out):
    for j in range(out):
      h0, h1 = (i * h) // out, -(-((i + 1) * h) // out)
      w0, w1 = (j * w) // out, -(-((j + 1) * w) // out)
      y[:, :, i, j] = x[:, :, h0:h1, w0:w1].mean(axis=(2, 3))
  return y


def np_vgg(sd, x, plan):
  sd, i = _f64(sd), 0
  for v in plan:
    if v == "M":
      x, i = _maxpool(x, 2, 2), i + 1
      continue
    x = _relu(_bn2d(_conv2d(x, sd[f"features.{i}.weight"], sd[f"features.{i}.bias"], pad=1), sd,
                    f"features.{i + 1}"))
    i += 3
  x = _adaptive_avg(x, 7).reshape(x.shape[0], -1)   # torch.flatten: (C, H, W) order
  x = _relu(_linear_np(x, sd, "classifier.0"))
  x = _relu(_linear_np(x, sd, "classifier.3"))
  return _linear_np(x, sd, "classifier.6")


def _layer_norm(x, sd, name, eps=1e-5):
  mu, var = x.mean(-1, keepdims=True), x.var(-1, keepdims=True)
  return (x - mu) / np.sqrt(var + eps) * sd[f"{name}.weight"] + sd[f"{name}.bias"]


def _softmax(z):
  z = np.exp(z - z.max(-1, keepdims=True))
  return z / z.sum(-1, keepdims=True)


def _shifted_window_attention(x, sd, p, heads, window, shift):
  """torchvision.models.swin_transformer.shifted_window_attention (v1), line by line."""
  b, h, w, c = x.shape
  pad_r, pad_b = (window - w % window) % window, (window - h % window) % window
  x = np.pad(x, ((0, 0), (0, pad_b), (0, pad_r), (0, 0)))
  _, ph, pw, _ = x.shape
  shift = [shift, shift]
  if window >= ph:
    shift[0] = 0
  if window >= pw:
    shift[1] = 0
  if sum(shift) > 0:
    x = np.roll(x, (-shift[0], -shift[1]), axis=(1, 2))
  nw = (ph // window) * (pw // window)
  x = x.reshape(b, ph // window, window, pw // window, window, c).transpose(0, 1, 3, 2, 4, 5)
  x = x.reshape(b * nw, window * window, c)
  qkv = _linear_np(x, sd, f"{p}.qkv").reshape(b * nw, x.shape[1], 3, heads, c // heads)
  q, k, v = qkv.transpose(2, 0, 3, 1, 4)
  q = q * (c // heads) ** -0.5
  attn = q @ k.transpose(0, 1, 3, 2)
  n = window * window
  table, index = sd[f"{p}.relative_position_bias_table"], sd[f"{p}.relative_position_index"]
  attn = attn + table[index].reshape(n, n, -1).transpose(2, 0, 1)[None]
  if sum(shift) > 0:
    mask = np.zeros((ph, pw))
    h_slices = ((0, -window), (-window, -shift[0]), (-shift[0], None))
    w_slices = ((0, -window), (-window, -shift[1]), (-shift[1], None))
    count = 0
    for hs in h_slices:
      for ws in w_slices:
        mask[hs[0]:hs[1], ws[0]:ws[1]] = count
        count += 1
    mask = mask.reshape(ph // window, window, pw // window, window).transpose(0, 2, 1, 3)
    mask = mask.reshape(nw, n)
    mask = mask[:, None, :] - mask[:, :, None]
    mask = np.where(mask != 0, -100.0, 0.0)
    attn = attn.reshape(b, nw, heads, n, n) + mask[None, :, None]
    attn = attn.reshape(-1, heads, n, n)
  x = (_softmax(attn) @ v).transpose(0, 2, 1, 3).reshape(b * nw, n, c)
  x = _linear_np(x, sd, f"{p}.proj")
  x = x.reshape(b, ph // window, pw // window, window, window, c).transpose(0, 1, 3, 2, 4, 5)
  x = x.reshape(b, ph, pw, c)
  if sum(shift) > 0:
    x = np.roll(x, (shift[0], shift[1]), axis=(1, 2))
  return x[:, :h, :w]


def np_swin(sd, x, *, patch, depths, heads, window):
  sd = _f64(sd)
  x = _conv2d(x, sd["features.0.0.weight"], sd["features.0.0.bias"], stride=patch)
  x = _layer_norm(x.transpose(0, 2, 3, 1), sd, "features.0.2")
  for i, (depth, nh) in enumerate(zip(depths, heads)):
    for j in range(depth):
      p = f"features.{2 * i + 1}.{j}"
      x = x + _shifted_window_attention(_layer_norm(x, sd, f"{p}.norm1"), sd, f"{p}.attn", nh,
                                        window, 0 if j % 2 == 0 else window // 2)
      y = _linear_np(_layer_norm(x, sd, f"{p}.norm2"), sd, f"{p}.mlp.0")
      y = 0.5 * y * (1 + special.erf(y / math.sqrt(2)))   # exact GELU
      x = x + _linear_np(y, sd, f"{p}.mlp.3")
    if i < len(depths) - 1:
      p = f"features.{2 * i + 2}"
      hh, ww = x.shape[1:3]
      x = np.pad(x, ((0, 0), (0, hh % 2), (0, ww % 2), (0, 0)))
      x = np.concatenate([x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]],
                         -1)
      x = _linear_np(_layer_norm(x, sd, f"{p}.norm"), sd, f"{p}.reduction")
  x = _layer_norm(x, sd, "norm").mean(axis=(1, 2))
  return _linear_np(x, sd, "head")


# --------------------------------------------------------------- comparisons

X32 = np.random.default_rng(1).normal(size=(2, 3, 32, 32)).astype(np.float32)   # NCHW


def _jax_logits(spec, variables, x_nchw):
  return np.asarray(network.forward(spec, variables, x_nchw.transpose(0, 2, 3, 1)).logits)


@pytest.fixture(scope="module")
def resnet():
  spec = zoo.resnet18(num_classes=10, stem="imagenet", input_shape=(32, 32, 3))
  return spec, _random_state_dict(tv_resnet18(10), seed=2)


def test_resnet18_from_a_safetensors_file_equals_the_numpy_forward(resnet, tmp_path):
  spec, sd = resnet
  path = tmp_path / "resnet18.safetensors"
  safe_numpy.save_file(sd, str(path))
  got = _jax_logits(spec, tv.load(spec, path), X32)
  want = np_resnet18(sd, X32.astype(np.float64))
  assert np.abs(want).max() > 0.1   # not a trivial output
  np.testing.assert_allclose(got, want, atol=1e-4, rtol=0)


def test_mobilenet_v2_equals_the_numpy_forward():
  spec = zoo.mobilenet_v2(num_classes=10, variant="imagenet", input_shape=(32, 32, 3))
  sd = _random_state_dict(tv_mobilenet_v2(10), seed=3)
  got = _jax_logits(spec, tv.load(spec, sd), X32)
  want = np_mobilenet_v2(sd, X32.astype(np.float64))
  assert np.abs(want).max() > 0.1
  np.testing.assert_allclose(got, want, atol=1e-4, rtol=0)


def _vgg_like(plan, widths, classes, input_shape):
  """A spec with vgg16_bn's node names and layout, narrower and shallower."""
  features = []
  for v in plan:
    i = len(features)
    if v == "M":
      features.append(S.Pool(str(i), "max", window=2, stride=2))
    else:
      features += [S.Conv(str(i), features=v, kernel=3, padding=1, bias=True),
                   S.BatchNorm(str(i + 1)), S.Act(str(i + 2))]
  classifier = (S.Dense("0", features=widths), S.Act("1"), S.Dropout("2", rate=0.5),
                S.Dense("3", features=widths), S.Act("4"), S.Dropout("5", rate=0.5),
                S.Dense("6", features=classes))
  return S.Spec(input_shape, (S.Sequential("features", layers=tuple(features)),
                              S.Pool("avgpool", "adaptive_avg", output_size=7),
                              S.Flatten("flatten"), S.Sequential("classifier", layers=classifier)),
                name="vgg_small")


def test_vgg_bn_flattening_and_classifier_equal_the_numpy_forward():
  """vgg16_bn's naming and (C, H, W) flattening on a narrow VGG (two stages, 16x16 input:
  the 4x4 map is upsampled to 7x7 by the adaptive pool, as for 32x32 CIFAR inputs)."""
  plan = (8, "M", 16, "M")
  spec = _vgg_like(plan, 32, 10, (16, 16, 3))
  shapes = {}
  _conv(shapes, "features.0", 8, 3, 3, bias=True)
  _bn(shapes, "features.1", 8)
  _conv(shapes, "features.4", 16, 8, 3, bias=True)
  _bn(shapes, "features.5", 16)
  _linear(shapes, "classifier.0", 32, 16 * 7 * 7)
  _linear(shapes, "classifier.3", 32, 32)
  _linear(shapes, "classifier.6", 10, 32)
  sd = _random_state_dict(shapes, seed=4)
  x = X32[:, :, :16, :16]
  got = _jax_logits(spec, tv.load(spec, sd), x)
  want = np_vgg(sd, x.astype(np.float64), plan)
  assert np.abs(want).max() > 0.1
  np.testing.assert_allclose(got, want, atol=1e-4, rtol=0)


def test_swin_with_padded_and_shifted_windows_equals_the_numpy_forward():
  """swin_t's builder at a small size where every window is padded (8x8 and 4x4 tokens in
  3x3 windows) and the odd layers shifted: the relative position bias, the mask, patch
  merging and the layouts all enter the output."""
  depths, heads, window = (2, 2), (2, 4), 3
  spec = tfm.swin((16, 16, 3), 10, patch=2, embed_dim=8, depths=depths, heads=heads,
                  window=window, stochastic_depth=0.1, name="swin_small")
  sd = _random_state_dict(tv_swin(10, patch=2, dim=8, depths=depths, heads=heads, window=window),
                          seed=5, window=window)
  x = X32[:, :, :16, :16]
  got = _jax_logits(spec, tv.load(spec, sd), x)
  want = np_swin(sd, x.astype(np.float64), patch=2, depths=depths, heads=heads, window=window)
  assert np.abs(want).max() > 0.1
  np.testing.assert_allclose(got, want, atol=1e-4, rtol=0)


# ----------------------------------------------------------------- bad input


def test_a_state_dict_of_another_architecture_is_refused_by_name(resnet):
  spec, _ = resnet
  with pytest.raises(StateDictError, match="has no tensor 'conv1.weight'"):
    tv.load(spec, _random_state_dict(tv_mobilenet_v2(10), seed=0))


def test_a_deeper_resnet_is_refused_at_its_first_extra_tensor(resnet):
  spec, sd = resnet
  deeper = dict(sd)
  for k in [k for k in sd if k.startswith("layer1.1.")]:
    deeper[k.replace("layer1.1.", "layer1.2.")] = sd[k]
  with pytest.raises(StateDictError, match=r"holds tensor 'layer1.2.conv1.weight' \(64, 64, 3, 3\), "
                                           r"which this architecture does not have"):
    tv.load(spec, deeper)


def test_another_width_names_the_tensor_and_both_shapes(resnet):
  spec, sd = resnet
  narrow = dict(sd, **{"conv1.weight": np.zeros((32, 3, 7, 7), np.float32)})
  with pytest.raises(StateDictError, match=r"'conv1.weight' \(32, 3, 7, 7\) becomes \(7, 7, 3, 32\) "
                                           r"for params/conv1/kernel, which expects \(7, 7, 3, 64\)"):
    tv.load(spec, narrow)


def test_another_number_of_classes_suggests_a_new_head(resnet):
  spec, sd = resnet
  imagenet = dict(sd, **{"fc.weight": np.zeros((1000, 512), np.float32),
                         "fc.bias": np.zeros(1000, np.float32)})
  with pytest.raises(StateDictError, match=r"classifier head \(params/fc\).*new_head=True"):
    tv.load(spec, imagenet)
  # A template whose head holds values (the rest may be abstract: it is replaced).
  template = jax.eval_shape(lambda: network.init(spec, jax.random.key(0)))
  rng = np.random.default_rng(7)
  template["params"]["fc"] = {"kernel": rng.normal(size=(512, 10)).astype(np.float32),
                              "bias": rng.normal(size=10).astype(np.float32)}
  got = tv.load(spec, imagenet, template=template, new_head=True)
  np.testing.assert_array_equal(got["params"]["fc"]["kernel"], template["params"]["fc"]["kernel"])
  np.testing.assert_array_equal(got["params"]["layer1"]["0"]["conv1"]["kernel"],
                                sd["layer1.0.conv1.weight"].transpose(2, 3, 1, 0))
  np.testing.assert_array_equal(got["batch_stats"]["bn1"]["var"], sd["bn1.running_var"])


def test_a_new_head_needs_a_template_with_values(resnet):
  """An eval_shape template has no head values to keep: refused, not returned as placeholders."""
  spec, sd = resnet
  abstract = jax.eval_shape(lambda: network.init(spec, jax.random.key(0)))
  with pytest.raises(StateDictError, match=r"params/fc/(bias|kernel) is a ShapeDtypeStruct, not an "
                                           r"array.*pass freshly initialised variables, "
                                           r"jaxdepth.init\(spec, key\)"):
    tv.load(spec, sd, template=abstract, new_head=True)


def test_a_spec_without_a_torchvision_counterpart_is_refused():
  with pytest.raises(StateDictError, match="no torchvision name map for the spec 'digits_cnn'"):
    tv.name_map(zoo.digits_cnn())
  with pytest.raises(StateDictError, match=r"node 'class_token' \(class_token\) has no counterpart "
                                           r"in torchvision's swin"):
    tv.name_map(zoo.digits_vit(), architecture="swin")


# -------------------------------------------------------------- command line


def test_pretrained_flag_sets_the_config_and_a_missing_file_stops_the_run_at_once(
    tmp_path, monkeypatch, capsys):
  from jaxdepth.train import __main__ as cli
  from jaxdepth.train import command
  from jaxdepth.train import easier as easier_cli
  args = command.parse(easier_cli.build_parser(), ["--pretrained", "w.safetensors"])
  cfg = command.resolve("easier_flowers_resnet18", args, extra_defaults=easier_cli.METHOD_DEFAULTS)
  assert cfg["pretrained"] == "w.safetensors" and cfg["pretrained_new_head"] is True
  monkeypatch.chdir(tmp_path)   # the config names resnet18_imagenet.safetensors, not here
  assert cli.main(["easier", "--config", "easier_dtd_resnet18", "--workdir",
                   str(tmp_path / "w")]) == 2
  err = capsys.readouterr().err
  assert ("error: --config.pretrained='resnet18_imagenet.safetensors': no such file. Export "
          "torchvision's weights") in err
  assert not (tmp_path / "w").exists()


def test_pretrained_torchvision_weights_on_another_model_say_what_the_command_line_takes(
    tmp_path, capsys):
  from jaxdepth.train import __main__ as cli
  shapes = tv_swin(1000, patch=2, dim=16, depths=(2, 2), heads=(2, 4), window=2, channels=1)
  path = tmp_path / "swin.safetensors"
  safe_numpy.save_file(_random_state_dict(shapes, seed=6, window=2), str(path))
  assert cli.main(["fit", "--model", "digits_cnn", "--pretrained", str(path), "--no-progress",
                   "--config.epochs=1", "--workdir", str(tmp_path / "w")]) == 2
  err = capsys.readouterr().err
  assert (f"error: --config.pretrained={str(path)!r}: --model 'digits_cnn' (spec 'digits_cnn') "
          f"has no torchvision name map. --pretrained loads torchvision's") in err
  assert "onto the zoo's resnet18, resnet18_imagenet," in err and "architecture=" not in err
  assert "save it with jaxdepth.save_model(DIR, spec, variables) and pass --model DIR" in err
  assert not (tmp_path / "w").exists()
  from jaxdepth.train import command   # the message names exactly the zoo models with a name map
  mapped = []
  for name in zoo.names():
    try:
      tv.name_map(zoo.get(name))
      mapped.append(name)
    except StateDictError:
      pass
  assert mapped == list(command._TORCHVISION_MODELS)


def test_initial_variables_import_the_file_with_a_fresh_head(tmp_path):
  from jaxdepth.train import command
  from jaxdepth.train import config as config_lib
  spec = zoo.digits_swin()
  shapes = tv_swin(1000, patch=2, dim=16, depths=(2, 2), heads=(2, 4), window=2, channels=1)
  sd = _random_state_dict(shapes, seed=6, window=2)
  path = tmp_path / "swin.safetensors"
  safe_numpy.save_file(sd, str(path))
  fresh = network.init(spec, jax.random.key(3))
  cfg = {"model": "digits_swin", "seed": 3, "pretrained": str(path), "pretrained_new_head": True}
  got = command.initial_variables(cfg, spec)
  np.testing.assert_array_equal(got["params"]["head"]["kernel"], fresh["params"]["head"]["kernel"])
  np.testing.assert_array_equal(got["params"]["features"]["1"]["0"]["mlp"]["fc1"]["kernel"],
                                sd["features.1.0.mlp.0.weight"].T)
  with pytest.raises(config_lib.ConfigError, match=r"'head.weight' \(1000, 32\).*new_head=True"):
    command.initial_variables(dict(cfg, pretrained_new_head=False), spec)
  plain = command.initial_variables(dict(cfg, pretrained=None), spec)
  np.testing.assert_array_equal(plain["params"]["head"]["kernel"], fresh["params"]["head"]["kernel"])
