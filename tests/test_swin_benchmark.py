"""benchmarks/swin_step.py runs: its jitted train and eval steps compile once and report JSON
(on the tiny digits Swin; the Swin-T settings are what the script is run with)."""
import json

import _scripts


def test_swin_step_benchmark_reports_both_steps_as_json(capsys):
  module = _scripts.load("benchmarks/swin_step.py")
  module.main(["--model", "digits_swin", "--settings", "8:4", "--rounds", "2"])
  report = json.loads(capsys.readouterr().out)
  (result,) = report["results"]
  assert report["model"] == "digits_swin" and result["input"] == [8, 8, 3] and result["batch"] == 4
  for step in ("train_step", "eval_step"):
    figures = result[step]
    assert 0 < figures["min_s"] <= figures["median_s"] <= figures["max_s"]
  assert result["compile_s"]["train"] > 0 and result["compile_s"]["eval"] > 0
