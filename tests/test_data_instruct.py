"""Instruction data inside pretraining stages: chat / prompt-response records, response-only loss.

Fixtures are built here (no hub): a byte-level BPE tokenizer.json trained with `tokenizers`
on a few sentences, with chat special tokens added at the top of the vocabulary, and HF
directories around it whose tokenizer_config.json carries a chat template (ChatML without
BOS, as Qwen2 ships; Llama-3 style with "{{ bos_token }}" in the template; Mistral style
closing assistant turns with eos_token). References (transformers' in test_data_instruct_hf.py): apply_chat_template
(text, ids and its `{% generation %}` assistant mask), each response encoded on its own and
located in the sequence, hand-written masks, NumPy cross entropy, and the batches of the
code before instruction data existed (a digest recorded on main c4e5e8a).
"""
import hashlib
import json
import os
import random

import jax
import numpy as np
import pytest
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

import maxlm
from maxlm.data import config as config_lib
from maxlm.data import instruct
from maxlm.data import packing
from maxlm.data import pipeline
from maxlm.data import sources as sources_lib
from maxlm.data import tokenizer as tokenizer_lib

SPECIALS = ["<|im_start|>", "<|im_end|>", "<|endoftext|>", "<|begin_of_text|>",
            "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>",
            "<s>", "</s>"]
CHATML = ("{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + "
          "message['content'] + '<|im_end|>' + '\n'}}{% endfor %}"
          "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")
# The same rendering with transformers' {% generation %} markers: its own assistant mask.
CHATML_GEN = ("{% for message in messages %}{% if message['role'] == 'assistant' %}"
              "{{'<|im_start|>assistant\n'}}{% generation %}{{message['content'] + '<|im_end|>' +"
              " '\n'}}{% endgeneration %}{% else %}{{'<|im_start|>' + message['role'] + '\n' + "
              "message['content'] + '<|im_end|>' + '\n'}}{% endif %}{% endfor %}"
              "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")
LLAMA3 = ("{{ bos_token }}{% for message in messages %}{{ '<|start_header_id|>' + message['role']"
          " + '<|end_header_id|>\n\n' + message['content'] | trim + '<|eot_id|>' }}{% endfor %}"
          "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}"
          "{% endif %}")
MISTRAL = ("{{ bos_token }}{% for message in messages %}{% if message['role'] == 'user' %}"
           "{{ '[INST] ' + message['content'] + ' [/INST]' }}{% else %}"
           "{{ message['content'] + eos_token }}{% endif %}{% endfor %}")
CHATS = [
    [{"role": "user", "content": "What is a token?"},
     {"role": "assistant", "content": "A piece of text the model reads."}],
    [{"role": "system", "content": "You answer briefly."},
     {"role": "user", "content": "Name a loss."},
     {"role": "assistant", "content": " Cross entropy, mostly.\n"},
     {"role": "user", "content": "And a naïve café? 数字 ☃"},
     {"role": "assistant", "content": "Both\tare text: 3.14"}],
]
PAIRS = [{"prompt": "Question: what does the mask do?\nAnswer:", "response": " It picks targets."},
         {"prompt": "2 + 2 =", "response": " 4"}]


def _write_jsonl(path, records):
  with open(path, "w") as f:
    for r in records:
      f.write((r if isinstance(r, str) else json.dumps(r, ensure_ascii=False)) + "\n")
  return str(path)


@pytest.fixture(scope="module")
def tok_json(tmp_path_factory):
  rng = random.Random(0)
  words = ("the a of to and code data model train loss token row batch mask what is piece text "
           "reads answer name cross entropy mostly both are question does picks targets").split()
  sample = [" ".join(rng.choice(words) for _ in range(rng.randint(3, 40))) for _ in range(300)]
  sample += [m["content"] for c in CHATS for m in c] + [v for p in PAIRS for v in p.values()]
  tk = Tokenizer(models.BPE())
  tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  tk.decoder = decoders.ByteLevel()
  tk.train_from_iterator(sample, trainers.BpeTrainer(
      vocab_size=350, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False))
  tk.add_special_tokens(SPECIALS)
  root = tmp_path_factory.mktemp("tok")
  tk.save(str(root / "tokenizer.json"))
  return str(root / "tokenizer.json")


