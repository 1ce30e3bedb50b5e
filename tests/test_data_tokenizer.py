"""Tokenizer training (issue 3): digits, byte fallback, special ids, padding, CLI."""
import os
import subprocess
import sys

import pytest

from maxlm import data
from maxlm.data import tokenizer as tokenizer_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def small_config(vocab=500):
  c = data.default_data_config()
  c.sources.shakespeare.max_docs = 30
  c.sources.stdlib.max_docs = 30
  c.tokenizer.train_chars = 150_000
  c.tokenizer.vocab_size = vocab
  return c


@pytest.fixture(scope="module")
def sp(tmp_path_factory):
  path = str(tmp_path_factory.mktemp("tok") / "tok.model")
  tokenizer_lib.train_from_config(small_config(), path)
  return tokenizer_lib.load(path)


def test_vocab_padded_with_reserved_slots(sp):
  # 500 rounded up to a multiple of 128 = 512; 8 reserved + 12 of padding.
  assert sp.vocab_size == 512
  reserved = [i for i in range(sp.vocab_size) if sp.id_to_piece(i).startswith("<reserved_")]
  assert len(reserved) == 8 + 12
  assert reserved == list(range(reserved[0], reserved[0] + 20))


def test_special_tokens_keep_their_ids(sp, tmp_path):
  specials = list(data.default_data_config().tokenizer.special_tokens)
  assert [sp.piece_to_id(s) for s in specials] == [4, 5]
  assert (sp.pad_id, sp.piece_to_id("<unk>"), sp.bos_id, sp.eos_id) == (0, 1, 2, 3)
  assert tokenizer_lib.special_ids(sp.path) == (2, 3)
  # Recognised whole inside text, never split.
  ids = sp.encode("hi <|im_start|>user")
  assert 4 in ids
  # Same ids with another vocab size and sample.
  c = small_config(vocab=640)
  c.tokenizer.train_chars = 100_000
  other = tokenizer_lib.load(tokenizer_lib.train_from_config(c, str(tmp_path / "b.model")))
  assert [other.piece_to_id(s) for s in specials] == [4, 5]


def test_digits_are_split(sp):
  pieces = [sp.id_to_piece(i) for i in sp.encode("x = 1234567")]
  assert pieces[-7:] == list("1234567")


def test_unseen_bytes_round_trip_through_byte_fallback(sp):
  s = "naïve 中文 🙂 \x00\x7f"
  ids = sp.encode(s)
  assert sp.piece_to_id("<unk>") not in ids
  assert sp.decode(ids) == s
  assert "<0xF0>" in [sp.id_to_piece(i) for i in ids]  # the emoji's first byte


def test_whitespace_and_code_round_trip(sp):
  for s in ["def f():\n\tif x:\n        return  1  \r\n", "  leading and trailing  ", "\n\n\n"]:
    assert sp.decode(sp.encode(s)) == s
  # Indentation runs are single pieces (cheap Python).
  assert "▁▁▁▁" in [sp.id_to_piece(i) for i in sp.encode("\n    return")]


def test_compression_report_per_domain(sp, tmp_path):
  path = str(tmp_path / "c.model")
  tokenizer_lib.train_from_config(small_config(), path)
  rows = tokenizer_lib.compression_report(small_config(), path)
  assert [r["domain"] for r in rows] == ["code", "prose"]
  for r in rows:
    assert 1.0 < r["chars_per_token"] < 8 and r["bytes_per_token"] >= r["chars_per_token"]
  table = tokenizer_lib.format_compression(rows)
  assert "| prose |" in table and "chars/token" in table


def test_cli_train_and_report(tmp_path):
  out = tmp_path / "cli.model"
  cmd = [sys.executable, "-m", "maxlm.tokenizer", "train", "--config=configs/data_mixture.py",
         f"--out={out}", "--config.sources.shakespeare.max_docs=20",
         "--config.sources.stdlib.max_docs=20", "--config.tokenizer.train_chars=100000"]
  res = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=1800)
  assert res.returncode == 0, res.stderr
  assert out.exists() and (tmp_path / "cli.json").exists()
  assert "| code |" in res.stdout and "bytes/token" in res.stdout


def test_too_large_vocab_for_the_sample_names_the_fields(tmp_path):
  from maxlm.data.tokenizer import train_tokenizer
  tok = dict(vocab_size=4096, train_chars=2000, pad_to_multiple=128, reserved_tokens=0,
             special_tokens=())
  texts = ["to be or not to be, that is the question " * 10]
  with pytest.raises(ValueError, match=r"data\.tokenizer\.train_chars .*data\.tokenizer\.vocab_size"):
    train_tokenizer(texts, str(tmp_path / "t.model"), tok)
