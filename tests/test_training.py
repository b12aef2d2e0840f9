"""Training harness: optimizer recipes vs PyTorch's update rules, sharded steps, the fit loop.

The digits runs use a tiny CNN (one conv, BN, dropout) so each compiles in about
a second; everything else is numpy references or single steps.
"""
import dataclasses
import json
import math
from unittest import mock

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxdepth import checkpoint, data, network, optim, progress, stats, training
from jaxdepth import spec as S

STATS = training.TrainOptions(stats_last_epoch=True)


# ------------------------------------------------------------------ optimizers


def _torch_sgd(w, grads, *, lr_at, momentum, wd, nesterov=False):
  """PyTorch SGD (dampening 0): L2 added to the gradient, then the momentum buffer."""
  buf = None
  for t, g in enumerate(grads):
    d = g + wd * w
    buf = d if buf is None else momentum * buf + d
    step = d + momentum * buf if nesterov else buf
    w = w - lr_at(t) * step
  return w


def _apply(tx, w, grads):
  w = jnp.asarray(w)
  state = tx.init(w)
  for g in grads:
    updates, state = tx.update(jnp.asarray(g), state, w)
    w = optax.apply_updates(w, updates)
  return np.asarray(w)


@pytest.mark.parametrize("nesterov", [False, True])
def test_sgd_recipe_is_pytorch_sgd_with_multistep(nesterov):
  rng = np.random.default_rng(0)
  w0 = rng.normal(size=5).astype(np.float32)
  grads = [rng.normal(size=5).astype(np.float32) for _ in range(9)]
  recipe = optim.Recipe(epochs=4, optimizer="sgd", lr=0.5, momentum=0.9, weight_decay=0.1,
                        milestones=(1, 2), gamma=0.1, nesterov=nesterov)
  # 3 steps per epoch: MultiStepLR drops at the first step of epochs 1 and 2.
  lr_at = lambda t: 0.5 * 0.1 ** ((t >= 3) + (t >= 6))
  want = _torch_sgd(w0.astype(np.float64), grads, lr_at=lr_at, momentum=0.9, wd=0.1,
                    nesterov=nesterov)
  got = _apply(optim.make_optimizer(recipe, steps_per_epoch=3), w0, grads)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
  schedule = optim.make_schedule(recipe, 3)
  assert [float(schedule(t)) for t in (2, 3, 5, 6)] == pytest.approx([0.5, 0.05, 0.05, 0.005])


@pytest.mark.parametrize("name,wd", [("adam", 0.0), ("adam", 0.01), ("adamw", 0.01)])
def test_adam_recipes_are_pytorch_adam_and_adamw(name, wd):
  rng = np.random.default_rng(1)
  w = rng.normal(size=4)
  grads = [rng.normal(size=4).astype(np.float32) for _ in range(4)]
  lr, b1, b2, eps = 1e-2, 0.9, 0.999, 1e-8
  got = _apply(optim.make_optimizer(optim.Recipe(optimizer=name, lr=lr, weight_decay=wd), 10),
               w.astype(np.float32), grads)
  m = v = np.zeros(4)
  for t, g in enumerate(grads, start=1):
    if name == "adamw":
      w = w - lr * wd * w            # torch.optim.AdamW: decoupled decay
    else:
      g = g + wd * w                 # torch.optim.Adam: L2 in the gradient
    m, v = b1 * m + (1 - b1) * g, b2 * v + (1 - b2) * g * g
    w = w - lr * (m / (1 - b1 ** t)) / (np.sqrt(v / (1 - b2 ** t)) + eps)
  np.testing.assert_allclose(got, w, rtol=1e-5, atol=1e-6)


def test_recipe_refuses_bad_values_by_name():
  with pytest.raises(ValueError, match="optimizer"):
    optim.Recipe(optimizer="rmsprop")
  with pytest.raises(ValueError, match="milestones"):
    optim.Recipe(milestones=(120, 80))
  with pytest.raises(ValueError, match="unknown recipe fields"):
    optim.Recipe.from_dict({"learning_rate": 0.1})
  # values that optax would take and turn into NaN weights, another optimizer, or a failure later
  for field, value, words in [("b1", 1.0, r"b1 must be in \[0, 1\), got 1.0"),
                              ("b2", 1.0, r"b2 must be in \[0, 1\), got 1.0"),
                              ("gamma", 0.0, r"gamma .* must be a finite number > 0"),
                              ("eps", float("inf"), r"eps must be a finite number > 0"),
                              # Adam's sqrt(v) + eps: a zero gradient entry would be 0 / 0
                              ("eps", 0.0, r"eps must be a finite number > 0 for adam"),
                              ("weight_decay", float("nan"), r"weight_decay must be a finite"),
                              ("lr", float("inf"), r"lr must be a finite number > 0")]:
    with pytest.raises(ValueError, match=words):
      optim.Recipe(optimizer="adam", milestones=(2,), **{field: value})
  with pytest.raises(ValueError, match=r"nesterov=True needs optimizer='sgd' and momentum in "
                                       r"\(0, 1\).*momentum=0.0"):
    optim.Recipe(optimizer="sgd", momentum=0.0, nesterov=True)
  with pytest.raises(ValueError, match="nesterov=True needs optimizer='sgd'.*'adamw'"):
    optim.Recipe(optimizer="adamw", nesterov=True)
  assert optim.Recipe.from_dict(optim.Recipe(milestones=(3,)).to_dict()) == optim.Recipe(
      milestones=(3,))
  # values of another type: named, never read as something else (2.5 as epoch 2, "false" as True)
  for field, value, words in [("lr", "0.1", r"lr must be a number, got '0.1' \(str\)"),
                              ("momentum", True, r"momentum must be a number, got True"),
                              ("epochs", 2.0, r"epochs must be an int, got 2.0"),
                              ("batch_size", True, r"batch_size must be an int, got True"),
                              ("milestones", (2.5,), r"milestones must be a tuple of whole epochs"),
                              ("milestones", "80,120", r"milestones must be a tuple of epochs"),
                              ("augment", "false", r"augment must be True or False, got 'false'"),
                              ("nesterov", "yes", r"nesterov must be True or False, got 'yes'")]:
    with pytest.raises(ValueError, match=words):
      optim.Recipe(**{field: value})
  assert optim.Recipe(eps=0.0).eps == 0.0        # SGD has no epsilon
  assert optim.Recipe(milestones=(2.0, 4)).milestones == (2, 4)   # as the command line reads it


def test_recipe_takes_numpy_and_jax_scalars_as_python_numbers():
  # np.int64 from np.arange, np.float32 from an array: the recipe goes to JSON (run.json)
  recipe = optim.Recipe(epochs=np.int64(3), batch_size=jnp.int32(64), lr=np.float32(0.1),
                        milestones=np.arange(1, 3), nesterov=np.bool_(True))
  d = json.loads(json.dumps(recipe.to_dict()))
  assert d == optim.Recipe(epochs=3, batch_size=64, lr=0.1, milestones=(1, 2),
                           nesterov=True).to_dict()
  assert [type(d[k]) for k in ("epochs", "batch_size", "lr", "nesterov")] == [int, int, float, bool]
  assert optim.Recipe.from_dict(d) == recipe


# ------------------------------------------------------------------------ loss


def test_cross_entropy_leaves_padded_examples_out():
  rng = np.random.default_rng(2)
  logits = rng.normal(size=(6, 4)).astype(np.float32)
  labels = np.array([0, 3, 1, 2, 2, 0], np.int32)
  mask = np.array([1, 1, 0, 1, 0, 1], bool)
  logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
  nll = -logp[np.arange(6), labels]
  assert float(training.cross_entropy(logits, labels, mask)) == pytest.approx(
      nll[mask].mean(), rel=1e-6)
  sums = training.batch_metrics(jnp.asarray(logits), labels, mask)
  mean = training.mean_metrics(sums)
  assert mean["loss"] == pytest.approx(nll[mask].mean(), rel=1e-6)
  assert mean["accuracy"] == pytest.approx((logits.argmax(-1) == labels)[mask].mean())


