"""``python -m jaxdepth``: fit end to end on digits (tiny epochs), configs, validation, exits, listing."""
import errno
import io
import json
import os
import pathlib
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
import types

import jax
import ml_collections
import numpy as np
import pytest

from jaxdepth import (checkpoint, costs, data, driver, integrity, network, optim, progress,
                     training, zoo)
from jaxdepth.methods import Easier
from jaxdepth.spec import Act, Dense, Flatten, Spec
from jaxdepth.train import __main__ as cli
from jaxdepth.train import command
from jaxdepth.train import config as config_lib
from jaxdepth.train import easier as easier_cli
from jaxdepth.train import egp as egp_cli
from jaxdepth.train import lacoot as lacoot_cli
from jaxdepth.train import tlc as tlc_cli

from _readme_net import MYNET

# An upper-case document name other than README.md: a citation of a file users do not have.
_CITED_DOC = re.compile(r"\b(?!README\.md)[A-Z][A-Z_]+\.md\b")

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _fit(tmp_path, *args):
  return cli.main(["fit", "--workdir", str(tmp_path), "--no-progress", *args])


def _files(directory):
  """Every file under ``directory`` and its bytes (what a refused call must leave as it was)."""
  return {p: p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


def _error_lines(err):
  return [line for line in err.splitlines() if line.startswith("error: ")]


def test_fit_trains_reports_and_resumes(tmp_path, capsys):
  assert _fit(tmp_path, "--config.epochs=1") == 0
  out, err = capsys.readouterr()
  assert err == ""                                      # --no-progress: no progress lines
  report = json.loads((tmp_path / "report.json").read_text())
  assert report["model"] == "digits_cnn" and report["dataset"] == "digits"
  ds, spec = data.load("digits"), zoo.get("digits_cnn")    # the config's defaults
  assert out.splitlines()[0] == (
      f"digits_cnn on digits: {costs.count_params(spec):,} parameters, {len(spec.sites())} sites; "
      f"train/val/test {ds.train.num_examples}/{ds.val.num_examples}/{ds.test.num_examples}; "
      f"{jax.device_count()} cpu device(s); workdir {tmp_path}")
  assert f"test accuracy {100 * report['test']['accuracy']:.2f} %" in out
  # The saved model reloads with one call and scores what the report says.
  spec, variables = checkpoint.load_model(tmp_path / "model")
  ds = data.load("digits")
  again = training.evaluate(spec, variables, ds.test, batch_size=512)
  assert again.accuracy == pytest.approx(report["test"]["accuracy"])
  assert again.accuracy > 0.25 and again.count == 359    # chance is 0.1
  assert [r["epoch"] for r in progress.read_metrics(tmp_path / "metrics.jsonl")] == [1]
  assert json.loads((tmp_path / "run.json").read_text())["epochs"] == 1

  # The same command with one more epoch resumes: only epoch 2 is trained.
  assert _fit(tmp_path, "--config.epochs=2") == 0
  report = json.loads((tmp_path / "report.json").read_text())
  assert report["epochs"] == 2 and report["history"][0]["epoch"] == 1
  assert [r["epoch"] for r in progress.read_metrics(tmp_path / "metrics.jsonl")] == [1, 2]
  assert "test accuracy" in capsys.readouterr().out
  run_json = (tmp_path / "run.json").read_text()
  assert json.loads(run_json)["epochs"] == 2           # run.json describes the run there

  # Any change that alters the result is refused before any work, and named; run.json stays.
  assert _fit(tmp_path, "--model", "resnet20") == 2
  assert "holds a run of digits_cnn on digits, not of resnet20" in capsys.readouterr().err
  assert _fit(tmp_path, "--config.epochs=2", "--config.lr=0.5") == 2
  assert "lr: 0.05 stored, 0.5 asked" in capsys.readouterr().err
  assert _fit(tmp_path, "--config.epochs=2", "--dtype", "bfloat16") == 2
  assert "dtype: 'float32' stored, 'bfloat16' asked" in capsys.readouterr().err
  assert _fit(tmp_path, "--config.epochs=2", "--seed", "3") == 2
  assert "seed: 0 stored, 3 asked" in capsys.readouterr().err
  assert (tmp_path / "run.json").read_text() == run_json


def test_nan_loss_stops_and_a_fresh_run_then_owns_the_workdir(tmp_path, capsys):
  assert _fit(tmp_path, "--config.epochs=1", "--config.optimizer=sgd", "--config.lr=1e12") == 1
  err = capsys.readouterr().err
  assert "training loss became nan" in err and "nothing was saved" in err
  assert not (tmp_path / "report.json").exists()
  # Nothing was trained there, so a run with other settings takes the directory over,
  # and run.json then says what that run is.
  assert _fit(tmp_path, "--config.epochs=1") == 0
  assert json.loads((tmp_path / "run.json").read_text())["lr"] == 0.05
  # With Adam the parameters overflow while the loss stays finite: the run stops before saving.
  assert _fit(tmp_path / "adam", "--config.epochs=1", "--config.optimizer=adam",
              "--config.lr=1e8") == 1
  assert _error_lines(capsys.readouterr().err) == [
      "error: training diverged in epoch 1 (by step 40): the loss stayed finite but the "
      "parameters, the BatchNorm statistics or the optimizer's state became NaN or infinite; "
      "stopped, and nothing was saved. Lower the learning rate or check the data."]
  assert not (tmp_path / "adam" / "checkpoints").exists() or not any(
      (tmp_path / "adam" / "checkpoints").iterdir())


def test_an_unreadable_image_stops_the_run_naming_it_and_the_same_command_resumes(
    tmp_path, capsys):
  from PIL import Image  # pylint: disable=import-outside-toplevel
  images = tmp_path / "images"
  for label, cls in enumerate(("cat", "dog")):
    (images / cls).mkdir(parents=True)
    for k in range(10):
      Image.new("RGB", (8, 8), (200 * label, 30, 30 + 10 * k)).save(images / cls / f"{k}.png")
  good = (images / "dog" / "7.png").read_bytes()
  (images / "dog" / "7.png").write_bytes(b"not a png")
  args = ["--dataset", f"folder:{images}", "--config.image_size=8", "--config.epochs=2",
          "--config.batch_size=4"]
  assert _fit(tmp_path / "run", *args) == 2
  err = capsys.readouterr().err
  assert f"error: cannot read image {images / 'dog' / '7.png'} (UnidentifiedImageError" in err
  assert "Nothing was lost" in err and "Then resume with:" in err
  assert shlex.split(err.strip().splitlines()[-1])[3:] == [
      "fit", "--workdir", str(tmp_path / "run"), "--no-progress", *args]
  (images / "dog" / "7.png").write_bytes(good)
  assert _fit(tmp_path / "run", *args) == 0
  assert json.loads((tmp_path / "run" / "report.json").read_text())["epochs"] == 2


def test_a_tfds_file_damaged_inside_stops_the_run_naming_it_and_the_same_command_resumes(
    tmp_path, capsys):
  """Its index intact, the file passes the checks at load; the batch that reads the damaged
  example raised a raw traceback (exit 1, "training diverged")."""
  from _prepared_tfds import CIFAR_VERSION, write_prepared_cifar10  # pylint: disable=import-outside-toplevel
  write_prepared_cifar10(tmp_path / "tfds")
  shard = (tmp_path / "tfds" / "cifar10" / CIFAR_VERSION /
           "cifar10-train.array_record-00000-of-00001")
  good = shard.read_bytes()
  with open(shard, "r+b") as f:
    f.seek(5000)
    f.write(bytes(3000))
  args = ["--model", "digits_plain", "--dataset", "cifar10", "--data-dir", str(tmp_path / "tfds"),
          "--config.epochs=1", "--config.batch_size=6", "--config.milestones=()"]
  assert _fit(tmp_path / "run", *args) == 2
  err = capsys.readouterr().err
  assert f"error: tfds dataset 'cifar10' is not prepared" in err and f"the file {shard}" in err
  assert "Traceback" not in err and "Then resume with:" in err
  shard.write_bytes(good)
  assert _fit(tmp_path / "run", *args) == 0


def test_config_layout_names_the_layout_of_a_folder_detection_refuses(tmp_path, capsys,
                                                                       monkeypatch):
  from PIL import Image  # pylint: disable=import-outside-toplevel
  images = tmp_path / "images"     # <class>/<year>/: reads as <domain>/<class>/ too
  for label, cls in enumerate(("cat", "dog")):
    for year in ("2019", "2020"):
      (images / cls / year).mkdir(parents=True)
      for k in range(4):
        Image.new("RGB", (8, 8), (200 * label, 30, 30 + 10 * k)).save(images / cls / year / f"{k}.png")
  args = ["--dataset", f"folder:{images}", "--config.image_size=8", "--config.batch_size=64"]
  workdir = tmp_path / "never"
  assert _fit(workdir, *args) == 2
  assert _error_lines(capsys.readouterr().err) == [
      f"error: {images} holds 2 folders (cat, dog) of 2 kinds of folder (2019, 2020): read as "
      f"'domains' (root/<domain>/<class>/<image>) its classes would be 2019, 2020, read as "
      f"'classes' with sub-folders (root/<class>/<sub-folder>/<image>) they would be cat, dog, "
      f"and jaxdepth guesses 'domains' only when there are more classes than domains; name the "
      f"layout: layout='domains' or layout='classes' (on the command line --config.layout=domains "
      f"or --config.layout=classes)"]
  loaded = []
  real_load = data.load
  monkeypatch.setattr(data, "load", lambda *a, **k: loaded.append(real_load(*a, **k)) or loaded[-1])
  for layout, classes in (("classes", ("cat", "dog")), ("domains", ("2019", "2020"))):
    # The batch of 64 is larger than the 12 training images: refused once the data is loaded.
    assert _fit(workdir, *args, f"--config.layout={layout}") == 2
    assert loaded[-1].class_names == classes
    assert _error_lines(capsys.readouterr().err) == [
        f"error: --config.batch_size=64: larger than the 12 examples of the training split of "
        f"folder:{images}, so an epoch would have no step; use at most 12"]
  assert _fit(workdir, *args, "--config.layout=imagenet") == 2
  assert _error_lines(capsys.readouterr().err) == [
      "error: --config.layout='imagenet': use one of splits, domains, classes, or None to detect "
      "it from the folder"]
  assert _fit(workdir, "--config.layout=classes") == 2
  assert _error_lines(capsys.readouterr().err) == [
      "error: --config.layout='classes': the layout of an image folder (--dataset folder:<path>); "
      "'digits' is not one: leave it out"]
  assert not workdir.exists()


def test_a_workdir_in_use_by_another_run_is_refused_and_left_as_it_is(tmp_path, capsys):
  import fcntl  # pylint: disable=import-outside-toplevel
  assert _fit(tmp_path, "--config.epochs=1") == 0      # the run's lock is released at its end
  before = _files(tmp_path)
  with open(tmp_path / ".lock", "rb") as other:        # another process running there
    fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)
    assert _fit(tmp_path, "--config.epochs=2") == 2
    assert _error_lines(capsys.readouterr().err) == [
        f"error: {tmp_path} is in use: another run holds its lock ({tmp_path / '.lock'}). Wait "
        f"for it to end or stop it, then run this command again (it resumes from the last "
        f"checkpoint), or give another --workdir"]
    assert _files(tmp_path) == before
  assert _fit(tmp_path, "--config.epochs=2") == 0      # the other run has ended
  assert json.loads((tmp_path / "report.json").read_text())["epochs"] == 2
  # Fewer epochs than the weights have had are refused.
  capsys.readouterr()
  before = _files(tmp_path)
  steps = data.load("digits").train.num_batches(32, drop_remainder=True)   # an epoch at batch 32
  assert _fit(tmp_path, "--config.epochs=1") == 2
  assert _error_lines(capsys.readouterr().err) == [
      f"error: work directory {tmp_path} holds a run of 2 epochs trained for {2 * steps} "
      f"steps (into epoch 2), and 1 are asked now: epoch 1 would be the last after being "
      f"trained as a middle one (the last epoch's statistics and validation differ); ask for "
      f"at least 2 epochs, or use another directory"]
  assert _files(tmp_path) == before