def _hf_dir(root, tok_json, name, template, bos, eos):
  d = os.path.join(root, name)
  os.makedirs(d, exist_ok=True)
  with open(tok_json) as f, open(os.path.join(d, "tokenizer.json"), "w") as g:
    g.write(f.read())
  cfg = dict(tokenizer_class="PreTrainedTokenizerFast", bos_token=bos, eos_token=eos,
             add_bos_token=False, chat_template=template, model_max_length=4096)
  with open(os.path.join(d, "tokenizer_config.json"), "w") as f:
    json.dump(cfg, f)
  return d


@pytest.fixture(scope="module")
def dirs(tmp_path_factory, tok_json):
  root = str(tmp_path_factory.mktemp("hf"))
  return dict(
      chatml=_hf_dir(root, tok_json, "chatml", CHATML, None, "<|endoftext|>"),
      chatml_gen=_hf_dir(root, tok_json, "chatml_gen", CHATML_GEN, None, "<|endoftext|>"),
      llama3=_hf_dir(root, tok_json, "llama3", LLAMA3, "<|begin_of_text|>", "<|end_of_text|>"),
      mistral=_hf_dir(root, tok_json, "mistral", MISTRAL, "<s>", "</s>"))


def _locate(seq, sub, start=0):
  """First index >= start where `sub` occurs in `seq` (NumPy sliding window)."""
  seq, sub = np.asarray(seq), np.asarray(sub)
  win = np.lib.stride_tricks.sliding_window_view(seq[start:], len(sub))
  hits = np.flatnonzero((win == sub).all(axis=1))
  assert len(hits), (sub, seq)
  return start + int(hits[0])


def _reference_mask(tok, chat, ids, turn_end="<|im_end|>\n"):
  """1 on the tokens of each assistant turn (content + the template's end of turn), found by
  encoding each turn on its own and locating it in the sequence, in order."""
  mask, pos = np.zeros(len(ids), np.int32), 0
  for m in chat:
    if m["role"] == "assistant":
      sub = tok.encode(m["content"] + turn_end)
      pos = _locate(ids, sub, pos)
      mask[pos:pos + len(sub)] = 1
      pos += len(sub)
  return mask


# ---------------------------------------------------------------------------
# Rendering, ids and the response mask
# ---------------------------------------------------------------------------

def test_response_mask_equals_turns_located_in_the_sequence(dirs):
  tok = tokenizer_lib.load(dirs["chatml"])
  for chat in CHATS:
    ids, mask = instruct.encode({"messages": chat}, tok, bos_id=None, eos_id=None)
    np.testing.assert_array_equal(mask, _reference_mask(tok, chat, ids))
    # The prompt side is the rest: every system/user token and the role headers.
    assert mask.sum() < len(ids)


def test_bos_and_eos_are_never_doubled(dirs):
  # Llama 3 writes BOS in the template: framing adds none. Its end-of-text is not in the
  # template: appended, a response token (the record ends with the assistant).
  tok = tokenizer_lib.load(dirs["llama3"])
  chat = CHATS[0]
  ids, mask = instruct.encode({"messages": chat}, tok, bos_id=tok.bos_id, eos_id=tok.eos_id)
  assert ids[0] == tok.bos_id and int((ids == tok.bos_id).sum()) == 1
  assert ids[-1] == tok.eos_id and int((ids == tok.eos_id).sum()) == 1 and mask[-1] == 1
  ref = _reference_mask(tok, chat, ids[:-1], turn_end="<|eot_id|>")
  np.testing.assert_array_equal(mask[:-1], ref)
  # Mistral closes assistant turns with eos_token: the rendered ids already end with it.
  tok = tokenizer_lib.load(dirs["mistral"])
  chat = [m for m in CHATS[1] if m["role"] != "system"]
  ids, mask = instruct.encode({"messages": chat}, tok, bos_id=tok.bos_id, eos_id=tok.eos_id)
  assert int((ids == tok.bos_id).sum()) == 1 and ids[0] == tok.bos_id
  assert int((ids == tok.eos_id).sum()) == 2 and ids[-1] == tok.eos_id  # one per assistant turn
  np.testing.assert_array_equal(mask, _reference_mask(tok, chat, ids, turn_end="</s>"))
  # ChatML has no BOS: a conversation ending with a user turn gets a context-only EOS.
  tok = tokenizer_lib.load(dirs["chatml"])
  ids, mask = instruct.encode({"messages": CHATS[1][:4]}, tok, bos_id=None, eos_id=tok.eos_id)
  assert ids[-1] == tok.eos_id and mask[-1] == 0 and ids[0] != tok.eos_id


