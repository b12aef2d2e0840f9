"""GLUE through tfds (mocked, offline) with tiny tokenizers built here: token ids against an
independent BERT encoding, TLC's splits, determinism, resumption, process sharding, clear errors."""
import itertools
import json

import numpy as np
import pytest
import tensorflow_datasets as tfds
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors

from jaxdepth import data
from jaxdepth.data import text

LETTERS = "abcdefghij"
BERT_VOCAB = {t: i for i, t in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + list(LETTERS)
                                         + ["##" + c for c in LETTERS])}
PAD, UNK, CLS, SEP = (BERT_VOCAB[t] for t in ("[PAD]", "[UNK]", "[CLS]", "[SEP]"))
FEATURES = {"sst2": ("sentence",), "rte": ("sentence1", "sentence2"), "qnli": ("question", "sentence")}
SIZES = {"train": 20, "validation": 7, "test": 5}


def bert_tokenizer():
  """A tiny uncased BERT tokenizer: WordPiece over the letters a-j."""
  tok = Tokenizer(models.WordPiece(BERT_VOCAB, unk_token="[UNK]"))
  tok.normalizer = normalizers.BertNormalizer(lowercase=True)
  tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
  tok.post_processor = processors.BertProcessing(("[SEP]", SEP), ("[CLS]", CLS))
  return tok


@pytest.fixture(scope="module")
def tokenizer_path(tmp_path_factory):
  path = tmp_path_factory.mktemp("model") / "tokenizer.json"
  bert_tokenizer().save(str(path))
  return path


def wordpieces(sentence):
  """WordPiece by hand: a word of the letters a-j is its first letter then ##letters, else [UNK]."""
  ids = []
  for word in sentence.lower().split():
    ids += [UNK] if set(word) - set(LETTERS) else [BERT_VOCAB[word[0]]] + [BERT_VOCAB["##" + c] for c in word[1:]]
  return ids


def bert_reference(first, second, max_length):
  """BERT's fine-tuning input: pop from the longer text (the second on a tie) until it fits, then pad."""
  a, b = wordpieces(first), None if second is None else wordpieces(second)
  if b is None:
    ids, types = [CLS] + a[:max_length - 2] + [SEP], []
  else:
    while len(a) + len(b) > max_length - 3:
      (a if len(a) > len(b) else b).pop()
    ids, types = [CLS] + a + [SEP] + b + [SEP], [0] * (len(a) + 2) + [1] * (len(b) + 1)
  pad = max_length - len(ids)
  return ids + [PAD] * pad, [1] * len(ids) + [0] * pad, (types or [0] * len(ids)) + [0] * pad


def sentence(rng):
  words = ["".join(rng.choice(list(LETTERS + "z"), rng.integers(1, 7))) for _ in range(rng.integers(0, 9))]
  return " ".join(words)


def glue_examples(config, split):
  """Deterministic examples of one GLUE task and split; texts as bytes (as ArrayRecord files give them)."""
  rng = np.random.default_rng([sorted(FEATURES).index(config), sorted(SIZES).index(split)])
  return [{"idx": np.int32(i), "label": np.int64(-1 if split == "test" else rng.integers(0, 2)),
           **{f: sentence(rng).encode() for f in FEATURES[config]}} for i in range(SIZES[split])]


def fake_glue_source(builder, split, **kwargs):
  del kwargs
  return glue_examples(builder.builder_config.name, split)


def load(name, **kwargs):
  with tfds.testing.mock_data(as_data_source_fn=fake_glue_source):
    return data.load(name, **kwargs)


def epoch(split, batch_size, **kwargs):
  return list(split.batches(batch_size, **kwargs))


def served(batches, key):
  return np.concatenate([b[key][b["mask"]] for b in batches])


def assert_same_batches(a, b):
  assert len(a) == len(b)
  for x, y in zip(a, b):
    assert x.keys() == y.keys() == {"input_ids", "attention_mask", "token_type_ids", "label", "mask"}
    for k in x:
      np.testing.assert_array_equal(x[k], y[k])


def test_bert_truncation_closed_form_equals_the_pop_loop():
  for first, second, budget in itertools.product(range(12), range(12), range(1, 14)):
    a, b = list(range(first)), list(range(second))
    while len(a) + len(b) > budget:
      (a if len(a) > len(b) else b).pop()
    assert text.truncated_lengths(first, second, budget) == (len(a), len(b)), (first, second, budget)