def test_fit_in_a_methods_workdir_says_whose_it_is_in_one_line(tmp_path, capsys):
  (tmp_path / "checkpoints" / "3").mkdir(parents=True)
  (tmp_path / "run.json").write_text(json.dumps({"method": "easier", "spec": {}}))
  before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
  assert _fit(tmp_path) == 2
  assert _error_lines(capsys.readouterr().err) == [
      f"error: work directory {tmp_path} holds a 'easier' run (python -m jaxdepth easier), not a "
      f"'fit' run; use another --workdir"]
  assert {p: p.read_bytes() for p in tmp_path.rglob("*")
          if p.is_file() and p.name != ".lock"} == before   # the lock it held is released


def test_a_workdir_that_is_a_file_is_refused_and_the_file_kept(tmp_path, capsys):
  notes = tmp_path / "notes"
  notes.write_text("mine\n")
  for workdir in (notes, notes / "run"):
    assert _fit(workdir) == 2
    assert _error_lines(capsys.readouterr().err) == [
        f"error: --workdir {str(workdir)!r}: {str(notes)!r} is a file, not a directory; give a "
        f"directory for the run"]
  assert notes.read_text() == "mine\n"


def test_every_bad_setting_gets_one_line_before_any_work(tmp_path, capsys):
  workdir = tmp_path / "never"
  assert cli.main(["fit", "--workdir", str(workdir), "--config.lr=abc", "--config.epoch=3",
                   "--config.batch_size=1.5"]) == 2
  lines = _error_lines(capsys.readouterr().err)
  assert lines == [
      "error: --config.lr=abc: lr takes a number (it is 0.05 now)",
      "error: --config.epoch=3: no key 'epoch' in config digits; did you mean 'epochs'? "
      + lines[1].split("did you mean 'epochs'? ")[1],
      "error: --config.batch_size=1.5: batch_size takes an integer (it is 32 now)"]
  assert cli.main(["fit", "--workdir", str(workdir), "--config.eval_every=0",
                   "--config.eval_batch_size=0", "--config.milestones=5,2",
                   "--config.val_fraction=1.5", "--dtype", "float16"]) == 2
  lines = _error_lines(capsys.readouterr().err)
  assert [line.split(":")[1].strip() for line in lines] == [
      "--config.eval_batch_size=0", "--config.eval_every=0", "--config.milestones=(5, 2)",
      "--config.val_fraction=1.5", "--config.dtype='float16'"]
  assert "use an integer >= 1" in lines[1] and "float32, bfloat16" in lines[4]
  # Checked against the data: a batch larger than the training split.
  assert cli.main(["fit", "--workdir", str(workdir), "--config.batch_size=5000"]) == 2
  assert _error_lines(capsys.readouterr().err) == [
      "error: --config.batch_size=5000: larger than the 1,294 examples of the training split "
      "of digits, so an epoch would have no step; use at most 1294"]
  # A validation split that leaves too little to train on is named as the cause.
  ds = data.load("digits", val_fraction=0.999)
  assert cli.main(["fit", "--workdir", str(workdir), "--config.val_fraction=0.999"]) == 2
  assert _error_lines(capsys.readouterr().err) == [
      f"error: --config.batch_size=32: larger than the {ds.train.num_examples} examples of the "
      f"training split of digits, so an epoch would have no step; use at most "
      f"{ds.train.num_examples} (--config.val_fraction=0.999 holds out {ds.val.num_examples:,} "
      f"for validation; lower it or the batch size)"]
  assert not workdir.exists()                           # nothing was written
  assert cli.main(["fit", "--workdir", str(workdir), "--config", "no_such_config"]) == 2
  assert "digits" in capsys.readouterr().err            # lists the known configs
  assert cli.main(["fit", "--workdir", str(workdir), "--config", "easier_digits"]) == 2
  assert _error_lines(capsys.readouterr().err) == [
      "error: --config easier_digits is a config of python -m jaxdepth easier, not of fit: run it "
      "there, or pick one of python -m jaxdepth fit --list"]
  # EGP's config has NEPENTHE's keys, but under nepenthe's name it would run EGP's estimator
  assert cli.main(["nepenthe", "--workdir", str(workdir), "--config", "egp_digits"]) == 2
  assert _error_lines(capsys.readouterr().err) == [
      "error: --config egp_digits is a config of python -m jaxdepth egp, not of nepenthe: run it "
      "there, or pick one of python -m jaxdepth nepenthe --list"]
  assert cli.main(["fit", "--workdir", str(workdir), "--dataset", "no_such_data"]) == 2
  assert "--config.dataset='no_such_data': use one of digits" in capsys.readouterr().err
  assert cli.main(["nope"]) == 2
  assert "unknown command 'nope'" in capsys.readouterr().err
  # A model that refuses the config's keyword arguments, or the dataset's inputs.
  assert cli.main(["fit", "--workdir", str(workdir), "--model", "resnet18",
                   "--config.model_kwargs.depth=3"]) == 2
  assert _error_lines(capsys.readouterr().err) == [
      "error: model 'resnet18' with model_kwargs {'depth': 3} for 'digits' (inputs (8, 8, 1), "
      "10 classes): resnet18() got an unexpected keyword argument 'depth'; give the model's "
      "own keyword arguments with --set \"model_kwargs={...}\", or none with --set "
      "\"model_kwargs={}\""]
  assert cli.main(["fit", "--workdir", str(workdir), "--model", "vgg16_bn"]) == 2
  assert "(inputs (8, 8, 1), 10 classes): node 'features/33': pool window (2, 2) does not fit" \
      in capsys.readouterr().err
  assert not workdir.exists()


def test_a_config_file_that_fails_is_one_line_naming_its_line(tmp_path, capsys):
  (tmp_path / "syntax.py").write_text("def get_config(:\n")
  (tmp_path / "raises.py").write_text("import ml_collections\n\ndef get_config():\n"
                                      "  return ml_collections.ConfigDict({'epochs': 1 / 0})\n")
  for name, says in (("syntax", "importing it failed (line 1): SyntaxError: invalid syntax"),
                     ("raises", "get_config() failed (line 4): ZeroDivisionError: division by "
                                "zero")):
    assert _fit(tmp_path / "run", "--config", str(tmp_path / f"{name}.py")) == 2
    assert _error_lines(capsys.readouterr().err) == [
        f"error: config {tmp_path / name}.py: {says}"]
  assert not (tmp_path / "run").exists()


def test_a_model_without_activation_sites_is_refused_by_every_site_method(tmp_path, capsys):
  (tmp_path / "linear.py").write_text(
      "import flax.linen as nn\n\n"
      "class Linear(nn.Module):\n"
      "  @nn.compact\n"
      "  def __call__(self, x):\n"
      "    return nn.Dense(10)(x.reshape((x.shape[0], -1)))\n")
  model = f"{tmp_path / 'linear.py'}:Linear"
  for name in ("easier", "egp", "nepenthe", "tlc"):
    assert cli.main([name, "--model", model, "--workdir", str(tmp_path / name)]) == 2
    assert _error_lines(capsys.readouterr().err) == [
        f"error: --config.model={model!r}: Linear has no activation site for {name.upper()} to "
        f"remove; a site is an activation of the network (relu, relu6, gelu, gelu_tanh, silu, "
        f"leaky_relu, hard_swish)"]
    assert not (tmp_path / name).exists()


def test_batch_sizes_must_split_over_devices_and_fit_the_split():
  cfg = config_lib.to_dict(config_lib.load("digits"))
  ds = data.load("digits")
  assert command.check_data(cfg, ds, devices=4) == []      # 32 and 512 split over 4
  cfg.update(batch_size=30, eval_batch_size=500)
  assert command.check_data(cfg, ds, devices=4) == [
      "--config.batch_size=30: the global batch must split evenly over the 4 devices; use a "
      "multiple of 4, e.g. 28"]
  assert command.check_data(cfg, ds, devices=8, processes=2) == [
      "--config.batch_size=30: the global batch must split evenly over the 8 devices; use a "
      "multiple of 8, e.g. 24",
      "--config.eval_batch_size=500: the global batch must split evenly over the 8 devices; use a "
      "multiple of 8, e.g. 496"]
  cfg.update(batch_size=32, eval_batch_size=None)
  assert command.check_data(cfg, ds, devices=8) == []
  # EGP's entropy pass has a batch of its own (egp and nepenthe configs).
  cfg["entropy_batch_size"] = 63
  assert command.check_data(cfg, ds, devices=2) == [
      "--config.entropy_batch_size=63: the global batch must split evenly over the 2 devices; use "
      "a multiple of 2, e.g. 62"]


