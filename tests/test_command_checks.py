"""The commands' checks before any work: settings with nothing to remove, values that are no
values, what a divergence says to do, strict JSON reports and the keys ``--help`` lists."""
import json
import math
import re

import jax
import jax.numpy as jnp
import flax.linen as nn
import pytest

import jaxdepth
from jaxdepth import data, report, zoo
from jaxdepth.train import __main__ as cli
from jaxdepth.train import command
from jaxdepth.train import config as config_lib
from jaxdepth.train import easier as easier_cli
from jaxdepth.train import egp as egp_cli
from jaxdepth.train import fit as fit_cli
from jaxdepth.train import lacoot as lacoot_cli
from jaxdepth.train import tlc as tlc_cli


@pytest.fixture(scope="module")
def digits():
  return data.load("digits")


class _OneSite(nn.Module):
  """Conv → BatchNorm → relu → mean → Dense: one activation site."""

  @nn.compact
  def __call__(self, x, train: bool = False):
    x = nn.Conv(8, (3, 3), padding="VALID")(x)
    x = nn.BatchNorm(use_running_average=not train)(x)
    x = nn.relu(x)
    return nn.Dense(10)(x.mean(axis=(1, 2)))


def _one_site_spec():
  x = jnp.zeros((2, 8, 8, 1))
  module = _OneSite()
  spec, _, _ = jaxdepth.from_flax(module, module.init(jax.random.key(0), x), x)
  assert len(spec.sites()) == 1
  return spec


# ------------------------------------------------------- nothing to remove: refused


@pytest.mark.parametrize("name", ["egp", "nepenthe"])
def test_egp_refuses_settings_where_no_site_keeps_a_layer_to_prune(name, digits):
  spec = zoo.digits_plain()
  cfg = {**egp_cli.CONFIGS[name].load(f"{name}_digits"), "model": "digits_plain",
         "model_kwargs": {}}
  check = egp_cli._check_model(name)   # pylint: disable=protected-access
  assert check({**cfg, "skip": ()}, spec, digits) == []             # every site's layer pruned
  assert check({**cfg, "skip": spec.sites()[1:]}, spec, digits) == []   # one left is enough
  for nothing in ({"skip": spec.sites()}, {"skip": (), "layers": {}}):
    problems = check({**cfg, **nothing}, spec, digits)
    assert len(problems) == 1
    assert problems[0].startswith("--config.layers / --config.skip: no site of digits_plain "
                                  "keeps a layer to prune")
    assert '--config.skip="()"' in problems[0]


def test_tlc_and_easier_refuse_a_model_with_a_single_site(digits):
  one = _one_site_spec()
  tcfg = tlc_cli.CONFIGS.load("tlc_digits")
  problems = tlc_cli.check_model(tcfg, one, digits)
  assert len(problems) == 1 and problems[0].startswith(
      f"--config.model={tcfg['model']!r}: {one.name} has a single activation site (relu); "
      f"TLC stops with one rectifier left")
  assert problems[0].endswith("use a model with two or more sites")
  ecfg = {**easier_cli.CONFIGS.load("easier_digits"), "iterations": None}
  problems = easier_cli.check_sites(ecfg, one, digits)
  assert len(problems) == 1 and problems[0].startswith(
      f"--config.model={ecfg['model']!r}: {one.name} has a single activation site (relu); "
      f"EASIER runs at most one iteration per site")
  # Two sites are enough for both (digits_plain has five).
  plain = zoo.digits_plain()
  assert tlc_cli.check_model(tcfg, plain, digits) == []
  assert easier_cli.check_sites(ecfg, plain, digits) == []


def test_no_shipped_tlc_or_easier_config_names_a_one_site_zoo_model():
  for name, configs in (("tlc", tlc_cli.CONFIGS), ("easier", easier_cli.CONFIGS)):
    for path in sorted(config_lib.CONFIG_DIR.glob(f"{name}_*.py")):
      cfg = configs.load(path.stem)
      if cfg["model"] in zoo.names():
        spec = zoo.get(cfg["model"], **cfg["model_kwargs"])
        assert len(spec.sites()) >= 2, path.stem


# ------------------------------------------------------------------ command line


