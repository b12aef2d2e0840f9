"""How far apart runs on different device counts end: trains the offline default
(``python -m jaxdepth fit``: digits_cnn on digits, its recipe) with 1 and with 2 (fake
CPU) devices, each in its own process, and prints the largest parameter difference
and both test accuracies.

    .venv/bin/python scripts/device_count_drift.py [epochs]     # default: the recipe's 10

Same seed, same global batch: only the order of the floating-point reductions
(the gradient and BatchNorm statistics summed over devices) differs.
"""
import json
import os
import subprocess
import sys
import tempfile

import numpy as np


def _train(epochs: int, out: str) -> None:
  import dataclasses
  import jax
  from jaxdepth import data, network, optim, training, zoo
  sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
  from jaxdepth.train.configs import digits as config
  cfg = config.get_config()
  fields = {f.name for f in dataclasses.fields(optim.Recipe)}
  recipe = optim.Recipe.from_dict({k: v for k, v in cfg.items() if k in fields})
  recipe = recipe.replace(epochs=epochs or recipe.epochs)
  spec, dataset = zoo.get(cfg["model"]), data.load(cfg["dataset"])
  result = training.fit(spec, network.init(spec, jax.random.key(0)), dataset, recipe, seed=0,
                        progress=False)
  test = training.evaluate(spec, result.variables, dataset.test, batch_size=512)
  leaves = jax.tree_util.tree_flatten_with_path(result.variables)[0]
  np.savez(out, **{jax.tree_util.keystr(k): np.asarray(v) for k, v in leaves})
  print(json.dumps({"devices": jax.device_count(), "epochs": recipe.epochs,
                    "test_accuracy": test.accuracy}))


def main() -> None:
  epochs = int(sys.argv[1]) if len(sys.argv) > 1 else 0
  with tempfile.TemporaryDirectory() as tmp:
    runs = {}
    for n in (1, 2):
      out = os.path.join(tmp, f"{n}.npz")
      env = dict(os.environ, JAX_PLATFORMS="cpu",
                 XLA_FLAGS=f"--xla_force_host_platform_device_count={n}")
      line = subprocess.run([sys.executable, __file__, "--train", str(epochs), out], env=env,
                            check=True, capture_output=True, text=True).stdout.strip().splitlines()
      runs[n] = (json.loads(line[-1]), dict(np.load(out)))
    (info1, a), (info2, b) = runs[1], runs[2]
    assert info1["devices"] == 1 and info2["devices"] == 2
    diff = max(float(np.max(np.abs(a[k] - b[k]))) for k in a)
    scale = max(float(np.max(np.abs(a[k]))) for k in a)
    print(f"{info1['epochs']} epochs of digits_cnn on digits, 1 vs 2 devices: max |param "
          f"difference| {diff:.2e} (largest |param| {scale:.2f}); test accuracy "
          f"{100 * info1['test_accuracy']:.2f} % vs {100 * info2['test_accuracy']:.2f} %")


if __name__ == "__main__":
  if sys.argv[1:2] == ["--train"]:
    _train(int(sys.argv[2]), sys.argv[3])
  else:
    main()