def test_library_functions_validate_their_arguments(digits_spec_and_data):
  spec, ds = digits_spec_and_data
  variables = zoo_init(spec)
  recipe = optim.Recipe(epochs=1, batch_size=32)
  for kwargs, match in (({"eval_every": 0}, "eval_every must be an integer >= 1"),
                        ({"eval_batch_size": 0}, "eval_batch_size must be None or"),
                        ({"checkpoint_every_steps": -1}, "checkpoint_every_steps must be")):
    with pytest.raises(ValueError, match=match):
      training.fit(spec, variables, ds, recipe, progress=False, **kwargs)


def test_the_driver_says_when_it_runs_out_of_units(tmp_path):
  ds = data.load("digits")
  mlp = Spec((8, 8, 1), (Flatten("flat"), Dense("fc1", features=8), Act("relu"),
                         Dense("fc2", features=10)), name="mlp")
  lines = []
  recipe = optim.Recipe(epochs=1, batch_size=128, optimizer="adam", lr=3e-3)
  result = driver.run(Easier(), mlp, ds, recipe, tmp_path, iterations=3, progress=False,
                      merge=False, say=lines.append)
  assert len(result.report["iterations"]) == 1
  assert lines[-1] == "stopped after 1 of the 3 iterations asked: no site is left to remove"


@pytest.fixture(scope="module")
def digits_spec_and_data():
  ds = data.load("digits")
  return zoo.digits_cnn(num_classes=10, input_shape=ds.input_shape), ds


def zoo_init(spec):
  import jax  # pylint: disable=import-outside-toplevel
  from jaxdepth import network  # pylint: disable=import-outside-toplevel
  return network.init(spec, jax.random.key(0))


def test_easier_refuses_more_iterations_than_sites(tmp_path, capsys):
  assert cli.main(["easier", "--workdir", str(tmp_path / "w"), "--iterations", "7"]) == 2
  assert _error_lines(capsys.readouterr().err) == [
      "error: --iterations 7: digits_plain has 5 sites, so at most 5 iterations (the last one "
      "trains the network with 4 removed); use --iterations 5 or leave it out"]
  assert cli.main(["easier", "--workdir", str(tmp_path / "w"), "--iterations", "x",
                   "--tolerance", "-1", "--estimator", "paper"]) == 2
  lines = _error_lines(capsys.readouterr().err)
  assert lines == ["error: --iterations x: iterations takes an integer or None (it is 5 now)"]
  assert cli.main(["easier", "--workdir", str(tmp_path / "w"), "--tolerance", "-1",
                   "--estimator", "paper"]) == 2
  lines = _error_lines(capsys.readouterr().err)
  assert lines[0].startswith("error: --tolerance -1.0: tolerance must be a finite number")
  assert lines[1] == "error: --estimator 'paper': use one of easier, dataset"
  assert cli.main(["easier", "--workdir", str(tmp_path / "w"), "--entropy-split", "val"]) == 2
  assert _error_lines(capsys.readouterr().err) == [
      "error: --entropy-split val: only the 'dataset' estimator measures on a split (the "
      "'easier' one reads the last training epoch); add --estimator dataset"]
  assert not (tmp_path / "w").exists()


def test_easier_with_another_model_leaves_out_the_configs_iterations(tmp_path, capsys):
  """easier_digits sets iterations=5, one per site of digits_plain: the README's
  ``easier --model file.py:MyNet`` (2 sites) was refused for an --iterations never given."""
  module = tmp_path / "net.py"
  module.write_text(MYNET)
  argv = ["easier", "--model", f"{module}:MyNet", "--config.epochs=1", "--no-latency",
          "--no-progress", "--workdir", str(tmp_path / "w")]
  assert cli.main(argv) == 0
  err = capsys.readouterr().err
  assert "its settings for digits_plain (iterations=5) are left out, so iterations=None" in err
  assert len(json.loads((tmp_path / "w" / "report.json").read_text())["iterations"]) == 2
  args = command.parse(easier_cli.build_parser(), ["--model", "digits_swin"])
  assert easier_cli.CONFIGS.resolve(args)["iterations"] is None     # one per site
  args = command.parse(easier_cli.build_parser(), ["--model", "digits_swin", "--iterations", "3"])
  assert easier_cli.CONFIGS.resolve(args)["iterations"] == 3
  # Given on the command line, too many iterations are still refused, named as given.
  for given in (["--iterations", "3"], ["--config.iterations=3"], ["--set", "iterations=3"]):
    assert cli.main([*argv[:-1], str(tmp_path / "x"), *given]) == 2
    assert _error_lines(capsys.readouterr().err) == [
        f"error: {' '.join(given)}: MyNet has 2 sites, so at most 2 iterations (the last one "
        f"trains the network with 1 removed); use --iterations 2 or leave it out"]
  config = tmp_path / "mine.py"   # a config of the user's sets them for its own model
  config.write_text("import ml_collections\n\ndef get_config():\n"
                    "  config = ml_collections.ConfigDict()\n  config.model = 'digits_plain'\n"
                    "  config.iterations = 6\n  return config\n")
  assert cli.main(["easier", "--config", str(config), "--workdir", str(tmp_path / "x")]) == 2
  assert _error_lines(capsys.readouterr().err) == [
      "error: config mine sets iterations=6: digits_plain has 5 sites, so at most 5 iterations "
      "(the last one trains the network with 4 removed); use --iterations 5"]
  assert not (tmp_path / "x").exists()


def test_a_rerun_with_another_model_keeps_the_iterations_its_run_was_asked_for(tmp_path, capsys):
  """easier_digits's iterations=5 left out for --model digits_cnn made the same command on a
  finished run resolve one per site (6): it resumed, trained more and overwrote chosen/."""
  workdir = tmp_path / "w"
  argv = ["easier", "--model", "digits_cnn", "--config.epochs=1", "--no-latency",
          "--no-progress", "--workdir", str(workdir)]
  assert cli.main([*argv, "--iterations", "2"]) == 0
  spec, variables = checkpoint.load_model(workdir / "chosen")
  report = workdir / "report.json"
  for older in (False, True):   # a report written before iterations_asked: a finished run's
    if older:
      stored = json.loads(report.read_text())
      del stored["iterations_asked"]
      report.write_text(json.dumps(stored))
    capsys.readouterr()
    assert cli.main(argv) == 0
    out = capsys.readouterr().out
    assert "iteration 2:" not in out
    assert len(json.loads(report.read_text())["iterations"]) == 2
    assert f"note: {workdir} holds a run asked for 2 iterations: it goes on with those" in out
    again, again_variables = checkpoint.load_model(workdir / "chosen")
    assert again.to_dict() == spec.to_dict()
    for x, y in zip(jax.tree.leaves(variables), jax.tree.leaves(again_variables), strict=True):
      np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_the_left_out_note_for_a_saved_model_does_not_advise_its_refused_model_kwargs(
    tmp_path, capsys):
  """The note ended "set them for this model with --config.KEY=VALUE", model_kwargs included,
  which a saved model refuses (it fixes its own architecture)."""
  saved = tmp_path / "saved"
  spec = zoo.digits_cnn()
  checkpoint.save_model(saved, spec, network.init(spec, jax.random.key(0)))
  assert cli.main(["egp", "--config", "egp_digits", "--model", str(saved), "--config.epochs=0",
                   "--workdir", str(tmp_path / "w")]) == 2   # refused after the note
  notes = [line for line in capsys.readouterr().err.splitlines() if line.startswith("note: ")]
  assert notes == [
      f"note: --model {str(saved)!r} is not the model of config egp_digits (resnet20): its "
      f"settings for resnet20 (model_kwargs={{'width': 8}}, skip=('relu',)) are left out, so "
      f"model_kwargs={{}}, skip=(); the saved model {str(saved)!r} fixes its own architecture "
      f"(model_kwargs); set skip for it with --config.KEY=VALUE"]


# ----------------------------------------------------------------------- configs


FIT_CONFIGS = ("digits", "cifar10_resnet18", "cifar10_mobilenetv2", "cifar10_vgg16", "pacs",
               "vlcs", "flowers102", "dtd")


@pytest.mark.parametrize("name", FIT_CONFIGS + tuple(
    config_lib.available(prefix="easier_")))
def test_every_config_is_a_configdict_that_loads_and_says_how_to_run_it(name):
  module = {}
  exec(compile((config_lib.CONFIG_DIR / f"{name}.py").read_text(), name, "exec"), module)
  assert isinstance(module["get_config"](), ml_collections.ConfigDict)
  extra = easier_cli.METHOD_DEFAULTS if name.startswith("easier_") else None
  cfg = config_lib.to_dict(config_lib.load(name, extra))
  assert config_lib.check(cfg) == []
  recipe = config_lib.recipe_of(cfg)
  doc = (config_lib.CONFIG_DIR / f"{name}.py").read_text()
  assert "Run:" in doc and ("Reaches" in doc)
  assert not _CITED_DOC.search(doc)
  assert cfg["model"] in zoo.names()
  assert cfg["dataset"] in data.names() or cfg["dataset"].startswith("folder:")
  assert recipe.epochs > 0


def test_configs_derive_from_shared_recipes():
  base = config_lib.to_dict(config_lib.load("cifar10_resnet18"))
  vgg = config_lib.to_dict(config_lib.load("cifar10_vgg16"))
  differ = {k for k in base if base[k] != vgg[k]}
  assert differ == {"model", "lr", "config", "pretrained", "pretrained_new_head"}
  assert vgg["lr"] == 0.01
  easier_r18 = config_lib.to_dict(config_lib.load("easier_cifar10_resnet18",
                                                  easier_cli.METHOD_DEFAULTS))
  assert {k: easier_r18[k] for k in base if k != "config"} == {
      k: v for k, v in base.items() if k != "config"}


def _shipped_config(name):
  """Shipped config ``name`` loaded as its command loads it, and its settings problems."""
  prefix = name.split("_")[0]
  if prefix in ("egp", "nepenthe"):
    cfg = egp_cli.CONFIGS[prefix].load(name)
    return cfg, config_lib.check(cfg) + egp_cli.check(cfg, prefix)
  module = {"easier": easier_cli, "tlc": tlc_cli, "lacoot": lacoot_cli}.get(prefix)
  if module is None:
    cfg = config_lib.to_dict(config_lib.load(name))
    return cfg, config_lib.check(cfg)
  cfg = module.CONFIGS.load(name)
  return cfg, config_lib.check(cfg) + module.check(cfg)


