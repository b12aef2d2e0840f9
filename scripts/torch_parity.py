"""jaxdepth against the PyTorch code the papers run: imported weights, and training.

    .venv/bin/python scripts/torch_parity.py --torch-python PATH   # or $JAXDEPTH_TORCH_PYTHON

``PATH`` is a Python that has torch, torchvision and safetensors (and transformers for BERT
and RoBERTa); torch is no dependency of jaxdepth and never runs in its process. That Python
runs ``torch_parity_export.py``, which builds randomly initialised torchvision ResNet-18,
MobileNetV2, VGG-16-bn and Swin-T (at 224×224 and at the papers' 32×32) and Hugging Face
``BertForSequenceClassification`` and ``RobertaForSequenceClassification`` (2 layers, width
32), writes their weights and their eval-mode outputs on a random input, and trains
ResNet-18 and MobileNetV2 (without its dropout) for three steps of ``torch.optim.SGD``
(momentum 0.9, weight decay 5e-4, batch 8 at 64×64, train-mode BatchNorm), writing the
weights and the gradient of every step (also computed in float64). This script loads each
model with ``jaxdepth.weights.torchvision.load`` or ``huggingface.from_pretrained`` and runs the
matching zoo spec on the same input with ``jaxdepth.forward``; for the training it takes the
gradient of jaxdepth's training loss at PyTorch's weights before each step
(``<model>_gradients``: float64 against float64, and each framework's float32 gradient beside
them) and runs jaxdepth's SGD recipe on PyTorch's gradients (``<model>_sgd``: the weights
after the three steps). It prints one JSON object:
per model ``max_rel``, the largest difference relative to the largest output (gradient,
change of the weights). Exit code 1 when one exceeds ``--tolerance`` (default 1e-5).

The unit tests check the same name maps against numpy forwards written in PyTorch's layout
and the optimizer against its formulas; this checks them against the PyTorch code itself,
where it is installed.
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import subprocess
import sys
import tempfile

import numpy as np

TORCH_PYTHON_ENV = "JAXDEPTH_TORCH_PYTHON"


def zoo_spec(name: str, input_shape=(224, 224, 3)):
  """The zoo spec a torchvision model of ``torch_parity_export.py`` loads onto."""
  from jaxdepth import zoo
  if name == "swin_t_32x32":
    return zoo.swin_t(10, input_shape=(32, 32, 3))
  return {"resnet18": lambda: zoo.resnet18(10, stem="imagenet", input_shape=input_shape),
          "mobilenet_v2": lambda: zoo.mobilenet_v2(10, "imagenet", input_shape=input_shape),
          "vgg16_bn": lambda: zoo.vgg16_bn(10, input_shape=input_shape),
          "swin_t": lambda: zoo.swin_t(10, input_shape=input_shape)}[name]()


def compare(name: str, folder: str) -> dict:
  """A model's eval-mode output on the exported input: jaxdepth's against PyTorch's."""
  import jaxdepth
  from jaxdepth.weights import huggingface, torchvision
  arrays = dict(np.load(f"{folder}/{name}.npz"))
  expected = arrays.pop("output")
  if name in ("bert", "roberta"):
    spec, variables = huggingface.from_pretrained(f"{folder}/{name}",
                                                  max_length=arrays["input_ids"].shape[1])
    inputs = arrays
  else:
    spec = zoo_spec(name)
    variables = torchvision.load(spec, f"{folder}/{name}.safetensors")
    inputs = arrays["image"]
  out = np.asarray(jaxdepth.forward(spec, variables, inputs).logits)
  max_abs = float(np.abs(out - expected).max())
  return {"max_abs": max_abs, "max_rel": max_abs / float(np.abs(expected).max())}


def _largest(tree) -> float:
  import jax
  return max(float(np.abs(np.asarray(leaf)).max()) for leaf in jax.tree.leaves(tree))


def _training_run(folder: str, model: str):
  """The exported run of ``model``: its batches and settings, the spec, and a reader of the
  weights before step ``i`` (or, in their places, PyTorch's gradients at it, ``"float32"``
  or ``"float64"``) as jaxdepth variables."""
  from jaxdepth import spec as S
  from jaxdepth.weights import read_state_dict, torchvision
  prefix = f"{folder}/{model}_train"
  run = dict(np.load(f"{prefix}.npz"))
  spec = zoo_spec(model, input_shape=run["image"].shape[2:])
  if model == "mobilenet_v2":       # trained without dropout, as the export does
    spec = S.Spec.from_json(spec.to_json().replace('"rate": 0.2', '"rate": 0.0'))

  def variables(i: int, gradients: str | None = None):
    tensors = read_state_dict(f"{prefix}_weights_{i}.safetensors")
    if gradients:     # the gradients take the parameters' places; the buffers stay
      suffix = "_float64" if gradients == "float64" else ""
      tensors.update(read_state_dict(f"{prefix}_gradients{suffix}_{i}.safetensors"))
    return torchvision.load(spec, tensors, template=_template(spec, gradients))
  return run, spec, variables


def _template(spec, gradients):
  """Float64 variables to fill when the gradients are float64 (default: float32 ones)."""
  if gradients != "float64":
    return None
  import jax
  import jaxdepth
  shapes = jax.eval_shape(lambda: jaxdepth.init(spec, jax.random.key(0)))
  return jax.tree.map(lambda s: np.zeros(s.shape, np.float64), shapes)


def _relative(ours, theirs) -> float:
  import jax
  return (_largest(jax.tree.map(lambda a, b: np.asarray(a, np.float64) - b, ours, theirs))
          / _largest(theirs))


