"""Vocabulary extension (`python -m maxlm.interop.vocab`) against transformers.

The parent is a tiny random LlamaForCausalLM with a byte-level BPE tokenizer.json
(BOS/EOS at the top), its model vocabulary either padded past the tokenizer (the
new tokens take unused rows) or exactly the tokenizer's (the model grows).
Checked: transformers' AutoTokenizer and maxlm's tokenizer give the new tokens
their new ids inside text; the logits of old tokens on old text are the parent's
(transformers on both directories); the new rows are the mean of the old ones;
maxlm imports the result; and errors are one line.
"""
import json
import os

import numpy as np
import pytest

import torch  # noqa: E402  (the `reference` extra)
import transformers  # noqa: E402

from hf_fixtures import byte_level_bpe, randomize, save_hf_tokenizer  # noqa: E402

pytestmark = pytest.mark.torch

from maxlm import cli  # noqa: E402
from maxlm.data import tokenizer as tokenizer_lib  # noqa: E402
from maxlm.interop import import_checkpoint  # noqa: E402
from maxlm.interop import vocab  # noqa: E402

BOS, EOS = "<|begin_of_text|>", "<|end_of_text|>"
NEW = ["<|im_start|>", "<|im_end|>", "mitochondria"]
TEXT = ("The quick brown fox jumps over the lazy dog.\n    indented code = 1\n"
        "def f(x):\n    return x * 2  # twice\n") * 20


def _parent(root, model_vocab=None, tie=False):
  tk = byte_level_bpe(TEXT, 300, BOS, EOS)
  save_hf_tokenizer(tk, root, BOS, EOS)
  V = tk.get_vocab_size()
  config = transformers.LlamaConfig(
      hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
      num_key_value_heads=2, vocab_size=model_vocab or V, tie_word_embeddings=tie,
      bos_token_id=tk.token_to_id(BOS), eos_token_id=tk.token_to_id(EOS))
  model = randomize(transformers.LlamaForCausalLM(config))
  model.save_pretrained(root)
  return root, V


def _logits(path, ids):
  model = transformers.AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
  with torch.no_grad():
    return model(torch.as_tensor([ids])).logits[0].numpy(), model


@pytest.mark.parametrize("case", ["padded_model_vocab", "grows_untied", "grows_tied"])
def test_extension_keeps_old_logits_and_adds_new_ids(case, tmp_path):
  model_vocab, tie = {"padded_model_vocab": (320, False), "grows_untied": (None, False),
                      "grows_tied": (None, True)}[case]
  parent, V_tok = _parent(str(tmp_path / "parent"), model_vocab, tie)
  V_model = model_vocab or V_tok
  out = str(tmp_path / "ext")
  ids = vocab.extend_hf_dir(parent, NEW, out, special=False)
  assert sorted(ids.values()) == list(range(V_tok, V_tok + 3))

  hf_tok = transformers.AutoTokenizer.from_pretrained(out)
  tok = tokenizer_lib.load(out)
  text = "<|im_start|>user\nthe mitochondria<|im_end|>"
  got = hf_tok(text)["input_ids"]
  assert got == [tok.bos_id] + tok.encode(text)
  assert {ids[t] for t in NEW} <= set(got)
  assert hf_tok("the lazy dog")["input_ids"] == transformers.AutoTokenizer.from_pretrained(
      parent)("the lazy dog")["input_ids"]  # old text, old ids

  old_ids = transformers.AutoTokenizer.from_pretrained(parent)(TEXT[:200])["input_ids"]
  before, parent_model = _logits(parent, old_ids)
  after, model = _logits(out, old_ids)
  assert after.shape[-1] == max(V_model, V_tok + 3)
  # Old tokens' logits carried bit for bit, and so are unused rows past the new ids;
  # only the new ids' columns (V_tok .. V_tok + 2) changed.
  np.testing.assert_array_equal(after[:, :V_tok], before[:, :V_tok])
  np.testing.assert_array_equal(after[:, V_tok + 3:V_model], before[:, V_tok + 3:])
  assert not np.allclose(after[:, V_tok], before[:, V_tok]) if V_model > V_tok else True
  emb = model.get_input_embeddings().weight.detach().numpy()
  old_emb = parent_model.get_input_embeddings().weight.detach().numpy()
  np.testing.assert_allclose(emb[V_tok:V_tok + 3], np.broadcast_to(
      old_emb[:V_tok].mean(0), (3, emb.shape[1])), rtol=1e-6, atol=1e-7)
  if not tie:
    head = model.get_output_embeddings().weight.detach().numpy()
    old_head = parent_model.get_output_embeddings().weight.detach().numpy()
    np.testing.assert_allclose(head[V_tok], old_head[:V_tok].mean(0), rtol=1e-6, atol=1e-7)

  cfg, _ = import_checkpoint(out)
  assert cfg.vocab_size == max(V_model, V_tok + 3)
  with open(os.path.join(out, "config.json")) as f:
    assert json.load(f)["eos_token_id"] == tok.eos_id  # the parent's config, resized


def test_special_tokens_are_special(tmp_path):
  parent, V_tok = _parent(str(tmp_path / "parent"))
  out = str(tmp_path / "ext")
  vocab.extend_hf_dir(parent, NEW[:2], out, special=True)
  hf_tok = transformers.AutoTokenizer.from_pretrained(out)
  ids = hf_tok("<|im_start|>hi<|im_end|>")["input_ids"]
  assert hf_tok.decode(ids, skip_special_tokens=True) == "hi"
  assert tokenizer_lib.load(out).is_special(V_tok)


def _cli(argv):
  with pytest.raises(SystemExit) as e:
    cli.run_argparse(vocab.main, argv)
  return e.value.code


def test_cli_errors_are_one_line(tmp_path, capsys):
  parent, _ = _parent(str(tmp_path / "parent"))
  capsys.readouterr()  # transformers' progress bars from building the parent
  tokens = tmp_path / "tokens.txt"
  tokens.write_text("<|a|>\n<|b|>\n<|a|>\n")
  assert _cli(["--parent", parent, "--tokens", str(tokens), "--out", str(tmp_path / "o")]) == 1
  err = capsys.readouterr().err.strip()
  assert len(err.splitlines()) == 1 and "listed twice (line 3)" in err
  assert not os.path.exists(tmp_path / "o")
  tokens.write_text("<|a|>\n")
  assert _cli(["--parent", str(tmp_path), "--tokens", str(tokens), "--out", str(tmp_path / "o")]) == 1
  assert "not a Hugging Face model directory" in capsys.readouterr().err
  assert _cli(["--parent", parent, "--tokens", str(tokens), "--out", str(tmp_path / "o")]) == 0
  assert "<|a|>" in capsys.readouterr().out
