"""The iteration driver on digits (1-epoch iterations): report, saved models, resume, refusals."""
import json
import pathlib
import re
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxdepth
from jaxdepth import (checkpoint, costs, data, driver, integrity, network, optim, report, surgery,
                     timing, training, zoo)
from jaxdepth.methods import TLC, Easier, Egp, base
from jaxdepth.train import __main__ as cli
from jaxdepth.train import command

RECIPE = optim.Recipe(epochs=1, batch_size=64, optimizer="adam", lr=3e-3)
ITERATIONS = 3
REQUIRED = ("unit", "units_removed", "units_total", "removed_now", "entropies", "val_accuracy",
            "test_accuracy", "params", "macs", "depth")


class Killed(RuntimeError):
  pass


@pytest.fixture(scope="module")
def digits():
  return data.load("digits"), zoo.digits_cnn(width=8)


def _run(digits, workdir, **kw):
  ds, spec = digits
  return driver.run(Easier(), spec, ds, RECIPE, workdir, iterations=ITERATIONS, progress=False,
                    eval_batch_size=512, **kw)


def _recording_trainer(calls):
  def train(spec, variables, dataset, recipe, **kw):
    result = training.fit(spec, variables, dataset, recipe, progress=False, **kw)
    calls.append({"variables": variables, "trained": result.variables, **kw})
    return result
  return train


@pytest.fixture(scope="module")
def finished(digits, tmp_path_factory):
  """One 3-iteration run that the tests below inspect."""
  workdir = tmp_path_factory.mktemp("easier")
  calls = []
  result = _run(digits, workdir, trainer=_recording_trainer(calls))
  return workdir, result, calls


def _params(directory):
  return jax.tree.leaves(checkpoint.load_model(directory)[1])


def test_report_has_one_entry_per_iteration_and_the_sites_come_off_one_by_one(digits, finished):
  (_, spec), (workdir, result, _) = digits, finished
  rep = json.loads((workdir / "report.json").read_text())
  assert rep == json.loads(json.dumps(result.report))
  entries = rep["iterations"]
  assert [e["iteration"] for e in entries] == list(range(ITERATIONS))
  assert all(k in e for e in entries for k in REQUIRED)
  removed = []
  for i, e in enumerate(entries):
    assert e["units_removed"] == i and e["removed"] == sorted(removed, key=spec.sites().index)
    assert e["units_total"] == len(spec.sites()) == 6 and e["unit"] == "site"
    live = [s for s in spec.sites() if s not in removed]
    assert list(e["entropies"]) == live                      # removed sites are not measured
    lowest = min(live, key=e["entropies"].__getitem__)
    assert e["removed_now"] == [lowest]
    assert e["depth"]["nonlinear_depth"] <= 6 - i + (i > 0)  # identities shorten some path
    assert 0 <= e["val_accuracy"] <= 1 and 0 <= e["test_accuracy"] <= 1   # fractions
    assert e["params"] > 0 and e["macs"] > 0
    removed += e["removed_now"]
  assert rep["chosen"]["iteration"] == driver.choose_operating_point(entries, 1.0)["iteration"]
  assert rep["finished"] and "never applied" in rep["note"]


def test_the_note_on_the_last_removal_is_left_out_when_the_last_iteration_removed_nothing(
    digits, tmp_path):
  ds, spec = digits
  # TLC's stop rule (validation below 100 %) holds after iteration 0, which then decides nothing.
  result = driver.run(TLC(accuracy_threshold=100.0), spec, ds, RECIPE, tmp_path,
                      iterations=ITERATIONS, progress=False, eval_batch_size=512,
                      latency_batches=())
  (entry,) = result.report["iterations"]
  assert entry["val_accuracy"] < 1.0 and entry["removed_now"] == []
  assert result.report["note"] is None
  assert "never applied" not in (tmp_path / "report.md").read_text()


def test_each_iteration_fine_tunes_the_last_weights_with_the_removed_sites_gated(finished):
  workdir, _, calls = finished
  entries = json.loads((workdir / "report.json").read_text())["iterations"]
  assert len(calls) == ITERATIONS
  for i, call in enumerate(calls):
    gates = np.asarray(call["options"].gates)
    spec = zoo.digits_cnn(width=8)
    off = [s for s, g in zip(spec.sites(), gates) if g == 0]
    assert off == entries[i]["removed"] and call["options"].stats_last_epoch
    assert call["seed"] == driver.iteration_seed(0, i)
    if i:   # starts from the weights iteration i-1 ended with
      for a, b in zip(jax.tree.leaves(call["variables"]), jax.tree.leaves(calls[i - 1]["trained"])):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_saved_models_reload_and_score_what_the_report_says(digits, finished):
  (ds, spec), (workdir, result, _) = digits, finished
  rep = result.report
  chosen = rep["chosen"]
  shallow, variables = checkpoint.load_model(workdir / "chosen")
  assert set(spec.sites()) - set(shallow.sites()) == set(chosen["removed"])
  test = training.evaluate(shallow, variables, ds.test, batch_size=512)
  assert test.accuracy == pytest.approx(chosen["test_accuracy"], abs=1e-9)
  # The merged form (BatchNorm folded, identities dropped) is the same function.
  merged_spec, merged_vars = checkpoint.load_model(workdir / "chosen_merged")
  x = next(ds.test.batches(64))["image"]
  a = np.asarray(network.forward(shallow, variables, x).logits, np.float64)
  b = np.asarray(network.forward(merged_spec, merged_vars, x).logits, np.float64)
  np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-4 * np.abs(a).max())
  merged = chosen["merged"]
  assert merged["max_abs_diff"] < 1e-4 * np.abs(a).max() and merged["top1_agreement"] == 1.0
  assert merged["params_after"] < merged["params_before"] == chosen["params"]
  assert not any(n.kind == "batch_norm" for _, n in merged_spec.walk())
  assert abs(merged["test_accuracy"] - chosen["test_accuracy"]) <= 1 / 359
  # Every iteration's model is kept; the gated run and the baked model agree.
  last = rep["iterations"][-1]
  spec_it, var_it = checkpoint.load_model(workdir / "iterations" / f"{ITERATIONS - 1:03d}" / "model")
  assert len(spec_it.sites()) == 6 - last["units_removed"]
  val = training.evaluate(spec_it, var_it, ds.val, batch_size=512)
  assert val.accuracy == pytest.approx(last["val_accuracy"], abs=1e-9)
  # Each entry's merged costs are those of its model collapsed by exact surgery.
  collapsed, _ = surgery.collapse(spec_it, var_it, mode="exact")
  assert last["merged"] == {"params": costs.count_params(collapsed),
                            "macs": costs.count_macs(collapsed),
                            "nonlinear_depth": costs.depth(collapsed).nonlinear_depth,
                            "weight_depth": costs.depth(collapsed).weight_depth}


