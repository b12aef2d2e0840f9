"""The benchmarks refuse bad options with one usage line before any work, and their JSON is strict
(no NaN: a figure that is not a number is written as null). No test here times anything."""
import json
import math
import subprocess
import sys
import types

import pytest

import _scripts

SURGERY_FORMS = ("dense", "identity", "merged_exact", "merged_interior", "dense_folded")


@pytest.mark.parametrize("script, argv, message", [
    ("tlc_ranking", ["--model", "digits_plain", "--batch", "4", "--rounds", "0"], "must be positive"),
    ("tlc_ranking", ["--model", "digits_plain", "--batch", "0"], "must be positive"),
    ("tlc_ranking", ["--model", "nosuch"], "unknown model 'nosuch'"),
    ("data_pipeline", ["--repeats", "0"], "must be positive"),
    ("data_pipeline", ["--batch", "0"], "must be positive"),
    ("data_pipeline", ["--repeats", "1", "--batch", "2000"], "larger than the digits training split"),
    ("encoder_latency", ["--model", "tiny_encoder", "--length", "16", "--batches", "1",
                         "--rounds", "0"], "must be positive"),
    ("encoder_latency", ["--model", "tiny_encoder", "--length", "16", "--batches", "0",
                         "--rounds", "1"], "must be positive"),
    ("swin_step", ["--model", "digits_swin", "--settings", "8:4", "--rounds", "0"],
     "must be positive"),
    ("swin_step", ["--model", "digits_swin", "--settings", "8:0"], "must be positive"),
    ("swin_step", ["--model", "nosuch", "--settings", "8:4"], "unknown model 'nosuch'"),
    ("surgery_latency", ["--models", "resnet18", "--batches", "1", "--rounds", "0"],
     "must be positive"),
    ("surgery_latency", ["--models", "resnet18", "--batches", "-1", "--rounds", "1",
                         "--allocators"], "must be positive"),
    ("masked_step_overhead", ["--model", "nosuch"], "unknown model 'nosuch'"),
    ("compile_cache", ["--commands", "nosuch"], "invalid choice: 'nosuch'"),
])
def test_a_bad_option_is_refused_with_one_line(script, argv, message, capsys, monkeypatch):
  module = _scripts.load(f"benchmarks/{script}.py")
  # Nothing may start a child run (surgery_latency --allocators, compile_cache) before the check.
  monkeypatch.setattr(subprocess, "run", lambda *a, **k: pytest.fail(f"ran {a[0]}"))
  with pytest.raises(SystemExit) as stop:
    module.main(argv)
  assert stop.value.code == 2
  err = capsys.readouterr().err
  assert message in err and "Traceback" not in err


def _strict(text):
  """``json.loads`` that fails on NaN and Infinity, as JSON parsers other than Python's do."""
  return json.loads(text, parse_constant=lambda c: pytest.fail(f"not JSON: {c}"))


def test_surgery_latency_writes_an_empty_interior_as_null(monkeypatch, capsys):
  module = _scripts.load("benchmarks/surgery_latency.py")
  rep = types.SimpleNamespace(max_abs=0.5, max_rel=0.25, top1_agreement=1.0, border=1,
                              feature_shape=[2, 2, 512], feature_max_rel=0.125,
                              interior_max_rel=math.nan)   # nothing left inside the border
  monkeypatch.setattr(module.surgery, "collapse", lambda spec, variables, **k: (spec, variables))
  monkeypatch.setattr(module.equivalence, "border_width", lambda *a: 1)
  monkeypatch.setattr(module.equivalence, "compare", lambda *a, **k: rep)
  monkeypatch.setattr(module, "random_variables", lambda spec: {})
  monkeypatch.setattr(module, "time_forms",
                      lambda built, batch, rounds, device: {f: 0.5 for f in SURGERY_FORMS})
  module.main(["--models", "resnet18", "--batches", "1", "--rounds", "1"])
  report = _strict(capsys.readouterr().out)
  facts = report["models"]["resnet18"]["forms"]["merged_interior"]["equivalence"]
  assert facts["interior_max_rel"] is None
  assert facts["feature_max_rel"] == 0.125 and facts["logits_max_rel"] == 0.25
  assert report["models"]["resnet18"]["ratios"]["cpu_batch1"]["merged_vs_dense"] == 1.0


def test_surgery_latency_allocators_says_why_a_child_run_failed(monkeypatch, capsys):
  module = _scripts.load("benchmarks/surgery_latency.py")
  calls = []

  def failing(cmd, **kwargs):
    calls.append(cmd)
    return subprocess.CompletedProcess(cmd, 1, stdout="", stderr="Traceback ...\nboom: the reason\n")
  monkeypatch.setattr(module.subprocess, "run", failing)
  with pytest.raises(SystemExit) as stop:
    module.main(["--allocators", "--models", "resnet18", "--batches", "1", "--rounds", "1"])
  assert len(calls) == 1   # the second setting is not run after the first failed
  message = str(stop.value.code)
  assert "boom: the reason" in message and "GLIBC_TUNABLES=(unset)" in message


def test_encoder_latency_writes_a_missing_agreement_as_null(monkeypatch, capsys):
  module = _scripts.load("benchmarks/encoder_latency.py")
  rep = types.SimpleNamespace(max_abs=0.0, max_rel=0.0, top1_agreement=math.nan)
  monkeypatch.setattr(module.equivalence, "compare", lambda *a, **k: rep)
  monkeypatch.setattr(module.timing, "latencies",
                      lambda built, batch, repeats, warmup: {f: 0.5 for f in built})
  module.main(["--model", "tiny_encoder", "--length", "16", "--batches", "1", "--rounds", "1"])
  report = _strict(capsys.readouterr().out)
  assert report["forms"]["merged"]["equivalence"] == {
      "vs": "identity", "logits_max_abs": 0.0, "logits_max_rel": 0.0, "top1_agreement": None}


def test_tlc_ranking_writes_a_gap_that_is_not_a_number_as_null(monkeypatch, capsys, tmp_path):
  module = _scripts.load("benchmarks/tlc_ranking.py")
  # The gap that is not a number comes last: max() alone would skip it and say "equal".
  monkeypatch.setattr(module.tlc, "rank", lambda *a: (1.0, {"a": 0.5, "b": math.nan}))
  monkeypatch.setattr(module.tlc, "rank_naive", lambda *a: (1.0, {"a": 0.5, "b": 0.25}))
  out = tmp_path / "tlc.json"
  module.main(["--model", "digits_plain", "--batch", "4", "--rounds", "1", "--out", str(out)])
  printed = capsys.readouterr().out
  report = _strict(printed)
  assert report["max_gap_difference"] is None and report["equal_to_1e-5"] is False
  assert report["gaps"] == {"a": 0.5, "b": None} and report["base_loss_difference"] == 0.0
  assert _strict(out.read_text()) == report
