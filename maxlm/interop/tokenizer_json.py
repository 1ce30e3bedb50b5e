"""A SentencePiece BPE model as an HF `tokenizer.json` (and the tokenizer_config.json beside it).

  tk = sentencepiece_to_tokenizers("tokenizer.model")     # a tokenizers.Tokenizer
  write_hf_tokenizer("tokenizer.model", "out_dir/")         # tokenizer.json + tokenizer_config.json

Export needs it: transformers' own converter reads the model through
protobuf, and a recent transformers reads no tokenizer.model without it, so
maxlm writes the tokenizer.json itself. The model file is parsed with a
small protobuf wire reader (no protobuf package), and SentencePiece's BPE is
rebuilt in `tokenizers` terms:

- vocabulary: every piece at its id; merges: every split of a normal piece
  into two pieces of the vocabulary, ranked by the piece's id (SentencePiece
  merges the pair whose result scores highest; BPE scores fall with the id);
- control and unknown pieces are special added tokens; user-defined pieces
  (maxlm's chat tokens, reserved slots, "\\n") are non-special added tokens,
  matched whole in text as SentencePiece matches them (frozen symbols);
- whitespace: spaces become U+2581; `split_by_whitespace` splits words before
  every run of U+2581 (SentencePiece's SplitIntoWords, runs kept whole with
  allow_whitespace_only_pieces); `add_dummy_prefix` prepends one U+2581;
- byte fallback as BPE's byte_fallback; the decoder reverses all of it.

Only the normalisations that are plain character maps are supported
(`identity`, no remove_extra_whitespaces); anything else fails naming the field.
"""

from __future__ import annotations

import json
import os

# ModelProto.SentencePiece.Type
_NORMAL, _UNKNOWN, _CONTROL, _USER_DEFINED, _UNUSED, _BYTE = 1, 2, 3, 4, 5, 6
_WS = "\u2581"


def _varint(b: bytes, i: int) -> tuple[int, int]:
  r = s = 0
  while True:
    c = b[i]
    i += 1
    r |= (c & 0x7F) << s
    s += 7
    if c < 0x80:
      return r, i


def _fields(buf: bytes) -> list[tuple[int, object]]:
  """(field number, value) of one protobuf message: ints, or bytes for length-delimited."""
  i, out = 0, []
  while i < len(buf):
    key, i = _varint(buf, i)
    f, wire = key >> 3, key & 7
    if wire == 0:
      v, i = _varint(buf, i)
    elif wire == 2:
      n, i = _varint(buf, i)
      v, i = buf[i:i + n], i + n
    elif wire == 5:
      v, i = buf[i:i + 4], i + 4
    elif wire == 1:
      v, i = buf[i:i + 8], i + 8
    else:
      raise ValueError(f"unsupported protobuf wire type {wire}")
    out.append((f, v))
  return out


def read_model(path: str) -> dict:
  """Pieces [(piece, type)] and the trainer/normalizer fields the conversion needs.

  Field numbers are sentencepiece_model.proto's; absent fields take its defaults.
  """
  with open(path, "rb") as f:
    top = _fields(f.read())
  pieces = []
  for _, msg in (x for x in top if x[0] == 1):
    d = dict(_fields(msg))
    pieces.append((d[1].decode("utf-8"), int(d.get(3, _NORMAL))))
  trainer = dict(next((_fields(v) for f, v in top if f == 2), []))
  norm = dict(next((_fields(v) for f, v in top if f == 3), []))
  return dict(
      pieces=pieces,
      model_type=int(trainer.get(3, 1)),  # 1 unigram, 2 BPE
      split_by_whitespace=bool(trainer.get(22, 1)),
      treat_whitespace_as_suffix=bool(trainer.get(24, 0)),
      allow_whitespace_only_pieces=bool(trainer.get(26, 0)),
      byte_fallback=bool(trainer.get(35, 0)),
      normalizer=norm.get(1, b"nmt_nfkc").decode(),
      add_dummy_prefix=bool(norm.get(3, 1)),
      remove_extra_whitespaces=bool(norm.get(4, 1)),
      escape_whitespaces=bool(norm.get(5, 1)),
  )