def test_the_merged_report_lists_edits_skips_and_latencies(finished):
  workdir, result, _ = finished
  chosen = result.report["chosen"]
  merged = chosen["merged"]
  shallow, variables = checkpoint.load_model(workdir / "chosen")
  log = []
  surgery.collapse(shallow, variables, mode="exact", log=log)
  assert merged["edits"] == [driver.edit_record(e) for e in log if e.kind != "skip"]
  assert merged["skipped"] == [driver.edit_record(e) for e in log if e.kind == "skip"]
  assert {e["kind"] for e in merged["edits"]} >= {"fold_bn"}
  assert all(s["reason"] for s in merged["skipped"])
  # digits_cnn's removed sites sit next to residual blocks or between padded 3x3 convs.
  assert len(merged["skipped"]) >= chosen["units_removed"] > 0
  assert [row["batch"] for row in merged["latency"]] == [1, 512]
  for row in merged["latency"]:
    assert set(row) == {"batch", "dense_ms", "chosen_ms", "merged_ms"}
    assert all(row[k] > 0 for k in row)
  md = (workdir / "report.md").read_text()
  assert "| batch 512 |" in md and f"Merges skipped ({len(merged['skipped'])}):" in md
  for s in merged["skipped"]:
    assert f"- {s['detail']}: {s['reason']}" in md