def test_a_config_key_followed_by_an_option_or_nothing_needs_a_value(capsys):
  for argv in (["--config.epochs", "--workdir", "x"], ["--config.epochs", "--no-progress"],
               ["--workdir", "x", "--config.epochs"]):
    with pytest.raises(SystemExit) as exit_info:
      command.parse(fit_cli.build_parser(), argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "error: --config.epochs needs a value: --config.epochs=VALUE" in err, err
  # A value after a space is still one, a negative number included.
  args = command.parse(fit_cli.build_parser(), ["--config.epochs", "3", "--config.b1", "-0.5"])
  assert args.overrides == [("epochs", "3"), ("b1", "-0.5")]


@pytest.mark.parametrize("tolerance", [math.inf, -math.inf, math.nan, -1.0])
def test_a_tolerance_that_is_not_a_finite_number_of_points_is_refused(tolerance):
  problems = command.check_iterations({"iterations": None, "tolerance": tolerance}, default="x")
  assert len(problems) == 1 and problems[0].startswith(f"--tolerance {tolerance!r}: tolerance "
                                                       f"must be a finite number")
  assert command.check_iterations({"iterations": None, "tolerance": 100.0}, default="x") == []


def test_a_report_is_strict_json_with_null_where_a_figure_is_not_finite(tmp_path):
  figures = {"chosen": {"merged": {"top1_agreement": math.nan, "max_abs_diff": math.inf}},
             "rows": [1.5, -math.inf, (2, math.nan)], "name": "x"}
  path = report.write_json(tmp_path, figures)

  def refuse(token):
    raise ValueError(f"not JSON: {token}")
  assert json.loads(path.read_text(), parse_constant=refuse) == {
      "chosen": {"merged": {"top1_agreement": None, "max_abs_diff": None}},
      "rows": [1.5, None, [2, None]], "name": "x"}
  assert math.isnan(figures["chosen"]["merged"]["top1_agreement"])   # the caller's dict stays


# ------------------------------------------------------------------- divergence


def test_a_divergence_with_a_kept_checkpoint_says_to_rerun_in_another_workdir(tmp_path, capsys):
  workdir = tmp_path / "run"
  argv = ["fit", "--workdir", str(workdir), "--no-progress", "--config.epochs=1",
          "--config.optimizer=sgd", "--config.checkpoint_every_steps=1"]
  assert cli.main([*argv, "--config.lr=1e6"]) == 1
  lines = [l for l in capsys.readouterr().err.splitlines() if l.startswith("error: ")]
  assert len(lines) == 1 and "the last good checkpoint (step " in lines[0]
  assert lines[0].endswith(
      f"That checkpoint resumes only with the same settings, the learning rate among them, and "
      f"would diverge again: run again with a lower --config.lr in another --workdir (or after "
      f"deleting {workdir}), or check the data.")
  # Which is so: the same directory refuses a lower learning rate.
  assert cli.main([*argv, "--config.lr=0.05"]) == 2
  assert "lr: 1000000.0 stored, 0.05 asked" in capsys.readouterr().err
  assert "last good checkpoint is kept" not in command.EXIT_CODES_HELP
  assert "lower learning rate in another --workdir" in command.EXIT_CODES_HELP


# ------------------------------------------------------------------------ --help


def _words(text):
  return set(re.findall(r"[A-Za-z_][A-Za-z0-9_]*", text))


@pytest.mark.parametrize("name,parser,keys", [
    ("easier", easier_cli.build_parser, easier_cli.METHOD_DEFAULTS),
    ("egp", lambda: egp_cli.build_parser("egp"), egp_cli.METHOD_DEFAULTS),
    ("nepenthe", lambda: egp_cli.build_parser("nepenthe"), egp_cli.METHOD_DEFAULTS),
    ("lacoot", lacoot_cli.build_parser, lacoot_cli.METHOD_DEFAULTS),
    ("tlc", tlc_cli.build_parser, tlc_cli.METHOD_DEFAULTS),
    ("fit", fit_cli.build_parser, config_lib.defaults()),
])
def test_help_lists_every_config_key_of_the_command(name, parser, keys):
  text = parser().format_help()
  assert "checkpoint_epochs" in keys or name == "fit"
  assert sorted(set(keys) - _words(text)) == [], name
  assert "METHOD_DEFAULTS" not in text
  # Every command it names is one: python -m jaxdepth <command>.
  assert re.findall(r"python\s+-m\s+(\S+)", text) and all(
      m == "jaxdepth" for m in re.findall(r"python\s+-m\s+(\S+)", text)), name