def test_lacoot_configs_measure_distances_in_the_official_validation_batch():
  # The official val_one_epoch_wasserstein averages per-batch distances over the validation
  # loader at batch_size=128; a sliced distance between finite batches depends on their size.
  names = config_lib.available(prefix="lacoot_", exclude=("lacoot_digits",))
  assert {"lacoot_cifar10_resnet18", "lacoot_cifar10_mobilenetv2", "lacoot_cifar10_swin_t",
          "lacoot_tinyimagenet_swin_t"} <= set(names)
  for name in names:
    cfg, problems = _shipped_config(name)
    assert problems == [], name
    # the distances' batch as python -m jaxdepth lacoot computes it
    assert (cfg["eval_batch_size"] or config_lib.recipe_of(cfg).batch_size) == 128, name
    assert "batches of 128" in (config_lib.CONFIG_DIR / f"{name}.py").read_text(), name


# The dense starts of the official code (the papers' specification notes): VGG-16-bn and Swin-T
# from ImageNet weights on every dataset, ResNet-18 from ImageNet weights on Flowers-102/DTD (EASIER),
# from scratch on CIFAR-10, Tiny-ImageNet, PACS and VLCS; MobileNetV2 from scratch on CIFAR-10.
_IMAGENET_FILES = {"vgg16_bn": "vgg16_bn_imagenet.safetensors",
                   "swin_t": "swin_t_imagenet.safetensors"}


def test_a_resume_whose_weights_file_is_gone_is_told_to_put_it_back(tmp_path, capsys):
  # It was told to export the file or start from a random initialisation: both are refused
  # as another run (the digest of the starting weights is part of it).
  (tmp_path / "run" / "checkpoints" / "1").mkdir(parents=True)
  assert _fit(tmp_path / "run", "--pretrained", str(tmp_path / "gone.safetensors")) == 2
  assert _error_lines(capsys.readouterr().err) == [
      f"error: --config.pretrained={str(tmp_path / 'gone.safetensors')!r}: no such file or "
      f"folder; the run in {tmp_path / 'run'} started from it, and its checkpoints resume only "
      f"with those weights, unchanged, at that path (a digest of the weights a run starts from "
      f"is part of the run): put them back, or use another --workdir"]


def test_a_folder_of_weights_for_an_image_model_is_not_called_missing(tmp_path):
  # It was refused as "no such file" (a Hugging Face folder, or dir/model.safetensors).
  (tmp_path / "model.safetensors").write_bytes(b"")
  cfg = config_lib.to_dict(config_lib.load("digits")) | {"pretrained": str(tmp_path)}
  with pytest.raises(config_lib.ConfigError, match=r"is a folder: an image model starts from a "
                     r"torchvision .safetensors \(or .pth\) file, the folder's file itself"):
    command.initial_variables(cfg, zoo.get(cfg["model"]))


def test_configs_start_from_imagenet_weights_where_the_official_code_does(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)                # where no weights file is
  started = set()
  for name in config_lib.available():
    cfg, problems = _shipped_config(name)
    assert problems == [], name
    if cfg["model"] in _IMAGENET_FILES or cfg["dataset"] in ("oxford_flowers102", "dtd"):
      want = _IMAGENET_FILES.get(cfg["model"], "resnet18_imagenet.safetensors")
      assert (cfg["pretrained"], cfg["pretrained_new_head"]) == (want, True), name
      # python -m jaxdepth stops before anything runs, naming the missing file and what to do
      assert command.pretrained_problems(cfg) == [
          f"--config.pretrained={want!r}: no such file. Export torchvision's weights to a "
          f".safetensors file as docs/weights.md shows and give its path (--pretrained FILE), "
          f"or --config.pretrained=None to start from a random initialisation"], name
      assert want in (config_lib.CONFIG_DIR / f"{name}.py").read_text(), name
      started.add(name)
    elif cfg["model"] in ("resnet18", "resnet18_imagenet", "mobilenet_v2"):
      assert cfg["pretrained"] is None, name
  assert {"cifar10_vgg16", "easier_cifar10_vgg16", "tlc_cifar10_vgg16", "flowers102", "dtd",
          "easier_flowers_resnet18", "easier_dtd_resnet18", "cifar10_swin_t",
          "lacoot_tinyimagenet_swin_t"} <= started
  # The ImageNet start keeps each recipe's lr: TLC's CIFAR row is ResNet-18's, EASIER's is 0.01.
  assert _shipped_config("tlc_cifar10_vgg16")[0]["lr"] == 0.1
  assert _shipped_config("easier_cifar10_vgg16")[0]["lr"] == 0.01


def test_a_command_may_add_its_own_config_keys(tmp_path):
  path = tmp_path / "method.py"
  path.write_text("import ml_collections\n\ndef get_config():\n"
                  "  config = ml_collections.ConfigDict()\n"
                  "  config.epochs = 2\n  config.iterations = 3\n  return config\n")
  with pytest.raises(config_lib.ConfigError, match="unknown key 'iterations'"):
    config_lib.load(path)
  cfg = config_lib.load(path, extra_defaults={"iterations": 1, "tolerance": 1.0})
  assert cfg.iterations == 3 and cfg.tolerance == 1.0 and cfg.epochs == 2
  assert cfg.lr == optim.Recipe().lr                 # keys left out take the defaults


def test_overrides_are_read_as_the_type_of_their_key():
  cfg = config_lib.override(config_lib.load("digits"), [
      ("milestones", "2,4"), ("image_size", "None"), ("optimizer", "sgd"), ("lr", "1e-2"),
      ("val_augment", "true"), ("model_kwargs.width", "8"), ("eval_batch_size", "64"),
      ("epochs", "3")])
  assert cfg.milestones == (2, 4) and cfg.image_size is None and cfg.optimizer == "sgd"
  assert cfg.lr == 0.01 and isinstance(cfg.lr, float) and cfg.val_augment is True
  assert cfg.model_kwargs.to_dict() == {"width": 8} and cfg.eval_batch_size == 64
  assert cfg.epochs == 3 and isinstance(cfg.epochs, int)
  assert config_lib.override(cfg, [("milestones", "7")]).milestones == (7,)
  assert config_lib.override(cfg, [("milestones", "()")]).milestones == ()
  assert config_lib.recipe_of(cfg).optimizer == "sgd"
  assert pathlib.Path(cfg.config).name == "digits.py"
  with pytest.raises(config_lib.ConfigError) as e:
    config_lib.override(cfg, [("epochs", "2.5"), ("val_augment", "maybe"), ("lr", "None"),
                              ("config", "x")])
  assert [line.split(":")[0] for line in e.value.lines] == [
      "--config.epochs=2.5", "--config.val_augment=maybe", "--config.lr=None", "--config.config=x"]


def test_a_dotted_override_fills_a_dict_that_is_none_by_default():
  cfg = config_lib.load("egp_digits", egp_cli.METHOD_DEFAULTS)
  assert cfg.layers is None
  assert config_lib.override(cfg, [("layers.relu", "conv1")])["layers"] == {"relu": "conv1"}


def test_a_tuple_of_names_is_comma_separated_and_numbers_stay_numbers():
  lacoot = config_lib.load("lacoot_digits", lacoot_cli.METHOD_DEFAULTS)
  assert config_lib.override(lacoot, [("blocks", "layer1/1, layer2/1")]).blocks == (
      "layer1/1", "layer2/1")
  egp = config_lib.load("egp_digits", egp_cli.METHOD_DEFAULTS)
  for text in ("relu", "relu,", "'relu',"):
    assert config_lib.override(egp, [("skip", text)]).skip == ("relu",)
  assert config_lib.override(egp, [("skip", "()")]).skip == ()
  assert config_lib.override(egp, [("milestones", "2.0,4.0")]).milestones == (2, 4)
  with pytest.raises(config_lib.ConfigError) as e:
    config_lib.override(egp, [("milestones", "a,b"), ("milestones", "2.5"), ("skip", "None")])
  assert [line.split(" (it is")[0] for line in e.value.lines] == [
      "--config.milestones=a,b: milestones takes a tuple of integers, e.g. 2,4 or ()",
      "--config.milestones=2.5: milestones takes a tuple of integers, e.g. 2,4 or ()",
      "--config.skip=None: skip takes a tuple, e.g. layer1/1,layer2/1 or relu or ()"]


def test_a_config_file_may_set_only_a_placeholder_key_to_none(tmp_path):
  path = tmp_path / "nones.py"
  path.write_text("from jaxdepth.train.configs import tlc_digits\n\ndef get_config():\n"
                  "  config = tlc_digits.get_config()\n  config.augment = None\n"
                  "  config.iterations = None\n  return config\n")
  with pytest.raises(config_lib.ConfigError) as e:
    config_lib.load(path, tlc_cli.METHOD_DEFAULTS)
  assert e.value.lines == [f"config {path}: augment=None, but augment takes true or false "
                           f"(default True); set it to one or leave it out"]


def test_set_still_works_as_config_overrides(tmp_path):
  args = command.parse(easier_cli.build_parser(),
                       ["--set", "epochs=2", "lr=0.5", "--config.epochs=2", "--iterations", "2"])
  assert args.overrides == [("epochs", "2"), ("epochs", "2"), ("lr", "0.5")]
  cfg = easier_cli.resolve_config(args)
  assert cfg["epochs"] == 2 and cfg["lr"] == 0.5 and cfg["iterations"] == 2


@pytest.mark.parametrize("argv, line", [
    (["--set", "epochs=2", "--config.epochs=3"],
     "--config.epochs=3 and --set epochs=2 give epochs two values; give it once"),
    (["--config.epochs=3", "--set", "epochs=2"],
     "--config.epochs=3 and --set epochs=2 give epochs two values; give it once"),
    (["--model", "digits_plain", "--config.model=digits_cnn"],
     "--config.model=digits_cnn and --model digits_plain give model two values; give it once"),
    (["--seed", "1", "--config.seed=2"],
     "--config.seed=2 and --seed 1 give seed two values; give it once"),
    (["--iterations", "3", "--set", "iterations=4"],
     "--set iterations=4 and --iterations 3 give iterations two values; give it once")])