# ------------------------------------------------------------------ sharding


def _block_spec():
  block = S.Block("block", branch=(S.Conv("conv", features=4, kernel=3, padding=1),
                                   S.BatchNorm("bn"), S.Act("relu1")), post=(S.Act("relu2"),))
  return S.Spec((6, 6, 4), (S.Conv("stem", features=4, kernel=3, padding=1), S.BatchNorm("bn0"),
                            S.Act("relu0"), block, S.Pool("pool", "global_avg"),
                            S.Dense("fc", features=3)), name="tiny_block")


def _run_steps(spec, variables, batches, mesh, dtype=None):
  tx = optim.make_optimizer(optim.Recipe(lr=0.1, momentum=0.9, weight_decay=1e-3), 10)
  step = training.make_train_step(spec, tx, mesh=mesh, collect_stats=True, dtype=dtype)
  state = training.TrainState.create(variables, tx, 0)
  site_stats, out = stats.empty_stats(spec), []
  for b in batches:
    state, metrics, site_stats = step(state, training.shard_batch(b, mesh),
                                      network.gates_for(spec), site_stats)
    out.append(metrics)
  return jax.device_get((state, out, site_stats))


def test_two_device_step_equals_one_device_step_bn_included():
  assert len(jax.devices()) >= 2, "conftest sets up 2 CPU devices"
  spec = _block_spec()
  variables = network.init(spec, jax.random.key(0))
  rng = np.random.default_rng(3)
  batches = [{"image": rng.normal(size=(8, 6, 6, 4)).astype(np.float32),
              "label": rng.integers(0, 3, 8).astype(np.int32),
              "mask": np.array([1] * 7 + [0], bool)} for _ in range(2)]
  two = training.make_mesh(jax.devices()[:2])
  sharded = training.shard_batch(batches[0], two)["image"]
  assert {s.data.shape for s in sharded.addressable_shards} == {(4, 6, 6, 4)}
  one_state, one_metrics, one_stats = _run_steps(spec, variables, batches,
                                                 training.make_mesh(jax.devices()[:1]))
  two_state, two_metrics, two_stats = _run_steps(spec, variables, batches, two)
  assert one_state.batch_stats and one_state.params
  for a, b in zip(jax.tree.leaves((one_state, one_metrics, one_stats)),
                  jax.tree.leaves((two_state, two_metrics, two_stats))):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
  # BN running statistics moved away from their init, identically on both meshes.
  assert not np.allclose(one_state.batch_stats["bn0"]["mean"], 0.0)


def test_bfloat16_compute_keeps_float32_parameters():
  spec = _block_spec()
  variables = network.init(spec, jax.random.key(0))
  rng = np.random.default_rng(4)
  batch = {"image": rng.normal(size=(8, 6, 6, 4)).astype(np.float32),
           "label": rng.integers(0, 3, 8).astype(np.int32), "mask": np.ones(8, bool)}
  mesh = training.make_mesh(jax.devices()[:1])
  f32_state, f32_metrics, _ = _run_steps(spec, variables, [batch], mesh)
  bf16_state, bf16_metrics, _ = _run_steps(spec, variables, [batch], mesh, dtype=jnp.bfloat16)
  assert {x.dtype for x in jax.tree.leaves(bf16_state.params)} == {np.dtype(np.float32)}
  assert float(bf16_metrics[0]["loss"]) == pytest.approx(float(f32_metrics[0]["loss"]), rel=0.05)
  assert not np.array_equal(bf16_state.params["fc"]["kernel"], f32_state.params["fc"]["kernel"])


def test_train_state_create_refuses_half_precision_variables_naming_a_leaf():
  # float16 parameters with Adam are NaN at the first step; bfloat16 compute is the step's dtype.
  spec = _block_spec()
  variables = network.init(spec, jax.random.key(0))
  tx = optax.adam(1e-3)
  for dtype in (jnp.bfloat16, jnp.float16):
    half = {**variables, "params": {**variables["params"], "fc": {
        **variables["params"]["fc"], "kernel": variables["params"]["fc"]["kernel"].astype(dtype)}}}
    with pytest.raises(TypeError, match=rf"TrainState.create: params/fc/kernel is "
                       rf"{jnp.dtype(dtype).name}; parameters, BatchNorm statistics and optimizer "
                       rf"state stay float32: .* make_train_step\(spec, tx, dtype=jnp.bfloat16\)"):
      training.TrainState.create(half, tx, 0)
  stats_half = {**variables, "batch_stats": {**variables["batch_stats"], "bn0": jax.tree.map(
      lambda a: a.astype(jnp.bfloat16), variables["batch_stats"]["bn0"])}}
  with pytest.raises(TypeError, match=r"batch_stats/bn0/mean is bfloat16"):
    training.TrainState.create(stats_half, tx, 0)


# ---------------------------------------------------------------- the fit loop


def _tiny_cnn():
  return S.Spec((8, 8, 1), (
      S.Conv("conv", features=8, kernel=3, padding=1), S.BatchNorm("bn"), S.Act("relu"),
      S.Pool("pool", "max", window=2), S.Flatten("flatten"), S.Dropout("drop", rate=0.2),
      S.Dense("fc", features=10)), name="tiny_cnn")


RECIPE = optim.Recipe(epochs=2, batch_size=64, optimizer="sgd", lr=0.05, momentum=0.9,
                      weight_decay=1e-4, milestones=(1,))


@pytest.fixture(scope="module")
def digits():
  return data.load("digits")


@pytest.fixture(scope="module")
def reference(digits):
  """An uninterrupted 2-epoch run, last-epoch statistics collected."""
  spec = _tiny_cnn()
  return training.fit(spec, network.init(spec, jax.random.key(0)), digits, RECIPE,
                      options=STATS, seed=3, progress=False)


def _same(a, b):
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def _without_time(history):
  return [{k: v for k, v in r.items() if k != "seconds"} for r in history]


def test_fit_learns_and_is_bit_for_bit_repeatable(digits, reference):
  spec = _tiny_cnn()
  again = training.fit(spec, network.init(spec, jax.random.key(0)), digits, RECIPE,
                       options=STATS, seed=3, progress=False)
  _same(reference.variables, again.variables)
  _same(reference.stats, again.stats)
  assert _without_time(reference.history) == _without_time(again.history)
  h = reference.history
  assert [r["epoch"] for r in h] == [1, 2] and [r["lr"] for r in h] == pytest.approx([0.05, 0.005])
  assert h[-1]["val_accuracy"] > 0.5
  assert int(reference.stats.batches) == digits.train.num_batches(64, drop_remainder=True)
  counts = reference.stats.counts["relu"]
  assert int(counts.sum()) == int(reference.stats.batches) * 64 * 8 * 8 * 8


class _Interrupted:
  """A split whose iteration fails after ``after`` batches in total (a simulated kill)."""

  def __init__(self, split, after, error=KeyboardInterrupt, poison=False):
    self.split, self.left, self.error, self.poison = split, after, error, poison

  def __getattr__(self, name):
    return getattr(self.split, name)

  def batches(self, *args, **kwargs):
    for batch in self.split.batches(*args, **kwargs):
      if self.left == 0:
        if not self.poison:
          raise self.error("killed")
        batch = dict(batch, image=np.full_like(batch["image"], np.nan))
      else:
        self.left -= 1
      yield batch


