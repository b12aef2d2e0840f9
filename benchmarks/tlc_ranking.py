"""How fast is TLC's ranking? The shared-prefix ranking beside a naive loop, in one run.

TLC ranks every live candidate by the loss gap of its edit (β ≤ 0 channels cut,
the site linearized) on one validation batch. Two ways, on the same network,
batch and keep-masks:

* ``naive``: one full forward per candidate, plus the unedited one
  (:func:`jaxdepth.methods.tlc.rank_naive`; one compiled function, edits as data);
* ``shared``: :func:`jaxdepth.methods.tlc.rank`: one compiled function for all
  candidates, the network run once up to the first candidate, each candidate
  forking off the shared activation where its edit starts.

Both are compiled first (the compile times are reported apart), then timed in
interleaved rounds (each round runs both, in alternating order) so that a
loaded machine hits them alike; figures are medians over rounds. The two must
give the same gaps (``max_gap_difference``, to 1e-5).

Weights are random with random BatchNorm biases and statistics (about half the
channels have β ≤ 0), so the edits are not trivial; timing does not depend on
the values.

Run::

    python benchmarks/tlc_ranking.py [--model resnet18] [--batch 128] [--rounds 5]

Prints one JSON object (also written to ``--out`` when given), with the machine's
load average before and after, since a shared machine slows everything. Wall
seconds are what a user waits; CPU seconds (``time.process_time``, every thread
of the process) are the work done, which other jobs on a loaded machine disturb
far less, so both ratios are given. ``macs``: the multiply-accumulates each way
takes, in forward passes of the whole network: every candidate still runs
everything after its site, so their ratio bounds what prefix sharing alone can
save (1.93 for CIFAR ResNet-18's 17 candidates). ``executed_macs``: the same
with the multiply-accumulates the CPU executor really does (a 3x3 conv on a 2x2
map multiplies the 4 taps that meet the map, not 9; 2.12).

Measured 2026-12-04 on the 2-core dev CPU shared with other jobs (load average 6
to 15 during the run), ResNet-18 CIFAR, batch 128, 17 candidates, medians of 5
interleaved rounds: wall 11.6 s shared vs 27.5 s naive, 2.36x; CPU 3.32 s vs
8.12 s, 2.44x; gaps equal to 9.5e-7. The ratio exceeds the executed-MAC bound
because the naive loop runs the stem (a 3-channel conv and element-wise passes
over 32x32 maps, the slowest part per MAC) 18 times, the shared ranking once.
The wall times on an idle machine were not measured.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from jaxdepth import costs, network, zoo
from jaxdepth import spec as S
from jaxdepth.methods import tlc, tlc_rank


def random_variables(spec, seed: int = 0):
  """Initial variables with random BatchNorm scales, biases and statistics."""
  v = network.init(spec, jax.random.key(seed))
  rng = np.random.default_rng(seed)
  params = traverse_util.flatten_dict(v["params"])
  for k, a in params.items():
    if k[-1] == "scale":
      params[k] = jnp.asarray(rng.uniform(0.5, 1.5, a.shape), jnp.float32)
    elif k[-1] == "bias" and len(k) > 1:
      params[k] = jnp.asarray(rng.normal(0.0, 0.5, a.shape), jnp.float32)
  stats = traverse_util.flatten_dict(v.get("batch_stats", {}))
  for k, a in stats.items():
    stats[k] = jnp.asarray(rng.normal(0.0, 0.2, a.shape) if k[-1] == "mean"
                           else rng.uniform(0.5, 2.0, a.shape), jnp.float32)
  return {"params": traverse_util.unflatten_dict(params),
          "batch_stats": traverse_util.unflatten_dict(stats)}


def executed_macs(spec) -> int:
  """MACs per example as the CPU executor computes them.

  A convolution on a map with fewer positions than kernel taps (CIFAR
  ResNet-18's 3x3 convs on 2x2 maps) is one matrix product over the flattened
  map with only the taps that meet it: ``P·Q·C_in·C_out`` for ``P`` input and
  ``Q`` output positions instead of ``Q·taps·C_in·C_out``.
  """
  total = costs.count_macs(spec)
  shapes = spec.shapes()
  for path, n in spec.walk():
    if isinstance(n, S.Conv) and n.groups == 1:
      (h, w, c_in), (oh, ow, c_out) = shapes[path]
      taps = math.prod(n.kernel)
      if h * w < taps:
        total += (h * w - taps) * oh * ow * c_in * c_out
  return total


def macs_bound(spec, cands, count=costs.count_macs) -> dict:
  """MACs of both ways: the naive loop's (1 + K forwards) and the shared ranking's."""
  plan = tlc_rank._plan(spec, tuple(cands))   # pylint: disable=protected-access
  per_element = [count(sub) for sub in plan.elements]
  total = sum(per_element)
  shared = total
  for j in plan.joins:
    after = sum(per_element[j.element + 1:])
    if j.kind == "fork":
      shared += sum(per_element[j.element:])
    elif j.kind == "branch":
      shared += after + count(j.rest) + (count(j.post) if j.post else 0)
    else:
      shared += after
  naive = total * (1 + len(cands))
  return {"naive_forwards": 1 + len(cands), "shared_forwards": round(shared / total, 3),
          "speedup_bound": round(naive / shared, 3)}


def finite(x):
  """``x`` as a float, or None where it is not finite (JSON has no NaN)."""
  x = float(x)
  return x if math.isfinite(x) else None


def main(argv=None) -> dict:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--model", default="resnet18")
  p.add_argument("--batch", type=int, default=128)
  p.add_argument("--rounds", type=int, default=5)
  p.add_argument("--out", help="also write the JSON here")
  args = p.parse_args(argv)
  if min(args.batch, args.rounds) <= 0:
    p.error("--batch and --rounds must be positive")
  if args.model not in zoo.names():
    p.error(f"--model: unknown model {args.model!r}; known models: {', '.join(zoo.names())}")

  load_before = os.getloadavg()
  spec = zoo.get(args.model)
  variables = random_variables(spec)
  cands = tlc.candidates(spec)
  rng = np.random.default_rng(1)
  x = jnp.asarray(rng.normal(size=(args.batch, *spec.input_shape)), jnp.float32)
  labels = jnp.asarray(rng.integers(0, spec.output_shape[-1], args.batch), jnp.int32)
  masks = tlc.keep_masks(tlc.candidate_betas(spec, variables, cands, x))

  def shared():
    return tlc.rank(spec, variables, cands, x, labels, masks)

  def naive():
    return tlc.rank_naive(spec, variables, cands, x, labels, masks)

  compile_s = {}
  results = {}
  for name, fn in (("shared", shared), ("naive", naive)):
    tic = time.perf_counter()
    results[name] = fn()
    compile_s[name] = round(time.perf_counter() - tic, 3)
  times = {"shared": [], "naive": []}
  cpu = {"shared": [], "naive": []}
  for r in range(args.rounds):
    for name in (("shared", "naive") if r % 2 == 0 else ("naive", "shared")):
      fn = shared if name == "shared" else naive
      tic, cpu_tic = time.perf_counter(), time.process_time()
      fn()
      times[name].append(time.perf_counter() - tic)
      cpu[name].append(time.process_time() - cpu_tic)
  (base_s, gaps_s), (base_n, gaps_n) = results["shared"], results["naive"]
  diffs = [abs(gaps_s[k] - gaps_n[k]) for k in gaps_s]
  diff = math.nan if any(math.isnan(d) for d in diffs) else max(diffs)   # max() skips a NaN
  median = {k: statistics.median(v) for k, v in times.items()}
  cpu_median = {k: statistics.median(v) for k, v in cpu.items()}
  out = {
      "model": spec.name, "batch": args.batch, "candidates": len(cands),
      "macs_per_example": costs.count_macs(spec),
      "seconds": {k: round(v, 4) for k, v in median.items()},
      "seconds_all": {k: [round(t, 4) for t in v] for k, v in times.items()},
      "first_call_seconds": compile_s,
      "speedup_vs_naive": round(median["naive"] / median["shared"], 3),
      "cpu_seconds": {k: round(v, 4) for k, v in cpu_median.items()},
      "cpu_seconds_all": {k: [round(t, 4) for t in v] for k, v in cpu.items()},
      "cpu_speedup_vs_naive": round(cpu_median["naive"] / cpu_median["shared"], 3),
      "macs": macs_bound(spec, cands),
      "executed_macs": macs_bound(spec, cands, executed_macs),
      "max_gap_difference": finite(diff), "base_loss_difference": finite(abs(base_s - base_n)),
      "equal_to_1e-5": bool(diff <= 1e-5),
      "gaps": {k: finite(round(v, 6)) for k, v in gaps_s.items()},
      "machine": {"cpus": os.cpu_count(), "backend": jax.default_backend(),
                  "jax": jax.__version__, "load_average_before": [round(a, 2) for a in load_before],
                  "load_average_after": [round(a, 2) for a in os.getloadavg()]},
  }
  text = json.dumps(out, indent=1, allow_nan=False)
  print(text)
  if args.out:
    with open(args.out, "w", encoding="utf-8") as f:
      f.write(text + "\n")
  return out


if __name__ == "__main__":
  main()
