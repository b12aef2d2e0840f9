"""EASIER's pure steps: entropies and selection order against numpy, gates vs baked identities."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdepth import network, stats
from jaxdepth.methods import base, easier
from jaxdepth.spec import Act, BatchNorm, Conv, Dense, Pool, Spec


def _tiny():
  """Four sites; ``after1`` and ``after2`` see a ReLU's output, so they are always ON."""
  return Spec((6, 6, 2), (
      Conv("c1", features=5, kernel=3, padding=1, bias=True), Act("r1"),
      Act("after1"), Act("after2", fn="relu6"),
      Conv("c2", features=4, kernel=3, padding=1, bias=True), BatchNorm("bn"), Act("r2"),
      Pool("gap", "global_avg"), Dense("fc", features=3)), name="tiny")


def _stats_and_counts(spec, variables, batches, train):
  s = stats.empty_stats(spec)
  per_batch = []
  for x in batches:
    out = network.forward(spec, variables, x, train=train, collect_stats=True)
    s = stats.accumulate(s, out.site_counts)
    per_batch.append({k: np.asarray(v) for k, v in out.site_counts.items()})
  return s, per_batch


def _h2(p, clamp=1e-10):
  q = 1.0 - p
  return -p * np.log2(np.maximum(p, clamp)) - q * np.log2(np.maximum(q, clamp))


def _numpy_easier(per_batch, site):
  """Official code: per batch, q_c = #(z >= 0)/n, mean over all channels; mean over batches."""
  values = []
  for counts in per_batch:
    pos, neg, zero = counts[site].astype(np.float64)
    values.append(np.mean(_h2((pos + zero) / (pos + neg + zero))))
  return float(np.mean(values))


def _numpy_dataset(per_batch, site):
  """Paper: q_c = #(z > 0)/#(z != 0) over the whole split, mean over channels."""
  pos, neg, _ = sum(c[site] for c in per_batch).astype(np.float64)
  n = pos + neg
  return float(np.mean(_h2(np.where(n > 0, pos / np.maximum(n, 1), 0.0))))


def _numpy_choice(entropies):
  names = list(entropies)
  values = np.array([entropies[s] for s in names])
  first_min = int(np.argmin(values))
  return tuple(s for i, s in enumerate(names) if i == first_min or values[i] == 0.0)


@pytest.fixture(scope="module")
def measured():
  spec = _tiny()
  variables = network.init(spec, jax.random.key(0))
  rng = np.random.default_rng(1)
  batches = [rng.standard_normal((7, 6, 6, 2), dtype=np.float32) for _ in range(3)]
  return spec, variables, batches


@pytest.mark.parametrize("estimator,train", [("easier", True), ("dataset", False)])
def test_entropies_and_selection_order_match_numpy(measured, estimator, train):
  spec, variables, batches = measured
  s, per_batch = _stats_and_counts(spec, variables, batches, train)
  live = ("r1", "after1", "after2", "r2")
  got = easier.measure(s, live, estimator)
  reference = _numpy_easier if estimator == "easier" else _numpy_dataset
  want = {site: reference(per_batch, site) for site in live}
  assert list(got) == list(live)
  np.testing.assert_allclose([got[k] for k in live], [want[k] for k in live], rtol=1e-5,
                             atol=1e-7)
  # The sites behind a ReLU are linear on the data: exactly 0 bits, both removed at once.
  assert got["after1"] == got["after2"] == 0.0 and 0.1 < got["r1"] < 1 and 0.1 < got["r2"] < 1
  assert easier.choose(got) == _numpy_choice(want) == ("after1", "after2")
  # Removed sites are not measured: without them the choice is the lower of r1, r2.
  rest = easier.measure(s, ("r1", "r2"), estimator)
  assert easier.choose(rest) == (min(("r1", "r2"), key=want.__getitem__),)


def test_choose_takes_the_argmin_and_every_zero_first_in_call_order():
  assert easier.choose({"a": 0.5, "b": 0.2, "c": 0.3}) == ("b",)
  assert easier.choose({"a": 0.3, "b": 0.3, "c": 0.9}) == ("a",)            # ties: argmin's rule
  assert easier.choose({"a": 0.0, "b": 0.2, "c": 0.0}) == ("a", "c")
  with pytest.raises(ValueError, match="every site is already removed"):
    easier.choose({})


