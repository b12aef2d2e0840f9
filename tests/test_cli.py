"""``python -m train fit`` end to end on digits (in-process, tiny epochs), configs, refusals."""
import json
import pathlib

import pytest

from jaxdepth import checkpoint, data, progress, training, zoo
from train import __main__ as cli
from train import config as config_lib


def _fit(tmp_path, *args):
  return cli.main(["fit", "--workdir", str(tmp_path), "--no-progress", *args])


def test_fit_trains_reports_and_resumes(tmp_path, capsys):
  assert _fit(tmp_path, "--set", "epochs=1") == 0
  out = capsys.readouterr().out
  report = json.loads((tmp_path / "report.json").read_text())
  assert report["model"] == "digits_cnn" and report["dataset"] == "digits"
  assert f"test accuracy {100 * report['test']['accuracy']:.2f} %" in out
  # The saved model reloads with one call and scores what the report says.
  spec, variables = checkpoint.load_model(tmp_path / "model")
  ds = data.load("digits")
  again = training.evaluate(spec, variables, ds.test, batch_size=512)
  assert again.accuracy == pytest.approx(report["test"]["accuracy"])
  assert again.accuracy > 0.25 and again.count == 359    # chance is 0.1
  assert [r["epoch"] for r in progress.read_metrics(tmp_path / "metrics.jsonl")] == [1]

  # The same command with one more epoch resumes: only epoch 2 is trained.
  assert _fit(tmp_path, "--set", "epochs=2") == 0
  report = json.loads((tmp_path / "report.json").read_text())
  assert report["epochs"] == 2 and report["history"][0]["epoch"] == 1
  assert [r["epoch"] for r in progress.read_metrics(tmp_path / "metrics.jsonl")] == [1, 2]
  assert "test accuracy" in capsys.readouterr().out

  # Another model, or another recipe, in the same work directory is refused.
  assert _fit(tmp_path, "--model", "resnet20") == 2
  err = capsys.readouterr().err
  assert "holds a run of digits_cnn on digits, not of resnet20" in err
  assert _fit(tmp_path, "--set", "epochs=2", "lr=0.5") == 2
  assert "lr: 0.05 stored, 0.5 asked" in capsys.readouterr().err


def test_nan_loss_stops_with_a_clear_message(tmp_path, capsys):
  assert _fit(tmp_path, "--set", "epochs=1", "optimizer='sgd'", "lr=1e12") == 1
  err = capsys.readouterr().err
  assert "training loss became nan" in err and "nothing was saved" in err
  assert not (tmp_path / "report.json").exists()


def test_bad_arguments_are_named(tmp_path, capsys):
  assert _fit(tmp_path, "--set", "epoch=3") == 2
  assert "unknown keys ['epoch']" in capsys.readouterr().err
  assert _fit(tmp_path, "--config", "no_such_config") == 2
  assert "digits" in capsys.readouterr().err            # lists the known configs
  assert _fit(tmp_path, "--dataset", "no_such_data") == 2
  assert "unknown dataset 'no_such_data'" in capsys.readouterr().err
  assert cli.main(["nope"]) == 2
  assert "unknown command 'nope'" in capsys.readouterr().err


FIT_CONFIGS = ("digits", "cifar10_resnet18", "cifar10_mobilenetv2", "cifar10_vgg16", "pacs",
               "vlcs", "flowers102", "dtd")


@pytest.mark.parametrize("name", FIT_CONFIGS)
def test_every_fit_config_loads_and_says_how_to_run_it(name):
  cfg = config_lib.load(name)
  recipe = config_lib.recipe_of(cfg)
  doc = (config_lib.CONFIG_DIR / f"{name}.py").read_text()
  assert "Run:" in doc and "Reaches:" in doc
  assert cfg["model"] in zoo.names()
  assert cfg["dataset"] in data.names() or cfg["dataset"].startswith("folder:")
  assert recipe.epochs > 0


def test_a_command_may_add_its_own_config_keys(tmp_path):
  path = tmp_path / "method.py"
  path.write_text("def get_config():\n  return dict(epochs=2, iterations=3)\n")
  with pytest.raises(KeyError, match="unknown keys \\['iterations'\\]"):
    config_lib.load(path)
  cfg = config_lib.load(path, extra_defaults={"iterations": None, "tolerance": 1.0})
  assert cfg["iterations"] == 3 and cfg["tolerance"] == 1.0 and cfg["epochs"] == 2


def test_set_parses_python_literals():
  cfg = config_lib.override(config_lib.load("digits"),
                            ["milestones=(2, 4)", "image_size=None", "optimizer=sgd", "lr=1e-2"])
  assert cfg["milestones"] == (2, 4) and cfg["image_size"] is None
  assert config_lib.recipe_of(cfg).optimizer == "sgd" and cfg["lr"] == 0.01
  assert pathlib.Path(cfg["config"]).name == "digits.py"
