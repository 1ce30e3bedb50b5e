"""SentencePiece BPE tokenizer: training from the configured sources; loading any tokenizer.

Loading (`load`, `special_ids`, `tokenizer_hash`, `Tokenizer`) lives in
maxlm.data.tokenizer_io and is re-exported here: a SentencePiece .model, an HF
tokenizer.json or an HF model directory, each with its own special ids.
The rest of this module trains maxlm's own tokenizer.

The model is trained for lossless round trips on prose and code: identity
normalization, no dummy prefix, whitespace kept as is (runs of spaces may be
pieces, so Python indentation costs one token), newline as its own piece,
digits split one by one, and byte fallback so no text is ever <unk>.

Vocabulary layout (ids): <pad>=0 <unk>=1 <s>=2 </s>=3, then the user special
tokens (4, 5, ... in config order, so their ids never depend on the vocab
size), then the reserved slots <reserved_0..R-1>, then "\n", then the 256
byte pieces and the learned merges. The total is rounded up to
`pad_to_multiple` by adding reserved slots, so later special tokens can take a
reserved id without moving any other id. Specials and reserved slots are
SentencePiece user-defined symbols: a literal "<|im_start|>" in text encodes
to its id (as chat data needs) and is never split.
"""

from __future__ import annotations

import io
import json
import os

import sentencepiece as spm

from maxlm.data import config as config_lib
from maxlm.data import instruct
from maxlm.data import sources as sources_lib
from maxlm.data.tokenizer_io import Tokenizer, load, special_ids, tokenizer_hash  # noqa: F401

# maxlm's own layout, used only when training a tokenizer: code that frames
# documents asks the tokenizer (special_ids), since a parent model's differ.
PAD_ID, UNK_ID, BOS_ID, EOS_ID = 0, 1, 2, 3
FIRST_SPECIAL_ID = 4
# SentencePiece skips longer "sentences" silently; training text is chunked
# below this many characters (at line breaks) so nothing is dropped.
_SENTENCE_CHARS = 4096


