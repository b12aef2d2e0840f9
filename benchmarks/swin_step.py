"""Swin-T on this machine: one train step and one eval step, compiled once, timed.

The papers train torchvision's Swin-T on CIFAR-10 fed at 32x32 (8x8 tokens,
every 7x7 window zero-padded) with batch 128; ImageNet-style inputs are 224x224.
For each ``SIZE:BATCH`` setting this builds :func:`jaxdepth.zoo.swin_t`, makes
the library's own jitted steps (:func:`jaxdepth.training.make_train_step`:
forward, backward and an SGD-momentum update, stochastic depth on;
:func:`jaxdepth.training.make_eval_step`), compiles each once (the compile time
is reported), then times ``--rounds`` calls of each and reports the median and
the spread. The machine load (``os.getloadavg``) before and after is recorded:
on a shared CPU other processes inflate the figures.

Measured 2026-12-02 on the 2-core dev CPU shared with other jobs (load average
18-23 during the run, so these are upper bounds: the process got a fraction of
the cores), jax 0.12.0.1, float32, ``--rounds 3``, median seconds per step:

=========  =====  ==============  ==============  ======================
input      batch  train step      eval step       compile (train / eval)
=========  =====  ==============  ==============  ======================
32x32x3    128    39.1 s (3.3/s)  11.8 s (10.8/s)  180 s / 23 s
224x224x3  8      21.8 s (0.4/s)  3.6 s (2.2/s)    133 s / 26 s
=========  =====  ==============  ==============  ======================

Swin-T at 32x32 costs 0.518 GMACs per image as torchvision computes it (the
zero-padded 7x7 windows: 14x14 tokens in the first stage, 7x7 for the 1x1
last stage), 4.49 GMACs at 224.

Prints one JSON object. Run::

    python benchmarks/swin_step.py                       # 32:128 and 224:8
    python benchmarks/swin_step.py --settings 32:8 --rounds 2   # a quick look
    python benchmarks/swin_step.py --model digits_swin --settings 8:4 --rounds 1  # does it run
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from jaxdepth import costs, network, optim, training, zoo


def _timed(fn, rounds):
  times = []
  for _ in range(rounds):
    t = time.perf_counter()
    jax.block_until_ready(fn())
    times.append(time.perf_counter() - t)
  return times


def bench(size: int, batch: int, rounds: int, num_classes: int, mesh, model: str = "swin_t"
          ) -> dict:
  """Train-step and eval-step timings of ``model`` (Swin-T) at ``size x size`` and ``batch``."""
  spec = zoo.get(model, num_classes=num_classes, input_shape=(size, size, 3))
  variables = network.init(spec, jax.random.key(0))
  recipe = optim.Recipe(epochs=1, batch_size=batch, optimizer="sgd", lr=1e-3)
  tx = optim.make_optimizer(recipe, 1)
  rng = np.random.default_rng(0)
  data = {"image": jnp.asarray(rng.normal(size=(batch, size, size, 3)), jnp.float32),
          "label": jnp.asarray(rng.integers(0, num_classes, batch), jnp.int32),
          "mask": jnp.ones((batch,), bool)}
  data = training.shard_batch(data, mesh)
  train_step = training.make_train_step(spec, tx, mesh=mesh, donate=False)
  eval_step = training.make_eval_step(spec, mesh=mesh)
  state = training.replicate(training.TrainState.create(variables, tx, 0), mesh)

  # Every argument of the jitted steps, passed positionally (no gates, statistics, masks or
  # node gates): the compiled executables are called as they are, so nothing recompiles.
  train_args = (state, data, None, None, None, None)
  eval_args = (state.variables, data, None, None, None)

  t = time.perf_counter()
  train = train_step.jitted.lower(*train_args).compile()
  compile_train = time.perf_counter() - t
  t = time.perf_counter()
  evaluate = eval_step.jitted.lower(*eval_args).compile()
  compile_eval = time.perf_counter() - t
  jax.block_until_ready(train(*train_args))   # warm
  jax.block_until_ready(evaluate(*eval_args))
  train_t = _timed(lambda: train(*train_args), rounds)
  eval_t = _timed(lambda: evaluate(*eval_args), rounds)

  def figures(ts):
    return {"median_s": round(statistics.median(ts), 4), "min_s": round(min(ts), 4),
            "max_s": round(max(ts), 4), "images_per_s": round(batch / statistics.median(ts), 1)}

  return {"model": model, "input": [size, size, 3], "batch": batch, "rounds": rounds,
          "macs_per_image": costs.count_macs(spec), "params": costs.count_params(spec),
          "compile_s": {"train": round(compile_train, 2), "eval": round(compile_eval, 2)},
          "train_step": figures(train_t), "eval_step": figures(eval_t)}


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--settings", nargs="+", default=["32:128", "224:8"],
                      help="SIZE:BATCH pairs (default: the papers' CIFAR feeding and 224)")
  parser.add_argument("--rounds", type=int, default=5, help="timed calls per step")
  parser.add_argument("--num-classes", type=int, default=10)
  parser.add_argument("--model", default="swin_t",
                      help="a zoo model taking a SIZExSIZEx3 input (default swin_t; digits_swin "
                           "for a quick check that the script runs)")
  args = parser.parse_args(argv)
  settings = []
  for item in args.settings:
    try:
      size, batch = (int(v) for v in item.split(":"))
    except ValueError:
      parser.error(f"--settings takes SIZE:BATCH pairs such as 32:128, got {item!r}")
    if min(size, batch) <= 0:
      parser.error(f"--settings: SIZE and BATCH must be positive, got {item!r}")
    settings.append((size, batch))
  if args.rounds <= 0:
    parser.error("--rounds must be positive")
  if args.model not in zoo.names():
    parser.error(f"--model: unknown model {args.model!r}; known models: {', '.join(zoo.names())}")
  mesh = training.make_mesh(jax.devices()[:1])
  report = {"benchmark": "swin_step", "model": args.model, "jax": jax.__version__,
            "backend": jax.default_backend(), "machine": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(), "load_before": [round(x, 2) for x in os.getloadavg()],
            "results": []}
  for size, batch in settings:
    report["results"].append(bench(size, batch, args.rounds, args.num_classes, mesh, args.model))
  report["load_after"] = [round(x, 2) for x in os.getloadavg()]
  print(json.dumps(report, indent=1))


if __name__ == "__main__":
  main()