def test_prompt_response_records(tok_json):
  tok = tokenizer_lib.load(tok_json)
  bos, eos = tok.piece_to_id("<s>"), tok.piece_to_id("</s>")
  for rec in PAIRS:
    ids, mask = instruct.encode(rec, tok, bos_id=bos, eos_id=eos)
    p, r = tok.encode(rec["prompt"]), tok.encode(rec["response"])
    assert ids.tolist() == [bos] + p + r + [eos]
    assert mask.tolist() == [0] * (1 + len(p)) + [1] * (len(r) + 1)


def test_targets_are_shifted_by_one():
  """Target j is token j+1: it is scored iff token j+1 is a response token (hand-made)."""
  tokens = np.array([9, 10, 11, 20, 21, 8])  # <s> p p r r </s>
  ex = packing.to_example(tokens, domain_id=1, doc_id=5, token_mask=[0, 0, 0, 1, 1, 1])
  np.testing.assert_array_equal(ex["inputs"], [9, 10, 11, 20, 21])
  np.testing.assert_array_equal(ex["targets"], [10, 11, 20, 21, 8])
  np.testing.assert_array_equal(ex["target_mask"], [0, 0, 1, 1, 1])
  # Position 2 reads the last prompt token and predicts the first response token: scored.
  np.testing.assert_array_equal(packing.to_example(tokens, 1, 5)["target_mask"], np.ones(5))


# ---------------------------------------------------------------------------
# Sources and batches
# ---------------------------------------------------------------------------

def _config(tmp_path, tok_path, *, chat=True, text=True, instruct_weight=0.5):
  c = config_lib.default_data_config()
  c.sources = {}
  rng = random.Random(1)
  words = "the a of to and code data model train loss token row batch mask".split()
  if text:
    docs = [{"text": " ".join(rng.choice(words) for _ in range(rng.randint(3, 25)))}
            for _ in range(60)]
    c.sources.prose = config_lib.source(kind="jsonl", domain="prose", weight=1 - instruct_weight,
                                        paths=(_write_jsonl(tmp_path / "prose.jsonl", docs),))
  if chat:
    recs = []
    for i in range(40):
      q = " ".join(rng.choice(words) for _ in range(rng.randint(2, 8)))
      a = " ".join(rng.choice(words) for _ in range(rng.randint(1, 8)))
      recs.append({"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]}
                  if i % 2 else {"prompt": q + "?", "response": " " + a})
    c.sources.sft = config_lib.source(kind="instruct", domain="chat", weight=instruct_weight,
                                      paths=(_write_jsonl(tmp_path / "sft.jsonl", recs),))
  c.tokenizer.path = tok_path
  c.read_threads = 1
  c.heldout_fraction = 0.05
  return c


def test_batch_loss_mask_is_zero_exactly_on_prompt_targets(dirs, tmp_path):
  c = _config(tmp_path, dirs["chatml"])
  tok = tokenizer_lib.load(dirs["chatml"])
  # Reference per record: ids and mask from each response encoded on its own.
  ref = {}
  for line in open(c.sources.sft.paths[0]):
    rec = json.loads(line)
    if "messages" in rec:
      ids = tok.encode_offsets(instruct.render(CHATML, rec["messages"]))[0] + [tok.eos_id]
      mask = np.concatenate([_reference_mask(tok, rec["messages"], ids[:-1]), [1]])
    else:
      p, r = tok.encode(rec["prompt"]), tok.encode(rec["response"])
      ids, mask = p + r + [tok.eos_id], np.array([0] * len(p) + [1] * (len(r) + 1))
    ref[tuple(ids[:-1])] = np.asarray(mask)[1:]  # inputs -> the mask of their targets
  it = pipeline.make_train_iterator(c, tokenizer_path=c.tokenizer.path, seq_len=64,
                                    global_batch=4, seed=0)
  seen = {"prose": 0, "chat": 0}
  for _ in range(12):
    b = next(it)
    for row in range(4):
      seg, lm = b["segment_ids"][row], b["loss_mask"][row]
      assert not lm[seg == 0].any()  # padding
      for s in np.unique(seg[seg > 0]):
        sel = seg == s
        dom = config_lib.domain_names(c)[int(b["domain_ids"][row][sel][0])]
        seen[dom] += 1
        if dom == "prose":
          assert lm[sel].all()
          continue
        key = tuple(b["inputs"][row][sel].tolist())
        np.testing.assert_array_equal(lm[sel], ref[key])
        assert 0 < lm[sel].sum() < sel.sum()
  assert seen["prose"] > 5 and seen["chat"] > 5


def test_tiny_model_loss_equals_numpy_masked_cross_entropy(dirs, tmp_path):
  c = _config(tmp_path, dirs["chatml"], text=False, instruct_weight=1.0)
  b = next(pipeline.make_train_iterator(c, tokenizer_path=c.tokenizer.path, seq_len=32,
                                        global_batch=2, seed=0))
  V = tokenizer_lib.load(dirs["chatml"]).vocab_size
  cfg = maxlm.ModelConfig(vocab_size=V, d_model=32, n_layers=1, n_heads=2, n_kv_heads=1,
                          head_dim=16, d_ff=64)
  params = maxlm.init_params(cfg, jax.random.PRNGKey(0))
  from maxlm.train.losses import next_token_loss  # pylint: disable=g-import-not-at-top
  _, aux = next_token_loss(cfg, num_domains=1)(params, b, None)
  logits = np.asarray(maxlm.forward(cfg, params, b["inputs"], b["segment_ids"], b["positions"]),
                      np.float64)
  logz = np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1)) + logits.max(-1)
  nll = logz - np.take_along_axis(logits, b["targets"][..., None], -1)[..., 0]
  m = b["loss_mask"]
  assert 0 < m.sum() < (b["segment_ids"] > 0).sum()  # prompts are left out
  np.testing.assert_allclose(float(aux["count"]), m.sum())
  np.testing.assert_allclose(float(aux["nll_sum"]), (nll * m).sum(), rtol=1e-5)