def _check_convertible(m: dict, path: str) -> None:
  bad = [(m["model_type"] != 2, f"model_type={m['model_type']} (only BPE, 2, converts)"),
         (m["normalizer"] != "identity", f"normalizer_spec.name={m['normalizer']!r} (only"
          " 'identity' is a plain character map)"),
         (m["remove_extra_whitespaces"], "normalizer_spec.remove_extra_whitespaces=true"),
         (not m["escape_whitespaces"], "normalizer_spec.escape_whitespaces=false"),
         (m["treat_whitespace_as_suffix"], "trainer_spec.treat_whitespace_as_suffix=true")]
  for is_bad, what in bad:
    if is_bad:
      raise ValueError(f"{path}: cannot convert to tokenizer.json: {what}")


def sentencepiece_to_tokenizers(path: str):
  """A `tokenizers.Tokenizer` giving the ids SentencePiece gives for `path` (no specials added)."""
  from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, \
      pre_tokenizers  # pylint: disable=g-import-not-at-top
  m = read_model(path)
  _check_convertible(m, path)
  pieces = m["pieces"]
  vocab = {p: i for i, (p, _) in enumerate(pieces)}
  mergeable = {p for p, t in pieces if t == _NORMAL}
  merges = []
  for i, (p, t) in enumerate(pieces):
    if t != _NORMAL or len(p) < 2:
      continue
    for k in range(1, len(p)):
      a, b = p[:k], p[k:]
      if a in mergeable and b in mergeable:
        merges.append((i, vocab[a], vocab[b], a, b))
  merges.sort()  # by the result's id (SentencePiece's score order), then the parts' ids
  unk = next((p for p, t in pieces if t == _UNKNOWN), None)
  tk = Tokenizer(models.BPE(vocab=vocab, merges=[(a, b) for *_, a, b in merges], unk_token=unk,
                            byte_fallback=m["byte_fallback"], fuse_unk=True))
  # Spaces -> U+2581 (and SentencePiece's one dummy prefix), as a normalizer: it runs
  # on text between added tokens, which SentencePiece also never splits.
  norm = [normalizers.Replace(" ", _WS)]
  if m["add_dummy_prefix"]:
    norm.insert(0, normalizers.Prepend(_WS))
  tk.normalizer = normalizers.Sequence(norm)
  if m["split_by_whitespace"]:
    # SplitIntoWords: a word starts at a U+2581 (a run of them, when whitespace-only
    # pieces are allowed) and runs to the next; text before the first is a word too.
    ws = f"{_WS}+" if m["allow_whitespace_only_pieces"] else _WS
    tk.pre_tokenizer = pre_tokenizers.Split(Regex(f"{ws}[^{_WS}]*|[^{_WS}]+"), "isolated")
  dec = [decoders.Replace(_WS, " "), decoders.ByteFallback(), decoders.Fuse()]
  if m["add_dummy_prefix"]:
    dec.append(decoders.Strip(" ", 1, 0))
  tk.decoder = decoders.Sequence(dec)
  tk.add_tokens([AddedToken(p, special=False, normalized=False) for p, t in pieces
                 if t == _USER_DEFINED])
  tk.add_special_tokens([AddedToken(p, special=True, normalized=False) for p, t in pieces
                         if t in (_CONTROL, _UNKNOWN)])
  return tk


def write_hf_tokenizer(model_path: str, out_dir: str, *, bos: int | None, eos: int | None,
                       pad: int | None, add_bos: bool = True, model_max_length: int = 2048) -> None:
  """tokenizer.json + tokenizer_config.json for `model_path`, so AutoTokenizer loads it
  with the same ids and specials, BOS added by its post-processor as training did."""
  from tokenizers import processors  # pylint: disable=g-import-not-at-top
  tk = sentencepiece_to_tokenizers(model_path)
  piece = lambda i: None if i is None else tk.id_to_token(i)
  if add_bos and bos is not None:
    tk.post_processor = processors.TemplateProcessing(
        single=f"{piece(bos)} $A", pair=f"{piece(bos)} $A {piece(bos)} $B",
        special_tokens=[(piece(bos), bos)])
  os.makedirs(out_dir, exist_ok=True)
  tk.save(os.path.join(out_dir, "tokenizer.json"))
  unk = next((p for p, t in read_model(model_path)["pieces"] if t == _UNKNOWN), None)
  cfg = dict(tokenizer_class="PreTrainedTokenizerFast", bos_token=piece(bos),
             eos_token=piece(eos), pad_token=piece(pad), unk_token=unk,
             add_bos_token=bool(add_bos and bos is not None), add_eos_token=False,
             model_max_length=model_max_length, clean_up_tokenization_spaces=False)
  with open(os.path.join(out_dir, "tokenizer_config.json"), "w") as f:
    json.dump(cfg, f, indent=2)
    f.write("\n")
