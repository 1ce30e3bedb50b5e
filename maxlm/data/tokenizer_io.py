"""One tokenizer interface over SentencePiece, HF `tokenizers` and HF model directories.

  tok = load("path/to/tokenizer.model" | "path/to/tokenizer.json" | "path/to/hf_model_dir")
  tok.bos_id, tok.eos_id, tok.pad_id, tok.vocab_size, tok.add_bos
  tok.encode(text) -> ids (no special tokens added), tok.encode_batch(texts), tok.decode(ids)

Special ids come from the tokenizer itself, never from constants: a
SentencePiece model's own bos/eos/pad pieces; for an HF directory its
tokenizer_config.json (`bos_token`, `eos_token`, `pad_token`, `add_bos_token`,
`chat_template`, as transformers reads them), then config.json's `*_token_id`;
for a bare tokenizer.json the tokens its post-processor adds (BOS) and the
usual names of the end token. maxlm's own trained SentencePiece model keeps
its layout (<pad>=0 <unk>=1 <s>=2 </s>=3: maxlm.data.tokenizer), read here
like any other .model.

`encode` never adds special tokens: code that frames documents (pipeline,
prepare, eval) adds `bos_id` / `eos_id` itself, so every path frames alike.
An HF directory prefers tokenizer.json over tokenizer.model, as
AutoTokenizer's fast tokenizer does, so ids equal transformers'.

Only `tokenizers` (Rust) and `sentencepiece` are used: no torch or
transformers at run time.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import re
from typing import Sequence

# tokenizer.json names a bare file may use for its end token (no tokenizer_config.json to ask).
_EOS_NAMES = ("</s>", "<|endoftext|>", "<|end_of_text|>", "<eos>", "<|eot_id|>")
_BOS_NAMES = ("<s>", "<|begin_of_text|>", "<bos>", "<|startoftext|>")
_BYTE_PIECE = re.compile(r"<0x([0-9A-Fa-f]{2})>")


def resolve(path: str) -> tuple[str, str | None]:
  """(tokenizer file, HF directory or None) for a .model, a tokenizer.json or an HF dir."""
  path = os.fspath(path)
  if os.path.isdir(path):
    for name in ("tokenizer.json", "tokenizer.model"):
      if os.path.isfile(os.path.join(path, name)):
        return os.path.join(path, name), path
    raise FileNotFoundError(f"tokenizer directory {path} has neither tokenizer.json nor"
                            " tokenizer.model")
  if not os.path.isfile(path):
    raise FileNotFoundError(f"tokenizer {path!r} does not exist (give a SentencePiece .model,"
                            " a tokenizer.json or an HF model directory)")
  return path, None


def _read_json(path: str) -> dict:
  if not os.path.isfile(path):
    return {}
  with open(path) as f:
    try:
      return json.load(f)
    except json.JSONDecodeError as e:
      raise ValueError(f"{path}: not valid JSON ({e})") from e


def _token_text(v) -> str | None:
  """tokenizer_config.json spells a token "<s>" or {"content": "<s>", ...}."""
  if isinstance(v, dict):
    v = v.get("content")
  return v if isinstance(v, str) else None


class Tokenizer:
  """A tokenizer read from `path`; see the module docstring for the forms accepted."""

  def __init__(self, path: str):
    self.path = os.fspath(path)
    self.file, self.hf_dir = resolve(self.path)
    self.sp = self._hf = None
    if self.file.endswith(".json"):
      from tokenizers import Tokenizer as RustTokenizer  # pylint: disable=g-import-not-at-top
      try:
        self._hf = RustTokenizer.from_file(self.file)
      except Exception as e:  # tokenizers raises a bare Exception on a bad file
        raise ValueError(f"{self.file}: not a tokenizers tokenizer.json ({e})") from e
      self.vocab_size = self._hf.get_vocab_size(with_added_tokens=True)
      self._special_ids = {i for i, t in self._hf.get_added_tokens_decoder().items() if t.special}
    else:
      import sentencepiece as spm  # pylint: disable=g-import-not-at-top
      try:
        self.sp = spm.SentencePieceProcessor(model_file=self.file)
      except (OSError, RuntimeError) as e:
        raise ValueError(f"{self.file}: not a SentencePiece model ({e})") from e
      self.vocab_size = self.sp.vocab_size()
      self._special_ids = {i for i in range(self.vocab_size)
                           if self.sp.is_control(i) or self.sp.is_unknown(i)}
    self._set_specials()

  # ------------------------------------------------------------------ special ids
  def _set_specials(self) -> None:
    bos, eos, pad = self._own_specials()
    self.add_bos = bos is not None
    self.chat_template = None
    if self.hf_dir is not None:
      tok_cfg = _read_json(os.path.join(self.hf_dir, "tokenizer_config.json"))
      model_cfg = _read_json(os.path.join(self.hf_dir, "config.json"))
      bos = self._hf_special("bos", tok_cfg, model_cfg, bos)
      eos = self._hf_special("eos", tok_cfg, model_cfg, eos)
      pad = self._hf_special("pad", tok_cfg, model_cfg, pad)
      if isinstance(tok_cfg.get("add_bos_token"), bool):
        self.add_bos = tok_cfg["add_bos_token"]
      elif self._hf is not None:
        self.add_bos = self._post_processor_adds_bos(bos)
      self.chat_template = _chat_template(self.hf_dir, tok_cfg)
    self.add_bos = bool(self.add_bos and bos is not None)
    self.bos_id, self.eos_id = bos, eos
    # Pads are masked out wherever they are used; EOS (or 0) is a safe filler.
    self.pad_id = pad if pad is not None else (eos if eos is not None else 0)

  def _own_specials(self) -> tuple[int | None, int | None, int | None]:
    """What the tokenizer file alone says (a directory's configs may override it)."""
    if self.sp is not None:
      ids = (self.sp.bos_id(), self.sp.eos_id(), self.sp.pad_id())
      return tuple(i if i >= 0 else None for i in ids)
    bos = self._post_processor_bos()
    named = lambda names: next((self._hf.token_to_id(n) for n in names
                                if self._hf.token_to_id(n) is not None), None)
    if bos is None and self.hf_dir is None:
      bos = named(_BOS_NAMES)
    return bos, named(_EOS_NAMES), named(("<pad>", "<|pad|>", "[PAD]"))

  def _post_processor_bos(self) -> int | None:
    """The special token the tokenizer.json post-processor puts first, if any."""
    with_specials = self._hf.encode("a", add_special_tokens=True).ids
    plain = self._hf.encode("a", add_special_tokens=False).ids
    if len(with_specials) > len(plain) and with_specials[0] in self._special_ids:
      return with_specials[0]
    return None

  def _post_processor_adds_bos(self, bos: int | None) -> bool:
    return bos is not None and self._post_processor_bos() == bos

  def _hf_special(self, name: str, tok_cfg: dict, model_cfg: dict, default):
    """tokenizer_config.json's token (null = none, as transformers reads it), else config.json."""
    key = f"{name}_token"
    if key in tok_cfg:
      text = _token_text(tok_cfg[key])
      if text is None:
        return None
      i = self.piece_to_id(text)
      if i is None:
        raise ValueError(f"{self.hf_dir}/tokenizer_config.json: {key}={text!r} is not in the"
                         f" vocabulary of {self.file}")
      return i
    v = model_cfg.get(f"{name}_token_id")
    if isinstance(v, list):  # Llama 3.1 instruct lists several end ids; the first is the main one
      v = v[0] if v else None
    return int(v) if isinstance(v, int) else default

  # ------------------------------------------------------------------ encode / decode
  def encode(self, text) -> list[int]:
    """Ids of `text`, no special tokens added. A list of texts is encoded as a batch
    (SentencePieceProcessor.encode's convention, which older callers use)."""
    if isinstance(text, (list, tuple)):
      return self.encode_batch(text)
    if self.sp is not None:
      return list(self.sp.encode(text))
    return list(self._hf.encode(text, add_special_tokens=False).ids)

  def encode_offsets(self, text: str) -> tuple[list[int], list[tuple[int, int]]]:
    """(ids of `text` as encode gives them, [start, end) characters of each id in `text`),
    so a character span (an assistant turn: maxlm.data.instruct) maps to its tokens."""
    if self.sp is not None:
      # Character offsets; the byte pieces of one character are (c, c) ... (c, c + 1).
      out = self.sp.encode(text, return_type="offset_mapping")
      return list(out["ids"]), [tuple(o) for o in out["offsets"]]
    enc = self._hf.encode(text, add_special_tokens=False)
    return list(enc.ids), [tuple(o) for o in enc.offsets]

  def encode_batch(self, texts: Sequence[str], num_threads: int | None = None) -> list[list[int]]:
    """num_threads: SentencePiece's threads for the batch (None = its default, all cores;
    prepare passes 1: one process per core). The HF backend's come from RAYON_NUM_THREADS."""
    if self.sp is not None:
      return self.sp.encode(list(texts), num_threads=num_threads)  # already lists
    fast = getattr(self._hf, "encode_batch_fast", self._hf.encode_batch)  # no offsets (>= 0.20)
    return [e.ids for e in fast(list(texts), add_special_tokens=False)]

  def decode(self, ids: Sequence[int]) -> str:
    ids = [int(i) for i in ids]
    return self.sp.decode(ids) if self.sp is not None else self._hf.decode(ids)

  def piece_to_id(self, piece: str) -> int | None:
    if self.sp is not None:
      i = self.sp.piece_to_id(piece)
      return None if i == self.sp.unk_id() and piece != self.sp.id_to_piece(i) else i
    return self._hf.token_to_id(piece)

  def id_to_piece(self, i: int) -> str:
    return self.sp.id_to_piece(int(i)) if self.sp is not None else self._hf.id_to_token(int(i))

  def is_special(self, i: int) -> bool:
    return int(i) in self._special_ids

  def token_bytes(self) -> list[int]:
    """UTF-8 bytes each id stands for (0 for control / special tokens), for bits per byte.

    Byte pieces (<0xNN>) are one byte; byte-level BPE pieces map back to bytes
    through GPT-2's byte-to-unicode table, exactly; other pieces are their
    text with U+2581 read as a space.
    """
    byte_level = self._hf is not None and _is_byte_level(self._hf)
    inv = {c: b for b, c in _bytes_to_unicode().items()} if byte_level else {}
    out = []
    for i in range(self.vocab_size):
      if i in self._special_ids or (self.sp is not None and self.sp.is_unused(i)):
        out.append(0)
        continue
      piece = self.id_to_piece(i)
      if piece is None:
        out.append(0)
      elif self.sp is not None and self.sp.is_byte(i) or _BYTE_PIECE.fullmatch(piece):
        out.append(1)
      elif byte_level and all(c in inv for c in piece):
        out.append(len(piece))  # one char per byte in the byte-level alphabet
      else:
        out.append(len(piece.replace("\u2581", " ").encode()))
    return out


def _is_byte_level(tk) -> bool:
  spec = json.loads(tk.to_str())
  return "ByteLevel" in json.dumps(spec.get("decoder")) or "ByteLevel" in json.dumps(
      spec.get("pre_tokenizer"))


@functools.lru_cache(maxsize=1)
def _bytes_to_unicode() -> dict[int, str]:
  """GPT-2's reversible byte -> printable character table (used by ByteLevel)."""
  bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(
      range(ord("®"), ord("ÿ") + 1))
  cs, n = bs[:], 0
  for b in range(256):
    if b not in bs:
      bs.append(b)
      cs.append(256 + n)
      n += 1
  return dict(zip(bs, map(chr, cs)))


def _chat_template(hf_dir: str, tok_cfg: dict) -> str | None:
  """The default chat template: chat_template.jinja (transformers >= 4.43 writes it), else
  tokenizer_config.json's string, or the entry named "default" of its list form."""
  jinja = os.path.join(hf_dir, "chat_template.jinja")
  if os.path.isfile(jinja):
    with open(jinja) as f:
      return f.read()
  t = tok_cfg.get("chat_template")
  if isinstance(t, list):
    t = next((x.get("template") for x in t if x.get("name") == "default"), None)
  return t if isinstance(t, str) else None


# ------------------------------------------------------------------ public functions

def load(path: str) -> Tokenizer:
  """Cached Tokenizer; keyed by the tokenizer files' mtimes and sizes, so a file
  rewritten at the same path is never served stale."""
  file, hf_dir = resolve(path)
  files = [file] + ([os.path.join(hf_dir, n) for n in ("tokenizer_config.json", "config.json")]
                    if hf_dir else [])
  stamp = tuple((os.stat(f).st_mtime_ns, os.stat(f).st_size) for f in files if os.path.isfile(f))
  return _load(os.fspath(path), stamp)


@functools.lru_cache(maxsize=8)
def _load(path: str, stamp: tuple) -> Tokenizer:
  del stamp  # cache key only
  return Tokenizer(path)


def special_ids(path: str) -> tuple[int | None, int | None]:
  """(bos_id, eos_id) of the tokenizer at `path`; None where it has no such token."""
  tok = load(path)
  return tok.bos_id, tok.eos_id


def tokenizer_hash(path: str) -> str:
  """sha256 identifying the ids a tokenizer produces.

  A file hashes its bytes (so shards written before HF support keep their
  hash). A directory hashes its tokenizer file together with the special ids
  and BOS convention its configs give, which change the framed ids too.
  """
  file, hf_dir = resolve(path)
  h = hashlib.sha256()
  with open(file, "rb") as f:
    h.update(f.read())
  if hf_dir is None:
    return h.hexdigest()
  tok = load(path)
  h.update(json.dumps(dict(bos=tok.bos_id, eos=tok.eos_id, add_bos=tok.add_bos),
                      sort_keys=True).encode())
  return h.hexdigest()
