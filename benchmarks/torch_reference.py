"""The same CIFAR train and eval steps in plain PyTorch, for ``train_step.py`` to compare with.

Runs in its own process, started by ``benchmarks/train_step.py`` with the Python
given by ``--torch-python`` (a virtual environment that has torch; torch is never
a dependency of jaxdepth and this file is never imported by it). It builds the
models from ``torch.nn`` only, with the architecture of jaxdepth's zoo specs
(``resnet18`` with the CIFAR stem and its max-pool, ``mobilenet_v2`` CIFAR
variant), and answers one request per line on stdin::

    {"model": "resnet18", "layout": "channels_last", "kind": "train", "steps": 3}

with one JSON line on stdout, ``{"seconds": [...], "cpu_seconds": [...]}`` (wall
and process CPU seconds of each step run). A model, layout and kind is built and warmed up at its first request.
Train steps are forward, softmax cross-entropy, backward and SGD with the recipe
of jaxdepth's timed step in ``train_step.py`` (lr 0.1, momentum 0.9, weight
decay 5e-4 on every parameter, no Nesterov; ``zero_grad(set_to_none=True)``),
as the papers' code does; eval steps run the forward pass in ``eval()`` mode
under ``torch.inference_mode()``.
"""
from __future__ import annotations

import json
import sys
import time

import torch
from torch import nn


def conv_bn(cin, cout, kernel, stride=1, groups=1, act=None):
  layers = [nn.Conv2d(cin, cout, kernel, stride, kernel // 2, groups=groups, bias=False),
            nn.BatchNorm2d(cout)]
  if act is not None:
    layers.append(act())
  return nn.Sequential(*layers)


class BasicBlock(nn.Module):
  def __init__(self, cin, cout, stride):
    super().__init__()
    self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
    self.bn1 = nn.BatchNorm2d(cout)
    self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
    self.bn2 = nn.BatchNorm2d(cout)
    self.shortcut = nn.Sequential()
    if stride != 1 or cin != cout:
      self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False),
                                    nn.BatchNorm2d(cout))

  def forward(self, x):
    y = torch.relu(self.bn1(self.conv1(x)))
    return torch.relu(self.bn2(self.conv2(y)) + self.shortcut(x))


def resnet18(num_classes=10):
  """CIFAR ResNet-18 with the 3x3 stride-1 stem and the 3x3/2 max-pool."""
  layers = [nn.Conv2d(3, 64, 3, 1, 1, bias=False), nn.BatchNorm2d(64), nn.ReLU(),
            nn.MaxPool2d(3, 2, 1)]
  cin = 64
  for i, width in enumerate((64, 128, 256, 512)):
    for j in range(2):
      layers.append(BasicBlock(cin, width, 2 if i > 0 and j == 0 else 1))
      cin = width
  layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(512, num_classes)]
  return nn.Sequential(*layers)


class InvertedResidual(nn.Module):
  def __init__(self, cin, cout, stride, expansion):
    super().__init__()
    hidden = cin * expansion
    layers = [] if expansion == 1 else [conv_bn(cin, hidden, 1, act=nn.ReLU6)]
    layers += [conv_bn(hidden, hidden, 3, stride, groups=hidden, act=nn.ReLU6),
               conv_bn(hidden, cout, 1)]
    self.conv = nn.Sequential(*layers)
    self.residual = stride == 1 and cin == cout

  def forward(self, x):
    return x + self.conv(x) if self.residual else self.conv(x)


def mobilenet_v2(num_classes=10):
  """MobileNetV2, CIFAR variant: stride 1 in the stem and in the second stage."""
  settings = ((1, 16, 1, 1), (6, 24, 2, 1), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1),
              (6, 160, 3, 2), (6, 320, 1, 1))
  layers = [conv_bn(3, 32, 3, 1, act=nn.ReLU6)]
  cin = 32
  for t, c, n, s in settings:
    for j in range(n):
      layers.append(InvertedResidual(cin, c, s if j == 0 else 1, t))
      cin = c
  layers += [conv_bn(cin, 1280, 1, act=nn.ReLU6), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
             nn.Dropout(0.2), nn.Linear(1280, num_classes)]
  return nn.Sequential(*layers)


MODELS = {"resnet18": resnet18, "mobilenet_v2": mobilenet_v2}


class Runner:
  """One model in one memory layout, with its data and optimizer, warmed up."""

  def __init__(self, model, layout, kind, batch):
    torch.manual_seed(0)
    self.format = torch.channels_last if layout == "channels_last" else torch.contiguous_format
    self.net = MODELS[model]().to(memory_format=self.format)
    self.x = torch.randn(batch, 3, 32, 32).to(memory_format=self.format)
    self.y = torch.randint(0, 10, (batch,))
    self.kind = kind
    # train_step.py's optim.Recipe(lr=0.1, momentum=0.9, weight_decay=5e-4): the same update.
    self.opt = torch.optim.SGD(self.net.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    self.loss = nn.CrossEntropyLoss()
    self.run(2)

  def step(self):
    if self.kind == "train":
      self.net.train()
      self.opt.zero_grad(set_to_none=True)
      self.loss(self.net(self.x), self.y).backward()
      self.opt.step()
    else:
      self.net.eval()
      with torch.inference_mode():
        self.net(self.x)

  def run(self, steps):
    """Wall and process CPU seconds of each of ``steps`` steps."""
    wall, cpu = [], []
    for _ in range(steps):
      tic, cpu_tic = time.perf_counter(), time.process_time()
      self.step()
      wall.append(time.perf_counter() - tic)
      cpu.append(time.process_time() - cpu_tic)
    return wall, cpu


def main():
  runners = {}
  print(json.dumps({"torch": torch.__version__, "threads": torch.get_num_threads()}), flush=True)
  for line in sys.stdin:
    request = json.loads(line)
    key = (request["model"], request["layout"], request["kind"], request.get("batch", 128))
    if key not in runners:
      runners[key] = Runner(*key)
    wall, cpu = runners[key].run(request["steps"])
    print(json.dumps({"seconds": wall, "cpu_seconds": cpu}), flush=True)


if __name__ == "__main__":
  main()