def test_killed_run_resumes_to_the_same_parameters(digits, reference, tmp_path):
  spec = _tiny_cnn()
  variables = network.init(spec, jax.random.key(0))
  spe = digits.train.num_batches(64, drop_remainder=True)
  killed = dataclasses.replace(digits, train=_Interrupted(digits.train, spe + 6))
  with pytest.raises(KeyboardInterrupt):
    training.fit(spec, variables, killed, RECIPE, options=STATS, seed=3,
                 progress=False, workdir=tmp_path, checkpoint_every_steps=4)
  # Killed in epoch 2 after step spe + 6: the last checkpoint is mid-epoch, with
  # part of the last epoch's statistics.
  last = checkpoint.Checkpointer(tmp_path / "checkpoints", spec)
  step = last.latest_step()
  last.close()
  assert spe < step < spe + 6 and step % 4 == 0
  resumed = training.fit(spec, variables, digits, RECIPE, options=STATS, seed=3,
                         progress=False, workdir=tmp_path, checkpoint_every_steps=4)
  _same(reference.variables, resumed.variables)
  _same(reference.stats, resumed.stats)
  assert _without_time(resumed.history) == _without_time(reference.history)
  logged = [r["epoch"] for r in progress.read_metrics(tmp_path / "metrics.jsonl")]
  assert logged == [1, 2]
  # The finished run, called again, trains no further.
  again = training.fit(spec, variables, digits, RECIPE, options=STATS, seed=3,
                       progress=False, workdir=tmp_path)
  _same(reference.variables, again.variables)
  # Another architecture on the same workdir is refused, naming the node.
  wider = S.replace_node(spec, "conv", S.Conv("conv", features=16, kernel=3, padding=1))
  with pytest.raises(checkpoint.SpecMismatchError, match=r"'conv'.*features=8.*16"):
    training.fit(wider, network.init(wider, jax.random.key(0)), digits, RECIPE,
                 options=STATS, seed=3, progress=False, workdir=tmp_path)
  with pytest.raises(training.RunMismatchError, match="lr"):
    training.fit(spec, variables, digits, RECIPE.replace(lr=0.1), options=STATS,
                 seed=3, progress=False, workdir=tmp_path)
  with pytest.raises(training.RunMismatchError, match="dtype: 'float32' stored, 'bfloat16' asked"):
    training.fit(spec, variables, digits, RECIPE, options=STATS, seed=3, progress=False,
                 workdir=tmp_path, dtype=jnp.bfloat16)
  # The same dataset name with other splits is other data: it used to resume, mixing the two.
  n = {s: getattr(digits, s).num_examples for s in ("train", "val", "test")}
  halved = data.load("digits", val_fraction=0.5)
  m = {s: getattr(halved, s).num_examples for s in ("train", "val", "test")}
  with pytest.raises(training.RunMismatchError,
                     match=rf"data examples: \{{'train': {n['train']}, 'val': {n['val']}, 'test': "
                           rf"{n['test']}\}} stored, \{{'train': {m['train']}, 'val': "
                           rf"{m['val']}, 'test': {m['test']}\}} asked; data splits: '[0-9a-f]+' "
                           rf"stored, '[0-9a-f]+' asked"):
    training.fit(spec, variables, halved, RECIPE, options=STATS, seed=3, progress=False,
                 workdir=tmp_path)
  # Another split seed: the same sizes, other examples in each split.
  with pytest.raises(training.RunMismatchError, match=r"\(data splits: '[0-9a-f]+' stored"):
    training.fit(spec, variables, data.load("digits", split_seed=1), RECIPE, options=STATS,
                 seed=3, progress=False, workdir=tmp_path)


def test_the_data_identity_sees_another_split_of_ones_own_arrays_and_takes_any_split():
  rng = np.random.default_rng(0)
  train = (rng.random((40, 4, 4, 1), np.float32), rng.integers(0, 3, 40))
  test = (rng.random((8, 4, 4, 1), np.float32), rng.integers(0, 3, 8))

  def arrays(seed):
    return data.Dataset.from_arrays(train=train, test=test, val_fraction=0.25, split_seed=seed)

  first, again, other = arrays(0), arrays(0), arrays(1)
  assert training.data_identity(first) == training.data_identity(again)
  # The same sizes, other examples held out: the splits' digest tells them apart (every
  # split's indices were 0..n-1 of its own array).
  assert training.data_identity(first)["examples"] == training.data_identity(other)["examples"]
  assert training.data_identity(first)["splits"] != training.data_identity(other)["splits"]
  np.testing.assert_array_equal(np.sort(np.r_[first.train.source_indices,
                                              first.val.source_indices]), np.arange(40))
  # A split of one's own need not have source_indices: it is recorded by its size.
  bare = dataclasses.replace(first, train=type("Bare", (), {"num_examples": 30})())
  assert training.data_identity(bare)["examples"]["train"] == 30


def test_other_arrays_of_the_same_sizes_are_another_run_and_older_runs_resume(tmp_path, monkeypatch):
  # Every split of one's own arrays holds indices 0..n-1: other labels, or other images without
  # a normalisation computed from them, used to resume silently and train on the new data.
  rng = np.random.default_rng(0)
  x, y = rng.integers(0, 256, (32, 8, 8, 1), dtype=np.uint8), rng.integers(0, 10, 32)
  spec = _tiny_cnn()
  variables = network.init(spec, jax.random.key(0))
  one = optim.Recipe(epochs=1, batch_size=16, optimizer="adam", lr=3e-3)

  def arrays(images, labels):
    return data.Dataset.from_arrays(train=(images, labels), test=(images, labels), num_classes=10,
                                    normalization=None)

  def fit(dataset, epochs, workdir):
    return training.fit(spec, variables, dataset, one.replace(epochs=epochs), progress=False,
                        workdir=workdir)

  fit(arrays(x, y), 1, tmp_path / "run")
  for other in (arrays(x, (y + 1) % 10), arrays(255 - x, y)):
    with pytest.raises(training.RunMismatchError, match=r"\(data content of train: '[0-9a-f]{16}' "
                       r"stored, '[0-9a-f]{16}' asked; data content of test: "):
      fit(other, 2, tmp_path / "run")
  assert [h["epoch"] for h in fit(arrays(x.copy(), y), 2, tmp_path / "run").history] == [1, 2]
  # A run recorded before the content was resumes with any arrays, as with other new keys.
  with monkeypatch.context() as m:
    recorded = training.data_identity
    m.setattr(training, "data_identity",
              lambda dataset: {k: v for k, v in recorded(dataset).items() if k != "content"})
    fit(arrays(x, y), 1, tmp_path / "old")
  assert [h["epoch"] for h in fit(arrays(x, (y + 1) % 10), 2, tmp_path / "old").history] == [1, 2]


def test_the_driver_refuses_to_resume_on_other_arrays(tmp_path):
  # Iteration 1 would have trained on the new labels after iteration 0 on the old ones.
  from jaxdepth import driver, zoo   # pylint: disable=import-outside-toplevel
  from jaxdepth.methods import Easier   # pylint: disable=import-outside-toplevel
  rng = np.random.default_rng(0)
  x, y = rng.integers(0, 256, (64, 8, 8, 1), dtype=np.uint8), rng.integers(0, 4, 64)
  spec = zoo.digits_plain(num_classes=4, width=4)
  one = optim.Recipe(epochs=1, batch_size=16, optimizer="adam", lr=3e-3)

  def arrays(labels):
    return data.Dataset.from_arrays(train=(x[:48], labels[:48]), val=(x[48:], labels[48:]),
                                    test=(x[48:], labels[48:]), num_classes=4)

  driver.run(Easier(), spec, arrays(y), one, tmp_path, iterations=1, progress=False,
             latency_batches=())
  with pytest.raises(training.RunMismatchError, match=r"data.content.train: '[0-9a-f]{16}' there, "
                                                      r"'[0-9a-f]{16}' asked"):
    driver.run(Easier(), spec, arrays((y + 1) % 4), one, tmp_path, iterations=2, progress=False,
               latency_batches=())


