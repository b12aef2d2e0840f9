"""Dense vs merged BERT-base: eval latency of an encoder whose MLP GELUs are linearised.

``bert_base`` from :mod:`jaxdepth.zoo` (sequence length 128, the GLUE recipes'
length) with ``--sites`` of its 12 GELU sites linearised (the last ones, as a
depth-reduction method that removed them would leave them) is timed in three
forms:

* ``dense``: the original network;
* ``identity``: those sites baked to the identity (what the papers time);
* ``merged``: :func:`jaxdepth.surgery.collapse` of it (``mode="exact"``): each
  linearised MLP ``output ∘ intermediate`` (768 -> 3072 -> 768) becomes one
  768 -> 768 Dense and the residual addition folds into it, so the layer is
  attention, LayerNorm, one Dense, LayerNorm.

Its equivalence to the identity form is measured on a random token batch with
padding. Timing: :func:`jaxdepth.timing.latencies` (jitted eval forwards,
interleaved rounds, medians) on random token ids, every token real; weights
are random (timing does not depend on them). Prints one JSON object;
``merged_vs_dense`` and ``merged_vs_identity`` are latency ratios (below 1:
the merged form is faster).

Run::

    python benchmarks/encoder_latency.py [--batches 1 32] [--rounds 5 3] [--sites N]
                                         [--model bert_base] [--length 128]

``--model tiny_encoder --length 16`` checks the script in seconds.

Measured 2026-12-04 on the 2-core dev CPU shared with other jobs (load average
about 12, so the absolute times are inflated and noisy; jax 0.12.0.1),
``--batches 1 32 --rounds 3 2``, all 12 sites linearised: merged 4.83 G MACs
instead of 11.17 G, 59.9 M parameters instead of 109.5 M, weight depth 38
instead of 50, equal to the identity form to 2e-6 relative (12 merges, 12
residual folds). Latency dense / identity / merged: batch 1 1.79 / 1.65 /
0.81 s (merged vs dense 0.45), batch 32 45.9 / 43.5 / 20.0 s (0.44).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import time

import jax
import numpy as np

from jaxdepth import costs, equivalence, network, surgery, timing, zoo
from jaxdepth.spec import with_identity


def token_batch(spec, batch, seed=0):
  """Random ids with the second half of every other sequence padded."""
  x = {k: np.array(v) for k, v in network.random_input(spec, batch, seed).items()}
  length = spec.input_shape[0]
  x["attention_mask"][1::2, length // 2:] = 0
  x["input_ids"][1::2, length // 2:] = 0
  return x


def finite(x):
  """``x``, or None where it is not a finite number (JSON has no NaN)."""
  return x if x is None or math.isfinite(x) else None


def forms(model, length, n_sites):
  spec = zoo.get(model, max_length=length)
  variables = network.init(spec, jax.random.key(0))
  sites = list(spec.sites())[len(spec.sites()) - n_sites:]
  ident = with_identity(spec, sites)
  log = []
  tic = time.perf_counter()
  merged = surgery.collapse(ident, variables, mode="exact", log=log)
  seconds = time.perf_counter() - tic
  same = equivalence.compare(ident, variables, *merged, token_batch(spec, 4))
  built = {"dense": (spec, variables), "identity": (ident, variables), "merged": merged}
  facts = {form: {"macs": costs.count_macs(s), "params": costs.count_params(s),
                  **costs.depth(s)._asdict()} for form, (s, _) in built.items()}
  facts["merged"].update(
      surgery_s=round(seconds, 2), merges=sum(e.kind == "merge" for e in log),
      residual_folds=sum(e.kind == "fold_residual" for e in log),
      equivalence={"vs": "identity", "logits_max_abs": finite(same.max_abs),
                   "logits_max_rel": finite(same.max_rel),
                   "top1_agreement": finite(same.top1_agreement)})
  return built, sites, facts


def run(model, length, n_sites, batches, rounds):
  built, sites, facts = forms(model, length, n_sites)
  report = {"benchmark": "encoder_latency", "model": model, "sequence_length": length,
            "jax": jax.__version__, "backend": jax.default_backend(),
            "device": str(jax.devices()[0].device_kind),
            "machine": platform.processor() or platform.machine(), "cpu_count": os.cpu_count(),
            "sites_linearised": sites, "forms": facts, "latency_s": {}, "ratios": {}}
  for batch, n in zip(batches, rounds):
    med = timing.latencies(built, batch, repeats=n, warmup=1)
    key = f"batch{batch}"
    report["latency_s"][key] = {f: round(t, 6) for f, t in med.items()}
    report["ratios"][key] = {
        "merged_vs_dense": round(med["merged"] / med["dense"], 3),
        "merged_vs_identity": round(med["merged"] / med["identity"], 3),
        "identity_vs_dense": round(med["identity"] / med["dense"], 3)}
  return report


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--model", default="bert_base", choices=["bert_base", "roberta_base",
                                                                "tiny_encoder"])
  parser.add_argument("--length", type=int, default=128, help="tokens per sequence")
  parser.add_argument("--sites", type=int, default=None,
                      help="GELU sites linearised (the last ones; default: all of the model's)")
  parser.add_argument("--batches", type=int, nargs="+", default=[1, 32])
  parser.add_argument("--rounds", type=int, nargs="+", default=[5, 3],
                      help="timed rounds per batch size (one number per --batches entry)")
  args = parser.parse_args(argv)
  if len(args.rounds) != len(args.batches):
    parser.error("give one --rounds entry per --batches entry")
  if min(args.batches + args.rounds) <= 0:
    parser.error("every --batches and --rounds entry must be positive")
  if args.length <= 0:
    parser.error("--length must be positive")
  sites = len(zoo.get(args.model, max_length=args.length).sites())
  args.sites = sites if args.sites is None else args.sites
  if not 0 <= args.sites <= sites:
    parser.error(f"--sites must be between 0 and {sites}")
  print(json.dumps(run(args.model, args.length, args.sites, args.batches, args.rounds),
                   allow_nan=False))


if __name__ == "__main__":
  main()