def test_a_key_given_two_values_by_two_spellings_is_refused(argv, line):
  args = command.parse(easier_cli.build_parser(), argv)
  with pytest.raises(config_lib.ConfigError) as e:
    easier_cli.resolve_config(args)
  assert e.value.lines == [line]
  # The same value twice is one setting; one spelling twice takes the last.
  args = command.parse(easier_cli.build_parser(), ["--seed", "1", "--config.seed=1",
                                                   "--config.epochs=3", "--config.epochs=4"])
  cfg = easier_cli.resolve_config(args)
  assert cfg["seed"] == 1 and cfg["epochs"] == 4


def test_a_bad_flag_value_is_named_as_typed(capsys):
  args = command.parse(easier_cli.build_parser(), ["--seed", "abc", "--set", "lr=x"])
  with pytest.raises(config_lib.ConfigError) as e:
    easier_cli.resolve_config(args)
  assert [line.split(":")[0] for line in e.value.lines] == ["--set lr=x", "--seed abc"]


def test_config_model_and_dataset_pick_the_default_config_as_the_flags_do():
  flags = command.parse(easier_cli.build_parser(), ["--model", "vgg16_bn", "--dataset", "cifar10"])
  keys = command.parse(easier_cli.build_parser(),
                       ["--config.model=vgg16_bn", "--set", "dataset=cifar10"])
  assert easier_cli.CONFIGS.config_of(flags) == "easier_cifar10_vgg16"
  assert easier_cli.CONFIGS.config_of(keys) == "easier_cifar10_vgg16"


def test_another_methods_config_is_refused_by_path_as_by_name(tmp_path, capsys):
  path = config_lib.CONFIG_DIR / "nepenthe_digits.py"
  for config in (str(path), os.path.relpath(path)):
    assert cli.main(["egp", "--workdir", str(tmp_path / "w"), "--config", config]) == 2
    assert _error_lines(capsys.readouterr().err) == [
        f"error: --config {config} is a config of python -m jaxdepth nepenthe, not of egp: run it "
        f"there, or pick one of python -m jaxdepth egp --list"]
  assert not (tmp_path / "w").exists()


def test_a_file_or_folder_named_like_a_shipped_config_does_not_hide_it(tmp_path, monkeypatch,
                                                                       capsys):
  monkeypatch.chdir(tmp_path)
  (tmp_path / "digits").mkdir()                    # e.g. the images of a folder dataset
  (tmp_path / "easier_digits").write_text("not a config")
  assert cli.main(["list"]) == 0
  assert "easier_digits" in capsys.readouterr().out
  assert config_lib.load("digits").config == str(config_lib.CONFIG_DIR / "digits.py")
  assert config_lib.load("easier_digits", easier_cli.METHOD_DEFAULTS).config == str(
      config_lib.CONFIG_DIR / "easier_digits.py")
  # Your own config is a path ending in .py.
  (tmp_path / "mine").write_text("import ml_collections\n\ndef get_config():\n"
                                 "  return ml_collections.ConfigDict({'epochs': 4})\n")
  with pytest.raises(config_lib.ConfigError, match="--config mine: no such config; give a path "
                                                   "to a .py file"):
    config_lib.load("mine")
  (tmp_path / "mine").rename(tmp_path / "mine.py")
  assert config_lib.load("mine.py").epochs == 4


def test_an_empty_or_missing_pretrained_path_says_what_to_give():
  cfg = config_lib.to_dict(config_lib.load("digits"))
  assert command.pretrained_problems({**cfg, "pretrained": ""}) == [
      "--config.pretrained='': empty; give a file or folder of weights, or "
      "--config.pretrained=None to start from a random initialisation"]
  (line,) = command.pretrained_problems({**cfg, "pretrained": "no/such/bert"})
  assert line.startswith("--config.pretrained='no/such/bert': no such file or folder; give a "
                         "Hugging Face model folder holding config.json and model.safetensors")


# ------------------------------------------------------------------ discoverable


def test_list_shows_configs_with_descriptions_models_and_datasets(capsys):
  assert cli.main(["list"]) == 0
  out = capsys.readouterr().out
  for name in config_lib.available():
    line = next(line for line in out.splitlines() if line.strip().startswith(name + " "))
    assert line.split(None, 1)[1] == config_lib.description(name) != ""
  sections = {}
  for block in out.split("\n\n")[:-1]:
    head, *rows = block.splitlines()
    sections[head.split()[5]] = [row.split()[0] for row in rows]
  methods = [c for c in cli.COMMANDS if c != "fit"]   # each lists its <command>_* configs
  assert sections == {"fit": config_lib.available(exclude=tuple(f"{c}_" for c in methods)),
                      **{c: config_lib.available(prefix=f"{c}_") for c in methods}}
  assert all(sections[c] for c in methods)
  assert "digits" in sections["fit"] and "easier_digits" in sections["easier"]
  assert "egp_digits" in sections["egp"] and "nepenthe_digits" in sections["nepenthe"]
  assert ", ".join(zoo.names()) in out and ", ".join(data.names()) in out
  assert cli.main(["--list"]) == 0 and capsys.readouterr().out == out
  assert cli.main(["easier", "--list"]) == 0
  assert capsys.readouterr().out.startswith("configs of python -m jaxdepth easier")


@pytest.mark.parametrize("name", ["easier", "egp", "nepenthe", "tlc", "lacoot"])
def test_method_help_says_iterations_may_grow_on_resume(name, capsys):
  with pytest.raises(SystemExit):
    cli.main([name, "--help"])
  assert "--iterations may grow" in " ".join(capsys.readouterr().out.split())


@pytest.mark.parametrize("name", ["fit", "easier", "tlc"])
def test_help_is_plain_text(name, capsys):
  with pytest.raises(SystemExit) as e:
    cli.main([name, "--help"])
  assert e.value.code == 0
  text = capsys.readouterr().out
  assert "--config.KEY=VALUE" in text and "exit codes:" in text and "130 interrupted" in text
  for markup in (":func:", ":mod:", ":class:", "``", "\\\\"):
    assert markup not in text
  assert not _CITED_DOC.search(text)


def test_the_default_workdir_tells_runs_apart(tmp_path, monkeypatch, capsys):
  monkeypatch.chdir(tmp_path)
  assert cli.main(["fit", "--no-progress", "--config.epochs=1", "--config.batch_size=128"]) == 0
  assert cli.main(["fit", "--no-progress", "--config.epochs=1", "--config.batch_size=128",
                   "--seed", "1"]) == 0                 # another seed: another run, not refused
  assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == [
      "fit-digits_cnn-digits-seed0", "fit-digits_cnn-digits-seed1"]
  assert easier_cli.default_workdir({"model": "resnet18", "dataset": "folder:data/PACS",
                                     "seed": 2}).name == "easier-resnet18-folder_data_PACS-seed2"


def test_an_unprepared_dataset_is_one_clean_paragraph(tmp_path, capsys):
  assert cli.main(["fit", "--workdir", str(tmp_path / "w"), "--dataset", "cifar10",
                   "--data-dir", str(tmp_path)]) == 2
  err = capsys.readouterr().err
  assert len(err.strip().splitlines()) == 1 and err.startswith("error: tfds dataset 'cifar10' "
                                                               "is not prepared")
  assert "tfds build cifar10" in err and "Traceback" not in err and "WARNING" not in err


# --------------------------------------------------------------------- exits


def test_storage_failures_are_recognised():
  enospc = OSError(errno.ENOSPC, "No space left on device")
  assert command.storage_failure(enospc) == "disk_full"
  assert command.storage_failure(OSError(errno.EROFS, "Read-only file system")) == "read_only"
  assert command.storage_failure(PermissionError(errno.EACCES, "Permission denied")) == "read_only"
  tensorstore = ValueError('RESOURCE_EXHAUSTED: Error writing local file "/w/ocdbt": '
                           '[OS error 28: No space left on device]')
  assert command.storage_failure(tensorstore) == "disk_full"
  try:
    try:
      raise enospc
    except OSError as cause:
      raise RuntimeError("async save failed") from cause
  except RuntimeError as chained:
    assert command.storage_failure(chained) == "disk_full"
  oom = ValueError("RESOURCE_EXHAUSTED: Out of memory while trying to allocate 2.1GiB")
  assert command.storage_failure(oom) is None           # device memory, not the disk
  assert command.storage_failure(ValueError("bad")) is None


def _resume_line(err, cwd="."):
  """The printed command that resumes, split; it runs this Python (a bare ``python`` may be
  none, or another one), named from ``cwd`` relative to it when it lies under it."""
  words = shlex.split(err.strip().splitlines()[-1].strip())
  assert os.path.samefile(os.path.join(cwd, words[0]), sys.executable), words[0]
  under = pathlib.Path(sys.executable).is_relative_to(pathlib.Path(cwd).resolve())
  assert os.path.isabs(words[0]) != under, words[0]
  return ["python", *words[1:]]


@pytest.mark.parametrize("kind", ["disk_full", "read_only"])
def test_a_full_disk_or_read_only_workdir_ends_with_a_paragraph_and_its_code(
    kind, tmp_path, monkeypatch, capsys):
  # As root, chmod does not stop writes; the writers are made to fail as the system would.
  if kind == "disk_full":
    code, what = command.EXIT_DISK_FULL, "The disk is full"

    def fail(self, *a, **k):
      raise ValueError('RESOURCE_EXHAUSTED: Error writing local file "x": [OS error 28: No '
                       'space left on device]')
    monkeypatch.setattr(checkpoint.Checkpointer, "save", fail)
  else:
    code, what = command.EXIT_READ_ONLY, f"The work directory {tmp_path} is read-only"

    def fail(self, *a, **k):
      raise OSError(errno.EROFS, "Read-only file system", str(tmp_path / "metrics.jsonl"))
    monkeypatch.setattr(progress.MetricsLog, "write", fail)
  argv = ["--no-progress", "--config.epochs=1", "--config.batch_size=128"]
  assert cli.main(["fit", *argv, "--workdir", str(tmp_path)]) == code
  err = capsys.readouterr().err
  assert err.startswith(what) and "Nothing was lost" in err and "Traceback" not in err
  assert _resume_line(err) == ["python", "-m", "jaxdepth", "fit", *argv, "--workdir", str(tmp_path)]


