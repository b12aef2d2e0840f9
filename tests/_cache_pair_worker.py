"""One process of the cache-pair test (started by tests/test_multiprocess.py).

Joins a two-process launch the way ``--multihost`` does from the environment
(``JAX_COORDINATOR_ADDRESS``, ``JAX_NUM_PROCESSES``, ``JAX_PROCESS_ID``), with its own
persistent compilation cache (``JAX_COMPILATION_CACHE_DIR``), runs two SGD steps of
``digits_plain`` over a global batch that each process holds half of, and prints the
loss of each step and the parameters' sum as JSON.
"""
import json

import jax
import numpy as np

from jaxdepth.train import command

command.maybe_initialize_distributed(False)

from jaxdepth import network, optim, training, zoo  # noqa: E402  (after the launch is joined)

spec = zoo.digits_plain(width=8)
mesh = training.make_mesh()
tx = optim.make_optimizer(optim.Recipe(optimizer="sgd", lr=0.05), steps_per_epoch=1)
state = training.replicate(training.TrainState.create(network.init(spec, jax.random.key(0)), tx, 0),
                           mesh)
step = training.make_train_step(spec, tx, mesh=mesh)
rng = np.random.default_rng(jax.process_index())
batch = training.shard_batch({"image": rng.standard_normal((16, 8, 8, 1), np.float32),
                              "label": rng.integers(0, 10, 16).astype(np.int32),
                              "mask": np.ones(16, bool)}, mesh)
losses = []
for _ in range(2):
  state, metrics, _ = step(state, batch, None, None)
  losses.append(training.mean_metrics(metrics)["loss"])
print(json.dumps({"losses": losses,   # the parameters are replicated: this process's copy
                  "params_sum": float(sum(np.sum(np.asarray(x.addressable_data(0), np.float64))
                                          for x in jax.tree.leaves(state.params)))}))
