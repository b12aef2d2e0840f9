"""TLC, BERT-base (12 candidates: each layer's intermediate.dense with its GELU) on GLUE SST-2.

Run:   python -m jaxdepth tlc --config tlc_sst2_bert --pretrained path/to/bert-base-uncased --data-dir DIR
       (the model folder holds config.json, model.safetensors and tokenizer.json; DIR holds
       glue/sst2 prepared as ArrayRecord: tfds build glue/sst2 --file_format=array_record)
Takes: up to 12 iterations x 3 epochs of 1,894 steps at batch 32 (a GPU job).
Reaches: the paper's tables were not available to this project, and no run of this
  config has been measured yet.

The official text recipe: every iteration fine-tunes 3 epochs with a fresh AdamW
(lr 2e-5, betas (0.9, 0.999), eps 1e-8, no schedule), batch 32, 128 tokens,
seed 43, from Hugging Face's pre-trained encoder (a fresh classifier). No
BatchNorm precedes a GELU, so each candidate's (gamma, beta) are the std and
mean of intermediate.dense's output over the real tokens of the first
validation batch (32 sentences; padding tokens are left out, where the
official hook counts them); channels with a mean <= 0 are cut, the others
linearized. The official prefix rule; the run stops below 20 % validation
accuracy or with one GELU left.
"""

from jaxdepth.train.configs import glue_sst2


def get_config():
  config = glue_sst2.get_config()
  config.iterations = None
  config.tolerance = 1.0
  config.rule = "first_harmful"
  config.accuracy_threshold = 20.0
  config.rank_batch_size = 32
  return config