def test_choose_refuses_non_finite_entropies_and_a_list_of_values():
  with pytest.raises(ValueError, match=r"entropies of sites \['b', 'c'\] are not finite "
                                       r"\(\[nan, inf\]\)"):
    easier.choose({"a": 0.3, "b": float("nan"), "c": float("inf")})
  with pytest.raises(ValueError, match=r"sites \['a'\] are not finite"):
    easier.choose({"a": jnp.float32(jnp.nan), "b": jnp.float32(0.2)})     # as measure returns
  with pytest.raises(TypeError, match=r"choose needs \{site: entropy\}.*got a list"):
    easier.choose([0.1, 0.2])


def test_one_string_for_a_list_of_sites_is_refused_with_the_fix(measured):
  spec, variables, batches = measured
  fix = r"got the string 'r1'; write \['r1'\]"
  with pytest.raises(TypeError, match=f"sites must be a collection of site paths, {fix}"):
    easier.remove(spec, variables, "r1")
  with pytest.raises(TypeError, match=f"sites must be a collection of site paths, {fix}"):
    easier.apply(network.gates_for(spec), "r1", spec=spec)
  s, _ = _stats_and_counts(spec, variables, batches[:1], True)
  with pytest.raises(TypeError, match=f"live_sites must be a collection of site paths, {fix}"):
    easier.measure(s, "r1")
  assert list(easier.measure(s, ["r1"])) == ["r1"]


def test_a_gate_array_for_a_list_of_sites_is_refused_with_the_fix(measured):
  spec, variables, batches = measured
  gates = easier.apply(network.gates_for(spec), ("r1",), spec=spec)
  fix = (r"sites must be a collection of site paths, got a float32 array of shape \(4,\); "
         r"for the sites a gate array turns off .*methods.removed_sites\(spec, gates\)")
  with pytest.raises(TypeError, match=fix):
    easier.remove(spec, variables, gates)
  with pytest.raises(TypeError, match=fix):
    easier.apply(gates, gates, spec=spec)
  s, _ = _stats_and_counts(spec, variables, batches[:1], True)
  with pytest.raises(TypeError, match="live_" + fix):
    easier.measure(s, gates)
  with pytest.raises(TypeError, match=r"got float entries; for the sites a gate array"):
    easier.remove(spec, variables, np.asarray(gates).tolist())
  shallow, _ = easier.remove(spec, variables, base.removed_sites(spec, gates))   # the fix
  assert shallow.sites() == ("after1", "after2", "r2")


def test_gates_and_baked_identities_compute_the_same_network(measured):
  spec, variables, batches = measured
  gates = easier.apply(network.gates_for(spec), ("r1", "r2"), spec=spec)
  np.testing.assert_array_equal(np.asarray(gates), [0, 1, 1, 0])
  assert base.removed_sites(spec, gates) == ("r1", "r2")
  assert base.live_sites(spec, gates) == ("after1", "after2")
  baked, baked_vars = easier.remove(spec, variables, ("r1", "r2"))   # (spec, variables) -> same
  assert baked.sites() == ("after1", "after2") and baked_vars is variables
  gated = network.forward(spec, variables, batches[0], gates=gates).logits
  plain = network.forward(baked, variables, batches[0]).logits
  np.testing.assert_allclose(np.asarray(gated), np.asarray(plain), rtol=1e-6, atol=1e-6)
  # The method object: its state is the gates, and export bakes them in.
  method = easier.Easier()
  state = method.init(spec)
  _, state = method.apply(spec, variables, state, base.Decision(("r1", "r2")))
  assert method.live_units(spec, state) == ("after1", "after2")
  assert method.units(spec) == spec.sites() and method.unit == "site"
  assert method.export(spec, variables, state)[0] == baked
  assert method.train_options(spec, state).stats_last_epoch


