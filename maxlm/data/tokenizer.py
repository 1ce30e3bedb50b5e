"""SentencePiece BPE tokenizer: training from the configured sources, loading.

The model is trained for lossless round trips on prose and code: identity
normalization, no dummy prefix, whitespace kept as is (runs of spaces may be
pieces, so Python indentation costs one token), newline as its own piece,
digits split one by one, and byte fallback so no text is ever <unk>.

Vocabulary layout (ids): <pad>=0 <unk>=1 <s>=2 </s>=3, then the reserved
control slots <reserved_0..R-1>, then the user special tokens, then "\n",
then the 256 byte pieces and the learned merges. The total is rounded up to
`pad_to_multiple` by adding reserved slots, so later special tokens can take a
reserved id without moving any other id.
"""

from __future__ import annotations

import functools
import hashlib
import io
import json
import os

import sentencepiece as spm

from maxlm.data import config as config_lib
from maxlm.data import sources as sources_lib

PAD_ID, UNK_ID, BOS_ID, EOS_ID = 0, 1, 2, 3
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
  spm.SentencePieceTrainer.train(
      sentence_iterator=_sentences(texts), model_writer=proto,
      model_type="bpe", vocab_size=vocab,
      byte_fallback=True, split_digits=True,
      normalization_rule_name="identity", remove_extra_whitespaces=False,
      add_dummy_prefix=False, allow_whitespace_only_pieces=True,
      split_by_whitespace=True,
      character_coverage=float(tok_config.get("character_coverage", 0.9999)),
      pad_id=PAD_ID, unk_id=UNK_ID, bos_id=BOS_ID, eos_id=EOS_ID,
      control_symbols=reserved, user_defined_symbols=specials + ["\n"],
      max_sentence_length=4 * _SENTENCE_CHARS + 16,  # bytes; UTF-8 <= 4 per char
      input_sentence_size=0, shuffle_input_sentence=False,
      num_threads=1, minloglevel=2)
  _atomic_write(out_path, proto.getvalue())
  return out_path


def build_tokenizer(data_config, workdir: str) -> str:
  """Path of the run's SentencePiece model, training it on first use.

  If data.tokenizer.path is set it must exist and is returned. Otherwise the
  model lives at <workdir>/tokenizer/tokenizer.model and is trained once; a
  resumed run finds the file and reuses it (never retrains).
  """
  path = data_config.tokenizer.path
  if path:
    if not os.path.isfile(path):
      raise FileNotFoundError(f"data.tokenizer.path={path!r} does not exist; "
                              "set it to a SentencePiece .model or to '' to train one")
    return path
  out = os.path.join(workdir, "tokenizer", "tokenizer.model")
  if os.path.isfile(out):
    return out
  config_lib.validate(data_config)
  sample = training_sample(data_config)
  train_tokenizer(sample, out, data_config.tokenizer)
  with open(os.path.join(os.path.dirname(out), "tokenizer.json"), "w") as f:
    json.dump(dict(sha256=tokenizer_hash(out),
                   sample_chars=sum(len(t) for t in sample),
                   config=data_config.tokenizer.to_dict()), f, indent=2, default=list)
  return out


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
    train, _ = sources_lib.split_heldout(cached_documents(s), data_config.heldout_fraction)
    for d in sorted(train, key=lambda d: sources_lib._unit_hash("tok:" + d.key)):  # pylint: disable=protected-access
      if budget <= 0:
        break
      out.append(d.text[:int(budget) + 1])
      budget -= len(out[-1])
  return out


def cached_documents(src: dict) -> list[sources_lib.Document]:
  """load_documents, memoised per source config (the tokenizer and the
  pipeline read the same files in one process)."""
  return _cached(json.dumps(src, sort_keys=True, default=list))


@functools.lru_cache(maxsize=16)
def _cached(src_json: str):
  return sources_lib.load_documents(json.loads(src_json))


@functools.lru_cache(maxsize=8)
def load(path: str) -> spm.SentencePieceProcessor:
  return spm.SentencePieceProcessor(model_file=path)


def tokenizer_hash(path: str) -> str:
  with open(path, "rb") as f:
    return hashlib.sha256(f.read()).hexdigest()


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
