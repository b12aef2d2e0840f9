"""Checkpoints: round trips with optax state and extra pytrees, spec refusal, NaN refusal, models."""
import logging
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxdepth import checkpoint, network, optim, stats, training
from jaxdepth import spec as S


def _spec(features=6, name="small"):
  return S.Spec((6, 6, 2), (
      S.Conv("conv", features=features, kernel=3, padding=1), S.BatchNorm("bn"), S.Act("relu"),
      S.Sequential("head", layers=(S.Pool("pool", "global_avg"), S.Dense("fc", features=3)))),
      name=name)


def _state(spec, seed=0):
  tx = optim.make_optimizer(optim.Recipe(optimizer="sgd", momentum=0.9, weight_decay=1e-4,
                                         milestones=(2,)), 5)
  state = training.TrainState.create(network.init(spec, jax.random.key(seed)), tx, seed)
  # A state that differs from a fresh one everywhere that matters.
  return state.replace(step=jnp.asarray(7, jnp.int32),
                       opt_state=jax.tree.map(lambda x: x + 1, state.opt_state))


def test_state_extra_and_meta_round_trip(tmp_path):
  spec = _spec()
  state = _state(spec)
  extra = {"stats": stats.empty_stats(spec)._replace(batches=jnp.asarray(3, jnp.int32)),
           "masks": {"conv": jnp.arange(6.0)}}
  with checkpoint.Checkpointer(tmp_path, spec) as ckpt:
    ckpt.save(7, state, extra=extra, meta={"iteration": 2, "removed": ["relu"]})
  with checkpoint.Checkpointer(tmp_path, spec) as ckpt:
    assert ckpt.latest_step() == 7
    template = _state(spec, seed=1)
    out = ckpt.restore(template, extra=jax.tree.map(jnp.zeros_like, extra))
  assert out.step == 7 and out.meta == {"iteration": 2, "removed": ["relu"]}
  assert jax.tree.structure(out.state) == jax.tree.structure(state)   # optax NamedTuples intact
  for a, b in zip(jax.tree.leaves((state, extra)), jax.tree.leaves((out.state, out.extra))):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  assert isinstance(out.extra["stats"], stats.SiteStats)


def test_meta_is_saved_as_it_was_though_the_caller_changes_it_meanwhile(tmp_path, monkeypatch):
  # orbax writes the JSON in the background while fit goes on appending to the history it
  # saved: under load a checkpoint taken mid-epoch held that epoch's record (a resume from it
  # then counted the epoch twice). The background write is slowed down here to show it.
  from orbax.checkpoint._src.handlers import json_checkpoint_handler as handler   # pylint: disable=import-outside-toplevel
  dumps = handler.json.dumps

  def slow_dumps(*args, **kwargs):
    time.sleep(0.3)
    return dumps(*args, **kwargs)

  monkeypatch.setattr(handler.json, "dumps", slow_dumps)
  spec = _spec()
  history = [{"epoch": 1}]
  with checkpoint.Checkpointer(tmp_path, spec) as ckpt:
    ckpt.save(7, _state(spec), meta={"history": history})
    history.append({"epoch": 2})
    history[0]["epoch"] = 99
  monkeypatch.undo()
  with checkpoint.Checkpointer(tmp_path, spec) as ckpt:
    assert ckpt.meta(7) == {"history": [{"epoch": 1}]}


def test_keeps_only_the_latest_checkpoints(tmp_path):
  spec = _spec()
  with checkpoint.Checkpointer(tmp_path, spec, keep=2) as ckpt:
    for step in (1, 2, 3):
      ckpt.save(step, _state(spec))
    ckpt.wait()
    assert ckpt.all_steps() == [2, 3]


@pytest.mark.parametrize("other,pattern", [
    (_spec(features=8), r"node 'conv' differs: features=6 in the checkpoint, 8 expected.*"
                        r"\(6, 6, 6\) in the checkpoint, \(6, 6, 8\) expected"),
    (S.replace_node(_spec(), "head/fc", (S.Dense("fc", features=3), S.Act("relu2"))),
     r"node 'head/relu2' \(act, output shape \(3,\)\) is expected but the checkpoint has no"),
    (S.replace_node(_spec(), "relu", None), r"node 'relu' \(act.*\) is in the checkpoint but not"),
    (S.Spec((8, 8, 2), _spec().layers), r"input_shape is \(6, 6, 2\) in the checkpoint but "
                                        r"\(8, 8, 2\) is expected"),
])
def test_restore_refuses_another_architecture_naming_the_difference(tmp_path, other, pattern):
  spec = _spec()
  with checkpoint.Checkpointer(tmp_path, spec) as ckpt:
    ckpt.save(1, _state(spec))
  with checkpoint.Checkpointer(tmp_path, other) as ckpt:
    with pytest.raises(checkpoint.SpecMismatchError, match=pattern):
      ckpt.restore(_state(other))


def test_restore_refuses_a_template_of_another_width_or_structure_naming_the_path(tmp_path):
  spec = _spec()
  with checkpoint.Checkpointer(tmp_path, spec) as ckpt:
    ckpt.save(1, _state(spec), extra={"masks": {"relu": jnp.ones(6)}})
  with checkpoint.Checkpointer(tmp_path, spec) as ckpt:
    # A template of another width: same paths, other shapes (orbax: "strict=False").
    with pytest.raises(checkpoint.SpecMismatchError,
                       match=r"holds a train state whose tree structure or shapes differ from the "
                             r"template passed as state= to restore: 'params/bn/bias' is saved "
                             r"with shape \(6,\) but the template has \(8,\)\. Pass a template "
                             r"made for spec 'small'"):
      ckpt.restore(_state(_spec(features=8)))
    # A template of another structure (a node less).
    other = S.replace_node(spec, "bn", None)
    with pytest.raises(checkpoint.SpecMismatchError,
                       match=r"'batch_stats/bn/mean' \(shape \(6,\)\) is in the checkpoint but "
                             r"not in the template"):
      ckpt.restore(_state(other))
    # And an extra pytree of another structure.
    with pytest.raises(checkpoint.SpecMismatchError,
                       match=r"holds an extra pytree whose .*'masks/conv' \(shape \(6,\)\) is in "
                             r"the template but not in the checkpoint"):
      ckpt.restore(_state(spec), extra={"masks": {"conv": jnp.zeros(6)}})


