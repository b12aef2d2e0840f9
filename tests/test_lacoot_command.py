"""The lacoot command's printed and saved latency (python -m jaxdepth lacoot)."""
import json

from jaxdepth import checkpoint


def test_no_speedup_when_the_chosen_model_is_the_trained_network(tmp_path, capsys):
  # Before: with no block removed the command printed "chosen shallow ... (1.29x)" and wrote
  # "speedup": 1.295 for two timings of one and the same network.
  from jaxdepth.train import __main__ as cli   # pylint: disable=import-outside-toplevel
  from jaxdepth.train import lacoot as cmd   # pylint: disable=import-outside-toplevel
  args = ["lacoot", "--workdir", str(tmp_path), "--no-progress", "--iterations", "1",
          "--n-projections", "4", "--set", "epochs=1", "model_kwargs={'width': 4}",
          "milestones=()"]
  assert cli.main(args) == 0
  out = capsys.readouterr().out
  rep = json.loads((tmp_path / "report.json").read_text())
  assert rep["chosen"]["iteration"] == 0 and rep["chosen"]["units_removed"] == 0
  dense, _ = checkpoint.load_model(tmp_path / "iterations" / "000" / "model")
  chosen, _ = checkpoint.load_model(tmp_path / "chosen")
  assert chosen == dense                            # the same network, so no speedup to report
  lat = json.loads((tmp_path / "lacoot.json").read_text())["latency"]
  assert lat["batch"] == 1 and lat["dense_ms"] > 0  # the trained network is still timed
  assert lat["speedup"] is None and lat["note"] == cmd.NO_REMOVAL_NOTE
  line = next(s for s in out.splitlines() if s.startswith("latency at batch 1"))
  assert "chosen = trained, no block removed" in line and "x)" not in line
  assert "chosen shallow" not in out