def test_mixes_by_token_share(dirs, tmp_path):
  c = _config(tmp_path, dirs["chatml"], instruct_weight=0.25)
  it = pipeline.make_train_iterator(c, tokenizer_path=c.tokenizer.path, seq_len=32,
                                    global_batch=4, seed=0)
  tokens = np.zeros(2)
  for _ in range(25):
    b = next(it)
    np.add.at(tokens, b["domain_ids"][b["segment_ids"] > 0], 1)
  # Domains sorted: chat, prose. The mixer serves the source furthest below its share, so
  # it is never more than about a row (32 tokens; prompts count, they cost compute) off.
  assert abs(tokens[0] - 0.25 * tokens.sum()) <= 2 * 32, tokens


def _digest(batches) -> str:
  h = hashlib.sha256()
  for b in batches:
    for k in sorted(b):
      h.update(k.encode()), h.update(str(b[k].dtype).encode()), h.update(b[k].tobytes())
  return h.hexdigest()


def test_plain_text_batches_are_bit_identical_to_before(tmp_path):
  """A config without instruction sources: the digest of the batches main (c4e5e8a) gave,
  before target_mask existed, over both packings and the held-out batches."""
  rng = random.Random(0)
  words = "the a of to and code data model train loss token row batch mask".split()
  docs = [" ".join(rng.choice(words) for _ in range(rng.randint(3, 60))) for _ in range(200)]
  paths = [_write_jsonl(tmp_path / f"{k}.jsonl", [{"text": d} for d in part])
           for k, part in (("a", docs[:100]), ("b", docs[100:]))]
  tk = Tokenizer(models.BPE())
  tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  tk.decoder = decoders.ByteLevel()
  tk.train_from_iterator(docs, trainers.BpeTrainer(
      vocab_size=300, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False))
  tk.add_special_tokens(["<s>", "</s>"])
  tk.save(str(tmp_path / "tokenizer.json"))
  c = config_lib.default_data_config()
  c.sources = {}
  c.sources.a = config_lib.source(kind="jsonl", domain="x", weight=0.7, paths=(paths[0],))
  c.sources.b = config_lib.source(kind="jsonl", domain="y", weight=0.3, paths=(paths[1],))
  c.tokenizer.path = str(tmp_path / "tokenizer.json")
  c.read_threads = 1
  batches = []
  for kind in ("first_fit", "concat_split"):
    c.packing = kind
    it = pipeline.make_train_iterator(c, tokenizer_path=c.tokenizer.path, seq_len=32,
                                      global_batch=4, seed=3, keep_doc_ids=True)
    batches += [next(it) for _ in range(8)]
    assert all(set(b) == set(packing.BATCH_KEYS) | {"doc_ids"} for b in batches)
    assert all(np.array_equal(b["loss_mask"], (b["segment_ids"] > 0).astype(np.float32))
               for b in batches)
  ev = pipeline.make_eval_batches(c, tokenizer_path=c.tokenizer.path, seq_len=32, global_batch=4)
  batches += [b for d in sorted(ev) for b in ev[d]]
  assert _digest(batches) == "83242212f49e9224682d24c5ca3f46357dc3807dd3778ebba758abcdfb84b723"