def padded_vocab_size(tok_config) -> int:
  m = max(1, int(tok_config.get("pad_to_multiple", 1) or 1))
  return -(-int(tok_config["vocab_size"]) // m) * m


def train_tokenizer(texts, out_path: str, tok_config) -> str:
  """Trains a BPE model on an iterable of texts; writes out_path atomically."""
  vocab = padded_vocab_size(tok_config)
  n_reserved = int(tok_config.get("reserved_tokens", 0)) + vocab - int(tok_config["vocab_size"])
  reserved = [f"<reserved_{i}>" for i in range(n_reserved)]
  specials = list(tok_config.get("special_tokens", ()))
  proto = io.BytesIO()
  try:
    _train_spm(texts, proto, vocab, specials + reserved, tok_config)
  except RuntimeError as e:  # e.g. "Vocabulary size too high" for a big vocab on a small sample
    raise ValueError(
        f"training a {vocab}-piece tokenizer failed: {e}. Raise data.tokenizer.train_chars"
        f" (now {tok_config.get('train_chars')}) or lower data.tokenizer.vocab_size, or pass a"
        " trained model with data.tokenizer.path (see `python -m maxlm.tokenizer train`)") from e
  _atomic_write(out_path, proto.getvalue())
  return out_path


def _train_spm(texts, proto, vocab: int, user_symbols: list, tok_config) -> None:
  spm.SentencePieceTrainer.train(
      sentence_iterator=_sentences(texts), model_writer=proto,
      model_type="bpe", vocab_size=vocab,
      byte_fallback=True, split_digits=True,
      normalization_rule_name="identity", remove_extra_whitespaces=False,
      add_dummy_prefix=False, allow_whitespace_only_pieces=True,
      split_by_whitespace=True,
      character_coverage=float(tok_config.get("character_coverage", 0.9999)),
      pad_id=PAD_ID, unk_id=UNK_ID, bos_id=BOS_ID, eos_id=EOS_ID,
      user_defined_symbols=user_symbols + ["\n"],
      max_sentence_length=4 * _SENTENCE_CHARS + 16,  # bytes; UTF-8 <= 4 per char
      input_sentence_size=0, shuffle_input_sentence=False,
      num_threads=1, minloglevel=2)


def build_tokenizer(data_config, workdir: str) -> str:
  """Path of the run's tokenizer, training maxlm's own on first use.

  If data.tokenizer.path is set (a SentencePiece .model, a tokenizer.json or
  an HF model directory) it must load and is returned. Otherwise the
  model lives at <workdir>/tokenizer/tokenizer.model and is trained once; a
  resumed run finds the file and reuses it (never retrains).
  """
  path = data_config.tokenizer.path
  if path:
    if not os.path.exists(path):
      raise FileNotFoundError(f"data.tokenizer.path={path!r} does not exist; set it to a"
                              " SentencePiece .model, a tokenizer.json, an HF model directory,"
                              " or '' to train one")
    load(path)  # fails here, naming the file, on something that is not a tokenizer
    return path
  out = os.path.join(workdir, "tokenizer", "tokenizer.model")
  if os.path.isfile(out):
    return out
  return train_from_config(data_config, out)


def train_from_config(data_config, out_path: str) -> str:
  """Trains on training_sample(data_config); writes the model and, next to
  it, a .json with its sha256, the sample size and the tokenizer config."""
  config_lib.validate(data_config)
  sample = training_sample(data_config)
  train_tokenizer(sample, out_path, data_config.tokenizer)
  meta = dict(sha256=tokenizer_hash(out_path), sample_chars=sum(len(t) for t in sample),
              vocab_size=load(out_path).vocab_size, config=data_config.tokenizer.to_dict())
  with open(os.path.splitext(out_path)[0] + ".json", "w") as f:
    json.dump(meta, f, indent=2, default=list)
  return out_path


def training_sample(data_config) -> list[str]:
  """Deterministic sample of training (never held-out) documents.

  Each source gets a share of `tokenizer.train_chars` proportional to its
  weight; documents are taken in the order of a hash of their key, so the
  sample is a fixed function of the config.
  """
  srcs = [s for s in config_lib.iter_sources(data_config) if s["weight"] > 0]
  total_w = sum(s["weight"] for s in srcs)
  out = []
  for s in srcs:
    budget = data_config.tokenizer.train_chars * s["weight"] / total_w
    docs, _ = sources_lib.cached_documents(s, data_config.get("error_budget", -1))
    train, _ = sources_lib.split_heldout(docs, data_config.heldout_fraction)
    words = instruct.plain_text if sources_lib.is_instruct(s) else (lambda t: t)  # not JSON
    for d in train.hash_order("tok:"):  # keys only: texts are read as the sample takes them
      if budget <= 0:
        break
      out.append(words(d.text)[:int(budget) + 1])
      budget -= len(out[-1])
  return out


def _sentences(texts):
  """Chunks texts into <= _SENTENCE_CHARS pieces, preferring line breaks."""
  for text in texts:
    start = 0
    while start < len(text):
      end = min(len(text), start + _SENTENCE_CHARS)
      if end < len(text):
        nl = text.rfind("\n", start, end)
        end = nl + 1 if nl > start else end
      yield text[start:end]
      start = end


def _atomic_write(path: str, data: bytes) -> None:
  # Write-then-rename: a crash never leaves a half model that a resumed run
  # would take as finished.
  os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
  tmp = f"{path}.tmp{os.getpid()}"
  with open(tmp, "wb") as f:
    f.write(data)
  os.replace(tmp, path)


def compression_report(data_config, tokenizer_path: str,
                       max_chars_per_domain: int = 500_000) -> list[dict]:
  """Characters and UTF-8 bytes per token, per domain, on held-out documents.

  Held-out text was never in the tokenizer's training sample, so this is the
  compression a model trained with it will see on new text of each domain.
  """
  tok = load(tokenizer_path)
  rows = []
  domains = config_lib.domain_names(data_config)
  by_domain = {d: [] for d in domains}
  for s in config_lib.iter_sources(data_config):
    docs, _ = sources_lib.cached_documents(s, data_config.get("error_budget", -1))
    train, held = sources_lib.split_heldout(docs, data_config.heldout_fraction)
    words = instruct.plain_text if sources_lib.is_instruct(s) else (lambda t: t)
    by_domain[s["domain"]].extend(words(d.text) for d in (held or train[:1]))
  byte_ids = {tok.piece_to_id(f"<0x{b:02X}>") for b in range(256)} - {None}
  for dom in domains:
    texts, chars = [], 0
    for t in by_domain[dom]:
      if chars >= max_chars_per_domain:
        break
      texts.append(t[:max_chars_per_domain - chars])
      chars += len(texts[-1])
    ids = [i for ids in tok.encode_batch(texts) for i in ids]
    n_bytes = sum(len(t.encode()) for t in texts)
    rows.append(dict(domain=dom, docs=len(texts), chars=chars, bytes=n_bytes, tokens=len(ids),
                     chars_per_token=chars / max(1, len(ids)),
                     bytes_per_token=n_bytes / max(1, len(ids)),
                     byte_fallback=sum(i in byte_ids for i in ids) / max(1, len(ids))))
  return rows


def format_compression(rows: list[dict]) -> str:
  """Markdown table of compression_report rows."""
  out = ["| domain | docs | chars | tokens | chars/token | bytes/token | byte-fallback tokens |",
         "|---|---:|---:|---:|---:|---:|---:|"]
  for r in rows:
    out.append(f"| {r['domain']} | {r['docs']} | {r['chars']} | {r['tokens']} | "
               f"{r['chars_per_token']:.2f} | {r['bytes_per_token']:.2f} | {r['byte_fallback']:.2%} |")
  return "\n".join(out)
