"""TLC, BERT-base (12 candidates: intermediate.dense with its GELU) on GLUE RTE.

Run:   python -m jaxdepth tlc --config tlc_rte_bert --pretrained path/to/bert-base-uncased --data-dir DIR
       (as tlc_sst2_bert; DIR holds glue/rte prepared as ArrayRecord)
Takes: up to 12 iterations x 3 epochs of 70 steps at batch 32 (a GPU job).
Reaches: the paper's tables were not available to this project, and no run of this
  config has been measured yet.

The recipe of tlc_sst2_bert (the official text recipe for every task and both models).
"""

from jaxdepth.train.configs import tlc_sst2_bert


def get_config():
  config = tlc_sst2_bert.get_config()
  config.dataset = "glue/rte"
  return config