def test_bad_input_is_named(measured):
  spec, variables, batches = measured
  gates = network.gates_for(spec)
  with pytest.raises(KeyError, match=r"'relu9'.*not sites of the spec"):
    easier.apply(gates, ("relu9",), spec=spec)
  off = easier.apply(gates, ("r1",), spec=spec)
  with pytest.raises(KeyError, match=r"'r1'.*removed already"):
    easier.apply(off, ("r1",), spec=spec)
  with pytest.raises(KeyError, match="relu9"):
    easier.remove(spec, variables, ("relu9",))
  with pytest.raises(TypeError, match=r"easier.remove\(spec, variables, sites\)"):
    easier.apply(spec, ("r1",), spec=spec)
  with pytest.raises(TypeError, match="needs spec="):
    easier.apply(gates, ("r1",), spec=None)
  s, _ = _stats_and_counts(spec, variables, batches[:1], True)
  with pytest.raises(KeyError, match=r"unknown sites \['relu9'\]"):
    easier.measure(s, ("r1", "relu9"))
  with pytest.raises(ValueError, match="unknown EASIER estimator 'egp'"):
    easier.measure(s, ("r1",), "egp")
  with pytest.raises(ValueError, match="hold no batch"):
    easier.measure(stats.empty_stats(spec), ("r1",))
  with pytest.raises(ValueError, match="entropy_split"):
    easier.Easier(estimator="dataset", entropy_split="test")
  with pytest.raises(ValueError, match="shape"):
    base.live_sites(spec, jnp.ones(3))


def test_gates_of_the_live_sites_only_are_refused_with_the_right_count():
  # Gates hold one entry per site, a removed one included (at 0); a user who sizes them
  # to the live sites is told so, not "one per live site".
  from jaxdepth import zoo   # pylint: disable=import-outside-toplevel
  spec = zoo.digits_plain()
  gates = network.gates_for(spec, off=["relu2"])
  live = base.live_sites(spec, gates)
  assert len(live) == len(spec.sites()) - 1
  message = (r"shape \(5,\), one per site of 'digits_plain' in call order \(\['relu1', 'relu2', "
             r"'relu3', 'relu4', 'relu5'\]\), removed ones at 0, got \(4,\); build them with "
             r"jaxdepth.gates_for\(spec, off=\[...\]\)")
  with pytest.raises(ValueError, match=message):
    easier.apply(jnp.ones(len(live)), ["relu3"], spec=spec)
  with pytest.raises(ValueError, match=message):
    base.live_sites(spec, jnp.ones(len(live)))
  with pytest.raises(ValueError, match=message):
    network.forward(spec, network.init(spec, jax.random.key(0)), jnp.zeros((2, 8, 8, 1)),
                    gates=jnp.ones(len(live)))
  with pytest.raises(ValueError, match=message):
    network.gates_by_site(spec, jnp.ones(len(live)))


def test_an_easier_state_with_keys_of_another_method_is_refused():
  # EASIER reads only the gates: a state of another method (EGP's masks, TLC's channel
  # cuts) would be exported without them, silently; it is refused by its keys.
  from jaxdepth import zoo   # pylint: disable=import-outside-toplevel
  from jaxdepth.methods import TLC, Easier   # pylint: disable=import-outside-toplevel
  spec = zoo.digits_cnn()
  variables = network.init(spec, jax.random.key(0))
  state = TLC().init(spec)
  for call in (lambda: Easier().export(spec, variables, state),
               lambda: Easier().live_units(spec, state),
               lambda: Easier().train_options(spec, state),
               lambda: Easier().apply(spec, variables, state, base.Decision(("relu1",)))):
    with pytest.raises(ValueError, match=r"this easier state holds \['masks', 'stopped'\], which "
                                         r"Easier does not make .*make it with "
                                         r"Easier\(\)\.init\(spec\)"):
      call()
  with pytest.raises(TypeError, match=r"the easier state is a dict of arrays .* got an "
                                      r"object of type ArrayImpl"):
    Easier().live_units(spec, network.gates_for(spec))
  assert Easier().live_units(spec, Easier().init(spec)) == spec.sites()