def test_report_files(finished):
  workdir, result, _ = finished
  md = (workdir / "report.md").read_text()
  assert md == report.table(result.report)
  assert "on a test batch (in float32)." in md and "Accuracies are measured" not in md
  assert md.count("\n| ") == ITERATIONS + 1 + 3     # iterations and header; latency table
  assert "**Chosen**" in md and "never applied" in md
  for name in ("accuracy.png", "entropies.png", "costs.png", "training.png"):
    assert (workdir / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
  # The layout the driver's docstring (and the README) describe.
  histories = {}
  for it in range(ITERATIONS):
    records = [json.loads(line) for line in
               (workdir / "iterations" / f"{it:03d}" / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1] and 0 <= records[0]["val_accuracy"] <= 1
    assert (workdir / "iterations" / f"{it:03d}" / "model" / "spec.json").exists()
    histories[it] = records
  assert report.read_histories(workdir) == histories


def test_plots_mark_the_chosen_point_on_validation_and_label_their_units(finished):
  _, result, _ = finished
  rep = result.report
  chosen = next(e for e in rep["iterations"] if e["iteration"] == rep["chosen"]["iteration"])
  fig = report._accuracy_figure(rep)
  (star,) = [l for l in fig.axes[0].lines if l.get_label() == "chosen (on validation)"]
  assert list(star.get_xdata()) == [chosen["units_removed"]]
  assert list(star.get_ydata()) == [100 * chosen["val_accuracy"]]
  assert fig.axes[0].get_ylabel() == "top-1 accuracy (%)"
  scores = report._scores_figure(rep)
  assert scores.axes[1].get_ylabel() == "entropies (bits)"            # the colour bar
  costs_fig = report._costs_figure(rep)
  assert [ax.get_xlabel() for ax in costs_fig.axes] == [
      "MACs per example (merged network)", "non-linear depth (layers)",
      "weight depth (layers, merged network)"]
  xs = [list(l.get_xdata()) for l in costs_fig.axes[0].lines if l.get_label() == "validation"]
  assert xs == [[e["merged"]["macs"] for e in rep["iterations"]]]
  histories = {0: [{"epoch": 1, "train_loss": 1.0, "train_accuracy": 0.5, "val_accuracy": 0.25},
                   {"epoch": 2, "train_loss": 0.5, "train_accuracy": 0.75}]}
  train_fig = report._training_figure(rep, histories)
  curves = {l.get_label(): (list(l.get_xdata()), list(l.get_ydata()))
            for l in train_fig.axes[1].lines}
  assert curves["iteration 0 (0 removed)"] == ([1], [25.0])
  for f in (fig, scores, costs_fig, train_fig):
    for ax in f.axes:
      assert ax.get_ylabel() and (ax.get_xlabel() or ax is scores.axes[1])


def test_signed_scores_are_centred_on_zero_and_marks_follow_the_scored_units():
  """TLC's loss gaps are signed (a colour map centred on 0), and with MobileNetV2's projection
  quirk a candidate is named by its weight layer while the removed site is another: the heat map
  raised ValueError (list.index) there, so report.write failed after the run."""
  entries = [{"iteration": 0, "removed_now": ["b/relu"], "decision": {"chosen": ["b/conv3"]},
              "loss_gaps": {"a/relu": {"gap": -0.5}, "b/conv3": {"gap": 2.0}}},
             {"iteration": 1, "removed_now": [], "loss_gaps": {"a/relu": {"gap": 0.25}}}]
  fig = report._scores_figure({"iterations": entries, "score_name": "loss_gaps"})
  image = fig.axes[0].images[0]
  assert image.get_cmap().name == "coolwarm" and image.get_clim() == (-2.0, 2.0)
  marks = [(list(l.get_xdata()), list(l.get_ydata())) for l in fig.axes[0].lines]
  assert marks == [([0], [1])]     # iteration 0, row b/conv3 (b/relu is no row)
  unsigned = report._scores_figure({"iterations": entries[1:], "score_name": "loss_gaps"})
  assert unsigned.axes[0].images[0].get_cmap().name == "viridis"


def test_choose_operating_point():
  def entry(i, val):
    return {"iteration": i, "units_removed": i, "val_accuracy": val}
  entries = [entry(0, 0.90), entry(1, 0.91), entry(2, 0.89), entry(3, 0.889), entry(4, 0.70)]
  assert driver.choose_operating_point(entries, 1.0)["iteration"] == 2
  assert driver.choose_operating_point(entries, 1.1)["iteration"] == 3
  assert driver.choose_operating_point(entries, 0.0)["iteration"] == 1
  with pytest.raises(ValueError, match="tolerance must be"):
    driver.choose_operating_point(entries, -0.5)


def test_a_killed_run_resumes_to_the_same_result(digits, finished, tmp_path):
  workdir, result, _ = finished

  def kill_after_first(it, entry):
    if it == 0:
      raise Killed

  with pytest.raises(Killed):
    _run(digits, tmp_path, after_iteration=kill_after_first)
  assert json.loads((tmp_path / "report.json").read_text())["finished"] is False

  def train_then_die(spec, variables, dataset, recipe, **kw):
    result = training.fit(spec, variables, dataset, recipe, progress=False, **kw)
    if kw["seed"] == driver.iteration_seed(0, 2):   # dies in iteration 2, after fit's checkpoint
      raise Killed
    return result

  with pytest.raises(Killed):
    _run(digits, tmp_path, trainer=train_then_die)
  resumed = _run(digits, tmp_path)
  assert report.without_timings(resumed.report) == report.without_timings(result.report)
  for a, b in zip(_params(tmp_path / "chosen"), _params(workdir / "chosen")):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  last = f"iterations/{ITERATIONS - 1:03d}/model"
  for a, b in zip(_params(tmp_path / last), _params(workdir / last)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def _snapshot(directory: pathlib.Path):
  return {p: p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


def test_bad_input_is_refused_and_overwrites_nothing(digits, finished, tmp_path):
  (ds, spec), (workdir, _, _) = digits, finished
  before = _snapshot(workdir)
  with pytest.raises(ValueError, match="tolerance must be"):
    driver.run(Easier(), spec, ds, RECIPE, tmp_path / "new", tolerance=-1.0)
  assert not (tmp_path / "new").exists()
  with pytest.raises(checkpoint.SpecMismatchError, match="another model"):
    driver.run(Easier(), zoo.digits_cnn(width=16), ds, RECIPE, workdir, progress=False)
  with pytest.raises(driver.RunMismatchError, match="lr: 0.003 there, 0.01 asked") as e:
    driver.run(Easier(), spec, ds, RECIPE.replace(lr=0.01), workdir, progress=False)
  assert "recipe" in e.value.settings                # the keys that differ, for a caller's words
  with pytest.raises(driver.RunMismatchError, match="estimator"):
    driver.run(Easier(estimator="dataset"), spec, ds, RECIPE, workdir, progress=False)
  with pytest.raises(ValueError, match="iterations must be"):
    driver.run(Easier(), spec, ds, RECIPE, workdir, iterations=0)
  with pytest.raises(TypeError, match=r"method must be an instance, e.g. Easier\(\), got the "
                                      r"class Easier"):
    driver.run(Easier, spec, ds, RECIPE, workdir)
  other = network.init(zoo.digits_cnn(width=16), jax.random.key(0))
  with pytest.raises(ValueError, match=f"the variables do not fit spec {spec.name!r}"):
    driver.run(Easier(), spec, ds, RECIPE, tmp_path / "new", variables=other)
  assert not (tmp_path / "new").exists()
  with pytest.raises(ValueError, match=r"latency_batches must be batch sizes >= 1 .*\(0,\)"):
    driver.run(Easier(), spec, ds, RECIPE, workdir, latency_batches=(0,))
  # The run started from init(spec, key(0)): other starting weights are another run.
  with pytest.raises(driver.RunMismatchError, match=r"variables: None there, '[0-9a-f]{16}' "
                     r"asked\) \(variables is a digest of the initial variables") as e:
    driver.run(Easier(), spec, ds, RECIPE, workdir, progress=False,
               variables=network.init(spec, jax.random.key(1)))
  assert "variables" in e.value.settings and "recipe" not in e.value.settings
  # The evaluation batch is the statistics' batch too: another one is another run.
  with pytest.raises(driver.RunMismatchError, match="eval_batch_size: 512 there, 256 asked"):
    driver.run(Easier(), spec, ds, RECIPE, workdir, progress=False, eval_batch_size=256)
  # The same dataset name with other splits is other data (it resumed on them, mixing the two).
  halved = data.load("digits", val_fraction=0.5)
  with pytest.raises(driver.RunMismatchError,
                     match=rf"data.examples.train: {ds.train.num_examples} there, "
                           rf"{halved.train.num_examples} asked; data.examples.val: "):
    _run((halved, spec), workdir)
  assert _snapshot(workdir) == before
  fit_run = tmp_path / "fit_run"          # a `python -m jaxdepth fit` work directory
  fit_run.mkdir()
  (fit_run / "run.json").write_text(json.dumps({"model": "digits_cnn", "dataset": "digits"}))
  with pytest.raises(driver.RunMismatchError, match=r"holds a run without a method \(python -m jaxdepth fit"):
    driver.run(Easier(), spec, ds, RECIPE, fit_run)
  assert [p.name for p in fit_run.iterdir()] == ["run.json"]
  # A run of the same method that stopped before saving anything owns nothing.
  failed = tmp_path / "failed"
  failed.mkdir()
  (failed / "run.json").write_text(json.dumps({"method": "easier", "seed": 99}))
  again = driver.run(Easier(), spec, ds, RECIPE, failed, iterations=1, progress=False,
                     latency_batches=())
  assert json.loads((failed / "run.json").read_text())["seed"] == 0
  assert "latency" not in again.report["chosen"]["merged"]     # () timed nothing
  no_val = data.load("digits", val_fraction=0.0)
  with pytest.raises(ValueError, match="no validation split"):
    driver.run(Easier(), spec, no_val, RECIPE, tmp_path / "new")
  assert not (tmp_path / "new").exists()


@pytest.mark.parametrize("text, why", [("", "it is empty"), ("[1]", "it holds a JSON array"),
                                       ('{"method": ', "Expecting value")])
def test_a_damaged_run_json_is_refused_naming_it_and_nothing_is_written(digits, tmp_path, text,
                                                                       why):
  """A run.json cut short or edited into another JSON value was read unguarded: a
  JSONDecodeError or AttributeError that named no file."""
  (tmp_path / "checkpoints" / "1").mkdir(parents=True)
  (tmp_path / "checkpoints" / "1" / "state").write_bytes(b"a checkpoint")
  (tmp_path / "run.json").write_text(text)
  before = _snapshot(tmp_path)
  with pytest.raises(driver.RunMismatchError) as e:
    _run(digits, tmp_path)
  assert str(e.value).startswith(
      f"work directory {tmp_path}: run.json is not the JSON object jaxdepth writes ({why}")
  assert str(e.value).endswith("it records the run's settings: restore it, or move the "
                               "directory aside or use another directory")
  assert _snapshot(tmp_path) == before
  assert driver.read_run_json(tmp_path / "none") is None


def test_a_run_json_that_cannot_be_read_is_refused_naming_it(digits, tmp_path):
  """A run.json that is a directory (or unreadable) gave a raw IsADirectoryError traceback."""
  (tmp_path / "run.json").mkdir()
  with pytest.raises(driver.RunMismatchError) as e:
    _run(digits, tmp_path)
  assert str(e.value).startswith(f"work directory {tmp_path}: run.json cannot be read (Is a "
                                 f"directory); it records the run's settings: restore it")
  assert [p.name for p in tmp_path.iterdir()] == ["run.json"]


def test_a_method_of_ones_own_with_the_two_argument_check_data_is_still_checked(digits, tmp_path):
  # The protocol's check_data(spec, dataset) before the driver passed eval_batch_size and mesh.
  ds, spec = digits
  checked, trained = [], []

  class Mine(Easier):
    def check_data(self, spec, dataset):   # pylint: disable=arguments-differ
      checked.append(dataset.name)

  def trainer(*args, **kw):
    trained.append(True)
    raise RuntimeError("stop after the check")

  with pytest.raises(RuntimeError, match="stop after the check"):
    driver.run(Mine(), spec, ds, RECIPE, tmp_path, progress=False, trainer=trainer)
  assert checked == ["digits"] and trained == [True]


def test_the_compute_dtype_is_part_of_the_run_and_its_report(digits, tmp_path):
  # fit refuses another dtype only inside an iteration; its epoch checkpoints go once it ends.
  ds, spec = digits

  def run(dtype, iterations=1):
    return driver.run(Easier(), spec, ds, RECIPE, tmp_path, iterations=iterations, dtype=dtype,
                      progress=False, eval_batch_size=512, latency_batches=(), merge=False)

  first = run(jnp.bfloat16)
  assert first.report["dtype"] == "bfloat16"
  # The saved models (removed units gone) may round to other bfloat16 accuracies: said.
  assert ("Accuracies are measured in bfloat16 on the network as trained"
          in (tmp_path / "report.md").read_text())
  assert json.loads((tmp_path / "run.json").read_text())["dtype"] == "bfloat16"
  before = _snapshot(tmp_path)
  with pytest.raises(driver.RunMismatchError, match="dtype: 'bfloat16' there, 'float32' asked"):
    run(None, iterations=2)
  assert _snapshot(tmp_path) == before
  # The same dtype by another name resumes (the finished run trains nothing more).
  assert run("bfloat16").report["iterations"] == first.report["iterations"]
  # A run.json written before the dtype, the evaluation batch and the data were recorded says
  # nothing of them: it resumes.
  stored = json.loads((tmp_path / "run.json").read_text())
  del stored["dtype"], stored["eval_batch_size"], stored["data"]
  (tmp_path / "run.json").write_text(json.dumps(stored))
  assert run(jnp.dtype("bfloat16")).report["dtype"] == "bfloat16"


def test_the_device_count_is_part_of_the_run_and_its_report(digits, tmp_path):
  # Another device count rounds differently: a resume on it ends as neither count's run.
  ds, spec = digits

  def run(devices):
    return driver.run(Easier(), spec, ds, RECIPE, tmp_path, iterations=1, progress=False,
                      eval_batch_size=512, latency_batches=(), merge=False,
                      mesh=training.make_mesh(jax.devices()[:devices]))

  first = run(1)   # the mesh's devices, not the process's 2
  assert first.report["devices"] == 1
  assert json.loads((tmp_path / "run.json").read_text())["devices"] == 1
  before = _snapshot(tmp_path)
  with pytest.raises(driver.RunMismatchError,
                     match=r"\(devices: 1 there, 2 asked\) \(devices is the number of devices .*"
                           r"resume it on 1 device, e.g. JAX_NUM_CPU_DEVICES=1.*\); use another "
                           r"directory"):
    run(2)
  assert _snapshot(tmp_path) == before
  # A run.json written before the device count was recorded resumes on any (the finished
  # run trains nothing more).
  stored = json.loads((tmp_path / "run.json").read_text())
  del stored["devices"]
  (tmp_path / "run.json").write_text(json.dumps(stored))
  assert run(2).report["iterations"] == first.report["iterations"]


def _record_timed_dtypes(monkeypatch):
  """The dtype each network timed by jaxdepth.timing computes in, read off its jaxpr (the
  logits are float32 either way)."""
  seen, real = [], timing.Network

  class Recording:
    def __init__(self, spec, **kw):
      self.network = real(spec, **kw)

    def apply(self, variables, x):
      ops = str(jax.make_jaxpr(self.network.apply)(variables, x))
      seen.append("bfloat16" if "bf16[" in ops else "float32")
      return self.network.apply(variables, x)

  monkeypatch.setattr(timing, "Network", Recording)
  return seen


def test_latencies_are_timed_in_the_runs_compute_dtype(digits, tmp_path, monkeypatch):
  ds, spec = digits
  seen = _record_timed_dtypes(monkeypatch)
  result = driver.run(Easier(), spec, ds, RECIPE, tmp_path, iterations=1, dtype=jnp.bfloat16,
                      progress=False, eval_batch_size=512, latency_batches=(1,))
  assert [row["batch"] for row in result.report["chosen"]["merged"]["latency"]] == [1]
  assert seen == ["bfloat16"] * 3                     # dense, chosen and merged
  seen.clear()                                        # a batch the report lacks: timed again
  assert command.latencies_at(result.report, tmp_path, 2)["batch"] == 2
  assert seen == ["bfloat16"] * 3
  seen.clear()                                        # a float32 run's models stay float32
  command.latencies_at({**result.report, "dtype": "float32"}, tmp_path, 2)
  assert seen == ["float32"] * 3
  seen.clear()
  timing.latencies({"chosen": checkpoint.load_model(tmp_path / "chosen")}, 2, repeats=1)
  assert seen == ["float32"]


def test_a_run_from_given_variables_is_never_restarted_from_init_when_no_checkpoint_is_left(
    digits, tmp_path):
  """A run killed before sealing its only iteration checkpoint (dropped as unfinished when the
  directory is opened) and resumed with ``variables=None`` would start again from
  ``init(spec, key(seed))``; given the variables it started from, it ends as before."""
  ds, spec = digits
  start = network.init(spec, jax.random.key(1))

  def run(variables):
    return driver.run(Easier(), spec, ds, RECIPE, tmp_path, variables=variables, iterations=1,
                      progress=False, eval_batch_size=512, latency_batches=())

  first = run(start)
  chosen = _params(tmp_path / "chosen")
  manifest = tmp_path / "checkpoints" / "1" / integrity.MANIFEST
  manifest.rename(manifest.with_name(integrity.MANIFEST + ".tmp"))   # killed before the seal,
  for name in ("report.json", "report.md", "chosen", "chosen_merged"):   # so before these
    shutil.rmtree(tmp_path / name) if (tmp_path / name).is_dir() else (tmp_path / name).unlink()
  with pytest.raises(driver.RunMismatchError, match=r"started from given variables \(digest "
                     r"[0-9a-f]{16}\), and no iteration checkpoint is left .*pass the variables"
                     ) as e:
    run(None)
  assert e.value.settings == ("variables",)
  again = run(start)
  assert report.without_timings(again.report) == report.without_timings(first.report)
  for a, b in zip(_params(tmp_path / "chosen"), chosen, strict=True):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_a_damaged_iteration_model_says_how_the_run_makes_it_again(digits, finished, tmp_path):
  """A damaged model of the last iteration stopped every rerun of a finished run with advice a
  command-line user could not follow; moving the later checkpoint aside, as the error now
  says, trains that iteration again and the run ends as before."""
  workdir, result, _ = finished
  run = tmp_path / "run"
  shutil.copytree(workdir, run)
  last = ITERATIONS - 1
  model = run / "iterations" / f"{last:03d}" / "model"
  damaged = max((p for p in (model / "variables").rglob("*") if p.is_file()),
                key=lambda p: p.stat().st_size)
  damaged.write_bytes(damaged.read_bytes()[:-8])
  with pytest.raises(checkpoint.DamagedModelError,
                     match=rf"Iteration {last} of this run saved it: move checkpoints/{last + 1} "
                           rf"out of .* resumes from checkpoint {last} and trains iteration "
                           rf"{last} and the later ones again"):
    driver._iteration_model(run, last)   # what the run raises where it loads that model
  with pytest.raises(checkpoint.DamagedModelError, match="no longer holds the checkpoint taken "
                                                         "before iteration 1; run it again in"):
    spec_1 = run / "iterations" / "001" / "model" / "spec.json"
    spec_1.write_text(spec_1.read_text() + " ")
    driver._iteration_model(run, 1)
  shutil.move(run / "checkpoints" / str(last + 1), tmp_path / "aside")
  again = _run(digits, run)
  assert report.without_timings(again.report) == report.without_timings(result.report)
  for a, b in zip(_params(model), _params(workdir / "iterations" / f"{last:03d}" / "model"),
                  strict=True):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_fewer_iterations_than_a_run_holds_keep_them_all_and_say_so(digits, finished, tmp_path):
  (ds, spec), (workdir, result, _) = digits, finished
  copy = tmp_path / "copy"
  shutil.copytree(workdir, copy)
  said = []
  again = driver.run(Easier(), spec, ds, RECIPE, copy, iterations=1, progress=False,
                     eval_batch_size=512, latency_batches=(), say=said.append)
  assert said[:2] == [f"resuming {copy} after iteration {ITERATIONS - 1}",
                      f"the run already holds {ITERATIONS} iterations, more than the 1 asked: "
                      f"the report and the choice keep all of them"]
  assert len(again.report["iterations"]) == ITERATIONS
  assert again.report["chosen"]["iteration"] == result.report["chosen"]["iteration"]


def _numpy_dataset_entropy(counts):
  """The paper's estimator: q_c = #(z > 0) / #(z != 0) over the split, mean of h2 over c."""
  pos, neg, _ = np.asarray(counts, np.float64)
  q = np.where(pos + neg > 0, pos / np.maximum(pos + neg, 1), 0.0)
  h = -q * np.log2(np.maximum(q, 1e-10)) - (1 - q) * np.log2(np.maximum(1 - q, 1e-10))
  return float(np.mean(h))


def test_command_line_with_the_dataset_estimator_on_val(digits, tmp_path, capsys):
  ds, _ = digits
  args = ["easier", "--workdir", str(tmp_path), "--no-progress", "--iterations", "2",
          "--estimator", "dataset", "--entropy-split", "val",
          "--config.epochs=1", "--config.model_kwargs.width=8"]
  assert cli.main(args) == 0
  out = capsys.readouterr().out
  rep = json.loads((tmp_path / "report.json").read_text())
  assert len(rep["iterations"]) == 2 and rep["model"] == "digits_plain"
  # --no-progress still says one line per iteration.
  assert [line.split(":")[0] for line in out.splitlines() if line.startswith("iteration ")] == [
      "iteration 0", "iteration 1"]
  assert rep["method_options"] == {"estimator": "dataset", "entropy_split": "val"}
  assert report.table(rep) in out
  assert checkpoint.load_model(tmp_path / "chosen")[0].name == "digits_plain"
  # The default network merges what EASIER removed: one site out, one weight layer less.
  dense, cut = (e["merged"] for e in rep["iterations"])
  assert cut["weight_depth"] == dense["weight_depth"] - 1 and cut["macs"] < dense["macs"]
  assert "eval latency" in out and "Merges skipped" in out
  # Iteration 0's entropies are the eval-mode, zeros-discarded ones of the validation split.
  spec0, vars0 = checkpoint.load_model(tmp_path / "iterations" / "000" / "model")
  counts = training.evaluate(spec0, vars0, ds.val, batch_size=512, collect_stats=True).stats.counts
  got = rep["iterations"][0]["entropies"]
  assert list(got) == list(spec0.sites())
  np.testing.assert_allclose([got[s] for s in got],
                             [_numpy_dataset_entropy(counts[s]) for s in got], rtol=1e-5)
  # Refusals name what is wrong; nothing is written.
  before = _snapshot(tmp_path)
  assert cli.main(args + ["--tolerance", "-1"]) == 2
  assert "tolerance must be" in capsys.readouterr().err
  assert cli.main(["easier", "--workdir", str(tmp_path), "--no-progress", "--config.epochs=1"]) == 2
  assert "another model" in capsys.readouterr().err
  assert cli.main(["easier", "--workdir", str(tmp_path), "--config", "nope"]) == 2
  assert "easier_digits" in capsys.readouterr().err
  assert cli.main(["easier", "--workdir", str(tmp_path), "--config.iteration=3"]) == 2
  assert "no key 'iteration' in config easier_digits; did you mean 'iterations'?" in (
      capsys.readouterr().err)
  assert _snapshot(tmp_path) == before
  # A deleted iteration model, where a rerun reads it, is one error line and exit 2 (not a
  # traceback and 1, the code of a diverged run); unread (nothing timed), it is no matter.
  shutil.rmtree(tmp_path / "iterations" / "000" / "model")
  assert cli.main(args + ["--no-latency", "--tolerance", "100"]) == 0
  capsys.readouterr()
  assert cli.main(args) == 2
  err = capsys.readouterr().err
  assert "Traceback" not in err and "error: no saved model in " in err
  assert "Iteration 0 of this run saved it: move checkpoints/" in err


def test_a_tokenizer_larger_than_the_embedding_is_refused_before_anything_is_written(tmp_path):
  # Its ids past the table would read NaN rows: a NaN loss at the first step.
  from test_glue import bert_tokenizer, load   # pylint: disable=import-outside-toplevel
  bert_tokenizer().save(str(tmp_path / "tokenizer.json"))              # 25 tokens
  ds = load("glue/sst2", tokenizer=tmp_path / "tokenizer.json", max_length=16)
  recipe = optim.Recipe(epochs=1, batch_size=4, optimizer="adamw", lr=1e-3)
  small = zoo.tiny_encoder(vocab_size=12, input_shape=ds.input_shape)
  with pytest.raises(ValueError, match=r"the tokenizer has 25 tokens, but spec 'tiny_encoder' "
                     r"embeds 12 .*use the model's own tokenizer, or a model whose vocab_size is "
                     r"at least 25"):
    driver.run(Easier(), small, ds, recipe, tmp_path / "run", progress=False)
  assert not (tmp_path / "run").exists()
  exact = zoo.tiny_encoder(vocab_size=25, input_shape=ds.input_shape)
  result = driver.run(Easier(), exact, ds, recipe, tmp_path / "run", iterations=1,
                      progress=False, merge=False, checkpoint_epochs=False, latency_batches=())
  assert np.isfinite(result.report["iterations"][0]["val_accuracy"])


@pytest.mark.parametrize("method, split", [(Easier(estimator="dataset"), "train"),
                                           (Easier(estimator="dataset", entropy_split="val"), "val"),
                                           (Egp(estimator="dataset"), "train")])
def test_dataset_counts_too_large_for_int32_are_refused_before_anything_is_written(
    method, split, tmp_path):
  import types  # pylint: disable=import-outside-toplevel
  spec = zoo.digits_plain(width=8)
  big = types.SimpleNamespace(num_examples=10**8)      # 10^8 images of 6x6 maps and more
  small = types.SimpleNamespace(num_examples=1000)
  ds = types.SimpleNamespace(name="huge", train=big if split == "train" else small,
                             val=big if split == "val" else small, test=small)
  with pytest.raises(ValueError, match=f"over the 100,000,000 examples of the '{split}' split"):
    driver.run(method, spec, ds, RECIPE, tmp_path / "run")
  assert not (tmp_path / "run").exists()
  # The per-batch estimators keep no dataset-level count: the same data is fine for them.
  (Easier() if isinstance(method, Easier) else Egp()).check_data(spec, ds)


def test_without_epoch_checkpoints_each_iteration_log_is_this_runs(digits, tmp_path):
  # A run that stopped before its first checkpoint owns nothing, but may have left an
  # iteration's metrics.jsonl: the run that takes the directory over writes its own.
  stale = tmp_path / "iterations" / "000" / "metrics.jsonl"
  stale.parent.mkdir(parents=True)
  stale.write_text(json.dumps({"epoch": 1, "step": 1, "train_loss": 123.0}) + "\n")
  result = _run(digits, tmp_path, checkpoint_epochs=False)
  for it, entry in enumerate(result.report["iterations"]):
    logged = [json.loads(line) for line in
              (tmp_path / "iterations" / f"{it:03d}" / "metrics.jsonl").read_text().splitlines()]
    assert [r["train_loss"] for r in logged] == [entry["train_loss"]]


def test_a_run_whose_checkpoints_were_deleted_is_never_taken_over(digits, finished, tmp_path):
  """With checkpoints/ deleted (to save space), a run with other settings took the directory
  over and mixed the old iterations into its report and plots; the saved results now make the
  directory the run's, and the run itself, which cannot resume, is refused too."""
  (ds, spec), (workdir, _, _) = digits, finished
  copy = tmp_path / "copy"
  shutil.copytree(workdir, copy)
  shutil.rmtree(copy / "checkpoints")
  before = _snapshot(copy)
  with pytest.raises(driver.RunMismatchError, match="lr: 0.003 there, 0.01 asked"):
    driver.run(Easier(), spec, ds, RECIPE.replace(lr=0.01), copy, iterations=1, progress=False,
               eval_batch_size=512, latency_batches=())
  with pytest.raises(driver.RunMismatchError,
                     match="method_options.estimator: 'easier' there, 'dataset' asked"):
    driver.run(Easier(estimator="dataset"), spec, ds, RECIPE, copy, iterations=1,
               progress=False, eval_batch_size=512, latency_batches=())
  with pytest.raises(driver.RunMismatchError,
                     match=r"holds this run's results \(report.json, chosen/\) but its iteration "
                           r"checkpoints \(checkpoints/\) are gone: it can be neither resumed "
                           r"nor extended.* move .* aside or delete it; or use another"):
    _run(digits, copy, latency_batches=())
  assert _snapshot(copy) == before
  # Only an iteration's model left (a run stopped between saving it and its checkpoint,
  # without epoch checkpoints): still the run's, against other settings.
  for name in ("report.json", "chosen", "chosen_merged"):
    shutil.rmtree(copy / name) if (copy / name).is_dir() else (copy / name).unlink()
  for it in range(1, ITERATIONS):
    shutil.rmtree(copy / "iterations" / f"{it:03d}")
  before = _snapshot(copy)
  with pytest.raises(driver.RunMismatchError, match="lr: 0.003 there, 0.01 asked"):
    driver.run(Easier(), spec, ds, RECIPE.replace(lr=0.01), copy, iterations=1, progress=False,
               eval_batch_size=512, latency_batches=())
  assert _snapshot(copy) == before


def test_a_missing_iteration_model_is_refused_as_a_damaged_one_and_read_only_when_needed(
    digits, finished, tmp_path):
  """A deleted iteration model crashed every rerun with a raw FileNotFoundError (exit 1, the
  code of a diverged run); and iteration 0's was read even when nothing was timed."""
  workdir, result, _ = finished
  copy = tmp_path / "copy"
  shutil.copytree(workdir, copy)
  shutil.rmtree(copy / "iterations" / "000" / "model")
  untimed = _run(digits, copy, tolerance=100.0, latency_batches=())   # the deepest cut: not 0
  assert untimed.report["chosen"]["iteration"] == ITERATIONS - 1
  assert untimed.report["iterations"] == result.report["iterations"]
  with pytest.raises(checkpoint.DamagedModelError,
                     match=rf"no saved model in .*iterations/000/model \(spec.json is missing\)\. "
                           rf"Iteration 0 of this run saved it: move checkpoints/{ITERATIONS - 1}, "
                           rf"checkpoints/{ITERATIONS} out of .* resumes from the variables it "
                           rf"started from and trains iteration 0 and the later ones again"):
    _run(digits, copy, tolerance=100.0, latency_batches=(1,))   # timing needs the dense model


def test_no_training_epochs_are_refused_where_the_method_measures_its_training(digits, tmp_path):
  # The 'easier' estimators read the last epoch's statistics: 0 epochs left none, and the run
  # failed after iteration 0 with a word about stats_last_epoch, leaving checkpoints behind.
  ds, spec = digits
  none = RECIPE.replace(epochs=0)
  for method in (Easier(), Egp(estimator="easier")):
    with pytest.raises(ValueError, match=r"recipe epochs=0, but .* measures the statistics of "
                                         r"the last training epoch.*\(epochs >= 1\), or use an "
                                         r"estimator that measures on its own"):
      driver.run(method, spec, ds, none, tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()
  # An estimator that measures on its own needs no training: the run goes on to it.
  def trainer(*args, **kw):
    raise RuntimeError("stop at the training")

  with pytest.raises(RuntimeError, match="stop at the training"):
    driver.run(Easier(estimator="dataset"), spec, ds, none, tmp_path / "dataset",
               progress=False, trainer=trainer)


def test_a_numpy_seed_runs_and_is_recorded_as_an_int(digits, tmp_path):
  # `for seed in np.arange(3): driver.run(..., seed=seed)`: the seed goes to run.json
  ds, spec = digits
  result = driver.run(Easier(), spec, ds, RECIPE, tmp_path, iterations=1, progress=False,
                      seed=np.int64(2), latency_batches=())
  assert json.loads((tmp_path / "run.json").read_text())["seed"] == 2
  assert len(result.report["iterations"]) == 1
  with pytest.raises(TypeError, match="seed must be an integer, got 2.0"):
    driver.run(Easier(), spec, ds, RECIPE, tmp_path / "other", seed=2.0)
  assert not (tmp_path / "other").exists()


def test_the_quirks_validation_view_is_the_iterations_and_val_augment_is_part_of_the_run(
    digits, tmp_path):
  _, spec = digits
  quirk = data.load("digits", val_augment=True)   # validation augmented at every evaluation
  calls = []

  def run(ds):
    return driver.run(Easier(), spec, ds, RECIPE, tmp_path, iterations=1, progress=False,
                      eval_batch_size=512, latency_batches=(), merge=False,
                      trainer=_recording_trainer(calls))

  entry = run(quirk).report["iterations"][0]
  # The view of fit's last validation: (the iteration's seed, its last epoch), not (0, 0).
  logged = json.loads((tmp_path / "iterations/000/metrics.jsonl").read_text().splitlines()[-1])
  assert entry["val_loss"] == logged["val_loss"]
  seed = driver.iteration_seed(0, 0)
  assert calls[0]["seed"] == seed

  def val(seed, epoch):
    return training.evaluate(spec, calls[0]["trained"], quirk.val, batch_size=512, seed=seed,
                             epoch=epoch).loss

  assert entry["val_loss"] == pytest.approx(val(seed, RECIPE.epochs - 1), rel=1e-6)
  assert entry["val_loss"] != pytest.approx(val(0, 0), rel=1e-6)
  before = _snapshot(tmp_path)
  with pytest.raises(driver.RunMismatchError,
                     match=r"data\.always_augment\.val: True there, False asked"):
    run(digits[0])
  assert _snapshot(tmp_path) == before
  # A run.json written before the normalisation, augmentation and val_augment were recorded
  # resumes with any (the finished run trains nothing more).
  stored = json.loads((tmp_path / "run.json").read_text())
  for key in ("normalization", "augment", "always_augment"):
    del stored["data"][key]
  (tmp_path / "run.json").write_text(json.dumps(stored))
  assert run(quirk).report["iterations"][0] == entry


# A method of one's own, as docs/methods/writing.md shows one: the tests below break one rule of
# the protocol each and see the driver refuse it, naming the rule, before an iteration is saved.
class Mine:
  """Removes the live site whose score (its index among the live sites) is the lowest."""
  name = "mine"
  unit = "site"
  score_name = "index"

  def options(self):
    return {}

  def init(self, spec):
    return {"gates": jaxdepth.gates_for(spec)}

  def units(self, spec):
    return spec.sites()

  def live_units(self, spec, state):
    return base.live_sites(spec, state["gates"])

  def default_iterations(self, spec):
    return 2

  def train_options(self, spec, state):
    return base.TrainOptions(gates=state["gates"])

  def measure(self, spec, variables, state, context):
    return {s: float(i) for i, s in enumerate(self.live_units(spec, state))}

  def decide(self, scores, state):
    return base.Decision((min(scores, key=scores.get),) if scores else ())

  def apply(self, spec, variables, state, decision):
    off = base.removed_sites(spec, state["gates"]) + tuple(decision.remove)
    return variables, {"gates": jaxdepth.gates_for(spec, off=off)}

  def export(self, spec, variables, state):
    return jaxdepth.with_identity(spec, base.removed_sites(spec, state["gates"])), variables


def _untrained(spec, variables, dataset, recipe, *, options, seed, workdir, desc):
  """A trainer that trains nothing (the variables come back as they went in)."""
  state = training.TrainState.create(variables, optim.make_optimizer(recipe, 1), seed)
  return training.FitResult(variables, None, [], training.replicate(state, training.make_mesh()))


def _never_trains(*args, **kw):
  raise AssertionError("the method should have been refused before any training")


def _run_mine(digits, method, workdir, **kw):
  ds, spec = digits
  kw = {"iterations": 1, "trainer": _untrained, **kw}
  return driver.run(method, spec, ds, RECIPE, workdir, progress=False, eval_batch_size=512,
                    merge=False, latency_batches=(), **kw)


def test_a_method_of_ones_own_runs_and_resumes(digits, tmp_path):
  said = []
  result = _run_mine(digits, Mine(), tmp_path, iterations=2, say=said.append)
  assert [e["removed_now"] for e in result.report["iterations"]] == [["relu"],
                                                                     ["layer1/0/relu1"]]
  assert result.report["iterations"][1]["index"] == {s: float(i) for i, s in
                                                     enumerate(digits[1].sites()[1:])}
  _run_mine(digits, Mine(), tmp_path, iterations=2, say=said.append)
  assert "resuming" in said[-1]


def test_tuple_in_info_and_options_resumes(digits, tmp_path):
  # run.json reads tuples back as lists: the same call was refused as "other settings".
  class Skips(Mine):
    def options(self):
      return {"skip": ("relu",)}

  first, again = [], []
  _run_mine(digits, Skips(), tmp_path, info={"w": (8, 16)}, say=first.append)
  result = _run_mine(digits, Skips(), tmp_path, info={"w": (8, 16)}, say=again.append)
  assert again == [f"resuming {tmp_path} after iteration 0"] and len(first) == 1
  assert result.report["method_options"] == {"skip": ["relu"]}
  assert result.report["info"] == {"w": [8, 16]}
  # Another tuple is still another setting.
  with pytest.raises(driver.RunMismatchError, match=r"info\.w: \[8, 16\] there, \[8, 32\] asked"):
    _run_mine(digits, Skips(), tmp_path, info={"w": (8, 32)})


@pytest.mark.parametrize("where", ["options", "info"])
def test_settings_that_are_not_json_are_refused_naming_the_key(digits, tmp_path, where):
  class Numpy(Mine):
    def options(self):
      return {"rate": np.float32(0.5)} if where == "options" else {}

  info = {"config": {"rate": np.float32(0.5)}} if where == "info" else None
  path = "method.options()['rate']" if where == "options" else "info['config']['rate']"
  with pytest.raises(ValueError, match=re.escape(f"{path} is a float32 (np.float32(0.5))")):
    _run_mine(digits, Numpy(), tmp_path / "run", info=info, trainer=_never_trains)
  assert not (tmp_path / "run").exists()


class _Lacks:
  """A method object that lacks the members named in ``lacks`` (the others are Mine's)."""

  def __init__(self, *lacks):
    self.lacks, self.mine = lacks, Mine()

  def __getattr__(self, name):
    if name in self.lacks or name in ("lacks", "mine"):
      raise AttributeError(name)
    return getattr(self.mine, name)


@pytest.mark.parametrize("method, match", [
    (_Lacks("export"), r"_Lacks is not a jaxdepth\.methods\.base\.Method: it lacks export \("),
    (_Lacks("score_name", "decide"), r"it lacks score_name, decide \(a method has name, unit, "
                                     r"score_name, options, init,"),
    (type("Unnamed", (Mine,), {"name": None})(), r"Unnamed: Method\.name must be a non-empty "
                                                 r"str, got None"),
    (type("Flat", (Mine,), {"measure": 3})(), r"Flat: Method\.measure must be a method, got 3"),
])
def test_incomplete_method_refused_before_writing(digits, tmp_path, method, match):
  with pytest.raises(TypeError, match=match):
    _run_mine(digits, method, tmp_path / "run", trainer=_never_trains)
  assert not (tmp_path / "run").exists()


class _Strings(Mine):
  def init(self, spec):
    return {**super().init(spec), "removed": ("relu",)}


class _Object(Mine):
  def init(self, spec):
    return type("S", (), {"gates": jaxdepth.gates_for(spec)})()

  def live_units(self, spec, state):
    return spec.sites()


class _OptionsDict(Mine):
  def train_options(self, spec, state):
    return {"gates": state["gates"]}


class _UnitsStr(Mine):
  def live_units(self, spec, state):
    return "relu"


class _ForeverIterations(Mine):
  def default_iterations(self, spec):
    return "all"


@pytest.mark.parametrize("method, error, match", [
    (_Strings(), TypeError, r"method 'mine': the method state must be a pytree .* of arrays.* "
                            r"Method\.init returned one where state\['removed'\]\[0\] is a str"),
    (_Object(), TypeError, r"Method\.init returned one where state is a S "),
    (_OptionsDict(), TypeError, r"method 'mine': Method\.train_options must return a "
                                r"jaxdepth\.methods\.base\.TrainOptions .*, got a dict"),
    (_UnitsStr(), TypeError, r"Method\.live_units must return a tuple of site names \(str\), "
                             r"got 'relu'"),
    (_ForeverIterations(), TypeError, r"Method\.default_iterations must return an int >= 1, "
                                      r"got 'all'"),
])
def test_protocol_mistakes_of_the_cheap_members_are_refused_before_training(
    digits, tmp_path, method, error, match):
  with pytest.raises(error, match=match):
    _run_mine(digits, method, tmp_path / "run", trainer=_never_trains,
              iterations=None if isinstance(method, _ForeverIterations) else 1)
  assert not (tmp_path / "run").exists()


class _ApplyState(Mine):
  def apply(self, spec, variables, state, decision):
    return super().apply(spec, variables, state, decision)[1]


class _ExportSpec(Mine):
  def export(self, spec, variables, state):
    return super().export(spec, variables, state)[0]


class _ExportSwapped(Mine):
  def export(self, spec, variables, state):
    return super().export(spec, variables, state)[::-1]


class _ApplyStrings(Mine):
  def apply(self, spec, variables, state, decision):
    return variables, {"gates": decision.remove}


class _ScoresObject(Mine):
  def measure(self, spec, variables, state, context):
    return {s: object() for s in self.live_units(spec, state)}


class _ScoresList(Mine):
  def measure(self, spec, variables, state, context):
    return list(super().measure(spec, variables, state, context))


class _DecideTuple(Mine):
  def decide(self, scores, state):
    return (min(scores, key=scores.get),)


class _DetailsArray(Mine):
  def decide(self, scores, state):
    return base.Decision(("relu",), {"threshold": object()})


@pytest.mark.parametrize("method, match", [
    (_ApplyState(), r"Method\.apply must return a pair \(variables, state\), got a dict"),
    (_ExportSpec(), r"Method\.export must return a pair \(spec, variables\), got a Spec"),
    (_ExportSwapped(), r"Method\.export must return a pair \(spec, variables\) whose spec is a "
                       r"jaxdepth Spec, got a dict"),
    (_ApplyStrings(), r"Method\.apply returned one where state\['gates'\]\[0\] is a str"),
    (_ScoresObject(), r"Method\.measure must return a dict \{unit name: score\}.*, but "
                      r"scores\['relu'\] is a object"),
    (_ScoresList(), r"Method\.measure must return a dict \{unit name: score\}.*, got \['relu'"),
    (_DecideTuple(), r"Method\.decide must return a jaxdepth\.methods\.base\.Decision .*; got a "
                     r"tuple: \('relu',\)"),
    (_DetailsArray(), r"Decision\.details must be None or a JSON dict .* but "
                      r"details\['threshold'\] is a object"),
])
def test_protocol_mistakes_in_what_an_iteration_returns_are_refused_naming_the_rule(
    digits, tmp_path, method, match):
  with pytest.raises(TypeError, match=r"method 'mine', iteration 0: .*" + match):
    _run_mine(digits, method, tmp_path)
  assert not (tmp_path / "iterations/000/model").exists()
  assert not any(tmp_path.glob("checkpoints/*"))


def test_jax_and_numpy_scores_are_taken_as_python_numbers(digits, tmp_path):
  class Arrays(Mine):
    def measure(self, spec, variables, state, context):
      live = self.live_units(spec, state)
      return {s: (jnp.float32(i) if i % 2 else {"score": np.int32(i), "counts": np.arange(2)})
              for i, s in enumerate(live)}

    def decide(self, scores, state):
      assert all(type(v) in (float, dict) for v in scores.values())
      return base.Decision(("relu",))

  scores = _run_mine(digits, Arrays(), tmp_path).report["iterations"][0]["index"]
  assert scores["relu"] == {"score": 0, "counts": [0, 1]}
  assert scores["layer1/0/relu1"] == 1.0 and type(scores["layer1/0/relu1"]) is float
  assert json.loads((tmp_path / "report.json").read_text())["iterations"][0]["index"] == scores


class _Decides(Mine):
  def __init__(self, remove):
    self.remove = remove

  def decide(self, scores, state):
    return base.Decision(self.remove)


@pytest.mark.parametrize("remove, it, match", [
    ("relu2", 0, r"got Decision\.remove='relu2', a bare str .*: write Decision\(\('relu2',\)\)"),
    (("relu99",), 0, r"Decision\.remove names \['relu99'\], not live \(not a site of the spec, "
                     r"or removed already; live: \['relu', 'layer1/0/relu1'"),
    (("relu",), 1, r"Decision\.remove names \['relu'\], not live .*live: \['layer1/0/relu1'"),
    (("relu2", "relu", "relu2"), 0, r"Decision\.remove names \['relu2'\] more than once"),
    ((3,), 0, r"got Decision\.remove=\(3,\)"),
])
def test_a_decision_that_removes_no_live_unit_is_refused_naming_the_rule(
    digits, tmp_path, remove, it, match):
  # Decision("relu4") was reported as removing r, e, l, u and 4; an unknown or already removed
  # site as removed.
  with pytest.raises(ValueError, match=rf"method 'mine', iteration {it}: Method\.decide must "
                                       rf"return a jaxdepth\.methods\.base\.Decision whose "
                                       rf"remove is a tuple of names of live sites.*" + match):
    _run_mine(digits, _Decides(remove), tmp_path, iterations=2)
  assert not (tmp_path / f"iterations/00{it}/model").exists()
  assert len(list(tmp_path.glob("iterations/*/model"))) == it


def test_a_state_that_changes_its_shapes_is_refused_at_the_first_apply(digits, tmp_path):
  # It ran, then could never resume: the restore into init(spec) blamed the model.
  class Grows(Mine):
    def init(self, spec):
      return {**super().init(spec), "order": jnp.zeros((0,), jnp.int32)}

    def apply(self, spec, variables, state, decision):
      variables, new = super().apply(spec, variables, state, decision)
      order = jnp.concatenate([state["order"], jnp.asarray(
          [spec.sites().index(u) for u in decision.remove], jnp.int32)])
      return variables, {**new, "order": order}

  class Retypes(Mine):
    def apply(self, spec, variables, state, decision):
      variables, new = super().apply(spec, variables, state, decision)
      return variables, {"gates": new["gates"].astype(jnp.int32)}

  class Regroups(Mine):
    def apply(self, spec, variables, state, decision):
      variables, new = super().apply(spec, variables, state, decision)
      return variables, {**new, "extra": jnp.zeros(())}

  rule = (r"; the method state keeps method\.init\(spec\)'s tree structure, shapes and dtypes "
          r"across iterations \(a resumed run restores it into init\(spec\)\)")
  for method, match in [
      (Grows(), r"state\['order'\] has shape \(1,\) and dtype int32, but init\(spec\)'s has "
                r"shape \(0,\) and dtype int32"),
      (Retypes(), r"state\['gates'\] has shape \(6,\) and dtype int32, but init\(spec\)'s has "
                  r"shape \(6,\) and dtype float32"),
      (Regroups(), r"a state of another tree structure than init\(spec\)'s")]:
    with pytest.raises(ValueError, match=r"method 'mine', iteration 0: Method\.apply returned "
                                         r".*" + match + r".*" + rule):
      _run_mine(digits, method, tmp_path / type(method).__name__)
    assert not any((tmp_path / type(method).__name__).glob("checkpoints/*"))