# ---------------------------------------------------------------------------
# Bad records and refusals
# ---------------------------------------------------------------------------

def test_bad_records_are_counted_with_file_line_and_field(dirs, tmp_path):
  good = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}
  lines = [
      good,                                                                  # 1
      {"messages": [{"role": "human", "content": "hi"}]},                    # 2 unknown role
      {"prompt": "q"},                                                       # 3 no response
      {"prompt": "q", "response": 7},                                        # 4 wrong type
      {"messages": [{"role": "user", "content": ["a"]}]},                    # 5 content type
      {"messages": [{"role": "user", "content": "only a question"}]},        # 6 no assistant
      {"text": "plain"},                                                     # 7 neither form
      "{not json",                                                           # 8
      {"messages": [{"role": "user"}]},                                      # 9 no content
      {"prompt": "q", "response": "a"},                                      # 10
  ]
  path = _write_jsonl(tmp_path / "bad.jsonl", lines)
  src = dict(config_lib.source(kind="instruct", domain="chat", paths=(path,)).to_dict(), name="sft")
  errors = sources_lib.ErrorLog()
  docs = sources_lib.load_documents(src, errors)
  assert [json.loads(d.text) for d in docs] == [lines[0], lines[9]]
  ex = {e for es in errors.examples.values() for e in es}
  assert {f"{path}:2: unknown_role messages[0].role='human': expected one of system, user, "
          "assistant, tool",
          f"{path}:3: missing_field no 'response' string",
          f"{path}:4: wrong_type 'response' is a JSON int, expected a string",
          f"{path}:5: wrong_type messages[0].content is a JSON list, expected a string",
          f"{path}:6: no_response no non-empty 'assistant' message: nothing to learn from",
          f"{path}:7: missing_field no 'messages' list and no 'prompt'/'response' strings",
          f"{path}:9: missing_field messages[0] has no 'content'"} <= ex, ex
  assert errors.total == 8 and (path, "malformed_jsonl") in errors.counts
  # Over the budget: the run stops, with the report.
  c = _config(tmp_path, dirs["chatml"])
  c.sources.sft.paths = (path,)
  c.error_budget = 3
  with pytest.raises(sources_lib.DataErrorBudgetExceeded, match="unknown_role"):
    pipeline.plan_sources(c)


def test_chat_records_need_a_chat_template(tok_json, tmp_path):
  # A bare tokenizer.json has no template: refused before training, naming file and line.
  c = _config(tmp_path, tok_json)
  with pytest.raises(ValueError, match=r"data.sources.sft: .*sft.jsonl:2: a 'messages' record "
                     r"needs a chat template, and tokenizer .*tokenizer.json has none"):
    pipeline.make_train_iterator(c, tokenizer_path=tok_json, seq_len=32, global_batch=2, seed=0)
  # Prompt/response records need none.
  recs = [p for p in PAIRS] * 4
  c.sources.sft.paths = (_write_jsonl(tmp_path / "pairs.jsonl", recs),)
  b = next(pipeline.make_train_iterator(c, tokenizer_path=tok_json, seq_len=32, global_batch=2,
                                        seed=0))
  assert b["loss_mask"].sum() > 0
  # An instruction record is one document: max_doc_chars would cut its JSON.
  c.sources.sft.max_doc_chars = 100
  with pytest.raises(ValueError, match=r"data.sources.sft.max_doc_chars=100: an 'instruct' "
                     "record is one document"):
    config_lib.validate(c)


