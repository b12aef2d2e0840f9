"""How long the input pipeline takes to serve an epoch, against the train step it feeds.

Serves epochs of the offline digits (1,294 training images, batch 64, shuffled and augmented
with shifts: what ``python -m jaxdepth easier`` reads) and times them, then one jitted
``digits_plain`` train step on the same batch size, so that the ratio says what share of an
epoch's time the pipeline would take if it did not overlap training. Prints one JSON line::

    {"epoch_s": ..., "batches": 20, "batch_ms": ..., "train_step_ms": ..., "batch_per_step": ...}

Medians of ``--repeats`` epochs (after one untimed) and of as many steps. Run::

    python benchmarks/data_pipeline.py [--batch 64] [--repeats 7]
"""
from __future__ import annotations

import argparse
import json
import statistics
import time

import jax
import optax

from jaxdepth import data, network, training, zoo


def epoch_seconds(split, batch: int, epoch: int) -> tuple[float, int]:
  """Wall seconds to serve (materialise) every batch of one shuffled, augmented epoch."""
  start = time.perf_counter()
  batches = list(split.batches(batch, seed=0, epoch=epoch, shuffle=True, augment=True,
                               drop_remainder=True))
  return time.perf_counter() - start, len(batches)


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--batch", type=int, default=64)
  parser.add_argument("--repeats", type=int, default=7)
  args = parser.parse_args(argv)
  if args.repeats <= 0:
    parser.error("--repeats must be positive")
  if args.batch <= 0:
    parser.error("--batch must be positive")
  ds = data.load("digits")
  if args.batch > len(ds.train):
    parser.error(f"--batch {args.batch} is larger than the digits training split "
                 f"({len(ds.train)} examples); give at most {len(ds.train)}")
  epoch_seconds(ds.train, args.batch, 0)                       # warm up
  epochs = [epoch_seconds(ds.train, args.batch, e + 1) for e in range(args.repeats)]
  seconds = statistics.median(s for s, _ in epochs)
  batches = epochs[0][1]

  spec = zoo.digits_plain()
  tx = optax.sgd(0.05, momentum=0.9)
  mesh = training.make_mesh()
  step = training.make_train_step(spec, tx, mesh=mesh)
  state = training.replicate(
      training.TrainState.create(network.init(spec, jax.random.key(0)), tx, rng=0), mesh)
  batch = next(ds.train.batches(args.batch, seed=0, epoch=0, drop_remainder=True))
  state, metrics, _ = step(state, batch, None, None)            # compile
  jax.block_until_ready(metrics)
  steps = []
  for _ in range(args.repeats):
    start = time.perf_counter()
    state, metrics, _ = step(state, batch, None, None)
    jax.block_until_ready(metrics)
    steps.append(time.perf_counter() - start)
  step_s = statistics.median(steps)
  print(json.dumps({"epoch_s": round(seconds, 4), "batches": batches,
                    "batch_ms": round(1e3 * seconds / batches, 3),
                    "train_step_ms": round(1e3 * step_s, 3),
                    "batch_per_step": round(seconds / batches / step_s, 3)}))


if __name__ == "__main__":
  main()