def test_dtype_none_and_float32_resume_each_other_bit_identical(
    digits, reference, tmp_path, monkeypatch):
  # They compute the same; a checkpoint written before the dtype was normalised holds None.
  spec = _tiny_cnn()
  variables = network.init(spec, jax.random.key(0))
  spe = digits.train.num_batches(64, drop_remainder=True)
  old = lambda dtype: None if dtype is None else jnp.dtype(dtype).name  # noqa: E731
  for first, then, recorded in ((None, jnp.float32, old), (jnp.float32, None, None)):
    workdir = tmp_path / str(first)
    killed = dataclasses.replace(digits, train=_Interrupted(digits.train, spe + 6))
    with monkeypatch.context() as m:
      if recorded is not None:   # a checkpoint of then: no data recorded either
        m.setattr(training, "dtype_name", recorded)
        m.setattr(training, "data_identity", lambda dataset: None)
      with pytest.raises(KeyboardInterrupt):
        training.fit(spec, variables, killed, RECIPE, options=STATS, seed=3, progress=False,
                     workdir=workdir, dtype=first)
    resumed = training.fit(spec, variables, digits, RECIPE, options=STATS, seed=3,
                           progress=False, workdir=workdir, dtype=then)
    _same(reference.variables, resumed.variables)
    assert _without_time(resumed.history) == _without_time(reference.history)
    with pytest.raises(training.RunMismatchError,
                       match="dtype: 'float32' stored, 'bfloat16' asked"):
      training.fit(spec, variables, digits, RECIPE, options=STATS, seed=3, progress=False,
                   workdir=workdir, dtype=jnp.bfloat16)


def test_a_run_killed_in_its_last_epochs_refuses_fewer_epochs(digits, tmp_path):
  # Killed in epoch 2 of 3: asked for 2 epochs, the step is within them, but epoch 2 was
  # trained as a middle epoch (no statistics), so it cannot become the last one.
  spec = _tiny_cnn()
  variables = network.init(spec, jax.random.key(0))
  spe = digits.train.num_batches(64, drop_remainder=True)
  killed = dataclasses.replace(digits, train=_Interrupted(digits.train, spe + 6))
  three = RECIPE.replace(epochs=3)
  with pytest.raises(KeyboardInterrupt):
    training.fit(spec, variables, killed, three, options=STATS, seed=3, progress=False,
                 workdir=tmp_path, checkpoint_every_steps=4)
  with pytest.raises(training.RunMismatchError, match=r"holds a run of 3 epochs trained for "
                     r"\d+ steps \(into epoch 2\), and 2 are asked now: epoch 2 would be the "
                     r"last after being trained as a middle one .* at least 3 epochs"):
    training.fit(spec, variables, digits, RECIPE, options=STATS, seed=3, progress=False,
                 workdir=tmp_path)


def test_the_log_keeps_every_epoch_when_a_line_is_lost_or_cut_short(
    digits, reference, tmp_path, monkeypatch):
  spec = _tiny_cnn()
  variables = network.init(spec, jax.random.key(0))
  write = progress.MetricsLog.write
  calls = []

  def interrupted_once(self, record):   # Ctrl-C between epoch 2's checkpoint and its line
    calls.append(record["epoch"])
    if len(calls) == 2:
      raise KeyboardInterrupt
    write(self, record)

  monkeypatch.setattr(progress.MetricsLog, "write", interrupted_once)
  with pytest.raises(KeyboardInterrupt):
    training.fit(spec, variables, digits, RECIPE, options=STATS, seed=3, progress=False,
                 workdir=tmp_path)
  monkeypatch.undo()
  log = tmp_path / "metrics.jsonl"
  assert [r["epoch"] for r in progress.read_metrics(log)] == [1]   # epoch 2 saved, not logged
  resumed = training.fit(spec, variables, digits, RECIPE, options=STATS, seed=3,
                         progress=False, workdir=tmp_path)   # nothing left to train
  _same(reference.variables, resumed.variables)
  assert _without_time(progress.read_metrics(log)) == _without_time(reference.history)
  with log.open("a") as f:
    f.write('{"epoch": 3, "st')                        # a line the disk did not take whole
  training.fit(spec, variables, digits, RECIPE, options=STATS, seed=3, progress=False,
               workdir=tmp_path)
  assert _without_time(progress.read_metrics(log)) == _without_time(reference.history)


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(digits, tmp_path):
  spec = _tiny_cnn()
  spe = digits.train.num_batches(64, drop_remainder=True)
  poisoned = dataclasses.replace(digits, train=_Interrupted(digits.train, spe + 3, poison=True))
  with pytest.raises(training.NonFiniteLossError, match=r"epoch 2.*last good checkpoint \(step "
                     + str(spe)) as diverged:
    training.fit(spec, network.init(spec, jax.random.key(0)), poisoned, RECIPE, seed=3,
                 progress=False, workdir=tmp_path)
  # That checkpoint resumes only with the same recipe: the advice is another directory.
  assert diverged.value.kept == spe
  assert str(diverged.value).endswith(
      f"run again with a lower learning rate in another work directory (or after deleting "
      f"{tmp_path.absolute()}), or check the data.")
  assert str(diverged.value).startswith(diverged.value.what)
  ckpt = checkpoint.Checkpointer(tmp_path / "checkpoints", spec)
  assert ckpt.all_steps() == [spe]
  template = training.TrainState.create(network.init(spec, jax.random.key(0)),
                                        optim.make_optimizer(RECIPE, spe), 0)
  restored = ckpt.restore(template).state
  ckpt.close()
  assert int(restored.step) == spe and checkpoint.all_finite(restored)
  assert len(progress.read_metrics(tmp_path / "metrics.jsonl")) == 1


def test_evaluate_counts_every_example_once_and_gates_act(digits, reference):
  spec = _tiny_cnn()
  split = digits.test
  result = training.evaluate(spec, reference.variables, split, batch_size=128)
  assert result.count == split.num_examples == 359
  batch = next(split.batches(split.num_examples))
  logits = network.forward(spec, reference.variables, batch["image"]).logits
  assert result.accuracy == pytest.approx(float(np.mean(np.argmax(logits, -1) == batch["label"])))
  gated = training.evaluate(spec, reference.variables, split, batch_size=128,
                            gates=network.gates_for(spec, off=("relu",)), collect_stats=True)
  baked = training.evaluate(S.with_identity(spec, ["relu"]), reference.variables, split,
                            batch_size=128)
  assert gated.loss == pytest.approx(baked.loss, rel=1e-5)
  assert int(gated.stats.counts["relu"].sum()) == 359 * 8 * 8 * 8


def test_fit_refuses_a_split_smaller_than_a_batch(digits):
  spec = _tiny_cnn()
  with pytest.raises(ValueError, match="fewer than one batch"):
    training.fit(spec, network.init(spec, jax.random.key(0)), digits,
                 RECIPE.replace(batch_size=4096), progress=False)


def test_train_state_create_copies_what_the_step_donates():
  spec = _block_spec()
  variables = network.init(spec, jax.random.key(0))
  tx = optax.sgd(0.1)
  state = training.TrainState.create(variables, tx, jax.random.key(1))
  step = training.make_train_step(spec, tx, mesh=training.make_mesh(jax.devices()[:1]))
  batch = {"image": np.zeros((2, 6, 6, 4), np.float32), "label": np.zeros(2, np.int32),
           "mask": np.ones(2, bool)}
  step(state, batch, None, None)
  assert math.isfinite(float(variables["params"]["fc"]["kernel"].sum()))  # not deleted


def test_a_train_step_refuses_a_state_an_earlier_step_consumed():
  # jax's own error, "Array has been deleted with shape=int32[]", says neither why nor what to do.
  spec = _block_spec()
  variables = network.init(spec, jax.random.key(0))
  tx = optax.sgd(0.1)
  mesh = training.make_mesh(jax.devices()[:1])
  state = training.TrainState.create(variables, tx, 0)
  step = training.make_train_step(spec, tx, mesh=mesh)
  new_state, _, _ = step(state, _numpy_batch(), None, None)
  with pytest.raises(RuntimeError, match=r"the train step: this state was consumed by an earlier "
                     r"step, which donates .* pass the state that step returned, or make the "
                     r"step with make_train_step\(..., donate=False\)"):
    step(state, _numpy_batch(), None, None)
  step(new_state, _numpy_batch(), None, None)   # the returned state is the one to go on with
  keep = training.make_train_step(spec, tx, mesh=mesh, donate=False)
  state = training.TrainState.create(variables, tx, 0)
  once, _, _ = keep(state, _numpy_batch(), None, None)
  again, _, _ = keep(state, _numpy_batch(), None, None)
  _same(jax.device_get(once), jax.device_get(again))


