"""Does surgery make inference faster? Eval latency of collapsed networks, side by side.

For ResNet-18 (CIFAR), MobileNetV2 (CIFAR) and Swin-T (CIFAR feeding, 32x32)
from :mod:`jaxdepth.zoo`, the same
fixed set of sites is linearized (about half of them) and these forms are timed:

* ``dense``: the original network;
* ``identity``: the same spec with those sites baked to the identity, which is
  what the papers time and count ("layers removed");
* ``merged_exact``: :func:`jaxdepth.surgery.collapse` with ``mode="exact"``
  (only transformations equal everywhere: BatchNorm folding, no-op removal,
  exact merges and residual folds);
* ``merged_interior``: ``mode="interior"`` (also merges exact only away from the
  border; the border deviation is reported under ``equivalence``, and
  ``interior_max_rel`` is ``null`` when nothing is left inside the border, as in
  ResNet-18's ``layer4`` on its 2x2 map);
* ``dense_folded``: the dense network with its BatchNorms folded (``collapse``
  with no site removed), to show how much of the gain is folding alone.

The sites:

* ResNet-18: every ``relu1`` (the rectifier inside each BasicBlock's branch),
  8 of 17; the stem ReLU and every ``relu2`` (after the addition) stay.
* MobileNetV2: both ReLU6 of every inverted residual with an identity shortcut
  (blocks 3, 5, 6, 8, 9, 10, 12, 13, 15, 16), 20 of 35.
* Swin-T: every GELU (12 of 12), so every MLP ``fc2 ∘ fc1`` (C -> 4C -> C)
  becomes one C -> C Dense (exact) and every attention stays.

Timing: one jitted eval forward per form, all compiled first, then timed in
interleaved rounds (each round runs every form once, in a rotating order) so
that a noisy machine hits all forms alike; the figures are medians over rounds.
Weights are random (timing does not depend on them); BatchNorm statistics are
random too, so that the equivalence figures are meaningful.

Prints one JSON object. ``merged_vs_identity`` and ``merged_vs_dense`` are
latency ratios (below 1: the merged form is faster). On a CPU, glibc's
allocator can dominate timings (it may return large blocks to the OS and fault
them in again at every step); the output records
``GLIBC_TUNABLES``, and ``--allocators`` re-runs the benchmark in two child
processes, without and with the large-threshold setting, and prints both.

Run::

    python benchmarks/surgery_latency.py [--batches 1 128] [--rounds 30 7] [--allocators]
                                         [--models resnet18 mobilenet_v2 swin_t]

What surgery makes of these sites (default ``cost="macs"``; the ``forms``
entry of the output counts merges, residual folds and BatchNorm folds per form):

* MobileNetV2, ``merged_exact``: each linearized inverted residual (expand 1x1,
  depthwise 3x3, project 1x1) becomes one 3x3 conv, exactly (with the border
  correction).
* ResNet-18, ``merged_exact``: only BatchNorm folding and no-op removal (with
  ``relu1`` gone, the two 3x3 convs of a block meet the zero padding);
  ``merged_interior``: one merge, in ``layer4/1`` on its 2x2 map, where the
  merged kernel's outer taps read only padding and it is cropped back to one
  3x3 conv, then folded with the block's identity shortcut (the ring is the
  whole map: logits change). In every other block the merge would cost more
  multiply-adds than the two 3x3 convs and is not made.
* Swin-T: every MLP becomes one Dense, exactly; the attention stays.

The measured ratios, with the machine and the load they were measured under,
are in docs/benchmarks.md (``surgery_latency.py``); an earlier run
with ``--allocators`` found the two allocator settings equal within noise.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from jaxdepth import costs, equivalence, network, surgery, zoo
from jaxdepth.spec import with_identity

TUNABLES = "glibc.malloc.mmap_threshold=4294967296:glibc.malloc.trim_threshold=17179869184"


def resnet18_sites(spec):
  """Every ``relu1`` of ResNet-18 (8 of 17 sites)."""
  return [s for s in spec.sites() if s.endswith("/relu1")]


def mobilenet_v2_sites(spec):
  """Both ReLU6 of every identity-shortcut inverted residual (20 of 35 sites)."""
  blocks = [p for p, n in spec.walk() if n.kind == "block"]
  return [s for s in spec.sites() if any(s.startswith(b + "/") for b in blocks)]


def swin_t_sites(spec):
  """Every GELU of Swin-T (12 of 12): each MLP becomes one Dense."""
  return list(spec.sites())


MODELS = {"resnet18": resnet18_sites, "mobilenet_v2": mobilenet_v2_sites, "swin_t": swin_t_sites}


def finite(x):
  """``x``, or None where it is not a finite number (JSON has no NaN: an empty interior gives one)."""
  return x if x is None or math.isfinite(x) else None


def random_variables(spec, seed=0):
  """Initial weights with random BatchNorm scale, shift and running statistics."""
  variables = network.init(spec, jax.random.key(seed))
  rng = np.random.default_rng(seed)

  def leaf(path, x):
    name = path[-1].key
    if name == "var":
      return jnp.asarray(rng.uniform(0.5, 2.0, x.shape), x.dtype)
    if name == "mean":
      return jnp.asarray(rng.normal(0.0, 0.2, x.shape), x.dtype)
    if name == "scale":
      return jnp.asarray(rng.uniform(0.5, 1.5, x.shape), x.dtype)
    if name == "bias" and path[0].key == "params":
      return jnp.asarray(rng.normal(0.0, 0.2, x.shape), x.dtype)
    return x
  return jax.tree_util.tree_map_with_path(leaf, variables)


def forms(name):
  """``{form: (spec, variables)}``, the site list and facts about each form."""
  spec = zoo.get(name)
  variables = random_variables(spec)
  sites = MODELS[name](spec)
  ident = with_identity(spec, sites)
  out = {"dense": (spec, variables), "identity": (ident, variables)}
  facts = {}
  x = jax.random.normal(jax.random.key(1), (8, *spec.input_shape))
  for form, base, mode in (("merged_exact", ident, "exact"),
                           ("merged_interior", ident, "interior"),
                           ("dense_folded", spec, "exact")):
    log = []
    t = time.perf_counter()
    out[form] = surgery.collapse(base, variables, mode=mode, log=log)
    seconds = time.perf_counter() - t
    border = equivalence.border_width(out[form][0], log)
    rep = equivalence.compare(base, variables, *out[form], x, border=border)
    facts[form] = {
        "surgery_s": round(seconds, 2),
        "merges": sum(e.kind == "merge" for e in log),
        "residual_folds": sum(e.kind == "fold_residual" for e in log),
        "bn_folds": sum(e.kind == "fold_bn" for e in log),
        "equivalence": {"vs": "identity" if base is ident else "dense",
                        "logits_max_abs": finite(rep.max_abs),
                        "logits_max_rel": finite(rep.max_rel),
                        "top1_agreement": finite(rep.top1_agreement), "border": rep.border,
                        "feature_shape": rep.feature_shape,
                        "feature_max_rel": finite(rep.feature_max_rel),
                        "interior_max_rel": finite(rep.interior_max_rel)}}
  for form, (s, _) in out.items():
    facts.setdefault(form, {}).update(
        macs=costs.count_macs(s), params=costs.count_params(s), **costs.depth(s)._asdict(),
        layers_removed=surgery.layers_removed(s) if form == "identity" else None)
  return out, sites, facts


def time_forms(models, batch, rounds, device):
  """Median seconds per call of every form, interleaved over ``rounds``."""
  fns, args = {}, {}
  for form, (spec, variables) in models.items():
    fn = jax.jit(lambda v, x, spec=spec: network.Network(spec).apply(v, x))
    x = jax.device_put(jax.random.normal(jax.random.key(2), (batch, *spec.input_shape)), device)
    v = jax.device_put(variables, device)
    fn(v, x).block_until_ready()      # compile
    fn(v, x).block_until_ready()      # warm
    fns[form], args[form] = fn, (v, x)
  names = list(fns)
  times = {f: [] for f in names}
  for r in range(rounds):
    for f in names[r % len(names):] + names[:r % len(names)]:
      t = time.perf_counter()
      fns[f](*args[f]).block_until_ready()
      times[f].append(time.perf_counter() - t)
  return {f: statistics.median(ts) for f, ts in times.items()}


def run(batches, rounds, models=tuple(MODELS)):
  devices = [jax.devices("cpu")[0]]
  try:
    devices += [jax.devices("gpu")[0]]
  except RuntimeError:
    pass
  report = {"benchmark": "surgery_latency", "jax": jax.__version__,
            "machine": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(),
            "GLIBC_TUNABLES": os.environ.get("GLIBC_TUNABLES"), "models": {}}
  for name in models:
    built, sites, facts = forms(name)
    entry = {"sites": sites, "forms": facts, "latency_s": {}, "ratios": {}}
    for device in devices:
      for batch, n in zip(batches, rounds):
        key = f"{device.platform}_batch{batch}"
        med = time_forms(built, batch, n, device)
        entry["latency_s"][key] = {f: round(t, 6) for f, t in med.items()}
        entry["ratios"][key] = {
            "merged_vs_identity": round(med["merged_exact"] / med["identity"], 3),
            "merged_vs_dense": round(med["merged_exact"] / med["dense"], 3),
            "merged_interior_vs_identity": round(med["merged_interior"] / med["identity"], 3),
            "merged_interior_vs_dense": round(med["merged_interior"] / med["dense"], 3),
            "identity_vs_dense": round(med["identity"] / med["dense"], 3),
            "dense_folded_vs_dense": round(med["dense_folded"] / med["dense"], 3)}
    report["models"][name] = entry
  return report


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--batches", type=int, nargs="+", default=[1, 128])
  parser.add_argument("--rounds", type=int, nargs="+", default=[30, 7],
                      help="timed rounds per batch size (one number per --batches entry)")
  parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
  parser.add_argument("--allocators", action="store_true",
                      help="run twice in child processes: default malloc, then GLIBC_TUNABLES")
  args = parser.parse_args(argv)
  if len(args.rounds) != len(args.batches):
    parser.error("give one --rounds entry per --batches entry")
  if min(args.batches + args.rounds) <= 0:
    parser.error("every --batches and --rounds entry must be positive")
  if args.allocators:
    results = []
    for tunables in (None, TUNABLES):
      env = dict(os.environ)
      env.pop("GLIBC_TUNABLES", None)
      if tunables:
        env["GLIBC_TUNABLES"] = tunables
      cmd = [sys.executable, __file__, "--batches", *map(str, args.batches),
             "--rounds", *map(str, args.rounds), "--models", *args.models]
      proc = subprocess.run(cmd, env=env, check=False, capture_output=True, text=True)
      if proc.returncode != 0:
        sys.exit(f"surgery_latency.py: the run with GLIBC_TUNABLES={tunables or '(unset)'} "
                 f"failed (exit code {proc.returncode}); its error output ends with:\n"
                 f"{proc.stderr[-2000:]}")
      results.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    print(json.dumps({"runs": results}, allow_nan=False))
    return
  print(json.dumps(run(args.batches, args.rounds, args.models), allow_nan=False))


if __name__ == "__main__":
  main()
