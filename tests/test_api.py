"""The library's edges: gates by site name, entropies in site order, one's own arrays as a Dataset."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxdepth
from jaxdepth import entropy, network, optim, stats, training, zoo
from jaxdepth import spec as S
from jaxdepth.data import Dataset, augment


@pytest.fixture(scope="module")
def spec():
  return zoo.digits_cnn(width=4)   # call order is not sorted order: 'relu' before 'layer1/...'


def test_gates_are_built_and_read_by_site_name(spec):
  sites = spec.sites()
  assert list(sites) != sorted(sites)
  gates = jaxdepth.gates_for(spec, off=["layer1/0/relu1"], values={"relu2": 0.0})
  np.testing.assert_array_equal(np.asarray(gates), [1, 0, 1, 1, 1, 0])
  read = jaxdepth.gates_by_site(spec, gates)
  assert list(read) == list(sites)
  assert read == {s: (0.0 if s in ("layer1/0/relu1", "relu2") else 1.0) for s in sites}
  np.testing.assert_array_equal(np.asarray(jaxdepth.gates_for(spec, values=read)),
                                np.asarray(gates))
  with pytest.raises(KeyError, match=r"not live sites of 'digits_cnn': \['relu9'\]"):
    jaxdepth.gates_for(spec, values={"relu9": 0.0})
  with pytest.raises(TypeError, match=r"write off=\['relu'\]"):
    jaxdepth.gates_for(spec, off="relu")
  with pytest.raises(ValueError, match="both in off and in values"):
    jaxdepth.gates_for(spec, off=["relu"], values={"relu": 1.0})
  with pytest.raises(ValueError, match=r"shape \(6,\)"):
    jaxdepth.gates_by_site(spec, jnp.ones(5))


def _numpy_dataset_entropy(counts):
  pos, neg, _ = np.asarray(counts, np.float64)
  q = np.where(pos + neg > 0, pos / np.maximum(pos + neg, 1), 0.0)
  h = -q * np.log2(np.maximum(q, 1e-10)) - (1 - q) * np.log2(np.maximum(1 - q, 1e-10))
  return float(np.mean(h))


def test_entropies_come_back_in_site_order_after_jit(spec):
  variables = network.init(spec, jax.random.key(0))
  x = np.random.default_rng(0).normal(size=(4, 8, 8, 1)).astype(np.float32)

  @jax.jit
  def step(st, x):
    out = network.forward(spec, variables, x, collect_stats=True)
    return stats.accumulate(st, out.site_counts)

  st = step(stats.empty_stats(spec), x)
  assert list(st.counts) == sorted(spec.sites())              # what the pytree gives back
  for estimator in stats.ESTIMATORS:
    assert list(jaxdepth.entropies(st, estimator)) == list(spec.sites())
  got = jaxdepth.entropies(st, "dataset")
  assert got == pytest.approx({s: _numpy_dataset_entropy(st.counts[s]) for s in spec.sites()},
                              rel=1e-5)
  assert entropy.POS == 0   # the counts rows the numpy reference reads


def _arrays(n, seed, shape=(6, 6, 3), classes=3):
  rng = np.random.default_rng(seed)
  return rng.integers(0, 256, (n, *shape), dtype=np.uint8), rng.integers(0, classes, n)


def test_dataset_from_arrays_serves_ones_own_arrays():
  (x, y), (xt, yt) = _arrays(40, 0), _arrays(12, 1)
  ds = Dataset.from_arrays(train=(x, y), test=(xt, yt), val_fraction=0.25, name="mine")
  assert (ds.name, ds.num_classes, ds.input_shape) == ("mine", 3, (6, 6, 3))
  assert (ds.train.num_examples, ds.val.num_examples, ds.test.num_examples) == (30, 10, 12)
  # The hold-out splits train: together the two splits are the train arrays, once each.
  seen = np.concatenate([ds.train.examples.images, ds.val.examples.images])
  assert sorted(map(bytes, seen)) == sorted(map(bytes, x))
  # Normalised with the train split's per-channel statistics, in the order given.
  unit = ds.train.examples.images.astype(np.float64) / 255
  mean, std = unit.mean(axis=(0, 1, 2)), unit.std(axis=(0, 1, 2))
  batch = next(ds.test.batches(12))
  np.testing.assert_allclose(batch["image"], (xt / 255 - mean) / std, rtol=1e-5, atol=1e-5)
  np.testing.assert_array_equal(batch["label"], yt)
  # Given validation arrays, grey (N, H, W) images, fixed normalisation, an augmentation.
  (g, gy), (gv, gvy) = _arrays(20, 2, (5, 5)), _arrays(6, 3, (5, 5))
  grey = Dataset.from_arrays(train=(g / 255.0, gy), val=(gv, gvy), test=(gv, gvy),
                             normalization=((0.5,), (0.25,)), num_classes=4,
                             augment=augment.PadCropFlip(pad=1, flip=False))
  assert grey.input_shape == (5, 5, 1) and grey.num_classes == 4
  np.testing.assert_allclose(next(grey.val.batches(6))["image"],
                             (gv[..., None] / 255 - 0.5) / 0.25, rtol=1e-5, atol=1e-5)
  aug = next(grey.train.batches(20, augment=True))["image"]
  plain = next(grey.train.batches(20))["image"]
  assert aug.shape == plain.shape and not np.array_equal(aug, plain)


def test_dataset_from_arrays_trains_with_fit():
  (x, y), (xt, yt) = _arrays(64, 4), _arrays(16, 5)
  ds = Dataset.from_arrays(train=(x, y), test=(xt, yt), val_fraction=0.25)
  spec = S.Spec(ds.input_shape, (S.Flatten("flatten"), S.Dense("fc", features=ds.num_classes)))
  recipe = optim.Recipe(epochs=2, batch_size=16, optimizer="adam", lr=1e-2)
  initial = network.init(spec, jax.random.key(0))
  result = training.fit(spec, initial, ds, recipe, progress=False)
  assert [r["epoch"] for r in result.history] == [1, 2]
  kernel, bias = (np.asarray(result.variables["params"]["fc"][k]) for k in ("kernel", "bias"))
  assert not np.array_equal(kernel, initial["params"]["fc"]["kernel"])
  # The reported validation accuracy is that of the trained weights on the 16 held-out images.
  val = next(ds.val.batches(16, drop_remainder=False))
  assert val["mask"].sum() == 16
  predicted = (val["image"].reshape(16, -1) @ kernel + bias).argmax(-1)
  assert result.history[-1]["val_accuracy"] == pytest.approx((predicted == val["label"]).mean())


@pytest.mark.filterwarnings("ignore:overflow encountered in cast:RuntimeWarning")
def test_fit_stops_when_the_parameters_overflow_under_a_finite_loss():
  (x, y), (xt, yt) = _arrays(64, 4), _arrays(16, 5)
  ds = Dataset.from_arrays(train=(x, y), test=(xt, yt))
  spec = S.Spec(ds.input_shape, (S.Flatten("flatten"), S.Dense("fc", features=ds.num_classes)))
  # One step an epoch: its loss is computed before the update, which overflows float32.
  recipe = optim.Recipe(epochs=1, batch_size=64, optimizer="sgd", lr=1e39)
  with pytest.raises(training.NonFiniteLossError, match=r"training diverged in epoch 1 \(by "
                     r"step 1\): the loss stayed finite .* nothing was saved\. Lower the "
                     r"learning rate"):
    training.fit(spec, network.init(spec, jax.random.key(0)), ds, recipe, progress=False)


def test_fit_refuses_a_head_that_is_not_one_output_per_class(tmp_path):
  (x, y), (xt, yt) = _arrays(64, 4), _arrays(16, 5)
  ds = Dataset.from_arrays(train=(x, y), test=(xt, yt), num_classes=10)
  spec = S.Spec(ds.input_shape, (S.Flatten("flatten"), S.Dense("fc", features=7)))
  with pytest.raises(ValueError, match=r"gives \(7,\) outputs, but the dataset 'arrays' has 10 "
                                       r"classes.*num_classes=10"):
    training.fit(spec, network.init(spec, jax.random.key(0)), ds, optim.Recipe(epochs=1),
                 workdir=tmp_path / "run", progress=False)
  assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("kwargs, message", [
    (dict(train=([1, 2], [0, 1])), r"train images must be \(N, H, W, C\)"),
    (dict(train=(np.full((4, 3, 3, 1), 2.0), [0, 1, 0, 1])), r"must lie in \[0, 1\]"),
    (dict(train=(np.zeros((4, 3, 3, 1), np.int32), [0, 1, 0, 1])), "uint8 in"),
    (dict(train=(np.zeros((4, 3, 3, 1), np.uint8), [0, 1, 0])), r"labels must be \(N,\)"),
    (dict(train=(np.zeros((4, 3, 3, 1), np.uint8), [0.0, 1.0, 0.0, 1.0])), "integers"),
    (dict(train=(np.zeros((4, 3, 3, 1), np.uint8), [0, 1, 0, 5]), num_classes=3),
     "label 5 is out of range"),
    (dict(train=(np.zeros((4, 3, 3, 1), np.uint8), [0, 1, 0, 1]), val_fraction=0.5,
          val=(np.zeros((2, 3, 3, 1), np.uint8), [0, 1])), "not both"),
    (dict(train=(np.zeros((4, 3, 3, 1), np.uint8), [0, 1, 0, 1]), normalization=((0.5,),)),
     "normalization must be"),
    (dict(train=np.zeros((4, 3, 3, 1), np.uint8)), "must be a pair"),
])
def test_dataset_from_arrays_names_bad_input(kwargs, message):
  kwargs.setdefault("test", (np.zeros((2, 3, 3, 1), np.uint8), [0, 1]))
  with pytest.raises(ValueError, match=message):
    Dataset.from_arrays(**kwargs)


def test_latencies_time_models_side_by_side():
  from jaxdepth import timing
  small = S.Spec((16, 16, 8), (S.Pool("gap", "global_avg"), S.Dense("fc", features=2)))
  big = S.Spec((16, 16, 8), tuple(S.Conv(f"c{i}", features=8 if i == 5 else 128, kernel=3,
                                         padding=1) for i in range(6))
               + (S.Pool("gap", "global_avg"), S.Dense("fc", features=2)))
  models = {"big": (big, network.init(big, jax.random.key(0))),
            "small": (small, network.init(small, jax.random.key(0)))}
  got = timing.latencies(models, 4, repeats=5)
  assert list(got) == ["big", "small"] and all(t > 0 for t in got.values())
  assert got["big"] > 5 * got["small"]          # ~40M MACs against ~2k: no load hides that
  other = S.Spec((8, 8, 8), small.layers)
  with pytest.raises(ValueError, match="different inputs"):
    timing.latencies({**models, "other": (other, network.init(other, jax.random.key(0)))}, 4)
  with pytest.raises(ValueError, match="batch must be a positive int"):
    timing.latencies(models, 0)


def test_evaluate_refuses_labels_past_the_models_outputs():
  # One's own labels 1..3 (counted from 1) for a 3-output head: the loss would be NaN.
  (x, y), (xt, yt) = _arrays(20, 6), _arrays(12, 7)
  ds = Dataset.from_arrays(train=(x, y + 1), test=(xt, yt + 1), val_fraction=0.0)
  spec = S.Spec(ds.input_shape, (S.Flatten("flatten"), S.Dense("fc", features=3)))
  variables = network.init(spec, jax.random.key(0))
  with pytest.raises(ValueError, match=r"evaluate: labels run from 1 to 3, but the spec gives 3 "
                                       r"outputs \(classes 0 .. 2\)"):
    training.evaluate(spec, variables, ds.test)
  shifted = Dataset.from_arrays(train=(x, y), test=(xt, yt), val_fraction=0.0)
  assert training.evaluate(spec, variables, shifted.test).count == 12
