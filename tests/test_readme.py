"""The README's Python blocks run verbatim, in order, in one namespace (offline, on digits).

They run in a fresh interpreter (one CPU device, the README's view of the world)
in a scratch working directory; afterwards the test reads the tour's final
model (as the block with the EASIER loop left it) and scores it on the digits
test split itself. Two tests check what the README's prose says surgery makes of
the tour's sites and of the surgery benchmark's against what surgery computes.
"""
import json
import os
import pathlib
import re
import subprocess
import sys

import numpy as np

import _scripts
import jaxdepth
from jaxdepth import surgery, zoo

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
collapsed, _ = jaxdepth.surgery.collapse(tour["shallow"], tour["variables"])
json.dump({"removed": list(tour["removed_sites"](tour["spec"], tour["gates"])),
           "identity_sites": [p for p, n in tour["shallow"].walk()
                              if isinstance(n, jaxdepth.Act) and n.fn == "identity"],
           "surgery": jaxdepth.surgery.summary(tour["shallow"], collapsed)},
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
  # The prose before the surgery block quotes what exact surgery makes of the removed sites.
  readme = (ROOT / "README.md").read_text()
  before_block = readme[:readme.index("surgery.collapse(shallow, variables)")]
  prose = before_block.rsplit("\n```\n", 1)[-1]
  depth = {k: result["surgery"][k]["weight_depth"] for k in ("before", "after")}
  macs = {k: result["surgery"][k]["macs"] for k in ("before", "after")}
  assert f"weight depth {depth['before']} → {depth['after']}" in prose, (depth, prose)
  assert ("MACs unchanged" in prose) == (macs["before"] == macs["after"]), (macs, prose)


def test_the_readme_names_the_one_interior_merge_of_the_resnet18_surgery_benchmark():
  # benchmarks/surgery_latency.py's ResNet-18 sites and weights, collapsed as its
  # merged_interior form is (no timing).
  bench = _scripts.load("benchmarks/surgery_latency.py")
  spec = zoo.get("resnet18")
  log = []
  merged, _ = surgery.collapse(jaxdepth.with_identity(spec, bench.MODELS["resnet18"](spec)),
                               bench.random_variables(spec), mode="interior", log=log)
  assert [e.path for e in log if e.kind == "merge"] == ["layer4/1/conv1"]
  assert [e.path for e in log if e.kind == "fold_residual"] == ["layer4/1/conv1"]
  assert {n.kernel for _, n in merged.walk() if isinstance(n, jaxdepth.Conv)} == {(3, 3), (1, 1)}
  readme = (ROOT / "README.md").read_text()
  entry = readme[readme.index("- `surgery_latency.py`"):]
  entry = entry[:entry.index("\n- ")]
  assert "one merge, in `layer4/1`" in entry and "5×5" not in entry, entry