@pytest.mark.parametrize("task", ["sst2", "rte", "qnli"])
def test_token_ids_equal_an_independent_bert_encoding_with_tlc_splits(tokenizer_path, task):
  ds = load(f"glue/{task}", tokenizer=tokenizer_path, max_length=16)
  train, validation = glue_examples(task, "train"), glue_examples(task, "validation")
  assert ds.input_shape == (16,) and ds.num_classes == 2
  assert ds.class_names == (("negative", "positive") if task == "sst2" else ("entailment", "not_entailment"))
  assert (len(ds.train), len(ds.val), len(ds.test)) == (18, 2, 7)   # 90/10 of GLUE train; GLUE validation
  np.testing.assert_array_equal(np.sort(np.r_[ds.train.source_indices, ds.val.source_indices]), np.arange(20))
  np.testing.assert_array_equal(ds.test.source_indices, np.arange(7))
  cut = both_cut = 0
  for split, source in [(ds.train, train), (ds.val, train), (ds.test, validation)]:
    batches = epoch(split, 4)
    for key in ("input_ids", "attention_mask", "token_type_ids"):
      assert batches[0][key].dtype == np.int32 and batches[0][key].shape == (4, 16)
    texts = [[source[int(i)][f].decode() for f in FEATURES[task]] for i in split.source_indices]
    want = np.array([bert_reference(t[0], t[1] if len(t) > 1 else None, 16) for t in texts])
    for k, key in enumerate(("input_ids", "attention_mask", "token_type_ids")):
      np.testing.assert_array_equal(served(batches, key), want[:, k])
    np.testing.assert_array_equal(served(batches, "label"), [source[int(i)]["label"] for i in split.source_indices])
    lengths = [[len(wordpieces(x)) for x in t] for t in texts]
    cut += sum(sum(n) > 16 - 1 - len(n) for n in lengths)
    both_cut += sum(len(n) == 2 and 2 * min(n) > 13 for n in lengths)
  assert cut > 0 and (both_cut > 0) == (task != "sst2")   # the data exercise truncation


def test_default_max_length_is_128_and_padded_slots_hold_empty_texts(tokenizer_path):
  ds = load("glue/rte", tokenizer=tokenizer_path, val_fraction=0.25, split_seed=3)
  assert ds.input_shape == (128,) and (len(ds.train), len(ds.val)) == (15, 5)
  last = epoch(ds.val, 4)[-1]
  assert last["input_ids"].shape == (4, 128) and last["mask"].tolist() == [True, False, False, False]
  empty = bert_reference("", "", 128)
  for k, key in enumerate(("input_ids", "attention_mask", "token_type_ids")):
    np.testing.assert_array_equal(last[key][1:], np.broadcast_to(empty[k], (3, 128)))
  assert last["label"][1:].tolist() == [0, 0, 0]
  reseeded = load("glue/rte", tokenizer=tokenizer_path, val_fraction=0.25, split_seed=4)
  assert set(reseeded.val.source_indices) != set(ds.val.source_indices)
  assert load("glue/rte", tokenizer=tokenizer_path, val_fraction=0.0).val is None


def test_batches_are_deterministic_resumable_and_sharded_over_processes(tokenizer_path):
  ds = load("glue/qnli", tokenizer=tokenizer_path, max_length=16)
  again = load("glue/qnli", tokenizer=str(tokenizer_path.parent), max_length=16)   # the model folder
  kw = {"seed": 5, "epoch": 2, "shuffle": True}
  full = epoch(ds.train, 4, **kw)
  assert_same_batches(full, epoch(again.train, 4, **kw))
  assert_same_batches(full[2:], epoch(ds.train, 4, start_batch=2, **kw))
  plain = epoch(ds.train, 4)
  assert sorted(served(full, "input_ids").tolist()) == sorted(served(plain, "input_ids").tolist())
  assert not np.array_equal(served(full, "input_ids"), served(plain, "input_ids"))
  assert not np.array_equal(served(full, "input_ids"), served(epoch(ds.train, 4, seed=5, epoch=3, shuffle=True),
                                                              "input_ids"))
  # Two processes of 4 examples each = the global batch of 8: disjoint halves, in order, padding included
  # (18 examples: the last global batch holds 2, all on process 0; process 1 gets only padding).
  whole = epoch(ds.train, 8, **kw)
  shards = [epoch(ds.train, 4, process_index=p, process_count=2, **kw) for p in (0, 1)]
  assert len(whole) == len(shards[0]) == len(shards[1]) == 3
  for step, batch in enumerate(whole):
    for key in batch:
      np.testing.assert_array_equal(np.concatenate([shards[0][step][key], shards[1][step][key]]), batch[key])
  assert whole[-1]["mask"].tolist() == [True] * 2 + [False] * 6 and not shards[1][-1]["mask"].any()
  resumed = epoch(ds.train, 4, process_index=1, process_count=2, start_batch=1, **kw)
  assert_same_batches(shards[1][1:], resumed)