def test_prepare_refuses_instruction_sources_and_training_reads_them_raw(dirs, tmp_path):
  from maxlm.data import prepare  # pylint: disable=g-import-not-at-top
  c = _config(tmp_path, dirs["chatml"])
  out = str(tmp_path / "shards")
  with pytest.raises(ValueError, match=r"^prepare: data.sources.sft is an instruction source "
                     r"\(kind 'instruct'\); instruction sources are read raw by training"):
    prepare.prepare(c, dirs["chatml"], out, progress=False)
  plain = _config(tmp_path, dirs["chatml"], chat=False)
  prepare.prepare(plain, dirs["chatml"], out, progress=False)
  # The same batches from shards + raw instruction records as from raw files alone.
  mixed = _config(tmp_path, dirs["chatml"])
  mixed.prepared_dir = out
  kw = dict(tokenizer_path=dirs["chatml"], seq_len=32, global_batch=4, seed=0)
  a, b = pipeline.make_train_iterator(c, **kw), pipeline.make_train_iterator(mixed, **kw)
  for _ in range(6):
    x, y = next(a), next(b)
    assert set(x) == set(y)
    for k in x:
      np.testing.assert_array_equal(x[k], y[k], err_msg=k)
  ev_x = pipeline.make_eval_batches(c, tokenizer_path=dirs["chatml"], seq_len=32, global_batch=4)
  ev_y = pipeline.make_eval_batches(mixed, tokenizer_path=dirs["chatml"], seq_len=32,
                                    global_batch=4)
  assert _digest(ev_x["chat"]) == _digest(ev_y["chat"]) and ev_x["chat"][0]["loss_mask"].any()


@pytest.mark.slow
def test_anneal_with_instruction_data_has_a_pulse(dirs, tmp_path):
  """configs/anneal.py's instruct= option: a few steps from scratch, chat and prompt/response
  records from the ChatML directory's template, the instruct domain trained and evaluated."""
  from maxlm import config_files  # pylint: disable=g-import-not-at-top
  from maxlm.run.pretrain import train  # pylint: disable=g-import-not-at-top
  sft = _config(tmp_path, dirs["chatml"]).sources.sft.paths[0]
  c = config_files.load(os.path.join(os.path.dirname(__file__), "..", "configs", "anneal.py")
                        ).get_config(f"tiny,steps=3,instruct={sft},instruct_weight=0.5")
  assert c.data.schedule[0]["weights"] == dict(pydocs=0.3, shakespeare=0.1, stdlib=0.1,
                                               instruct=0.5)
  c.data.schedule = (dict(start=1, weights=dict(c.data.schedule[0]["weights"])),)
  for name in ("shakespeare", "stdlib", "pydocs"):
    c.data.sources[name].max_docs = 20
  c.data.tokenizer.path = dirs["chatml"]
  c.train.global_batch, c.ckpt.export_params = 8, False
  train(c, str(tmp_path / "run"))
  rows = [json.loads(l) for l in open(tmp_path / "run" / "metrics.jsonl")]
  inst = [r["train/instruct/loss"] for r in rows if "train/instruct/loss" in r]
  ev = [r["eval/instruct/loss"] for r in rows if "eval/instruct/loss" in r]
  assert inst and ev and all(np.isfinite(inst + ev))


