"""One process of a multi-process run (started by tests/test_multiprocess.py).

Environment: ``MP_COORDINATOR`` (host:port), ``MP_NUM_PROCESSES``, ``MP_PROCESS_ID``
(no coordinator: a plain one-process run), ``MP_WORKDIR``, ``MP_OUT`` (an .npz
path for this process's results).
"""
import json
import os
import sys

import jax

if os.environ.get("MP_COORDINATOR"):
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  jax.distributed.initialize(coordinator_address=os.environ["MP_COORDINATOR"],
                             num_processes=int(os.environ["MP_NUM_PROCESSES"]),
                             process_id=int(os.environ["MP_PROCESS_ID"]))

import numpy as np  # noqa: E402

from jaxdepth import data, driver, network, optim, report, training, zoo  # noqa: E402
from jaxdepth.methods import Easier  # noqa: E402

writes = []
_write = report.write


def _counting_write(directory, rep):
  writes.append(str(directory))
  return _write(directory, rep)


driver.report_lib.write = _counting_write

spec = zoo.digits_cnn(width=8)
ds = data.load("digits")
recipe = optim.Recipe(epochs=1, batch_size=64, optimizer="adam", lr=3e-3)
workdir = os.environ["MP_WORKDIR"]
fitted = training.fit(spec, network.init(spec, jax.random.key(0)), ds, recipe, seed=1,
                      progress=False, workdir=os.path.join(workdir, "fit"))
# Resume from the checkpoint both processes wrote: a finished run restores and trains nothing.
again = training.fit(spec, network.init(spec, jax.random.key(0)), ds, recipe, seed=1,
                     progress=False, workdir=os.path.join(workdir, "fit"))
result = driver.run(Easier(), spec, ds, recipe, os.path.join(workdir, "easier"), iterations=1,
                    seed=0, progress=False, eval_batch_size=256)


def local(tree):
  return [np.asarray(x.addressable_data(0)) if isinstance(x, jax.Array) else np.asarray(x)
          for x in jax.tree.leaves(tree)]


arrays = {f"fit_{i}": a for i, a in enumerate(local(fitted.variables))}
arrays.update({f"again_{i}": a for i, a in enumerate(local(again.variables))})
arrays.update({f"chosen_{i}": a for i, a in enumerate(local(result.chosen_variables))})
np.savez(os.environ["MP_OUT"], **arrays)
print(json.dumps({"process": jax.process_index(), "processes": jax.process_count(),
                  "devices": jax.device_count(), "report_writes": len(writes),
                  "removed": result.report["iterations"][0]["removed_now"],
                  "fit_history": fitted.history[-1]["train_loss"]}))
sys.stdout.flush()