def test_a_roberta_tokenizer_object_pads_with_its_pad_id_and_its_own_settings_are_ignored():
  words = ["<s>", "<pad>", "</s>", "<unk>"] + [c * k for c in LETTERS for k in (1, 2)]
  vocab = {w: i for i, w in enumerate(words)}
  tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
  tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
  tok.post_processor = processors.RobertaProcessing(("</s>", 2), ("<s>", 0))
  tok.enable_truncation(6)
  tok.enable_padding(pad_id=vocab["<pad>"], pad_token="<pad>", length=9)
  encode = text.encoder(tok, max_length=12)
  out = encode([("a bb c", "dd e ff g"), ("j", "")], pairs=True)
  want = [[0, vocab["a"], vocab["bb"], vocab["c"], 2, 2, vocab["dd"], vocab["e"], vocab["ff"], vocab["g"], 2, 1],
          [0, vocab["j"], 2, 2, 2] + [1] * 7]
  np.testing.assert_array_equal(out["input_ids"], want)
  np.testing.assert_array_equal(out["attention_mask"], [[1] * 11 + [0], [1] * 5 + [0] * 7])
  np.testing.assert_array_equal(out["token_type_ids"], np.zeros((2, 12)))
  assert tok.truncation["max_length"] == 6 and tok.padding["length"] == 9   # the caller's object is unchanged


def test_tfds_mock_data_serves_encoded_sst2_without_tensorflow(tokenizer_path):
  with tfds.testing.mock_data(num_examples=10):
    ds = data.load("glue/sst2", tokenizer=tokenizer_path)
    source = tfds.data_source("glue/sst2", split="validation")
    assert (len(ds.train), len(ds.val), len(ds.test)) == (9, 1, 10)
    test = served(epoch(ds.test, 4), "input_ids")
    want = [bert_reference(source[k]["sentence"], None, 128)[0] for k in range(10)]
  np.testing.assert_array_equal(test, want)


def test_a_missing_tokenizer_or_unprepared_data_fail_at_once_saying_what_to_do(tmp_path, tokenizer_path,
                                                                            network_attempts):
  empty = tmp_path / "empty"
  with pytest.raises(ValueError, match="need a tokenizer: pass tokenizer= the path of a Hugging Face"):
    data.load("glue/sst2", data_dir=str(empty))
  with pytest.raises(FileNotFoundError, match="has no tokenizer.json"):
    data.load("glue/sst2", tokenizer=tmp_path, data_dir=str(empty))
  with pytest.raises(FileNotFoundError, match="does not exist"):
    data.load("glue/sst2", tokenizer=tmp_path / "missing.json", data_dir=str(empty))
  (tmp_path / "vocab.json").write_text(json.dumps(BERT_VOCAB))
  with pytest.raises(ValueError, match="is not a Hugging Face tokenizers JSON file"):
    data.load("glue/sst2", tokenizer=tmp_path / "vocab.json", data_dir=str(empty))
  bare = bert_tokenizer()
  bare.post_processor = None
  with pytest.raises(ValueError, match="adds no special tokens"):
    data.load("glue/sst2", tokenizer=bare, data_dir=str(empty))
  padless = Tokenizer(models.WordPiece({t: i for t, i in BERT_VOCAB.items() if t != "[PAD]"}, unk_token="[UNK]"))
  padless.post_processor = processors.BertProcessing(("[SEP]", SEP), ("[CLS]", CLS))
  with pytest.raises(ValueError, match=r"no pad token \[PAD\] or <pad>"):
    data.load("glue/sst2", tokenizer=padless, data_dir=str(empty))
  with pytest.raises(ValueError, match="max_length=3 must be an integer above the 3 special tokens"):
    data.load("glue/sst2", tokenizer=tokenizer_path, max_length=3, data_dir=str(empty))
  with pytest.raises(ValueError, match="is a text dataset: image_size only applies to image datasets"):
    data.load("glue/sst2", tokenizer=tokenizer_path, image_size=32)
  with pytest.raises(ValueError, match="apply to the text datasets"):
    data.load("cifar10", tokenizer=tokenizer_path)
  half = tmp_path / "half" / "glue" / "rte" / "2.0.0"   # a folder left by an interrupted build
  half.mkdir(parents=True)
  for data_dir in (empty, tmp_path / "half"):
    with pytest.raises(data.DatasetNotPrepared) as error:
      data.load("glue/rte", tokenizer=tokenizer_path, data_dir=str(data_dir))
    assert network_attempts == []                     # no download was tried
    assert "tfds build glue/rte --file_format=array_record" in str(error.value) and "data_dir" in str(error.value)


class _DamagedSource(list):
  """GLUE examples whose file is damaged at one example (ArrayRecord raises RuntimeError)."""
  split = "train"

  def __getitem__(self, i):
    if i == 5:
      raise RuntimeError("Corrupted record")
    return super().__getitem__(i)


def test_a_damaged_glue_file_is_named_with_what_to_do_not_a_raw_reader_error(tokenizer_path):
  def damaged(builder, split, **kwargs):
    return _DamagedSource(fake_glue_source(builder, split, **kwargs))

  with tfds.testing.mock_data(as_data_source_fn=damaged):
    ds = data.load("glue/sst2", tokenizer=tokenizer_path, val_fraction=0)
  with pytest.raises(data.DatasetNotPrepared, match=r"of its 'train' split cannot be read at "
                     r"example 5 \(Corrupted record\); copy the prepared folder again"):
    epoch(ds.train, 4)