def test_template_errors_name_the_record(tok_json, tmp_path):
  root = str(tmp_path)
  # A template that renders the last turn differently breaks the prefix property: refused.
  last = ("{% for m in messages %}{% if loop.last %}{{ 'LAST ' }}{% endif %}"
          "{{ m['role'] + ': ' + m['content'] + '\n' }}{% endfor %}")
  d = _hf_dir(root, tok_json, "last", last, None, "</s>")
  with pytest.raises(ValueError, match=r"does not render messages\[:2\] as a prefix"):
    instruct.encode({"messages": CHATS[0]}, tokenizer_lib.load(d), bos_id=None, eos_id=None)
  # raise_exception in a template: through the pipeline, naming the source, file and line.
  strict = ("{% for m in messages %}{% if m['role'] == 'system' %}"
            "{{ raise_exception('System role not supported') }}{% endif %}"
            "{{ m['role'] + ': ' + m['content'] + '\n' }}{% endfor %}")
  d = _hf_dir(root, tok_json, "strict", strict, None, "</s>")
  c = _config(tmp_path, d, text=False, instruct_weight=1.0)
  c.heldout_fraction = 0.0
  path = _write_jsonl(tmp_path / "sys.jsonl", [{"messages": CHATS[1]}] * 3)
  c.sources.sft.paths = (path,)
  it = pipeline.make_train_iterator(c, tokenizer_path=d, seq_len=32, global_batch=2, seed=0)
  with pytest.raises(Exception, match=rf"data.sources.sft: {path}:[123]: TemplateError: "
                     "System role not supported"):
    next(it)
  # A compressed file's records come from a scratch copy: named relative to the glob.
  import gzip  # pylint: disable=g-import-not-at-top
  with open(path, "rb") as f, gzip.open(tmp_path / "sys.jsonl.gz", "wb") as g:
    g.write(f.read())
  c.sources.sft.paths = (str(tmp_path / "*.gz"),)
  it = pipeline.make_train_iterator(c, tokenizer_path=d, seq_len=32, global_batch=2, seed=0)
  with pytest.raises(Exception, match=r"data.sources.sft: sys.jsonl.gz:[123]: TemplateError"):
    next(it)


def test_tokenizer_sample_reads_the_words_of_records(dirs, tmp_path):
  c = _config(tmp_path, "", text=False, instruct_weight=1.0)
  sample = tokenizer_lib.training_sample(c)
  recs = [json.loads(l) for l in open(c.sources.sft.paths[0])]
  words = {"\n".join(m["content"] for m in r["messages"]) if "messages" in r
           else r["prompt"] + r["response"] for r in recs}
  assert sample and set(sample) <= words


def test_sentencepiece_directory_offsets_and_mask(tmp_path):
  """A tokenizer.model HF directory: SentencePiece's character offsets give the same mask
  as each turn encoded on its own, byte-fallback characters included (never split)."""
  import io  # pylint: disable=g-import-not-at-top
  import sentencepiece as spm  # pylint: disable=g-import-not-at-top
  rng = random.Random(2)
  words = "the a of to and code data model train loss token row batch mask what is".split()
  proto = io.BytesIO()
  spm.SentencePieceTrainer.train(
      sentence_iterator=iter([" ".join(rng.choice(words) for _ in range(30)) for _ in range(200)]),
      model_writer=proto, model_type="bpe", vocab_size=300, unk_id=0, bos_id=1, eos_id=2,
      pad_id=-1, byte_fallback=True, add_dummy_prefix=False, normalization_rule_name="identity",
      remove_extra_whitespaces=False, user_defined_symbols=["<|im_start|>", "<|im_end|>", "\n"],
      minloglevel=2)
  d = tmp_path / "sp"
  d.mkdir()
  (d / "tokenizer.model").write_bytes(proto.getvalue())
  (d / "tokenizer_config.json").write_text(json.dumps(dict(bos_token="<s>", eos_token="</s>",
                                                           chat_template=CHATML)))
  tok = tokenizer_lib.load(str(d))
  chat = [{"role": "user", "content": "naïve café?"}, {"role": "assistant", "content": "数字 ☃ code"},
          {"role": "user", "content": "the mask"}, {"role": "assistant", "content": "é is a row"}]
  text = instruct.render(CHATML, chat)
  ids, offsets = tok.encode_offsets(text)
  assert ids == tok.encode(text) and len(ids) == len(offsets)
  ids, mask = instruct.encode({"messages": chat}, tok, bos_id=tok.bos_id, eos_id=tok.eos_id)
  assert ids[0] == tok.bos_id and ids[-1] == tok.eos_id and mask[0] == 0 and mask[-1] == 1
  np.testing.assert_array_equal(mask[1:-1], _reference_mask(tok, chat, ids[1:-1]))