def test_ctrl_c_ends_cleanly_and_the_printed_command_resumes(tmp_path, capsys):
  workdir = tmp_path / "run"
  argv = ["--config.epochs=400", "--config.batch_size=128", "--workdir", str(workdir)]
  # The resume below runs in this process: the run's devices must be this process's.
  env = {**os.environ, "PYTHONPATH": str(ROOT), "JAX_PLATFORMS": "cpu",
         "JAX_NUM_CPU_DEVICES": str(jax.device_count())}
  # A shell that started us in the background may ignore SIGINT, and the child would inherit
  # that; a handler is not inherited (the child starts with the default, as from a terminal).
  previous = signal.signal(signal.SIGINT, signal.default_int_handler)
  try:
    proc = subprocess.Popen([sys.executable, "-m", "jaxdepth", "fit", *argv], cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  finally:
    signal.signal(signal.SIGINT, previous)
  try:
    metrics = workdir / "metrics.jsonl"
    while proc.poll() is None and not (metrics.exists() and metrics.read_text().count("\n") >= 2):
      time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
  finally:
    proc.kill()
  assert proc.returncode == command.EXIT_INTERRUPTED, err
  assert "Traceback" not in err and "\r" not in err
  paragraph = err[err.index("Interrupted (Ctrl-C)."):]
  assert "Nothing was lost" in paragraph and _resume_line(paragraph, tmp_path) == [
      "python", "-m", "jaxdepth", "fit", *argv]
  # Output that is not a terminal gets one progress line per epoch.
  epoch_lines = [line for line in err.splitlines() if "epoch=" in line]
  assert epoch_lines[0].startswith("digits_cnn on digits: step 10/4000 (0 %)")
  assert [line.split("epoch=")[1].split()[0] for line in epoch_lines] == [
      str(i + 1) for i in range(len(epoch_lines))]
  # The printed command resumes (here told to stop one epoch later): nothing is retrained.
  before = progress.read_metrics(workdir / "metrics.jsonl")
  assert len(before) >= 2
  assert cli.main(_resume_line(paragraph, tmp_path)[3:] + ["--no-progress",
                                                 f"--config.epochs={len(before) + 1}"]) == 0
  history = json.loads((workdir / "report.json").read_text())["history"]
  assert [r["epoch"] for r in history] == list(range(1, len(before) + 2))
  assert [r["train_loss"] for r in history[:len(before)]] == [r["train_loss"] for r in before]


# ------------------------------------------------------------------- progress


def test_progress_off_a_terminal_is_one_line_per_report(monkeypatch):
  stream = io.StringIO()
  bar = progress.LineProgress(total=20, initial=10, desc="net on data", file=stream)
  for _ in range(5):
    bar.update(1)
    bar.set_postfix(loss="0.5", refresh=False)       # within an epoch: nothing
  assert stream.getvalue() == ""
  bar.set_postfix(epoch=3, loss="0.4")               # the epoch's end: one line
  bar.close()
  line, = stream.getvalue().splitlines()
  assert line.startswith("net on data: step 15/20 (75 %), 00:00 elapsed, ETA 00:00")
  assert line.endswith("| epoch=3 loss=0.4") and "\r" not in stream.getvalue()
  monkeypatch.setattr(sys, "stderr", io.StringIO())   # not a terminal
  assert isinstance(progress.progress_bar(total=3), progress.LineProgress)
  assert not isinstance(progress.progress_bar(total=3, enabled=False), progress.LineProgress)


def test_a_workdir_with_no_intact_checkpoint_is_refused_in_one_paragraph(tmp_path, capsys):
  assert _fit(tmp_path, "--config.epochs=1") == 0
  for step_dir in (tmp_path / "checkpoints").iterdir():
    meta = step_dir / "meta" / "metadata"
    meta.write_bytes(meta.read_bytes()[:-3])        # truncated: fails its checksum
  capsys.readouterr()
  assert _fit(tmp_path, "--config.epochs=2") == 2
  err = capsys.readouterr().err
  assert "Traceback" not in err
  assert _error_lines(err)[0].startswith(
      f"error: no intact checkpoint is left in {tmp_path / 'checkpoints'} (checkpoint ")
  assert "meta/metadata has" in err and "to start the run afresh" in err


def test_method_commands_read_latencies_from_the_report_else_time_the_saved_models(tmp_path):
  spec = zoo.digits_cnn(width=4)
  variables = network.init(spec, jax.random.key(0))
  for path in ("iterations/000/model", "chosen", "chosen_merged"):
    checkpoint.save_model(tmp_path / path, spec, variables)
  row = {"batch": 1, "dense_ms": 1.0, "chosen_ms": 0.5, "merged_ms": 0.25}
  report = {"chosen": {"merged": {"latency": [row]}}}
  assert command.latencies_at(report, tmp_path, 1) == row          # the driver's figures
  measured = command.latencies_at(report, tmp_path, 3)              # another batch: timed
  assert measured["batch"] == 3 and set(measured) == set(row)
  assert all(measured[k] > 0 for k in ("dense_ms", "chosen_ms", "merged_ms"))
  (tmp_path / "chosen_merged" / "spec.json").unlink()              # what is not saved is left out
  assert set(command.latencies_at({}, tmp_path, 3)) == {"batch", "dense_ms", "chosen_ms"}


def test_a_saved_model_or_a_spec_file_is_a_model(tmp_path, capsys):
  """--model DIR fine-tunes a saved model from its weights; --model FILE.json trains a spec
  from a fresh initialisation; either must fit the dataset, and is refused otherwise."""
  assert _fit(tmp_path / "first", "--config.epochs=1") == 0
  saved = tmp_path / "first" / "model"
  spec, variables = checkpoint.load_model(saved)
  cfg = {"model": str(saved), "pretrained": None, "seed": 0}
  start = command.initial_variables(cfg, spec)
  for ours, theirs in zip(jax.tree.leaves(start), jax.tree.leaves(variables)):
    np.testing.assert_array_equal(np.asarray(ours), np.asarray(theirs))
  assert _fit(tmp_path / "tuned", "--model", str(saved), "--config.epochs=1") == 0
  assert checkpoint.load_model(tmp_path / "tuned" / "model")[0] == spec

  plain = tmp_path / "plain.json"
  plain.write_text(zoo.digits_plain(width=8).to_json())
  assert _fit(tmp_path / "from_json", "--model", str(plain), "--config.epochs=1") == 0
  assert checkpoint.load_model(tmp_path / "from_json" / "model")[0] == zoo.digits_plain(width=8)
  capsys.readouterr()

  wrong = tmp_path / "wrong.json"
  wrong.write_text(zoo.digits_plain(input_shape=(16, 16, 1)).to_json())
  assert _fit(tmp_path / "refused", "--model", str(wrong)) == 2
  assert "takes inputs (16, 16, 1) and gives (10,) outputs; the dataset has inputs (8, 8, 1)" in (
      capsys.readouterr().err)
  assert _fit(tmp_path / "refused", "--model", str(saved), "--pretrained", str(plain)) == 2
  assert "starts from its own weights; leave --pretrained out" in capsys.readouterr().err
  assert _fit(tmp_path / "refused", "--model", str(tmp_path / "first")) == 2
  assert "its subdirectory model/ holds one: load that" in capsys.readouterr().err
  assert _fit(tmp_path / "refused", "--model", str(tmp_path / "nothing.json")) == 2
  assert "no such file or directory" in capsys.readouterr().err
  module = tmp_path / "seven.py"   # a module of the user's whose head ignores num_classes
  module.write_text("import flax.linen as nn\n\n\nclass Net(nn.Module):\n"
                    "  @nn.compact\n  def __call__(self, x, train=False):\n"
                    "    return nn.Dense(7)(x.reshape((x.shape[0], -1)))\n")
  assert _fit(tmp_path / "refused", "--model", f"{module}:Net") == 2
  assert "gives (7,) outputs; the dataset 'digits' has 10 classes" in capsys.readouterr().err
  assert not (tmp_path / "refused").exists()


def test_a_method_on_a_saved_model_resumes_from_it_after_a_kill_before_the_first_seal(tmp_path):
  """A method command killed between orbax's write of its first iteration checkpoint and the
  seal (the unfinished save is removed on resume) restarted from a random initialisation, not
  from --model DIR: the resumed run now ends bit-identical to an uninterrupted one."""
  assert _fit(tmp_path / "first", "--config.epochs=1") == 0
  argv = ["easier", "--model", str(tmp_path / "first" / "model"), "--iterations", "1",
          "--config.epochs=1", "--no-latency", "--no-progress", "--workdir"]
  assert cli.main([*argv, str(tmp_path / "whole")]) == 0
  assert cli.main([*argv, str(tmp_path / "cut")]) == 0
  manifest = tmp_path / "cut" / "checkpoints" / "1" / integrity.MANIFEST
  manifest.rename(manifest.with_name(integrity.MANIFEST + ".tmp"))   # killed before the seal
  assert cli.main([*argv, str(tmp_path / "cut")]) == 0
  whole = checkpoint.load_model(tmp_path / "whole" / "chosen")[1]
  cut = checkpoint.load_model(tmp_path / "cut" / "chosen")[1]
  for a, b in zip(jax.tree.leaves(whole), jax.tree.leaves(cut), strict=True):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_weights_refused_after_the_workdir_was_made_leave_no_directory(tmp_path, capsys):
  """The weights are read once the run's directory is made and locked; refusing them (exit 2)
  takes the directory away again, as bad input writes nothing. One that was there stays."""
  bogus = tmp_path / "bogus.safetensors"
  bogus.write_bytes(b"not a safetensors file")
  workdir = tmp_path / "new" / "run"
  argv = ["fit", "--model", "digits_swin", "--pretrained", str(bogus), "--config.epochs=1",
          "--no-progress", "--workdir", str(workdir)]   # a model torchvision weights load onto
  assert cli.main(argv) == 2
  assert "bogus.safetensors is named .safetensors but is not a safetensors file" in (
      capsys.readouterr().err)
  assert not (tmp_path / "new").exists()                # new/ was made for it too
  workdir.mkdir(parents=True)
  (workdir / "notes.txt").write_text("mine")
  assert cli.main(argv) == 2
  assert sorted(p.name for p in workdir.iterdir()) == [".lock", "notes.txt"]


@pytest.mark.parametrize("text, why", [("", "it is empty"), ("[1]", "it holds a JSON array")])
def test_a_damaged_run_json_is_one_line_naming_it_and_the_checkpoints_stay(
    tmp_path, capsys, text, why):
  """fit read run.json unguarded (a JSONDecodeError traceback); a method said only "Expecting
  value: line 1 column 1" without naming the file."""
  for argv in (["fit"], ["easier", "--iterations", "1", "--no-latency"]):
    workdir = tmp_path / argv[0]
    (workdir / "checkpoints" / "1").mkdir(parents=True)
    (workdir / "checkpoints" / "1" / "state").write_bytes(b"a checkpoint")
    (workdir / "run.json").write_text(text)
    before = _files(workdir)
    assert cli.main([*argv, "--config.epochs=1", "--no-progress", "--workdir", str(workdir)]) == 2
    (workdir / command.LOCK_FILE).unlink()
    err = capsys.readouterr().err
    assert "Traceback" not in err and _error_lines(err) == [
        f"error: work directory {workdir}: run.json is not the JSON object jaxdepth writes "
        f"({why}); it records the run's settings: restore it, or move the directory aside or "
        f"use another directory"]
    assert _files(workdir) == before


@pytest.mark.parametrize("kind", ["saved", "spec"])
def test_model_kwargs_with_a_saved_model_or_a_spec_file_are_refused(tmp_path, capsys, kind):
  """They size a zoo model or one's own module: with a stored spec they were silently ignored."""
  spec = zoo.digits_cnn()
  if kind == "saved":
    model = tmp_path / "saved"
    checkpoint.save_model(model, spec, network.init(spec, jax.random.key(0)))
  else:
    model = tmp_path / "spec.json"
    model.write_text(spec.to_json())
  assert _fit(tmp_path / "w", "--model", str(model), "--config.model_kwargs.width=8") == 2
  what = "saved model" if kind == "saved" else "spec file"
  assert _error_lines(capsys.readouterr().err) == [
      f"error: --config.model_kwargs={{'width': 8}}: the {what} {str(model)!r} fixes its own "
      f"architecture; leave model_kwargs out"]
  assert not (tmp_path / "w").exists()


def test_a_refused_run_leaves_no_empty_folders_it_made_above_its_workdir(tmp_path, capsys,
                                                                        monkeypatch):
  """--workdir new1/new2/run refused after the directory was made left new1/new2 behind (and
  the default workdir an empty runs/)."""
  bogus = tmp_path / "bogus.safetensors"
  bogus.write_bytes(b"not a safetensors file")
  argv = ["fit", "--model", "digits_swin", "--pretrained", str(bogus), "--no-progress"]
  (tmp_path / "a").mkdir()
  assert cli.main([*argv, "--workdir", str(tmp_path / "a" / "b" / "c" / "run")]) == 2
  assert "is not a safetensors file" in capsys.readouterr().err
  assert list((tmp_path / "a").iterdir()) == []        # the one that was there stays
  monkeypatch.chdir(tmp_path / "a")
  assert cli.main(argv) == 2
  assert list((tmp_path / "a").iterdir()) == []        # no runs/
  (tmp_path / "a" / "b").mkdir()
  (tmp_path / "a" / "b" / "notes.txt").write_text("mine")
  assert cli.main([*argv, "--workdir", "b/c/run"]) == 2
  assert sorted(p.name for p in (tmp_path / "a").rglob("*")) == ["b", "notes.txt"]


def test_a_refused_run_through_dot_dot_removes_what_it_made_not_the_users_folder(
    tmp_path, capsys, monkeypatch):
  """--workdir nx/../mine (mine an empty folder of the user's) took nx for the folder it made
  and, refused, removed mine (rmdir through nx/..) and left nx."""
  bogus = tmp_path / "bogus.safetensors"
  bogus.write_bytes(b"not a safetensors file")
  (tmp_path / "mine").mkdir()
  monkeypatch.chdir(tmp_path)
  assert cli.main(["fit", "--model", "digits_swin", "--pretrained", str(bogus), "--no-progress",
                   "--workdir", "nx/../mine"]) == 2
  assert "is not a safetensors file" in capsys.readouterr().err
  assert (tmp_path / "mine").is_dir() and not (tmp_path / "nx").exists()


def test_a_resume_from_other_initial_weights_is_said_in_command_line_terms(tmp_path, capsys):
  """The library's advice (pass variables=..., or None) named no flag of the command line."""
  argv = ["easier", "--iterations", "1", "--config.epochs=1", "--no-latency", "--no-progress",
          "--workdir", str(tmp_path / "w")]
  assert cli.main(argv) == 0
  run_json = tmp_path / "w" / "run.json"
  stored = json.loads(run_json.read_text())
  stored["variables"] = "0" * len(stored["variables"])   # as weights re-exported with other bytes
  run_json.write_text(json.dumps(stored))
  before = _files(tmp_path / "w")
  capsys.readouterr()
  assert cli.main(argv) == 2
  lines = _error_lines(capsys.readouterr().err)
  assert lines == [
      f"error: the run in {tmp_path / 'w'} started from other weights than a random "
      f"initialisation with --seed 0 (from --pretrained weights or a saved --model, most "
      f"likely): give the --pretrained FILE or --model DIR it started from, or use another "
      f"--workdir"]
  assert _files(tmp_path / "w") == before
  error = training.RunMismatchError("library words", settings=("variables",))
  cfg = {"pretrained": "r18.safetensors", "model": "resnet20", "seed": 0}
  assert str(command.mismatch_in_cli_terms(error, cfg, pathlib.Path("runs/x"))) == (
      "--config.pretrained='r18.safetensors': the weights there are not the ones the run in "
      "runs/x started from (their digest differs): put back the file it started from, or use "
      "another --workdir")
  saved = tmp_path / "w" / "chosen"    # a saved model
  cfg = {"pretrained": None, "model": str(saved), "seed": 0}
  assert str(command.mismatch_in_cli_terms(error, cfg, pathlib.Path("runs/x"))) == (
      f"--model {str(saved)!r}: the saved model's weights are not the ones the run in runs/x "
      f"started from (their digest differs): put back the model it started from, or use "
      f"another --workdir")
  other = training.RunMismatchError("x", settings=("seed",))
  assert command.mismatch_in_cli_terms(other, cfg, pathlib.Path("runs/x")) is other


def test_a_text_dataset_without_a_tokenizer_names_the_command_line_options(tmp_path, capsys):
  assert cli.main(["fit", "--dataset", "glue/sst2", "--model", "tiny_encoder", "--workdir",
                   str(tmp_path / "w")]) == 2
  assert _error_lines(capsys.readouterr().err) == [
      "error: --dataset glue/sst2 is a text dataset and needs a tokenizer: give "
      "--config.tokenizer=PATH (a Hugging Face tokenizer.json, or the model folder holding it) "
      "or --pretrained FOLDER (a Hugging Face model folder, whose tokenizer.json is used)"]
  assert not (tmp_path / "w").exists()


def test_a_run_from_a_saved_model_resumes_with_its_path_spelled_another_way(
    tmp_path, monkeypatch, capsys):
  """--model DIR was compared as typed: DIR/ (tab completion) or a relative spelling refused the
  resume, fit's refusal even advising to delete the run."""
  assert _fit(tmp_path / "first", "--config.epochs=1") == 0
  saved = tmp_path / "first" / "model"
  argv = ["easier", "--config.epochs=1", "--no-latency", "--no-progress", "--workdir",
          str(tmp_path / "run"), "--model"]
  assert cli.main([*argv, str(saved), "--iterations", "1"]) == 0
  monkeypatch.chdir(tmp_path)
  assert cli.main([*argv, "first/model/", "--iterations", "2"]) == 0
  assert len(json.loads((tmp_path / "run" / "report.json").read_text())["iterations"]) == 2
  # A run.json written before paths were resolved holds the path as typed then: it resumes.
  run_json = tmp_path / "run" / "run.json"
  stored = json.loads(run_json.read_text())
  stored["info"]["model"] = "first/model/"
  run_json.write_text(json.dumps(stored))
  assert cli.main([*argv, str(saved), "--iterations", "2"]) == 0
  capsys.readouterr()
  assert cli.main([*argv, "digits_cnn", "--iterations", "2"]) == 2      # another model is not
  assert "info.model: 'first/model/' there, 'digits_cnn' asked" in capsys.readouterr().err

  assert _fit(tmp_path / "tuned", "--model", str(saved), "--config.epochs=1") == 0
  assert _fit(tmp_path / "tuned", "--model", "./first/model/", "--config.epochs=2") == 0
  assert json.loads((tmp_path / "tuned" / "report.json").read_text())["epochs"] == 2
  # The same model, another lr: other settings, not "a run of <resolved path>, not of first/model".
  capsys.readouterr()
  assert _fit(tmp_path / "tuned", "--model", "first/model", "--config.lr=0.01") == 2
  assert f"work directory {tmp_path / 'tuned'} holds a run with other settings (lr: " in (
      capsys.readouterr().err)


def test_a_folder_dataset_resumes_with_its_path_spelled_another_way(tmp_path, monkeypatch,
                                                                      capsys):
  """--dataset folder:DIR was compared as typed: an absolute or ./DIR/ spelling of the same
  folder refused the resume (fit: "a run ... on folder:images, not ... on folder:/.../images");
  so was --config.normalization=imagenet, the folder's default, on a run started without it."""
  from PIL import Image  # pylint: disable=import-outside-toplevel
  for label, cls in enumerate(("cat", "dog")):
    (tmp_path / "images" / cls).mkdir(parents=True)
    for k in range(10):
      Image.new("RGB", (8, 8), (200 * label, 30, 30 + 10 * k)).save(
          tmp_path / "images" / cls / f"{k}.png")
  (tmp_path / "other").mkdir()
  shutil.copytree(tmp_path / "images", tmp_path / "other" / "images")
  monkeypatch.chdir(tmp_path)
  args = ["--config.image_size=8", "--config.batch_size=4"]
  assert _fit(tmp_path / "fit", "--dataset", "folder:images", "--config.epochs=1", *args) == 0
  assert _fit(tmp_path / "fit", "--dataset", f"folder:{tmp_path / 'images'}/",
              "--config.epochs=2", *args) == 0
  report = json.loads((tmp_path / "fit" / "report.json").read_text())
  assert (report["epochs"], report["dataset"]) == (2, "folder:images")
  capsys.readouterr()
  assert _fit(tmp_path / "fit", "--dataset", "folder:other/images", "--config.epochs=2",
              *args) == 2   # another folder is another dataset
  assert "'folder:images' stored, 'folder:other/images' asked" in capsys.readouterr().err

  argv = ["easier", "--model", "digits_plain", "--config.epochs=1", "--no-latency",
          "--no-progress", "--workdir", str(tmp_path / "run"), *args]
  assert cli.main([*argv, "--dataset", "folder:images", "--iterations", "1"]) == 0
  assert cli.main([*argv, "--dataset", "folder:./images/", "--iterations", "2"]) == 0
  assert len(json.loads((tmp_path / "run" / "report.json").read_text())["iterations"]) == 2
  # The folder's default normalization spelled out is the same run (it was refused).
  assert cli.main([*argv, "--dataset", "folder:images", "--iterations", "3",
                   "--config.normalization=imagenet"]) == 0
  assert len(json.loads((tmp_path / "run" / "report.json").read_text())["iterations"]) == 3
  assert _fit(tmp_path / "fit", "--dataset", "folder:images", "--config.epochs=3",
              "--config.normalization=imagenet", *args) == 0
  assert json.loads((tmp_path / "fit" / "report.json").read_text())["epochs"] == 3


def test_a_saved_models_spec_is_read_without_orbax_before_the_processes_agree(tmp_path,
                                                                            monkeypatch):
  # Each process checks its inputs, then they agree to go on: an orbax read here (a collective)
  # paired with another process's agreement when that one refused first, and both hung.
  spec = zoo.digits_cnn(width=4)
  saved = checkpoint.save_model(tmp_path / "model", spec, network.init(spec, jax.random.key(0)))

  def no_orbax(*args, **kwargs):
    raise AssertionError("orbax used before the processes agreed")

  monkeypatch.setattr(checkpoint.ocp, "StandardCheckpointer", no_orbax)
  assert command._stored_spec(str(saved), "saved", data.load("digits")) == spec  # pylint: disable=protected-access


def test_a_text_model_of_another_length_is_told_the_max_length_it_takes(tmp_path):
  # A text dataset tokenized to 128 (the default max_length); the model was made for 16 tokens.
  glue_like = types.SimpleNamespace(input_shape=(128,), num_classes=2)
  short = tmp_path / "short.json"
  short.write_text(zoo.tiny_encoder(max_length=16).to_json())
  with pytest.raises(config_lib.ConfigError, match=r"takes 16 tokens per example, but the "
                     r"dataset is tokenized to 128: use --config.max_length=16 \(the model's"):
    command._stored_spec(str(short), "spec", glue_like)  # pylint: disable=protected-access
  # Other classes too: another model is needed, whatever the length.
  three = tmp_path / "three.json"
  three.write_text(zoo.tiny_encoder(num_classes=3, max_length=16).to_json())
  with pytest.raises(config_lib.ConfigError, match="give a model made for this dataset"):
    command._stored_spec(str(three), "spec", glue_like)  # pylint: disable=protected-access


def test_a_method_run_records_its_tokenizer_and_older_runs_resume_without_one(tmp_path):
  # A resume with another tokenizer trained on other token ids (the run never compared it).
  assert "tokenizer" in command.IDENTITY_KEYS
  cfg = {k: None for k in command.IDENTITY_KEYS} | {"model": "digits_cnn", "tokenizer": "t.json"}
  made = command._recorded_info(cfg, command.IDENTITY_KEYS, tmp_path)  # pylint: disable=protected-access
  assert made["tokenizer"] == str((pathlib.Path.cwd() / "t.json").resolve())
  older = {k: v for k, v in made.items() if k not in ("tokenizer", "layout")}
  (tmp_path / "run.json").write_text(json.dumps({"method": "easier", "info": older}))
  assert command._recorded_info(cfg, command.IDENTITY_KEYS, tmp_path) == older  # pylint: disable=protected-access


def test_a_fit_whose_checkpoints_were_deleted_is_never_taken_over(tmp_path, capsys):
  assert _fit(tmp_path, "--config.epochs=1") == 0
  shutil.rmtree(tmp_path / "checkpoints")               # to save space
  before = _files(tmp_path)
  capsys.readouterr()
  assert _fit(tmp_path, "--config.epochs=1", "--config.lr=0.01") == 2
  assert "lr: 0.05 stored, 0.01 asked" in capsys.readouterr().err
  assert _fit(tmp_path, "--config.epochs=1") == 2
  assert _error_lines(capsys.readouterr().err) == [
      f"error: work directory {tmp_path} holds this run's results (model/, report.json) but its "
      f"checkpoints/ are gone: it can be neither resumed nor re-evaluated, and training it again "
      f"would overwrite them. To train it again from the start, move {tmp_path} aside or delete "
      f"it; or use another --workdir."]
  assert _files(tmp_path) == before


def test_a_call_refused_the_lock_leaves_the_directory_it_made_to_the_run_holding_it(
    tmp_path, capsys):
  """Call A made the fresh workdir, B locked it first: A's refusal removed B's lock file and
  directory, so a third call could run beside B."""
  import fcntl  # pylint: disable=import-outside-toplevel
  workdir = tmp_path / "w"
  workdir.mkdir()                                      # by A (made=True)
  with open(workdir / ".lock", "wb") as other:         # B holds the lock
    fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)
    session = command.Session("easier", ["--workdir", str(workdir)])
    assert session.run(lambda: session.hold(workdir, made=True) or 0) == 2
    assert "is in use: another run holds its lock" in capsys.readouterr().err
    assert (workdir / ".lock").exists()
    third = command.Session("easier", ["--workdir", str(workdir)])
    assert third.run(lambda: third.hold(workdir) or 0) == 2      # B's lock still holds
  # Holding the lock, a call that made the directory takes it away when it refuses the run,
  # before it lets the lock go (a run locking it in between lost its directory).
  session = command.Session("easier", ["--workdir", str(workdir)])
  released = session._release  # pylint: disable=protected-access
  there_at_release = []
  session._release = lambda: there_at_release.append(workdir.exists()) or released()  # pylint: disable=protected-access
  assert session.run(lambda: session.hold(workdir, made=True) or 2) == 2
  assert not workdir.exists() and there_at_release == [False]


