"""benchmarks/encoder_latency.py runs as its docstring says (``--model tiny_encoder --length 16``
checks it in seconds; it refused that command, ``--sites`` defaulting to BERT-base's 12)."""
import json

import _scripts


def test_the_quick_check_linearises_every_site_and_merges_them(capsys):
  module = _scripts.load("benchmarks/encoder_latency.py")
  module.main(["--model", "tiny_encoder", "--length", "16", "--batches", "1", "--rounds", "1"])
  report = json.loads(capsys.readouterr().out)
  assert report["sites_linearised"] == ["encoder/layer/0/mlp/gelu", "encoder/layer/1/mlp/gelu"]
  forms = report["forms"]
  assert forms["identity"]["macs"] == forms["dense"]["macs"] > forms["merged"]["macs"]
  assert forms["merged"]["merges"] == 2 and forms["merged"]["equivalence"]["top1_agreement"] == 1.0
  assert set(report["latency_s"]["batch1"]) == {"dense", "identity", "merged"}
