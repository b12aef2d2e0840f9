"""Imported weights against the PyTorch models they come from: torchvision and Hugging Face.

    .venv/bin/python scripts/torch_parity.py --torch-python PATH   # or $JAXDEPTH_TORCH_PYTHON

``PATH`` is a Python that has torch, torchvision and safetensors (and transformers for BERT
and RoBERTa); torch is no dependency of jaxdepth and never runs in its process. That Python
runs ``torch_parity_export.py``, which builds randomly initialised torchvision ResNet-18,
MobileNetV2, VGG-16-bn and Swin-T (at 224×224 and at the papers' 32×32) and Hugging Face
``BertForSequenceClassification`` and ``RobertaForSequenceClassification`` (2 layers, width
32), writes their weights and their eval-mode outputs on a random input; this script loads
each with ``jaxdepth.weights.torchvision.load`` or ``huggingface.from_pretrained``, runs the
matching zoo spec on the same input with ``jaxdepth.forward`` and prints one JSON object: the
largest absolute difference of the outputs and that difference relative to the largest output,
per model. Exit code 1 when a relative difference exceeds ``--tolerance`` (default 1e-5).

The unit tests check the same name maps against numpy forwards written in PyTorch's layout;
this checks them against the PyTorch code itself, where it is installed.
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


def zoo_spec(name: str):
  """The zoo spec a torchvision model of ``torch_parity_export.py`` loads onto."""
  from jaxdepth import zoo
  return {"resnet18": lambda: zoo.resnet18(10, stem="imagenet", input_shape=(224, 224, 3)),
          "mobilenet_v2": lambda: zoo.mobilenet_v2(10, variant="imagenet"),
          "vgg16_bn": lambda: zoo.vgg16_bn(10, input_shape=(224, 224, 3)),
          "swin_t": lambda: zoo.swin_t(10, input_shape=(224, 224, 3)),
          "swin_t_32x32": lambda: zoo.swin_t(10, input_shape=(32, 32, 3))}[name]()


def compare(name: str, folder: str) -> dict:
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


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--torch-python", default=os.environ.get(TORCH_PYTHON_ENV),
                      help=f"a Python with torch and torchvision (default: ${TORCH_PYTHON_ENV})")
  parser.add_argument("--tolerance", type=float, default=1e-5,
                      help="largest accepted difference relative to the largest output")
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
    info["models"] = {name: compare(name, folder) for name in info["models"]}
  info["tolerance"] = args.tolerance
  print(json.dumps(info, indent=1))
  return int(any(m["max_rel"] > args.tolerance for m in info["models"].values()))


if __name__ == "__main__":
  sys.exit(main())