def test_train_state_create_takes_a_jax_integer_seed_and_refuses_a_float():
  spec = _block_spec()
  variables = network.init(spec, jax.random.key(0))
  tx = optax.sgd(0.1)
  by_int = jax.device_get(training.TrainState.create(variables, tx, 3))
  np.testing.assert_array_equal(by_int.rng, jax.random.key_data(jax.random.key(3)))
  for seed in (jnp.int32(3), jnp.asarray(3, jnp.uint32), np.array(3)):
    _same(jax.device_get(training.TrainState.create(variables, tx, seed)), by_int)
  drawn = jax.random.randint(jax.random.key(0), (), 0, 2**31 - 1)
  np.testing.assert_array_equal(training.TrainState.create(variables, tx, drawn).rng,
                                jax.random.key_data(jax.random.key(int(drawn))))
  for bad, got in ((3.0, r"a float"), (jnp.float32(3), r"float32 of shape \(\)"),
                   (jnp.arange(3, dtype=jnp.uint32), r"uint32 of shape \(3,\)"),
                   (jax.random.split(jax.random.key(0), 2), r"a key of shape \(2,\) and dtype")):
    with pytest.raises(TypeError, match=r"TrainState.create: rng takes an int seed, a key "
                       r"\(jax.random.key\(seed\)\) or its uint32 key data of shape \(2,\) "
                       rf"\(jax.random.PRNGKey\(seed\)\), got {got}"):
      training.TrainState.create(variables, tx, bad)


def test_a_train_step_compiles_once_on_a_fresh_state_and_fresh_stats():
  # A fresh TrainState.create and empty_stats sit on one device, what the step returns on the
  # mesh: the step places them itself rather than compiling a program per placement.
  spec = _block_spec()
  variables = network.init(spec, jax.random.key(0))
  tx = optax.sgd(0.1, momentum=0.9)
  mesh = training.make_mesh(jax.devices()[:2])
  rng = np.random.default_rng(7)
  batches = [{"image": rng.normal(size=(8, 6, 6, 4)).astype(np.float32),
              "label": rng.integers(0, 3, 8).astype(np.int32), "mask": np.ones(8, bool)}
             for _ in range(3)]

  def run(place):
    step = training.make_train_step(spec, tx, mesh=mesh, collect_stats=True)
    state, out = place(training.TrainState.create(variables, tx, 0)), []
    for i, batch in enumerate(batches):
      fresh = i != 1   # a fresh empty_stats at calls 0 and 2 (a new epoch's), the returned one at 1
      site_stats = place(stats.empty_stats(spec)) if fresh else site_stats
      state, metrics, site_stats = step(state, batch, place(network.gates_for(spec)), site_stats)
      out.append((metrics, site_stats))
    return step.jitted._cache_size(), jax.device_get((state, out))

  placed_size, placed = run(lambda tree: training.replicate(tree, mesh))
  fresh_size, fresh = run(lambda tree: tree)
  assert placed_size == 1 and fresh_size == 1
  for a, b in zip(jax.tree.leaves(placed), jax.tree.leaves(fresh)):
    np.testing.assert_array_equal(a, b)


def test_an_eval_step_compiles_once_on_unplaced_and_replicated_variables():
  spec = _block_spec()
  variables = network.init(spec, jax.random.key(0))
  mesh = training.make_mesh(jax.devices()[:2])
  # a step of its own: make_eval_step's cache would share one with other tests
  step = training.make_eval_step.__wrapped__(spec, mesh=mesh, collect_stats=True)
  batch, gates = _numpy_batch(), network.gates_for(spec)
  raw, _ = step(variables, batch, gates, stats.empty_stats(spec))
  placed, _ = step(training.replicate(variables, mesh), batch, training.replicate(gates, mesh),
                   training.replicate(stats.empty_stats(spec), mesh))
  assert step.jitted._cache_size() == 1
  assert jax.device_get(raw) == jax.device_get(placed)


def test_gates_of_any_number_type_compile_one_program_and_act_alike():
  # Python floats, float32 arrays and Python ints (or bools) of the same gates are one program.
  spec = _block_spec()
  variables = network.init(spec, jax.random.key(0))
  mesh = training.make_mesh(jax.devices()[:2])
  tx = optax.sgd(0.1)
  train = training.make_train_step(spec, tx, mesh=mesh, donate=False)
  evaluate = training.make_eval_step.__wrapped__(spec, mesh=mesh)
  state, batch = training.TrainState.create(variables, tx, 0), _numpy_batch()
  ones = np.ones(len(spec.sites()))
  kinds = [(jnp.asarray(ones, jnp.float32), {"block": 0.0}), (ones, {"block": jnp.float32(0)}),
           (ones.astype(int), {"block": 0}), (ones.astype(bool), {"block": False})]
  trained = [train(state, batch, gates, None, None, node)[1] for gates, node in kinds]
  evaluated = [evaluate(variables, batch, gates, None, node)[0] for gates, node in kinds]
  assert train.jitted._cache_size() == 1 and evaluate.jitted._cache_size() == 1
  for a in trained[1:]:
    _same(a, trained[0])
  for a in evaluated[1:]:
    _same(a, evaluated[0])
  on = evaluate(variables, batch, None, None, {"block": 1.0})[0]   # the gate acts
  assert float(on["loss"]) != float(evaluated[0]["loss"])


# ------------------------------------------------------- hand-written loops, mistakes


def _numpy_batch(n=8, padded=0, seed=5):
  rng = np.random.default_rng(seed)
  return {"image": rng.normal(size=(n, 6, 6, 4)).astype(np.float32),
          "label": rng.integers(0, 3, n).astype(np.int32),
          "mask": np.arange(n) < n - padded}


def test_a_train_step_refuses_a_padded_numpy_batch():
  # Train-mode BatchNorm reads the padded rows: the real examples' results would change.
  spec = _block_spec()
  tx = optax.sgd(0.1)
  step = training.make_train_step(spec, tx, mesh=training.make_mesh(jax.devices()[:1]))
  state = training.TrainState.create(network.init(spec, jax.random.key(0)), tx, 0)
  with pytest.raises(ValueError, match=r"train steps need full batches: this batch has 3 padded "
                     r"examples \(mask False\) of 8, and train-mode BatchNorm's batch statistics "
                     r".*split.batches\(\.\.\., drop_remainder=True\) as fit does"):
    step(state, _numpy_batch(padded=3), None, None)
  _, metrics, _ = step(state, _numpy_batch(), None, None)   # a full batch trains
  assert float(metrics["count"]) == 8 and math.isfinite(float(metrics["loss"]))


def test_steps_refuse_a_batch_the_devices_do_not_split():
  spec = _block_spec()
  variables = network.init(spec, jax.random.key(0))
  mesh = training.make_mesh(jax.devices()[:2])
  tx = optax.sgd(0.1)
  train = training.make_train_step(spec, tx, mesh=mesh)
  evaluate = training.make_eval_step.__wrapped__(spec, mesh=mesh)
  words = r"a batch of 7 examples does not split over 2 devices; use a batch size divisible by 2"
  with pytest.raises(ValueError, match=r"the train step: " + words):
    train(training.TrainState.create(variables, tx, 0), _numpy_batch(n=7), None, None)
  with pytest.raises(ValueError, match=r"the eval step: " + words):
    evaluate(variables, _numpy_batch(n=7), None, None)
  with pytest.raises(ValueError, match=r"shard_batch: " + words):
    training.shard_batch(_numpy_batch(n=7), mesh)
  # In a multi-process run a host batch is a process's slice: the remedy is shard_batch, not
  # a batch size the global device count divides (jit refuses numpy inputs there anyway).
  with mock.patch.object(jax, "process_count", lambda: 2):
    with pytest.raises(ValueError, match=r"the train step: a host batch of 7 examples in a run of "
                                         r"2 processes: pass each process's slice through "
                                         r"training.shard_batch\(batch, mesh\)"):
      train(training.TrainState.create(variables, tx, 0), _numpy_batch(n=7), None, None)


