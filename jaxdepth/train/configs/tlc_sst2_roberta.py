"""TLC, RoBERTa-base (12 candidates: intermediate.dense with its GELU) on GLUE SST-2.

Run:   python -m jaxdepth tlc --config tlc_sst2_roberta --pretrained path/to/roberta-base --data-dir DIR
       (as tlc_sst2_bert; DIR holds glue/sst2 prepared as ArrayRecord)
Takes: up to 12 iterations x 3 epochs of 1,894 steps at batch 32 (a GPU job).
Reaches: the paper's tables were not available to this project, and no run of this
  config has been measured yet.

The recipe of tlc_sst2_bert (the official text recipe for every task and both models).
RoBERTa's classifier is its own head on the first token (no pooler); its positions
are numbered from the padding id, so its tokenizer must pad with id 1 (roberta-base's
does).
"""

from jaxdepth.train.configs import tlc_sst2_bert


def get_config():
  config = tlc_sst2_bert.get_config()
  config.model = "roberta_base"
  return config