def test_tlc_json_is_strict_json_with_null_for_candidates_not_ranked(tmp_path):
  """Candidates not ranked at an iteration (removed before it) were written as bare NaN, which
  JSON parsers other than Python's refuse."""
  def entry(i, gaps):
    return {"iteration": i, "units_removed": i, "val_accuracy": 0.9, "test_accuracy": 0.8,
            "macs": 10, "params": 5, "depth": {}, "removed_now": [],
            "loss_gaps": {k: {"gap": g} for k, g in gaps.items()}}

  rep = {"iterations": [entry(0, {"a": 0.5, "b": -0.25}), entry(1, {"b": 0.125})],
         "chosen": None}
  path = tlc_cli.write_summary(tmp_path, tlc_cli.summary(rep, None))

  def refuse(constant):
    raise ValueError(f"not JSON: {constant}")

  figures = json.loads(path.read_text(), parse_constant=refuse)
  assert figures["loss_gaps"] == {"a": [0.5, None], "b": [-0.25, 0.125]}
  assert sorted(p.name for p in tmp_path.iterdir()) == ["tlc.json"]   # no temporary left


def test_recipe_rules_are_checked_with_the_settings_in_one_line_each(tmp_path, capsys,
                                                                      monkeypatch):
  workdir = tmp_path / "never"
  for args, says in [
      (["--config.optimizer=adam", "--config.nesterov=true"],
       "error: --config.nesterov=True: Nesterov momentum needs --config.optimizer=sgd and "
       "--config.momentum in (0, 1)"),
      (["--config.optimizer=adam", "--config.eps=0"],   # sqrt(v) + 0: 0 / 0 on a dead channel
       "error: --config.eps=0.0: adam's epsilon must be a number > 0"),
      # jax.random.key keeps a seed's low 32 bits: 2**32 + 7 would initialise as seed 7
      ([f"--config.seed={2**32 + 7}"],
       f"error: --config.seed={2**32 + 7}: a seed must be at most 2**32 - 1 = {2**32 - 1}: "
       f"jax.random.key keeps a seed's low 32 bits, so it would draw the initialisation of "
       f"seed 7")]:
    assert _fit(workdir, "--config.epochs=1", *args) == 2
    lines = _error_lines(capsys.readouterr().err)
    assert len(lines) == 1 and lines[0].startswith(says), lines
  assert not workdir.exists()
  cfg = config_lib.to_dict(config_lib.override(config_lib.load("digits"),
                                               [("seed", str(2**32 - 1))]))
  assert config_lib.check(cfg) == []
  # A recipe rule the checks missed is still the settings' fault: one line, exit 2.
  monkeypatch.setattr(config_lib, "check", lambda cfg: [])
  assert _fit(workdir, "--config.epochs=1", "--config.optimizer=adam",
              "--config.nesterov=true") == 2
  assert _error_lines(capsys.readouterr().err) == [
      "error: recipe nesterov=True needs optimizer='sgd' and momentum in (0, 1) (as "
      "torch.optim.SGD), got optimizer='adam', momentum=0.9"]
  assert not workdir.exists()