def test_masks_zero_the_pruned_weights_in_a_hand_written_step():
  # The state holds unpruned weights (no fit to mask them first): the step's forward pass
  # must already see them at 0, and they stay exactly +0.
  spec = _block_spec()
  variables = network.init(spec, jax.random.key(0))
  kernel = np.asarray(variables["params"]["stem"]["kernel"])
  keep = np.random.default_rng(6).random(kernel.shape) < 0.5
  masks = {"stem": {"kernel": jnp.asarray(keep)}}
  tx = optax.sgd(0.1)
  step = training.make_train_step(spec, tx, mesh=training.make_mesh(jax.devices()[:1]),
                                  donate=False)
  batch = _numpy_batch()
  state, metrics, _ = step(training.TrainState.create(variables, tx, 0), batch, None, None, masks)
  new = np.asarray(state.params["stem"]["kernel"])
  assert np.all(new[~keep] == 0) and not np.any(np.signbit(new[~keep]))
  assert not np.array_equal(new[keep], kernel[keep])   # the kept weights trained
  pruned = {**variables, "params": {**variables["params"], "stem": {
      **variables["params"]["stem"], "kernel": np.where(keep, kernel, 0.0).astype(np.float32)}}}
  logits = network.forward(spec, pruned, batch["image"], train=True).logits
  expected = optax.softmax_cross_entropy_with_integer_labels(logits, batch["label"]).sum()
  np.testing.assert_allclose(float(metrics["loss"]), float(expected), rtol=1e-5)


@pytest.mark.parametrize("inner", [optax.chain(optax.add_decayed_weights(0.1),
                                                optax.sgd(0.1, momentum=0.9)),
                                    optax.adam(0.1)], ids=["sgd", "adam"])
def test_keep_masked_zeroes_pruned_weights_a_users_loop_did_not_zero_first(inner):
  # A plain optax loop whose params were never passed through apply_masks: after one update
  # the pruned weights are exactly +0.0 and stay so, the kept ones train as with `inner`.
  rng = np.random.default_rng(8)
  w0 = jnp.asarray(rng.normal(size=(4, 5)).astype(np.float32))
  keep = rng.random((4, 5)) < 0.5
  grads = [jnp.asarray(rng.normal(size=(4, 5)).astype(np.float32)) for _ in range(4)]
  masks = {"w": jnp.asarray(keep)}
  tx = optim.keep_masked(inner)

  def run(w, zero_first):
    params = optim.apply_masks({"w": w}, masks) if zero_first else {"w": w}
    state = tx.init(params)
    for g in grads:
      updates, state = tx.update({"w": g}, state, params, masks=masks)
      params = optax.apply_updates(params, updates)
      got = np.asarray(params["w"])
      assert np.all(got[~keep] == 0) and not np.any(np.signbit(got[~keep]))
    return np.asarray(params["w"])

  unzeroed = run(w0, zero_first=False)
  np.testing.assert_array_equal(unzeroed[keep], _apply(inner, w0, grads)[keep])
  # Weights already at 0 end bit for bit where masking the gradient and the update leaves them.
  params, state = optim.apply_masks({"w": w0}, masks), inner.init({"w": w0})
  for g in grads:
    u, state = inner.update(optim.apply_masks({"w": g}, masks), state, params)
    params = optax.apply_updates(params, optim.apply_masks(u, masks))
  np.testing.assert_array_equal(run(w0, zero_first=True), np.asarray(params["w"]))
  with pytest.raises(TypeError, match=r"keep_masked: update\(updates, state, params, "
                                      r"masks=masks\) needs the current params"):
    tx.update({"w": grads[0]}, tx.init({"w": w0}), masks=masks)


def test_variables_digest_reads_every_bit_the_same_on_any_placement():
  spec = _block_spec()
  variables = network.init(spec, jax.random.key(0))
  one, two = training.make_mesh(jax.devices()[:1]), training.make_mesh(jax.devices()[:2])
  digest = training.variables_digest(variables, one)
  assert training.variables_digest(jax.tree.map(np.asarray, variables), two) == digest
  sharded = jax.device_put(variables["params"]["fc"]["kernel"],   # (4, 3), rows over 2 devices
                           jax.sharding.NamedSharding(two, jax.sharding.PartitionSpec("data")))
  assert len(sharded.sharding.device_set) == 2
  placed = {**variables, "params": {**variables["params"], "fc": {
      **variables["params"]["fc"], "kernel": sharded}}}
  assert training.variables_digest(placed, two) == digest
  kernel = np.asarray(variables["params"]["fc"]["kernel"]).copy()
  kernel.view(np.uint32)[1, 2] ^= 1                         # one bit of one weight
  flipped = {**variables, "params": {**variables["params"], "fc": {
      **variables["params"]["fc"], "kernel": kernel}}}
  assert training.variables_digest(flipped, one) != digest
  assert training.variables_digest(network.init(spec, jax.random.key(1)), one) != digest


def test_fit_refuses_a_workdir_of_other_initial_variables(digits, tmp_path):
  spec = _tiny_cnn()
  one = RECIPE.replace(epochs=1)
  training.fit(spec, network.init(spec, jax.random.key(0)), digits, one, seed=3,
               progress=False, workdir=tmp_path)
  with pytest.raises(training.RunMismatchError, match=r"variables: '[0-9a-f]{16}' stored, "
                     r"'[0-9a-f]{16}' asked\) \(variables is a digest of the initial variables"):
    training.fit(spec, network.init(spec, jax.random.key(1)), digits, one, seed=3,
                 progress=False, workdir=tmp_path)
  # Another setting with the same variables: no word of the variables.
  with pytest.raises(training.RunMismatchError, match=r"\(seed: 3 stored, 4 asked\); resume"):
    training.fit(spec, network.init(spec, jax.random.key(0)), digits, one, seed=4,
                 progress=False, workdir=tmp_path)


def test_another_device_count_is_another_run_and_older_checkpoints_resume_on_any(
    digits, tmp_path, monkeypatch):
  # Another device count sums in another order: the resumed run would end as neither count's.
  spec = _tiny_cnn()
  variables = network.init(spec, jax.random.key(0))
  one_device, two = training.make_mesh(jax.devices()[:1]), training.make_mesh()
  spe = digits.train.num_batches(64, drop_remainder=True)
  training.fit(spec, variables, digits, RECIPE.replace(epochs=1), seed=3, progress=False,
               workdir=tmp_path / "new", mesh=one_device)
  with pytest.raises(training.RunMismatchError,
                     match=r"\(devices: 1 stored, 2 asked\) \(devices is the number of devices .*"
                           r"resume it on 1 device, e.g. JAX_NUM_CPU_DEVICES=1"):
    training.fit(spec, variables, digits, RECIPE, seed=3, progress=False,
                 workdir=tmp_path / "new", mesh=two)
  # A checkpoint written before the device count was recorded resumes on any: the second
  # epoch alone is trained (a split that gives one epoch's batches would stop a fresh run).
  save = checkpoint.Checkpointer.save

  def save_without_devices(self, step, state, *, meta=None, **kw):
    run = {k: v for k, v in meta["run"].items() if k != "devices"}
    return save(self, step, state, meta={**meta, "run": run}, **kw)

  with monkeypatch.context() as m:
    m.setattr(checkpoint.Checkpointer, "save", save_without_devices)
    first = training.fit(spec, variables, digits, RECIPE.replace(epochs=1), seed=3,
                         progress=False, workdir=tmp_path / "old", mesh=one_device)
  one_epoch = dataclasses.replace(digits, train=_Interrupted(digits.train, spe))
  resumed = training.fit(spec, variables, one_epoch, RECIPE, seed=3, progress=False,
                         workdir=tmp_path / "old", mesh=two)
  assert resumed.history[0] == first.history[0] and len(resumed.history) == 2


