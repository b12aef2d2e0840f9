"""Training-step speed of CIFAR ResNet-18 and MobileNetV2: jaxdepth's steps side by side, and PyTorch's.

For each model (batch 128, 32x32x3 inputs, float32 unless ``--dtype``) it times
jaxdepth's jitted train step (:func:`jaxdepth.training.make_train_step`: forward,
backward, SGD with momentum and weight decay) in the variants the methods use:

* ``plain``: no gates (``fit`` without a method);
* ``control``: the plain step compiled a second time, with its own state: its
  ratio to ``plain`` is what two identical programs measure in the same run
  (separate executables and buffers; here up to 1-2 % apart), the scale on
  which the other variants' ratios can be read;
* ``gated``: every site gated on (EASIER, TLC, EGP train with gates);
* ``stats``: gated, collecting every site's sign counts (EASIER's last epoch);
* ``masks``: gated, with element-wise weight masks on the prunable kernels (EGP);
* ``lacoot``: LaCoOT's Wasserstein term on its official units, with node gates;

and the eval step (:func:`jaxdepth.training.make_eval_step`) at batch 1 and at
the training batch. With ``--torch-python PATH`` or ``JAXDEPTH_TORCH_PYTHON=PATH``
(a Python whose environment has torch, e.g. a separate virtual environment; the
current one is used when it can import torch), the same train and eval steps in PyTorch run in a subprocess
(``benchmarks/torch_reference.py``), in the ``channels_last`` and ``contiguous``
(NCHW) layouts. jaxdepth never depends on torch.

Everything is timed side by side in one run: each repeat runs a block of every
program in turn, in a new, seeded random order each repeat, so a change in
machine load hits all alike. jaxdepth's train-step variants share one block:
after an untimed step of each, ``--steps`` rounds of one step of each, in order
and then in reverse; PyTorch's steps run in blocks of ``--steps`` after an
untimed one; an eval block times ``--eval-steps`` calls after
``--eval-warm-steps`` untimed ones (one call at batch 1 takes milliseconds).
The figures are medians over steps of wall time (``*_s``) and of the process's
CPU time (``*_cpu_s``, less sensitive to other processes on a loaded machine).
Prints one JSON object with, per model, the times, their ratios to ``plain``
(the benchmark's claim is ``plain <= gated <= stats``, read against
``control / plain``; ``ratios_paired`` is the
median over rounds of the ratio of two variants' steps of the same round, which
leaves out the machine's drift, and ``ratios_paired_ci95`` its 95 % bootstrap
interval), to PyTorch's faster layout (``vs_torch``; ``vs_torch_paired``, the
median over repeats of the ratio of two blocks of the same repeat;
``vs_torch_fastest`` from each side's fastest step: when other processes share
the cores PyTorch's step slows far more than XLA's, its CPU time growing too, as
OpenMP threads spin while they wait), and the cold compile time of each jitted
step (``compile_s``; the persistent compilation cache is off here, see
``benchmarks/compile_cache.py`` for a warm one).

Host memory: by default, as the ``python -m jaxdepth`` commands do, glibc is told
to keep freed memory (:mod:`jaxdepth.host_memory`), and the PyTorch process gets
the same settings through ``GLIBC_TUNABLES``; ``--default-malloc`` measures both
with glibc's defaults.

Run::

    python benchmarks/train_step.py [--models resnet18 mobilenet_v2] [--steps 4]
        [--eval-steps 10] [--repeats 5] [--warm-steps 1] [--eval-warm-steps 5]
        [--kinds plain control gated stats masks lacoot]
        [--torch-python /path/to/venv/bin/python] [--dtype bfloat16]
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import pathlib
import random
import statistics
import subprocess
import sys
import time

from jaxdepth import host_memory

KINDS = ("plain", "control", "gated", "stats", "masks", "lacoot")
MODELS = ("resnet18", "mobilenet_v2")
LAYOUTS = ("channels_last", "contiguous")
TORCH_PYTHON_ENV = "JAXDEPTH_TORCH_PYTHON"


def parse_args(argv):
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
  parser.add_argument("--kinds", nargs="+", default=list(KINDS), choices=KINDS,
                      help="train-step variants to time")
  parser.add_argument("--batch", type=int, default=128, help="training (and eval) batch")
  parser.add_argument("--steps", type=int, default=4,
                      help="timed rounds of one step of each jaxdepth train variant per block "
                           "(PyTorch: timed steps per block)")
  parser.add_argument("--eval-steps", type=int, default=10, help="eval steps per timed block")
  parser.add_argument("--repeats", type=int, default=5, help="timed blocks of each variant")
  parser.add_argument("--warm-steps", type=int, default=1,
                      help="untimed steps (of each variant) at the start of each train block")
  parser.add_argument("--eval-warm-steps", type=int, default=5,
                      help="untimed calls at the start of each eval block")
  parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"),
                      help="jaxdepth's compute dtype (PyTorch runs float32)")
  parser.add_argument("--no-eval", dest="eval", action="store_false",
                      help="skip the eval steps")
  parser.add_argument("--torch-python", default=os.environ.get(TORCH_PYTHON_ENV) or None,
                      help=f"a Python that can import torch (runs benchmarks/torch_reference.py; "
                           f"default: ${TORCH_PYTHON_ENV})")
  parser.add_argument("--no-torch", dest="torch", action="store_false",
                      help="do not time PyTorch even when it is importable")
  parser.add_argument("--default-malloc", action="store_true",
                      help="leave glibc's allocator settings alone (both sides)")
  args = parser.parse_args(argv)
  if min(args.batch, args.steps, args.eval_steps, args.repeats) <= 0:
    parser.error("--batch, --steps, --eval-steps and --repeats must be positive")
  if min(args.warm_steps, args.eval_warm_steps) < 0:
    parser.error("--warm-steps and --eval-warm-steps must be 0 or more")
  if args.torch and args.torch_python:
    if not pathlib.Path(args.torch_python).is_file():
      parser.error(f"--torch-python (or ${TORCH_PYTHON_ENV}) {args.torch_python!r} is not a file; "
                   f"give the path of a Python executable whose environment has torch")
    # Absolute (Popen would search PATH for a bare name), not resolved: a virtual
    # environment's python is a link, and the environment is lost behind it.
    args.torch_python = os.path.abspath(args.torch_python)
    reason = _torch_import_failure(args.torch_python)
    if reason:
      parser.error(f"--torch-python (or ${TORCH_PYTHON_ENV}) {args.torch_python!r} cannot import "
                   f"torch ({reason}); give a Python whose environment has torch, or pass --no-torch")
  return args


def _torch_import_failure(python):
  """Why ``python -c "import torch"`` fails (its last error line), or None when it works."""
  try:
    proc = subprocess.run([python, "-c", "import torch"], capture_output=True, text=True,
                          check=False)
  except OSError as e:
    return str(e)
  if proc.returncode == 0:
    return None
  lines = proc.stderr.strip().splitlines()
  return lines[-1] if lines else f"exit code {proc.returncode}"


class TorchWorker:
  """``benchmarks/torch_reference.py`` in a subprocess: one JSON request and answer per line."""

  def __init__(self, python, keep_memory):
    env = dict(os.environ)
    if keep_memory:
      env["GLIBC_TUNABLES"] = host_memory.TUNABLES
    script = pathlib.Path(__file__).with_name("torch_reference.py")
    self.proc = subprocess.Popen([python, str(script)], stdin=subprocess.PIPE,
                                 stdout=subprocess.PIPE, text=True, env=env)
    self.info = json.loads(self._line())

  def _line(self):
    line = self.proc.stdout.readline()
    if not line:
      raise RuntimeError(f"the PyTorch worker stopped (exit code {self.proc.wait()}); run "
                         f"benchmarks/torch_reference.py with that Python to see why")
    return line

  def run(self, model, layout, kind, batch, steps):
    request = {"model": model, "layout": layout, "kind": kind, "batch": batch, "steps": steps}
    self.proc.stdin.write(json.dumps(request) + "\n")
    self.proc.stdin.flush()
    answer = json.loads(self._line())
    return answer["seconds"], answer["cpu_seconds"]

  def close(self):
    self.proc.stdin.close()
    self.proc.wait()


def torch_python(args):
  if not args.torch:
    return None
  if args.torch_python:
    return args.torch_python
  return sys.executable if importlib.util.find_spec("torch") is not None else None


def timed(call, n):
  """Calls ``call()`` ``n`` times; the wall and CPU seconds of each call, as two lists."""
  wall, cpu = [], []
  for _ in range(n):
    tic, cpu_tic = time.perf_counter(), time.process_time()
    call()
    wall.append(time.perf_counter() - tic)
    cpu.append(time.process_time() - cpu_tic)
  return wall, cpu


def jax_runners(model, args):
  """``{name: (run(steps) -> (wall, cpu) lists, compile seconds)}`` for one model."""
  import jax   # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp   # pylint: disable=import-outside-toplevel
  from flax import traverse_util   # pylint: disable=import-outside-toplevel
  from jaxdepth import network, optim, stats, training, zoo   # pylint: disable=import-outside-toplevel
  from jaxdepth.methods import Egp, lacoot   # pylint: disable=import-outside-toplevel

  spec = zoo.get(model, num_classes=10, input_shape=(32, 32, 3))
  dtype = None if args.dtype == "float32" else jnp.dtype(args.dtype)
  mesh = training.make_mesh(jax.devices()[:1])
  kx, ky, kinit, kmask = jax.random.split(jax.random.key(0), 4)

  def batch_of(n):
    return training.shard_batch({
        "image": jax.random.normal(kx, (n, *spec.input_shape), jnp.float32),
        "label": jax.random.randint(ky, (n,), 0, 10), "mask": jnp.ones((n,), bool)}, mesh)

  batch = batch_of(args.batch)
  variables = network.init(spec, kinit)
  recipe = optim.Recipe(lr=0.1, momentum=0.9, weight_decay=5e-4, milestones=(80, 120))
  tx = optim.make_optimizer(recipe, 390)
  gates = training.replicate(network.gates_for(spec), mesh)
  steps = {"plain": training.make_train_step(spec, tx, mesh=mesh, dtype=dtype)}
  inputs = {"plain": (None, None, None, None), "gated": (gates, None, None, None)}
  steps["gated"] = steps["plain"]
  # A second jitted function: the same program, compiled again (the same jitted
  # function would hand back the executable it compiled for "plain").
  steps["control"] = training.make_train_step(spec, tx, mesh=mesh, dtype=dtype)
  inputs["control"] = inputs["plain"]
  if "stats" in args.kinds:
    steps["stats"] = training.make_train_step(spec, tx, mesh=mesh, dtype=dtype,
                                              collect_stats=True)
    inputs["stats"] = (gates, training.replicate(stats.empty_stats(spec), mesh), None, None)
  if "masks" in args.kinds:
    template = traverse_util.flatten_dict(Egp().init(spec)["masks"])
    keys = jax.random.split(kmask, len(template))
    masks = traverse_util.unflatten_dict({p: jax.random.bernoulli(k, 0.5, m.shape)
                                          for k, (p, m) in zip(keys, template.items())})
    steps["masks"] = steps["plain"]
    inputs["masks"] = (gates, None, training.replicate(masks, mesh), None)
  if "lacoot" in args.kinds:
    units = lacoot.official_units(spec)
    reg = lacoot.regularizer(units, 5.0, 50)
    steps["lacoot"] = training.make_train_step(spec, tx, mesh=mesh, dtype=dtype,
                                               regularizer=reg)
    inputs["lacoot"] = (None, None, None,
                        training.replicate({u: jnp.float32(1.0) for u in units}, mesh))

  runners, compile_s = {}, {}
  for kind in args.kinds:
    state = training.replicate(training.TrainState.create(variables, tx, 0), mesh)
    tic = time.perf_counter()
    compiled = steps[kind].jitted.lower(state, batch, *inputs[kind]).compile()
    compile_s[kind] = time.perf_counter() - tic
    holder = {"state": state}

    def run(n, compiled=compiled, holder=holder, extra=inputs[kind]):
      def step():
        holder["state"], metrics, _ = compiled(holder["state"], batch, *extra)
        jax.block_until_ready((holder["state"], metrics))
      return timed(step, n)

    run(1)   # warm-up (allocations, caches)
    runners[kind] = run

  if args.eval:
    eval_step = training.make_eval_step(spec, mesh=mesh, dtype=dtype)
    evaluated = training.replicate(variables, mesh)
    for n in sorted({1, args.batch}):
      data = batch_of(n)
      tic = time.perf_counter()
      compiled = eval_step.jitted.lower(evaluated, data, None, None, None).compile()
      compile_s[f"eval_{n}"] = time.perf_counter() - tic

      def run(n, compiled=compiled, data=data):
        return timed(lambda: jax.block_until_ready(compiled(evaluated, data, None, None, None)),
                     n)

      run(1)
      runners[f"eval_{n}"] = run
  return runners, {k: round(v, 2) for k, v in compile_s.items()}


def time_side_by_side(runners, args, interleaved=()):
  """Runs each runner in ``repeats`` blocks of ``steps`` (eval: ``eval_steps``), in a new order.

  The runners named in ``interleaved`` (jaxdepth's train-step variants) share
  one block instead: after each one's warm-up steps, ``steps`` rounds of one
  step of each, in order and then in reverse (ABC CBA ABC ...). The steps of
  one round ran within a few seconds of each other, and the reversal gives each
  variant every place in the round, so a ratio of two variants' steps taken
  round by round (:func:`paired_ratios` of ``rounds``) leaves out the machine's
  drift, which here moves a ResNet-18 step between 0.46 and 0.73 s over a
  minute; two identical compiled steps alternated this way measured 1.00 and
  1.02, where blocks of two steps of each, interleaved with PyTorch's and the
  eval blocks, put ResNet-18's gated step 6-13 % faster than the plain one.

  Returns the per-step median wall and CPU seconds and the fastest wall seconds
  of each runner, the median wall seconds of each of its blocks (one per repeat,
  for :func:`paired_ratios` against another block of the same repeat), and, for
  the interleaved runners, the wall seconds of each round's step.

  Each block first runs ``warm_steps`` untimed steps of each of its runners (an
  eval block ``eval_warm_steps``): the first step after another program's block
  can be far slower than the steady state (one MobileNetV2 step of 3.4 s against
  0.95 s, right after the other variant's block), and with the seeded order
  such a step falls on the same variant in every run. A batch-1 eval call takes
  a few calls to get there: ResNet-18's, after a train block or a 0.1 s pause,
  took 5-7 ms for its first three or four calls against 2.7-3 ms after.

  The orders of the blocks are shuffled (with a fixed seed), not rotated: a
  rotation keeps the cyclic order, so one block would always run right after
  PyTorch's process and another right after it.
  """
  names = list(runners)
  together = [n for n in names if n in interleaved]
  units = ([tuple(together)] if together else []) + [n for n in names if n not in together]
  wall = {n: [] for n in names}
  cpu = {n: [] for n in names}
  order = random.Random(0)
  for _ in range(args.repeats):
    for unit in order.sample(units, len(units)):
      if isinstance(unit, tuple):
        if args.warm_steps:
          for name in unit:
            runners[name](args.warm_steps)
        block = {name: [] for name in unit}
        for r in range(args.steps):
          for name in (unit if r % 2 == 0 else unit[::-1]):
            (w,), (c,) = runners[name](1)
            block[name].append(w)
            cpu[name].append(c)
        for name in unit:
          wall[name].append(block[name])
        continue
      evaluates = "eval" in unit
      warm = args.eval_warm_steps if evaluates else args.warm_steps
      if warm:
        runners[unit](warm)
      w, c = runners[unit](args.eval_steps if evaluates else args.steps)
      wall[unit].append(w)
      cpu[unit] += c
  every = {n: [t for block in v for t in block] for n, v in wall.items()}
  return ({n: statistics.median(v) for n, v in every.items()},
          {n: statistics.median(v) for n, v in cpu.items()},
          {n: min(v) for n, v in every.items()},
          {n: [statistics.median(block) for block in v] for n, v in wall.items()},
          {n: every[n] for n in together})   # one step per round, rounds in order


def ratios(times, names, base):
  return {f"{n}/{base}": round(times[n] / times[base], 3) for n in names
          if n != base and n in times and base in times}


def paired_ratios(blocks, names, base):
  """``n / base`` as the median of the ratios of their times taken pair by pair.

  ``blocks`` holds one time per repeat (the median of a block) or per round (one
  step) for each name; the two times of a pair ran within seconds of each other,
  so a drift of the machine's speed over minutes (30 % between runs here) cancels
  in each ratio; the ratio of the overall medians (:func:`ratios`) keeps it when
  the drift falls on one variant's blocks more than on another's.
  """
  return {f"{n}/{base}": round(statistics.median(a / b for a, b in zip(blocks[n], blocks[base])),
                               3)
          for n in names if n != base and n in blocks and base in blocks}


def paired_interval(rounds, names, base, resamples=2000, seed=0):
  """A 95 % bootstrap interval of each :func:`paired_ratios` ``n / base`` of ``rounds``.

  Resamples the per-round ratios with replacement (seeded) and takes the 2.5th
  and 97.5th percentiles of their medians: an interval that holds 1 says the
  two steps are level within what this run can tell apart.
  """
  draw = random.Random(seed)
  out = {}
  for n in names:
    if n == base or n not in rounds or base not in rounds:
      continue
    per_round = [a / b for a, b in zip(rounds[n], rounds[base])]
    medians = sorted(statistics.median(draw.choices(per_round, k=len(per_round)))
                     for _ in range(resamples))
    out[f"{n}/{base}"] = [round(medians[int(0.025 * resamples)], 3),
                          round(medians[int(0.975 * resamples) - 1], 3)]
  return out


def main(argv=None):
  args = parse_args(argv)
  keep = not args.default_malloc and host_memory.keep_freed_memory()
  from jaxdepth import compilation_cache   # pylint: disable=import-outside-toplevel
  compilation_cache.enable(None)           # cold compile times
  import jax   # pylint: disable=import-outside-toplevel

  python = torch_python(args)
  try:
    worker = TorchWorker(python, keep) if python else None
  except (OSError, RuntimeError, ValueError) as e:
    sys.exit(f"train_step.py: the PyTorch worker ({python}) did not start: {e}")
  out = {"device": f"{jax.devices()[0].platform}: {jax.devices()[0].device_kind}",
         "jax": jax.__version__, "dtype": args.dtype, "batch": args.batch,
         "steps": args.steps, "eval_steps": args.eval_steps, "repeats": args.repeats,
         "warm_steps": args.warm_steps, "eval_warm_steps": args.eval_warm_steps,
         "keep_host_memory": bool(keep),
         "cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
         "load_average_1min": round(os.getloadavg()[0], 2),
         "torch": worker.info if worker else None, "models": {}}
  try:
    for model in args.models:
      runners, compile_s = jax_runners(model, args)
      if worker is not None:
        for layout in LAYOUTS:
          runners[f"torch_{layout}"] = (
              lambda n, layout=layout: worker.run(model, layout, "train", args.batch, n))
          if args.eval:
            for n in sorted({1, args.batch}):
              runners[f"torch_{layout}_eval_{n}"] = (
                  lambda k, layout=layout, n=n: worker.run(model, layout, "eval", n, k))
      kinds = list(args.kinds)
      wall, cpu, fastest, blocks, rounds = time_side_by_side(runners, args, interleaved=kinds)
      result = {"train_s": {k: round(wall[k], 4) for k in kinds},
                "train_cpu_s": {k: round(cpu[k], 4) for k in kinds},
                "ratios": ratios(wall, kinds, "plain"),
                "ratios_cpu": ratios(cpu, kinds, "plain"),
                "ratios_paired": paired_ratios(rounds, kinds, "plain"),
                "ratios_paired_ci95": paired_interval(rounds, kinds, "plain"),
                "compile_s": compile_s}
      if args.eval:
        result["eval_s"] = {n: round(t, 5) for n, t in wall.items() if n.startswith("eval_")}
      if worker is not None:
        result["torch_s"] = {n[len("torch_"):]: round(t, 5) for n, t in wall.items()
                             if n.startswith("torch_")}
        result["torch_cpu_s"] = {n[len("torch_"):]: round(t, 5) for n, t in cpu.items()
                                 if n.startswith("torch_")}
        best = min(LAYOUTS, key=lambda layout: wall[f"torch_{layout}"])
        result["vs_torch"] = {f"{k}/torch_{best}": round(wall[k] / wall[f"torch_{best}"], 3)
                              for k in kinds}
        result["vs_torch_paired"] = paired_ratios(blocks, kinds, f"torch_{best}")
        result["vs_torch_cpu"] = {
            f"{k}/torch_{best}": round(cpu[k] / cpu[f"torch_{best}"], 3) for k in kinds}
        best_min = min(LAYOUTS, key=lambda layout: fastest[f"torch_{layout}"])
        result["vs_torch_fastest"] = {
            f"{k}/torch_{best_min}": round(fastest[k] / fastest[f"torch_{best_min}"], 3)
            for k in kinds}
        if args.eval:
          for n in sorted({1, args.batch}):
            fast = min(LAYOUTS, key=lambda layout, n=n: wall[f"torch_{layout}_eval_{n}"])
            result["vs_torch"][f"eval_{n}/torch_{fast}_eval_{n}"] = round(
                wall[f"eval_{n}"] / wall[f"torch_{fast}_eval_{n}"], 3)
            result["vs_torch_paired"].update(
                paired_ratios(blocks, [f"eval_{n}"], f"torch_{fast}_eval_{n}"))
      result["load_average_1min_end"] = round(os.getloadavg()[0], 2)
      out["models"][model] = result
  finally:
    if worker is not None:
      worker.close()
  print(json.dumps(out))


if __name__ == "__main__":
  main()
