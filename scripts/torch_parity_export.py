"""The PyTorch side of ``scripts/torch_parity.py``: models, inputs and outputs to compare with.

Runs in a Python that has torch (and torchvision, transformers for those models), never in
jaxdepth's: ``torch_parity.py`` starts it as ``python torch_parity_export.py OUT_DIR``. For
every model it can build it writes, into ``OUT_DIR``:

* ``<name>.safetensors`` (torchvision) or a ``save_pretrained`` folder ``<name>/``
  (Hugging Face): the randomly initialised model's weights, with the BatchNorm running
  statistics, the BatchNorm and LayerNorm affine parameters and Swin's relative position
  bias tables drawn away from their initial values (ones, zeros and near-zero tables would
  hide a swapped or misplaced tensor);
* ``<name>.npz``: the input (images channel-last, as jaxdepth reads them; token ids with
  padding and, for BERT, a second segment) and the model's eval-mode output.
* ``<model>_train.npz`` (batches, settings, losses), ``<model>_train_weights_<i>.safetensors``
  (the weights before step ``i`` and after the last) and
  ``<model>_train_gradients[_float64]_<i>.safetensors``: ResNet-18 and MobileNetV2 trained for
  a few SGD steps (:func:`torchvision_training`).

and prints one JSON line: the versions, and the models it skipped because a package is
missing.
"""
from __future__ import annotations

import copy
import importlib
import importlib.util
import json
import sys

import numpy as np
import torch


def _perturbed(model: torch.nn.Module) -> torch.nn.Module:
  with torch.no_grad():
    for module in model.modules():
      if isinstance(module, torch.nn.BatchNorm2d):
        module.running_mean.uniform_(-0.3, 0.3)
        module.running_var.uniform_(0.5, 2.0)
      if isinstance(module, (torch.nn.BatchNorm2d, torch.nn.LayerNorm)):
        module.weight.uniform_(0.5, 1.5)
        module.bias.uniform_(-0.2, 0.2)
      if hasattr(module, "relative_position_bias_table"):
        module.relative_position_bias_table.normal_(0.0, 0.5)
  return model.eval()


def torchvision_models(out: str) -> list[str]:
  import torchvision
  from safetensors.torch import save_file
  models = {"resnet18": (torchvision.models.resnet18, 224),
            "mobilenet_v2": (torchvision.models.mobilenet_v2, 224),
            "vgg16_bn": (torchvision.models.vgg16_bn, 224),
            "swin_t": (torchvision.models.swin_t, 224),
            "swin_t_32x32": (torchvision.models.swin_t, 32)}   # the papers' CIFAR feeding
  for name, (build, size) in models.items():
    model = _perturbed(build(num_classes=10))
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
      y = model(x)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()},
              f"{out}/{name}.safetensors")
    np.savez(f"{out}/{name}.npz", image=x.permute(0, 2, 3, 1).numpy(), output=y.numpy())
  return list(models)


TRAIN = {"steps": 3, "batch": 8, "size": 64, "lr": 0.01, "momentum": 0.9, "weight_decay": 5e-4}


def torchvision_training(out: str) -> list[str]:
  """ResNet-18 and MobileNetV2 (its dropout off: the two frameworks draw different masks)
  trained for a few steps as the papers' code trains: train mode (batch statistics), mean
  cross-entropy, ``torch.optim.SGD`` with momentum and L2 weight decay on every parameter.
  Writes, per model, the weights before every step and after the last, the gradient of every
  step (and the same gradient computed in float64), the batches and the losses."""
  import torchvision
  from safetensors.torch import save_file
  names = []
  for name in ("resnet18", "mobilenet_v2"):
    model = _perturbed(getattr(torchvision.models, name)(num_classes=10)).train()
    if name == "mobilenet_v2":
      model.classifier[0].p = 0.0
    opt = torch.optim.SGD(model.parameters(), lr=TRAIN["lr"], momentum=TRAIN["momentum"],
                          weight_decay=TRAIN["weight_decay"])
    images = torch.randn(TRAIN["steps"], TRAIN["batch"], 3, TRAIN["size"], TRAIN["size"])
    labels = torch.randint(0, 10, (TRAIN["steps"], TRAIN["batch"]))
    losses = []
    prefix = f"{out}/{name}_train"
    for i, (x, y) in enumerate(zip(images, labels)):
      save_file({k: v.contiguous() for k, v in model.state_dict().items()},
                f"{prefix}_weights_{i}.safetensors")
      exact = copy.deepcopy(model).double()         # the same step's gradient in float64
      torch.nn.functional.cross_entropy(exact(x.double()), y).backward()
      save_file({k: p.grad.contiguous() for k, p in exact.named_parameters()},
                f"{prefix}_gradients_float64_{i}.safetensors")
      opt.zero_grad(set_to_none=True)
      loss = torch.nn.functional.cross_entropy(model(x), y)
      loss.backward()
      save_file({k: p.grad.contiguous() for k, p in model.named_parameters()},
                f"{prefix}_gradients_{i}.safetensors")
      opt.step()
      losses.append(loss.item())
    save_file({k: v.contiguous() for k, v in model.state_dict().items()},
              f"{prefix}_weights_{TRAIN['steps']}.safetensors")
    np.savez(f"{prefix}.npz", image=images.permute(0, 1, 3, 4, 2).numpy(),
             label=labels.numpy(), loss=np.asarray(losses), **TRAIN)
    names += [f"{name}_gradients", f"{name}_sgd"]
  return names


def huggingface_models(out: str) -> list[str]:
  import transformers
  families = {"bert": (transformers.BertConfig, transformers.BertForSequenceClassification, 0),
              "roberta": (transformers.RobertaConfig,
                          transformers.RobertaForSequenceClassification, 1)}
  for name, (config_class, model_class, pad) in families.items():
    config = config_class(vocab_size=100, hidden_size=32, num_hidden_layers=2,
                          num_attention_heads=4, intermediate_size=64, num_labels=3,
                          max_position_embeddings=40, pad_token_id=pad,
                          type_vocab_size=2 if name == "bert" else 1)
    model = _perturbed(model_class(config))
    model.save_pretrained(f"{out}/{name}")
    ids = torch.randint(3, 100, (3, 16))
    mask = torch.ones_like(ids)
    ids[1, 9:], mask[1, 9:] = pad, 0                 # the second sequence holds 9 tokens
    types = torch.zeros_like(ids)
    if name == "bert":
      types[2, 8:] = 1                               # the third holds two segments
    with torch.no_grad():
      y = model(input_ids=ids, attention_mask=mask, token_type_ids=types).logits
    np.savez(f"{out}/{name}.npz", input_ids=ids.numpy(), attention_mask=mask.numpy(),
             token_type_ids=types.numpy(), output=y.numpy())
  return list(families)


def main() -> None:
  out = sys.argv[1]
  torch.manual_seed(0)
  info = {"torch": torch.__version__, "models": [], "skipped": {}}
  for package, export in (("torchvision", torchvision_models),
                          ("transformers", huggingface_models)):
    if importlib.util.find_spec(package) is None or (
        package == "torchvision" and importlib.util.find_spec("safetensors") is None):
      info["skipped"][package] = "not installed in this Python"
      continue
    info[package] = importlib.import_module(package).__version__
    info["models"] += export(out)
    if package == "torchvision":
      info["models"] += torchvision_training(out)
  print(json.dumps(info))


if __name__ == "__main__":
  main()
