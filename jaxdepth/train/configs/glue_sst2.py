"""BERT-base fine-tuned on GLUE SST-2 with TLC's text recipe (AdamW 2e-5, batch 32, 128 tokens).

Run:   python -m jaxdepth fit --config glue_sst2 --pretrained path/to/bert-base-uncased --data-dir DIR
       (the model folder holds config.json, model.safetensors and tokenizer.json, as Hugging
       Face's save_pretrained writes them; DIR holds glue/sst2 prepared as ArrayRecord:
       tfds build glue/sst2 --file_format=array_record)
Takes: 3 epochs of 1,894 steps at batch 32 (a GPU job).
Reaches: not measured by this project yet (no GPU run); the classifier starts fresh on the
  pre-trained encoder (pretrained_new_head).

transformers.AdamW (optimizer adamw_hf: its epsilon sits outside the bias
correction, unlike torch's), lr 2e-5, betas (0.9, 0.999), eps 1e-8, no weight
decay, no schedule, batch 32, sequences of 128 tokens; seed 43; GLUE's train split 90/10 into
train/validation, GLUE's validation split as the test set. --model roberta_base
with a roberta-base folder for RoBERTa; without --pretrained the encoder starts
from a random initialisation.
"""

import ml_collections


def get_config():
  config = ml_collections.ConfigDict()
  config.model = "bert_base"
  config.dataset = "glue/sst2"
  config.max_length = 128
  config.pretrained_new_head = True
  config.val_fraction = 0.1
  config.seed = 43
  config.epochs = 3
  config.batch_size = 32
  config.optimizer = "adamw_hf"   # the TLC scripts' transformers.AdamW
  config.lr = 2e-5
  config.b1 = 0.9
  config.b2 = 0.999
  config.eps = 1e-8
  config.weight_decay = 0.0
  config.milestones = ()
  config.augment = False
  config.eval_batch_size = 64
  return config