def test_fit_takes_a_numpy_seed_and_writes_its_checkpoints(digits, tmp_path):
  # `for seed in np.arange(3): fit(..., seed=seed)`: the seed goes to the checkpoints' JSON
  spec = _tiny_cnn()
  variables = network.init(spec, jax.random.key(0))
  one = RECIPE.replace(epochs=1)
  result = training.fit(spec, variables, digits, one, seed=np.int64(3), progress=False,
                        workdir=tmp_path)
  assert len(result.history) == 1
  assert not [p.name for p in (tmp_path / "checkpoints").iterdir() if "tmp" in p.name]
  # the same run as seed=3: it resumes (a finished run), refused as another seed it would not be
  again = training.fit(spec, variables, digits, one, seed=3, progress=False, workdir=tmp_path)
  _same(result.variables, again.variables)
  for bad in (3.0, "3", True):
    with pytest.raises(TypeError, match=f"seed must be an integer, got {bad!r}"):
      training.fit(spec, variables, digits, one, seed=bad, progress=False)
  # jax.random.key keeps a seed's low 32 bits: these would initialise as seeds 3 and 2**32 - 1
  assert (jax.random.key_data(jax.random.key(2**32 + 3)) == jax.random.key_data(
      jax.random.key(3))).all()
  for bad, alias in ((2**32 + 3, 3), (-1, 2**32 - 1)):
    with pytest.raises(ValueError, match=rf"seed must be in \[0, 2\*\*32\), got {bad}: "
                                         rf".* the keys of seed {alias}"):
      training.fit(spec, variables, digits, one, seed=bad, progress=False)


def test_fit_with_a_custom_tx_records_no_recipe_lr_and_refuses_another_optimizer_on_resume(
    digits, tmp_path):
  spec = _tiny_cnn()
  variables = network.init(spec, jax.random.key(0))
  one = RECIPE.replace(epochs=1)
  first = training.fit(spec, variables, digits, one, tx=optax.adam(1e-2), seed=3,
                       progress=False, workdir=tmp_path)
  assert [r["lr"] for r in first.history] == [None]   # not the recipe's 0.05, never used
  with pytest.raises(training.RunMismatchError, match=r"holds a train state of another structure "
                     r"than this call's: most likely another optimizer \(a custom tx must be the "
                     r"one the run started with"):
    training.fit(spec, variables, digits, RECIPE, tx=optax.sgd(1e-2, momentum=0.9), seed=3,
                 progress=False, workdir=tmp_path)


def _step(spec, batch, *, state=None, stats=None, **kw):
  """One train step on one device from a fresh state."""
  tx = optax.sgd(0.1)
  step = training.make_train_step(spec, tx, mesh=training.make_mesh(jax.devices()[:1]), **kw)
  if state is None:
    state = training.TrainState.create(network.init(spec, jax.random.key(0)), tx, 0)
  return step(state, batch, None, stats)


_MISTAKES = {   # what is done wrong: (call(digits, spec, variables, batch), error, words)
    "evaluate(dataset)": (lambda ds, spec, v, b: training.evaluate(spec, v, ds), TypeError,
                          r"evaluate takes one split of a dataset, e.g. dataset.test or "
                          r"dataset.val, got the Dataset 'digits'"),
    "evaluate(variables, spec)": (lambda ds, spec, v, b: training.evaluate(v, spec, ds.test),
                                  TypeError, r"evaluate\(spec, variables, split\): spec must "
                                             r"be a jaxdepth Spec, got a dict"),
    "fit(split)": (lambda ds, spec, v, b: training.fit(spec, v, ds.train, RECIPE, progress=False),
                   TypeError, r"fit takes the whole Dataset .* got one split of it"),
    "fit(recipe dict)": (lambda ds, spec, v, b: training.fit(spec, v, ds, RECIPE.to_dict()),
                         TypeError, r"recipe must be an optim.Recipe, got a dict .*from_dict"),
    "batch without mask": (
        lambda ds, spec, v, b: _step(spec, {"image": b["image"], "label": b["label"]}),
        ValueError, r"the train step: the batch has no 'mask' \(it has \['image', 'label'\]\)"),
    "one-hot labels": (
        lambda ds, spec, v, b: _step(spec, {**b, "label": np.eye(3, dtype=np.float32)[b["label"]]}),
        TypeError, r"batch\['label'\] must be integer class indices of shape \(B,\), got float32 "
                   r"of shape \(8, 3\): one-hot labels\? pass labels.argmax\(-1\)"),
    "float labels": (
        lambda ds, spec, v, b: _step(spec, {**b, "label": b["label"].astype(np.float32)}),
        TypeError, r"got float32 of shape \(8,\): pass labels.astype\(np.int32\)"),
    "labels out of range": (
        lambda ds, spec, v, b: _step(spec, {**b, "label": b["label"] + 3}),
        ValueError, r"labels run from 3 to 5, but the spec gives 3 outputs"),
    "uint8 images": (   # an own loop that skipped the normalisation
        lambda ds, spec, v, b: _step(spec, {**b, "image": np.zeros((8, 6, 6, 4), np.uint8)}),
        TypeError, r"the train step: batch\['image'\] is uint8; the steps take float images "
                   r"normalised as split.batches\(\) serves them: uint8 pixels\? use "
                   r"jaxdepth.data.augment.normalize\(images, mean, std\)"),
    "uint8 images, eval": (
        lambda ds, spec, v, b: training.make_eval_step(spec)(
            v, {**b, "image": np.zeros((8, 6, 6, 4), np.uint8)}, None, None),
        TypeError, r"the eval step: batch\['image'\] is uint8; the steps take float images"),
    "fewer labels than images": (   # jax said "Incompatible shapes for broadcasting"
        lambda ds, spec, v, b: _step(spec, {**b, "label": b["label"][:4]}),
        ValueError, r"the train step: batch sizes differ: image 8, label 4, mask 8; every entry "
                    r"needs the same leading batch axis"),
    "a shorter mask": (
        lambda ds, spec, v, b: _step(spec, {**b, "mask": b["mask"][:4]}),
        ValueError, r"the train step: batch sizes differ: image 8, label 8, mask 4"),
    "a shorter mask on the device, eval": (
        lambda ds, spec, v, b: training.make_eval_step(spec)(
            v, {**b, "mask": jnp.asarray(b["mask"][:4])}, None, None),
        ValueError, r"the eval step: batch sizes differ: image 8, label 8, mask 4"),
    "variables for the state": (
        lambda ds, spec, v, b: _step(spec, b, state=v), TypeError,
        r"the train step takes a TrainState, got a dict: make one with TrainState.create"),
    "stats None": (
        lambda ds, spec, v, b: _step(spec, b, collect_stats=True), TypeError,
        r"this train step collects site statistics \(collect_stats=True\): pass "
        r"stats=jaxdepth.empty_stats\(spec\)"),
    "eval stats None": (
        lambda ds, spec, v, b: training.make_eval_step(spec, collect_stats=True)(v, b, None, None),
        TypeError, r"this eval step collects site statistics \(collect_stats=True\): pass "
                   r"stats=jaxdepth.empty_stats\(spec\), then the stats each step returns"),
    "stats of another spec": (
        lambda ds, spec, v, b: _step(spec, b, collect_stats=True, stats=stats.empty_stats(
            S.with_identity(spec, ["block/relu1"]))),
        ValueError, r"the site statistics are of another spec than the counts folded into them "
                    r"\(sites \['block/relu1'\] are counted but not in the statistics\): "
                    r"make them with empty_stats\(spec\)"),
    "state of another optimizer": (   # a plain sgd step, a recipe's state (momentum, decay)
        lambda ds, spec, v, b: _step(spec, b, state=training.TrainState.create(
            v, optim.make_optimizer(RECIPE, 10), 0)), TypeError,
        r"the train step: the state's opt_state was made by another optimizer than this step's "
        r"tx .*TrainState.create\(variables, tx, rng\) with the step's tx"),
    "TrainState.create(params)": (
        lambda ds, spec, v, b: training.TrainState.create(v["params"], optax.sgd(0.1), 0),
        TypeError, r"takes the variables dict .* got a dict with keys \['block', 'bn0', 'fc', "
                   r"'stem'\] \(the params alone\?\): pass variables, not variables\['params'\]"),
}


