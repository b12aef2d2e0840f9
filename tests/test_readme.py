"""The README's Python blocks run verbatim, in order, in one namespace (offline, on digits).

They run in a fresh interpreter (one CPU device, the README's view of the world)
in a scratch working directory; afterwards the test reads the tour's final
model (as the block with the EASIER loop left it) and scores it on the digits
test split itself.
"""
import json
import os
import pathlib
import re
import subprocess
import sys

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parent.parent
BLOCK = re.compile(r"^```python\n(.*?)^```", re.S | re.M)

# Runs the blocks, then writes what the test checks. Nothing here feeds the blocks.
_RUNNER = """
import json, sys, traceback
blocks = json.load(open(sys.argv[1]))
ns = {"__name__": "__readme__"}
tour = None
for i, code in enumerate(blocks):
  try:
    exec(compile(code, f"README.md python block {i + 1}", "exec"), ns)
  except BaseException:
    traceback.print_exc()
    sys.exit(10 + i)
  if tour is None and "easier.choose" in code:
    tour = dict(ns)   # the tour's names, as its EASIER loop left them (later blocks may reuse them)
import numpy as np, jax, jaxdepth
images, labels, masks, logits = [], [], [], []
for batch in tour["ds"].test.batches(128, seed=0, epoch=0):
  out = jaxdepth.forward(tour["shallow"], tour["variables"], batch["image"])
  logits.append(np.asarray(out.logits)); labels.append(np.asarray(batch["label"]))
  masks.append(np.asarray(batch["mask"]))
np.savez(sys.argv[2], logits=np.concatenate(logits), labels=np.concatenate(labels),
         mask=np.concatenate(masks))
json.dump({"removed": list(tour["removed_sites"](tour["spec"], tour["gates"])),
           "identity_sites": [p for p, n in tour["shallow"].walk()
                              if isinstance(n, jaxdepth.Act) and n.fn == "identity"]},
          open(sys.argv[3], "w"))
"""


def readme_blocks():
  return BLOCK.findall((ROOT / "README.md").read_text())


def test_readme_has_the_tour_blocks():
  blocks = readme_blocks()
  assert len(blocks) >= 3
  assert any("easier.choose" in b for b in blocks)


def test_readme_python_blocks_run_verbatim_and_the_tour_ends_trained(tmp_path):
  (tmp_path / "blocks.json").write_text(json.dumps(readme_blocks()))
  (tmp_path / "runner.py").write_text(_RUNNER)
  env = {k: v for k, v in os.environ.items() if not k.startswith(("XLA_", "JAX_"))}
  env["JAX_PLATFORMS"] = "cpu"
  done = subprocess.run(
      [sys.executable, "runner.py", "blocks.json", "out.npz", "out.json"], cwd=tmp_path,
      capture_output=True, text=True, timeout=900, env=env)
  assert done.returncode == 0, (f"README block {done.returncode - 9} failed:\n"
                                f"{done.stdout[-2000:]}\n{done.stderr[-4000:]}")
  result = json.loads((tmp_path / "out.json").read_text())
  arrays = np.load(tmp_path / "out.npz")
  mask = arrays["mask"]
  accuracy = float((arrays["logits"].argmax(-1) == arrays["labels"])[mask].mean())
  # Three sites removed (at least one per round), baked into the saved spec as identities.
  assert len(result["removed"]) >= 3
  assert sorted(result["identity_sites"]) == sorted(result["removed"])
  # Fine-tuned after the last removal: far above chance (10 %) on the 10 digit classes.
  assert mask.sum() > 300
  print(f"README tour: {result['removed']} removed, test accuracy {accuracy:.4f}")
  assert accuracy > 0.8, accuracy
  assert (tmp_path / "out" / "digits_shallow" / "spec.json").exists()