def test_restoring_with_the_right_template_logs_no_warning(tmp_path, caplog):
  """The template check reads each item's metadata without orbax warning that the item
  folder has no step metadata (a line on every resume of every command)."""
  spec = _spec()
  with checkpoint.Checkpointer(tmp_path, spec) as ckpt:
    ckpt.save(1, _state(spec), extra={"masks": {"relu": jnp.ones(6)}})
  with caplog.at_level(logging.WARNING), checkpoint.Checkpointer(tmp_path, spec) as ckpt:
    restored = ckpt.restore(_state(spec), extra={"masks": {"relu": jnp.zeros(6)}})
  assert np.array_equal(restored.extra["masks"]["relu"], np.ones(6))
  assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == []


def test_spec_difference_ignores_the_label_and_sees_order():
  assert checkpoint.spec_difference(_spec(name="a"), _spec(name="b")) is None
  a = S.Spec((4,), (S.Dense("x", features=4), S.Dense("y", features=4)))
  b = S.Spec((4,), (S.Dense("y", features=4), S.Dense("x", features=4)))
  assert "another order" in checkpoint.spec_difference(a, b)


def test_refuses_to_save_a_nan_state(tmp_path):
  spec = _spec()
  good = _state(spec)
  bad = good.replace(params=jax.tree.map(lambda x: x.at[(0,) * x.ndim].set(jnp.nan),
                                         good.params))
  with checkpoint.Checkpointer(tmp_path, spec) as ckpt:
    ckpt.save(1, good)
    with pytest.raises(checkpoint.NonFiniteStateError, match="latest good checkpoint is 1"):
      ckpt.save(2, bad)
    ckpt.wait()
    assert ckpt.all_steps() == [1]


def test_saved_model_reloads_with_one_call(tmp_path):
  spec = _spec()
  variables = network.init(spec, jax.random.key(3))
  variables["batch_stats"] = jax.tree.map(lambda x: x + 0.5, variables["batch_stats"])
  checkpoint.save_model(tmp_path / "model", spec, variables)
  with pytest.raises(FileExistsError, match="overwrite=True"):
    checkpoint.save_model(tmp_path / "model", spec, variables)
  loaded_spec, loaded = checkpoint.load_model(tmp_path / "model")
  assert loaded_spec == spec
  x = np.random.default_rng(0).normal(size=(4, 6, 6, 2)).astype(np.float32)
  np.testing.assert_array_equal(network.forward(spec, variables, x).logits,
                                network.forward(loaded_spec, loaded, x).logits)
  with pytest.raises(FileNotFoundError, match=r"spec.json is missing\)$"):
    checkpoint.load_model(tmp_path / "nothing")
  # A run's directory: the error names the saved models inside it.
  with pytest.raises(FileNotFoundError, match="its subdirectory model/ holds one: load that"):
    checkpoint.load_model(tmp_path)
  checkpoint.save_model(tmp_path / "chosen", spec, variables)
  with pytest.raises(FileNotFoundError, match="its subdirectories chosen/, model/ hold one each"):
    checkpoint.load_model(tmp_path)


def test_restore_without_checkpoint_says_so(tmp_path):
  spec = _spec()
  with checkpoint.Checkpointer(tmp_path, spec) as ckpt:
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
      ckpt.restore(_state(spec))


def test_a_typed_key_and_an_optax_adam_state_survive(tmp_path):
  spec = _spec()
  tx = optax.adam(1e-3)
  state = training.TrainState.create(network.init(spec, jax.random.key(0)), tx,
                                     jax.random.key(42))
  np.testing.assert_array_equal(state.rng, jax.random.key_data(jax.random.key(42)))
  with checkpoint.Checkpointer(tmp_path, spec) as ckpt:
    ckpt.save(0, state)
    out = ckpt.restore(training.TrainState.create(network.init(spec, jax.random.key(1)), tx, 0))
  np.testing.assert_array_equal(out.state.rng, state.rng)
  assert isinstance(out.state.opt_state[0], optax.ScaleByAdamState)


def test_a_sigterm_passed_to_sigints_handler_is_held_over_a_save_even_with_sigint_ignored():
  """A background job's SIGINT is ignored; the command line passes SIGTERM to SIGINT's
  handler, which raised at once mid-save (orbax's threads then failed at exit)."""
  import signal  # pylint: disable=import-outside-toplevel
  previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
  try:
    with pytest.raises(KeyboardInterrupt):
      with checkpoint._ctrl_c_held():  # pylint: disable=protected-access
        handler = signal.getsignal(signal.SIGINT)
        handler(signal.SIGTERM, None)        # held: nothing raised inside the block
        reached = True
    assert reached and signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    with checkpoint._ctrl_c_held():  # pylint: disable=protected-access
      signal.getsignal(signal.SIGINT)(signal.SIGINT, None)   # an ignored SIGINT stays ignored
  finally:
    signal.signal(signal.SIGINT, previous)