def compare_gradients(folder: str, model: str) -> dict:
  """The gradient of the training loss (train-mode BatchNorm, mean cross-entropy) at
  PyTorch's weights before each step, on the same batch, against PyTorch's float64 gradient,
  relative to the largest: jaxdepth's in float64 (``max_rel``: the same function), and
  jaxdepth's and PyTorch's float32 ones (``float32``: jaxdepth's train step, as the step of
  SGD with learning rate 1). Where a ReLU's input or a max-pool window's two largest values
  lie within float32 rounding of each other, a float32 gradient can take the other side of
  the kink, which moves that element's gradient as a whole; which framework does so varies
  from step to step. Also the float32 loss, and the BatchNorm running means the step leaves
  (the running variances differ by definition: PyTorch keeps the unbiased batch variance,
  Flax the biased)."""
  import jax
  import optax
  from flax import traverse_util

  import jaxdepth
  from jaxdepth import network, training
  run, spec, variables = _training_run(folder, model)
  tx = optax.sgd(1.0)
  step = training.make_train_step(spec, tx)

  def loss(params, batch_stats, images, labels):
    logits = network.forward(spec, {"params": params, "batch_stats": batch_stats}, images,
                             train=True).logits
    return training.cross_entropy(logits, labels)

  exact, ours32, theirs32, losses, running_mean = [], [], [], 0.0, 0.0
  for i, (images, labels) in enumerate(zip(run["image"], run["label"])):
    before = variables(i)
    with jax.enable_x64(True):
      reference = jax.tree.map(np.asarray, variables(i, gradients="float64")["params"])
      as64 = jax.tree.map(lambda a: np.asarray(a, np.float64), before)
      exact.append(_relative(jax.grad(loss)(as64["params"], as64["batch_stats"],
                                            images.astype(np.float64), labels), reference))
    batch = {"image": images, "label": labels.astype(np.int32),
             "mask": np.ones(len(labels), bool)}
    state, metrics, _ = step(jaxdepth.TrainState.create(before, tx, rng=0), batch, None, None)
    ours32.append(_relative(jax.tree.map(lambda b, a: b - np.asarray(a), before["params"],
                                         state.params), reference))
    theirs32.append(_relative(variables(i, gradients="float32")["params"], reference))
    losses = max(losses, abs(float(metrics["loss"]) / len(labels) - float(run["loss"][i])))
    stats = traverse_util.flatten_dict(jax.device_get(state.batch_stats))
    expected = traverse_util.flatten_dict(variables(i + 1)["batch_stats"])
    running_mean = max(running_mean, *(float(np.abs(stats[k] - expected[k]).max())
                                       for k in stats if k[-1] == "mean"))
  return {"steps": len(run["loss"]), "max_rel": max(exact),
          "float32": {"jaxdepth": ours32, "pytorch": theirs32},
          "loss_max_abs": losses, "running_mean_max_abs": running_mean}


def compare_sgd(folder: str, model: str) -> dict:
  """jaxdepth's optimizer for the papers' SGD recipe (``optim.make_optimizer``: momentum, L2
  weight decay on every parameter) fed PyTorch's gradients, step after step, from PyTorch's
  first weights: the final weights against ``torch.optim.SGD``'s, relative to the largest
  change."""
  import jax
  import optax

  from jaxdepth import optim
  run, _, variables = _training_run(folder, model)
  recipe = optim.Recipe(lr=float(run["lr"]), momentum=float(run["momentum"]),
                        weight_decay=float(run["weight_decay"]), batch_size=int(run["batch"]))
  tx = optim.make_optimizer(recipe, steps_per_epoch=1)
  first = params = variables(0)["params"]
  opt_state = tx.init(params)
  for i in range(len(run["loss"])):
    gradients = variables(i, gradients="float32")["params"]
    updates, opt_state = tx.update(gradients, opt_state, params)
    params = optax.apply_updates(params, updates)
  last = variables(len(run["loss"]))["params"]
  change = jax.tree.map(np.subtract, last, first)
  return {"steps": len(run["loss"]),
          "max_rel": _largest(jax.tree.map(np.subtract, params, last)) / _largest(change)}


def compare_any(name: str, folder: str) -> dict:
  """``<model>_gradients`` and ``<model>_sgd`` are training checks, any other name a model."""
  model, _, check = name.rpartition("_")
  if check == "gradients":
    return compare_gradients(folder, model)
  if check == "sgd":
    return compare_sgd(folder, model)
  return compare(name, folder)


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--torch-python", default=os.environ.get(TORCH_PYTHON_ENV),
                      help=f"a Python with torch and torchvision (default: ${TORCH_PYTHON_ENV})")
  parser.add_argument("--tolerance", type=float, default=1e-5,
                      help="largest accepted max_rel: a difference relative to the largest "
                           "output (gradient, change of the weights)")
  args = parser.parse_args(argv)
  if not args.torch_python or not pathlib.Path(args.torch_python).is_file():
    parser.error(f"--torch-python (or ${TORCH_PYTHON_ENV}) must be the path of a Python "
                 f"executable whose environment has torch, torchvision and safetensors; "
                 f"got {args.torch_python!r}")
  export = pathlib.Path(__file__).with_name("torch_parity_export.py")
  with tempfile.TemporaryDirectory() as folder:
    done = subprocess.run([args.torch_python, str(export), folder], stdout=subprocess.PIPE,
                          text=True, check=False)
    if done.returncode:
      print(f"torch_parity_export.py failed in {args.torch_python} (exit code "
            f"{done.returncode}); its error is above", file=sys.stderr)
      return 2
    info = json.loads(done.stdout.strip().splitlines()[-1])
    info["models"] = {name: compare_any(name, folder) for name in info["models"]}
  info["tolerance"] = args.tolerance
  print(json.dumps(info, indent=1))
  return int(any(result["max_rel"] > args.tolerance for result in info["models"].values()))


if __name__ == "__main__":
  sys.exit(main())
