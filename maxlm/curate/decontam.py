"""Decontamination: remove or mask documents sharing word n-grams with evaluation sets.

GPT-3 (Brown et al. 2020, appendix C) flagged training documents sharing any
13-gram with a benchmark; the same test is used here. Text on both sides is
lowercased and reduced to \\w+ tokens, so case, punctuation and whitespace
changes do not hide a copied passage. Evaluation passages shorter than n tokens
cannot match and are counted in the stage's setup log.

Evaluation sets are local files: JSONL (every string value of every record is a
passage, so lm-eval task files work as they are) or text (one passage per
non-empty paragraph). Mode "remove" rejects the document with the rule
"contaminated"; mode "mask" replaces the matched spans by `mask` and lists the
document in the stage's notes.
"""

from __future__ import annotations

import glob
import gzip
import json
import logging
import re

from maxlm.curate.stages import DocStage, Note, Reject

_TOKEN_RE = re.compile(r"\w+")


def _strings(value):
  if isinstance(value, str):
    yield value
  elif isinstance(value, dict):
    for v in value.values():
      yield from _strings(v)
  elif isinstance(value, list):
    for v in value:
      yield from _strings(v)


def eval_passages(patterns) -> list[str]:
  out = []
  for pattern in patterns:
    for path in sorted(glob.glob(pattern)):
      opener = gzip.open if path.endswith(".gz") else open
      with opener(path, "rt", encoding="utf-8") as f:
        if ".jsonl" in path or ".json" in path:
          for line in f:
            if line.strip():
              out.extend(_strings(json.loads(line)))
        else:
          out.extend(p for p in re.split(r"\n\s*\n", f.read()) if p.strip())
  return out


def ngram_set(passages, n: int = 13) -> set[str]:
  grams, short = set(), 0
  for p in passages:
    toks = _TOKEN_RE.findall(p.lower())
    if len(toks) < n:
      short += 1
    grams.update(" ".join(toks[i:i + n]) for i in range(len(toks) - n + 1))
  logging.info("decontam: %d %d-grams from %d passages (%d shorter than n)",
               len(grams), n, len(passages), short)
  return grams


def find_matches(text: str, grams: set[str], n: int = 13) -> list[tuple[int, int]]:
  """Character spans of the text covered by n-grams found in `grams`, merged."""
  matches = list(_TOKEN_RE.finditer(text))
  toks = [m.group().lower() for m in matches]
  spans = []
  for i in range(len(toks) - n + 1):
    if " ".join(toks[i:i + n]) in grams:
      start, end = matches[i].start(), matches[i + n - 1].end()
      if spans and start <= spans[-1][1]:
        spans[-1] = (spans[-1][0], max(spans[-1][1], end))
      else:
        spans.append((start, end))
  return spans


def Decontaminate(*, eval_files=(), ngram=13, mode="remove", mask="", enabled=True) -> DocStage:
  del enabled
  if mode not in ("remove", "mask"):
    raise ValueError(f"decontam.mode must be 'remove' or 'mask', not {mode!r}")
  patterns = tuple(eval_files)

  def make():
    grams = ngram_set(eval_passages(patterns), ngram)

    def fn(doc):
      spans = find_matches(doc["text"], grams, ngram) if grams else []
      if not spans:
        return doc
      if mode == "remove":
        return Reject("contaminated", {"spans": len(spans), "first": doc["text"][slice(*spans[0])][:200]})
      text, pos, pieces = doc["text"], 0, []
      for start, end in spans:
        pieces += [text[pos:start], mask]
        pos = end
      pieces.append(text[pos:])
      masked = dict(doc, text="".join(pieces), meta=dict(doc["meta"], decontam_masked_spans=len(spans)))
      return Note(masked, "masked", {"spans": len(spans)})
    return fn
  return DocStage("decontam", make, notes=True)  # mask mode lists masked documents