def test_a_sigterm_that_lands_in_a_garbage_collection_callback_still_stops_training(tmp_path):
  """Python drops an exception raised while a gc callback runs, and jax installs one: the
  SIGTERM handler's KeyboardInterrupt was lost there, and the run trained to its end and
  exited 0. The handler also asks the training loops to stop: fit stops at its next step."""
  import gc   # pylint: disable=import-outside-toplevel

  session = command.Session("fit", ["--workdir", str(tmp_path / "run")])
  spec, ds = zoo.digits_plain(width=4), data.load("digits")
  trained = []

  def body():
    session.stop_on_sigterm()

    def in_gc(phase, info):   # the signal's handler runs inside the callback
      del info
      if phase == "start" and not session._terminated:   # pylint: disable=protected-access
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.1)   # the handler runs here (the main thread), inside the callback

    gc.callbacks.append(in_gc)
    try:
      gc.collect()
    finally:
      gc.callbacks.remove(in_gc)
    assert session._terminated   # pylint: disable=protected-access
    result = training.fit(spec, network.init(spec, jax.random.key(0)), ds,
                          optim.Recipe(epochs=3, batch_size=64), progress=False)
    trained.append(len(result.history))
    return 0

  assert session.run(body) == command.EXIT_TERMINATED
  assert trained == []   # stopped in the first epoch, not trained to its end
  # The stop was handled: a later run in this process trains.
  assert training.fit(spec, network.init(spec, jax.random.key(0)), ds,
                      optim.Recipe(epochs=1, batch_size=64), progress=False).history
