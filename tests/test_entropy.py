"""Entropy estimators and on-device site statistics against independent numpy."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdepth import entropy as E
from jaxdepth import network as N
from jaxdepth import spec as S
from jaxdepth import stats as St


def h2(p, eps):
  return -p * np.log2(max(p, eps)) - (1 - p) * np.log2(max(1 - p, eps))


def hand_built_batch(rng, b=6, hw=3):
  """(B, H, W, 5) pre-activations: always ON, always OFF, always zero, mixed, mixed with zeros."""
  z = rng.normal(size=(b, hw, hw, 5)).astype(np.float32)
  z[..., 0] = np.abs(z[..., 0]) + 0.1
  z[..., 1] = -np.abs(z[..., 1]) - 0.1
  z[..., 2] = 0.0
  z[..., 4] = np.where(rng.random((b, hw, hw)) < 0.3, 0.0, z[..., 4])
  return z


# Literal numpy transcriptions of the three estimators: EGP, EASIER, dataset level (docs/methods/).
def egp_reference(z):
  n, h, w, c = z.shape
  p = [(z[..., k] > 0).mean() for k in range(c)]
  mixed = [pk for pk in p if 0 < pk < 1]
  return float(np.mean([h2(pk, 1e-5) for pk in mixed])) if mixed else 0.0


def easier_reference(z):
  # q per position over the batch (zeros ON), then averaged over H and W per channel.
  q = (z >= 0).mean(axis=0).mean(axis=0).mean(axis=0)
  return float(np.mean([h2(qk, 1e-10) for qk in q]))


def dataset_reference(zs):
  z = np.concatenate([x.reshape(-1, x.shape[-1]) for x in zs])
  out = []
  for k in range(z.shape[-1]):
    nz = z[:, k][z[:, k] != 0]
    p = (nz > 0).mean() if nz.size else 0.0
    out.append(h2(p, 1e-10))
  return float(np.mean(out))


def test_sign_counts_and_on_fractions():
  z = hand_built_batch(np.random.default_rng(0))
  counts = np.asarray(N.sign_counts(jnp.asarray(z)))
  for k in range(5):
    assert counts[:, k].tolist() == [(z[..., k] > 0).sum(), (z[..., k] < 0).sum(), (z[..., k] == 0).sum()]
  np.testing.assert_allclose(E.on_fraction(counts, "off"), (z > 0).mean(axis=(0, 1, 2)), rtol=1e-6)
  np.testing.assert_allclose(E.on_fraction(counts, "on"), (z >= 0).mean(axis=(0, 1, 2)), rtol=1e-6)
  disc = E.on_fraction(counts, "discard")
  assert disc[2] == 0.0            # always zero: no data, so p = 0
  np.testing.assert_allclose(disc[4], (z[..., 4] > 0).sum() / (z[..., 4] != 0).sum(), rtol=1e-6)
  mask = np.array([True, False, True, True, False, True])
  masked = np.asarray(N.sign_counts(jnp.asarray(z), jnp.asarray(mask)))
  np.testing.assert_array_equal(masked, np.asarray(N.sign_counts(jnp.asarray(z[mask]))))


def test_batch_estimators_match_numpy():
  rng = np.random.default_rng(1)
  for _ in range(5):
    z = hand_built_batch(rng)
    counts = N.sign_counts(jnp.asarray(z))
    assert float(E.egp_batch_entropy(counts)) == pytest.approx(egp_reference(z), rel=1e-5)
    assert float(E.easier_batch_entropy(counts)) == pytest.approx(easier_reference(z), rel=1e-5)
    assert float(E.dataset_entropy(counts)) == pytest.approx(dataset_reference([z]), rel=1e-5)


def test_constant_layers_have_zero_entropy():
  z = np.stack([np.ones((4, 2, 2)), -np.ones((4, 2, 2)), np.zeros((4, 2, 2))], -1).astype(np.float32)
  counts = N.sign_counts(jnp.asarray(z))
  assert float(E.egp_batch_entropy(counts)) == 0.0      # no mixed channel at all
  assert float(E.easier_batch_entropy(counts)) == pytest.approx(0.0, abs=1e-8)
  assert float(E.dataset_entropy(counts)) == 0.0
  # zeros are ON for EASIER, OFF for EGP: a half-zero, half-negative channel is mixed
  # for EASIER (1 bit) and constant OFF for EGP (0 bits).
  half = np.concatenate([np.zeros((2, 1, 1, 1)), -np.ones((2, 1, 1, 1))]).astype(np.float32)
  c = N.sign_counts(jnp.asarray(half))
  assert float(E.easier_batch_entropy(c)) == pytest.approx(1.0)
  assert float(E.egp_batch_entropy(c)) == 0.0
  assert float(E.dataset_entropy(c)) == 0.0             # zeros discarded: always OFF


def test_site_statistics_accumulate_on_device_in_a_jitted_step():
  """Per-batch estimators averaged over batches, dataset counts summed: vs numpy."""
  spec = S.Spec(input_shape=(3, 3, 5), layers=(
      S.Act("site", fn="relu"), S.Flatten("flat"), S.Dense("head", features=2)))
  variables = N.init(spec, jax.random.key(0))

  @jax.jit
  def step(stats, x):
    out = N.forward(spec, variables, x, collect_stats=True)
    return St.accumulate(stats, out.site_counts)

  rng = np.random.default_rng(2)
  batches = [hand_built_batch(rng) for _ in range(4)]
  stats = St.empty_stats(spec)
  for z in batches:
    stats = step(stats, jnp.asarray(z))
  assert int(stats.batches) == 4
  assert step._cache_size() == 1
  got = {e: St.entropies(stats, e)["site"] for e in St.ESTIMATORS}
  assert got["egp"] == pytest.approx(np.mean([egp_reference(z) for z in batches]), rel=1e-5)
  assert got["easier"] == pytest.approx(np.mean([easier_reference(z) for z in batches]), rel=1e-5)
  assert got["dataset"] == pytest.approx(dataset_reference(batches), rel=1e-5)
  np.testing.assert_array_equal(St.always_off(stats.counts["site"]), [False, True, True, False, False])
  np.testing.assert_array_equal(St.always_on(stats.counts["site"]), [True, False, False, False, False])
  with pytest.raises(ValueError, match="unknown estimator"):
    St.entropies(stats, "shannon")


def test_accumulate_refuses_no_counts_and_statistics_of_another_spec():
  spec = S.Spec(input_shape=(3, 3, 5), layers=(
      S.Act("site", fn="relu"), S.Flatten("flat"), S.Dense("head", features=2)))
  x = jnp.asarray(hand_built_batch(np.random.default_rng(3)))
  out = N.forward(spec, N.init(spec, jax.random.key(0)), x, collect_stats=True)
  with pytest.raises(TypeError, match=r"accumulate got no counts \(None\): forward\(\.\.\.\)"
                                      r"\.site_counts is None unless forward\(\.\.\., "
                                      r"collect_stats=True\)"):
    St.accumulate(St.empty_stats(spec), N.forward(spec, N.init(spec, jax.random.key(0)), x)
                  .site_counts)
  with pytest.raises(TypeError, match=r"accumulate folds counts into a SiteStats "
                                      r"\(empty_stats\(spec\)\), got a NoneType"):
    St.accumulate(None, out.site_counts)
  deeper = S.Spec(input_shape=(3, 3, 4), layers=(
      S.Act("site", fn="relu"), S.Flatten("flat"), S.Dense("mid", features=4),
      S.Act("more", fn="relu"), S.Dense("head", features=2)))
  with pytest.raises(ValueError, match=r"^the site statistics are of another spec than the "
                                       r"counts folded into them \(the statistics' sites "
                                       r"\['more'\] are not counted; site 'site' holds \(3, 4\) "
                                       r"in the statistics, \(3, 5\) counted\): make them with "
                                       r"empty_stats\(spec\)"):
    jax.jit(St.accumulate)(St.empty_stats(deeper), out.site_counts)
  assert int(St.accumulate(St.empty_stats(spec), out.site_counts).batches) == 1


def test_a_channel_rarely_off_over_a_large_split_keeps_its_entropy():
  # 46 million values (CIFAR's training split at a 32x32 map), OFF once, twice, ON once.
  n = 45000 * 32 * 32
  counts = np.array([[n - 1, n - 2, 1], [1, 2, n - 1], [0, 0, 0]], np.int32)
  got = np.asarray(E.dataset_channel_entropy(counts))
  ref = [-p * np.log2(p) - (1 - p) * np.log2(1 - p) for p in ((n - 1) / n, (n - 2) / n, 1 / n)]
  np.testing.assert_allclose(got, ref, rtol=1e-5)
  assert float(E.dataset_entropy(counts[:, :1])) > 0.0


def test_counts_past_int32_stop_there_and_the_dataset_estimator_says_so():
  spec = S.Spec(input_shape=(3,), layers=(S.Act("site", fn="relu"), S.Dense("head", features=2)))
  stats = St.empty_stats(spec)
  near = St.COUNT_MAX - 5
  stats = stats._replace(counts={"site": jnp.array([[near, 7, 0], [3, 0, 0], [0, 0, near]],
                                                   jnp.int32)})
  batch = {"site": jnp.array([[10, 1, 0], [2, 0, 0], [0, 0, 5]], jnp.int32)}
  stats = jax.jit(St.accumulate)(stats, batch)
  np.testing.assert_array_equal(
      stats.counts["site"], [[St.COUNT_MAX, 8, 0], [5, 0, 0], [0, 0, St.COUNT_MAX]])
  np.testing.assert_array_equal(St.always_off(stats.counts["site"]), [False, False, True])
  np.testing.assert_array_equal(St.always_on(stats.counts["site"]), [False, True, False])
  with pytest.raises(ValueError, match=r"cannot measure \['site'\].*2,147,483,647 or more.*"
                                       r"per-batch estimator \('easier' or 'egp'\)"):
    St.entropies(stats, "dataset")
  assert set(St.entropies(stats, "easier")) == {"site"}   # the per-batch sums are unaffected


@pytest.mark.parametrize("estimator", St.ESTIMATORS)
def test_statistics_of_no_batch_have_no_entropy(estimator):
  """Not 0 bits, which would read as linear sites (EASIER would remove them all)."""
  spec = S.Spec(input_shape=(3,), layers=(S.Act("site", fn="relu"), S.Dense("head", features=2)))
  with pytest.raises(ValueError, match=r"the statistics hold no batch.*collect_stats=True"):
    St.entropies(St.empty_stats(spec), estimator)


def test_dataset_counts_that_would_pass_int32_are_refused_before_any_work():
  spec = S.Spec(input_shape=(8, 8, 4), layers=(
      S.Act("site", fn="relu"), S.Flatten("flat"), S.Dense("head", features=2)))
  per_example = 8 * 8                                    # values per channel and example
  St.check_count_capacity(spec, St.COUNT_MAX // per_example, split="train")
  with pytest.raises(ValueError, match=r"would count 2,147,483,648 values per neuron at site "
                                       r"'site'.*over the 33,554,432 examples of the 'train' "
                                       r"split.*per-batch estimator"):
    St.check_count_capacity(spec, St.COUNT_MAX // per_example + 1, split="train")
  # Per row of the map (EGP's neurons="rows"): 8 x 4 values per row and example.
  St.check_count_capacity(spec, St.COUNT_MAX // 32, split="train", neuron_axis=0)
  with pytest.raises(ValueError, match="'site'"):
    St.check_count_capacity(spec, St.COUNT_MAX // 32 + 1, split="train", neuron_axis=0)