@pytest.mark.parametrize("mistake", list(_MISTAKES))
def test_plausible_mistakes_are_named(digits, mistake):
  call, error, words = _MISTAKES[mistake]
  # digits' 8x8x1 images for the dataset calls, _block_spec's 6x6x4 ones for the steps
  spec = _tiny_cnn() if "fit" in mistake or "evaluate" in mistake else _block_spec()
  with pytest.raises(error, match=words):
    call(digits, spec, network.init(spec, jax.random.key(0)), _numpy_batch())


def test_another_normalization_is_another_run_and_older_runs_resume_with_any(
    digits, reference, tmp_path, monkeypatch):
  # The normalisation, augmentation and val_augment change every batch under the same name.
  spec = _tiny_cnn()
  variables = network.init(spec, jax.random.key(0))
  spe = digits.train.num_batches(64, drop_remainder=True)
  killed = dataclasses.replace(digits, train=_Interrupted(digits.train, spe + 6))
  recorded = training.data_identity
  with monkeypatch.context() as m:   # a checkpoint of before they were recorded
    m.setattr(training, "data_identity", lambda dataset: {
        k: v for k, v in recorded(dataset).items()
        if k not in ("normalization", "augment", "always_augment")})
    with pytest.raises(KeyboardInterrupt):
      training.fit(spec, variables, killed, RECIPE, options=STATS, seed=3, progress=False,
                   workdir=tmp_path, checkpoint_every_steps=4)
  resumed = training.fit(spec, variables, digits, RECIPE, options=STATS, seed=3,
                         progress=False, workdir=tmp_path)
  _same(reference.variables, resumed.variables)
  # Its checkpoints now record them.
  other = dataclasses.replace(digits, **{
      s: dataclasses.replace(getattr(digits, s), mean=(0.5,), std=(0.25,))
      for s in ("train", "val", "test")})
  mean, std = (float(f"{getattr(digits.train, k)[0]:.6g}") for k in ("mean", "std"))
  with pytest.raises(training.RunMismatchError,
                     match=rf"\(data normalization of train: \{{'mean': \[{mean}\], 'std': "
                           rf"\[{std}\]\}} stored, \{{'mean': \[0.5\], 'std': \[0.25\]\}} "
                           rf"asked; data normalization of val: .*\); resume it with the "
                           rf"same settings"):
    training.fit(spec, variables, other, RECIPE, options=STATS, seed=3, progress=False,
                 workdir=tmp_path)
  with pytest.raises(training.RunMismatchError,
                     match=r"\(data always_augment of val: False stored, True asked\)"):
    training.fit(spec, variables, data.load("digits", val_augment=True), RECIPE,
                 options=STATS, seed=3, progress=False, workdir=tmp_path)
  flipped = dataclasses.replace(digits, train=dataclasses.replace(
      digits.train, recipe=dataclasses.replace(digits.train.recipe, flip=True)))
  with pytest.raises(training.RunMismatchError, match=r"data augment of train: '.*flip=False\)' "
                                                      r"stored, '.*flip=True\)' asked"):
    training.fit(spec, variables, flipped, RECIPE, options=STATS, seed=3, progress=False,
                 workdir=tmp_path)


def test_the_data_identity_records_the_tokenizer_and_max_length():
  tokenizers = pytest.importorskip("tokenizers")
  tfds = pytest.importorskip("tensorflow_datasets")

  def tokenizer(letters):
    vocab = {t: i for i, t in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", *letters])}
    tok = tokenizers.Tokenizer(tokenizers.models.WordPiece(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = tokenizers.pre_tokenizers.BertPreTokenizer()
    tok.post_processor = tokenizers.processors.BertProcessing(("[SEP]", 3), ("[CLS]", 2))
    return tok

  with tfds.testing.mock_data(num_examples=10):
    def identity(tok, max_length):
      return training.data_identity(data.load("glue/sst2", tokenizer=tok, max_length=max_length))

    first = identity(tokenizer("ab"), 16)
    assert identity(tokenizer("ab"), 16) == first
    assert first["max_length"] == {"train": 16, "val": 16, "test": 16}
    assert identity(tokenizer("ab"), 32)["max_length"]["train"] == 32
    other = identity(tokenizer("abc"), 16)
    assert other["tokenizer"]["train"] != first["tokenizer"]["train"]
    assert {**other, "tokenizer": first["tokenizer"]} == first


def test_an_always_augmented_validation_draws_each_epochs_view_and_resumes_bit_identical(
    tmp_path):
  # The official code's quirk (val_augment) draws another augmentation at every evaluation.
  quirk = data.load("digits", val_augment=True)
  spec = _tiny_cnn()
  variables = network.init(spec, jax.random.key(0))
  first = training.fit(spec, variables, quirk, RECIPE.replace(epochs=1), seed=3,
                       progress=False, workdir=tmp_path)
  extended = training.fit(spec, variables, quirk, RECIPE, seed=3, progress=False,
                          workdir=tmp_path)
  whole = training.fit(spec, variables, quirk, RECIPE, seed=3, progress=False)
  _same(whole.variables, extended.variables)
  assert _without_time(extended.history) == _without_time(whole.history)

  def val(variables, epoch, seed=3):
    return training.evaluate(spec, variables, quirk.val, batch_size=64, seed=seed, epoch=epoch)

  assert whole.history[0]["val_loss"] == val(first.variables, 0).loss
  assert whole.history[1]["val_loss"] == val(whole.variables, 1).loss
  views = {val(whole.variables, epoch, seed).loss for seed, epoch in ((3, 1), (3, 0), (0, 0))}
  assert len(views) == 3
  # A split that does not augment serves the same batches whatever the seed and epoch.
  plain = data.load("digits").val
  assert (training.evaluate(spec, whole.variables, plain, seed=3, epoch=1)
          == training.evaluate(spec, whole.variables, plain))


def test_the_spread_of_more_than_two_devices_over_processes_is_part_of_a_runs_identity():
  # 2 processes x 2 devices sum in another order than 1 process x 4 (within each process,
  # then across): a resume on another spread trained differently and was accepted.
  import types   # pylint: disable=import-outside-toplevel

  def mesh(*processes):   # one fake device per entry, on that process
    return types.SimpleNamespace(devices=np.array(
        [types.SimpleNamespace(process_index=p) for p in processes], dtype=object))

  assert training.device_layout(mesh(0)) is None
  assert training.device_layout(mesh(0, 0)) is None   # a sum of two is the same either way
  assert training.device_layout(mesh(0, 1)) is None
  assert training.device_layout(mesh(0, 0, 0, 0)) == "1 process x 4 devices"
  assert training.device_layout(mesh(0, 0, 1, 1)) == "2 processes x 2 devices"
  assert training.device_layout(mesh(0, 1, 2, 3)) == "4 processes x 1 device"
  recipe = optim.Recipe(epochs=1, batch_size=8)
  run = {"devices": 4, "layout": "2 processes x 2 devices"}
  stored = {"recipe": recipe.to_dict(), "run": {"devices": 4, "layout": "1 process x 4 devices"}}
  with pytest.raises(training.RunMismatchError,
                     match=r"layout: '1 process x 4 devices' stored, '2 processes x 2 devices' "
                           r"asked\) \(layout is how .* resume it as 1 process x 4 devices"):
    training._check_same_run(stored, recipe, run, "work directory w")
  training._check_same_run({"recipe": recipe.to_dict(), "run": {"devices": 4}}, recipe, run,
                           "work directory w")   # recorded before the layout was: any
  training._check_same_run({**stored, "run": dict(run)}, recipe, run, "work directory w")
