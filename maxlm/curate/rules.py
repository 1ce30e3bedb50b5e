"""Heuristic quality rules as plain functions of one text: Gopher, C4 and FineWeb.

Each filter returns the name of the first rule that removes the document, or None
to keep it, so the Beam stage can record why a document left and the benchmark
can run the very same code in a plain Python loop. Thresholds come in as keyword
arguments from `configs/curate.py`, whose defaults are the published values.

Sources
- Gopher quality and repetition: Rae et al. 2021, "Scaling Language Models:
  Methods, Analysis & Insights from Training Gopher", appendix A.1.1-A.1.2, table A1.
- C4 line and page rules: Raffel et al. 2020, "Exploring the Limits of Transfer
  Learning with a Unified Text-to-Text Transformer", section 2.2.
- FineWeb's added rules: Penedo et al. 2024, "The FineWeb Datasets", section 3.3.

The papers leave some counting details open; the choices made here are:
- words are whitespace-separated tokens (punctuation stays attached); for
  languages written without spaces (zh, ja) every CJK character is one word
  and the rules that only make sense for space-separated words (mean word
  length, English stop words) are skipped -- a maxlm adaptation, not published;
- "lines" are the non-empty lines after stripping, "paragraphs" the non-empty
  blocks separated by blank lines;
- character fractions of lines/paragraphs divide by the characters of all
  lines/paragraphs; character fractions of n-grams divide by the characters of
  all words (whitespace excluded), as Gopher measures n-grams over words;
- a "duplicate" line, paragraph or n-gram is every occurrence after the first;
  a word covered by several duplicate n-grams is counted once (Gopher: "taking
  care not to count characters that occur in overlapping n-grams more than once").
"""

from __future__ import annotations

import collections
import re

import numpy as np

# Gopher's stop-word rule: "at least two of: the, be, to, of, and, that, have, with".
GOPHER_STOP_WORDS = ("the", "be", "to", "of", "and", "that", "have", "with")
# Gopher counts lines "starting with a bullet point"; these are the common bullet glyphs.
BULLETS = ("•", "●", "○", "◦", "▪", "▫", "‣", "⁃", "◆", "■", "□", "-", "*", "–")
ELLIPSES = ("...", "…")
# C4 keeps lines ending in "a period, exclamation mark, question mark, or end quotation mark".
C4_END_MARKS = (".", "!", "?", '"')
# C4 drops lines naming cookie / legal boilerplate (the TFDS c4 builder's list).
C4_POLICY_SUBSTRINGS = ("terms of use", "privacy policy", "cookie policy", "uses cookies",
                        "use of cookies", "use cookies")
CJK_LANGUAGES = ("zh", "zh-Hant", "ja")

_CJK_RE = re.compile(r"[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\uff66-\uff9f]")
_PARAGRAPH_SPLIT_RE = re.compile(r"\n[ \t\r\f\v]*\n")
_SENTENCE_END_RE = re.compile(r"[.!?]+(?:[\"')\]]*)(?=\s|$)")


def words(text: str, lang: str = "") -> list[str]:
  """Whitespace tokens; for CJK languages each CJK character is its own token."""
  if lang in CJK_LANGUAGES:
    out = []
    for tok in text.split():
      # Split runs like "Beam是一个" into "Beam", "是", "一", "个".
      out.extend(t for t in re.split(f"({_CJK_RE.pattern})", tok) if t)
    return out
  return text.split()


def lines(text: str) -> list[str]:
  return [line.strip() for line in text.split("\n") if line.strip()]


def paragraphs(text: str) -> list[str]:
  return [p.strip() for p in _PARAGRAPH_SPLIT_RE.split(text) if p.strip()]


def duplicate_fractions(elements: list[str]) -> tuple[float, float]:
  """(fraction of elements that repeat an earlier one, fraction of their characters)."""
  seen, n_dup, chars_dup = set(), 0, 0
  for e in elements:
    if e in seen:
      n_dup += 1
      chars_dup += len(e)
    seen.add(e)
  total_chars = sum(len(e) for e in elements)
  return n_dup / max(len(elements), 1), chars_dup / max(total_chars, 1)


class _NgramIndex:
  """Dense ids of every word n-gram of one document, built once for all n (numpy).

  The n-gram ids come from ranking (id of the (n-1)-gram at i, id of word i+n-1)
  pairs with np.unique, so two n-grams get the same id exactly when they are
  equal -- no hashing, no collisions -- and each n costs one sort of int64s
  instead of a Python loop over tuples (the hot spot of the Gopher repetition
  rules: 6 ms -> 0.4 ms for a 300-word document, see docs/curate.md).
  """

  def __init__(self, ws: list[str]):
    vocab = {w: i for i, w in enumerate(dict.fromkeys(ws))}
    self.n_words = len(ws)
    self.ids = np.fromiter(map(vocab.__getitem__, ws), np.int64, len(ws))
    self.lens = np.fromiter(map(len, ws), np.int64, len(ws))
    self.total_chars = int(self.lens.sum())
    self._cum_lens = np.concatenate(([0], np.cumsum(self.lens)))
    self._grams = {1: self.ids}
    self._counts = {}

  def grams(self, n: int) -> np.ndarray:
    """Id of the n-gram starting at each word (length n_words - n + 1)."""
    if n not in self._grams:
      prev = self.grams(n - 1)
      m = self.n_words - n + 1
      # prev < n_words and ids < n_words, so the pair code is unique per (prev, id).
      pairs = prev[:m] * (self.n_words + 1) + self.ids[n - 1:]
      _, inv, counts = np.unique(pairs, return_inverse=True, return_counts=True)
      self._grams[n], self._counts[n] = inv.reshape(-1), counts
    return self._grams[n]

  def top_char_fraction(self, n: int) -> float:
    if self.n_words < n:
      return 0.0
    g = self.grams(n)
    counts = self._counts[n] if n > 1 else np.bincount(g)
    count = int(counts.max())
    if count < 2:
      return 0.0
    # Ties go to the longest n-gram: that is the one the rule is most sensitive to.
    window_chars = self._cum_lens[n:] - self._cum_lens[:-n]
    top_chars = int(window_chars[counts[g] == count].max())
    return top_chars * count / max(self.total_chars, 1)

  def duplicate_char_fraction(self, n: int) -> float:
    if self.n_words < n:
      return 0.0
    g = self.grams(n)
    _, first = np.unique(g, return_index=True)
    starts = np.ones(len(g), np.int64)
    starts[first] = 0  # every occurrence after the first is a duplicate
    # Word j is covered when a duplicate n-gram starts in [j - n + 1, j].
    cum = np.concatenate(([0], np.cumsum(np.concatenate((starts, np.zeros(n - 1, np.int64))))))
    j = np.arange(self.n_words)
    covered = cum[j + 1] - cum[np.maximum(j - n + 1, 0)] > 0
    return int(self.lens[covered].sum()) / max(self.total_chars, 1)


def top_ngram_char_fraction(ws: list[str], n: int) -> float:
  """Characters of the most frequent word n-gram times its count, over all word characters."""
  return _NgramIndex(ws).top_char_fraction(n)


def duplicate_ngram_char_fraction(ws: list[str], n: int) -> float:
  """Characters of words inside any repeated (2nd+) occurrence of an n-gram, each word once."""
  return _NgramIndex(ws).duplicate_char_fraction(n)


def gopher_quality(text: str, lang: str = "", *, min_words: int = 50, max_words: int = 100_000,
                   min_mean_word_length: float = 3.0, max_mean_word_length: float = 10.0,
                   max_symbol_word_ratio: float = 0.1, max_bullet_lines_ratio: float = 0.9,
                   max_ellipsis_lines_ratio: float = 0.3, min_alpha_words_ratio: float = 0.8,
                   min_stop_words: int = 2, stop_words=GOPHER_STOP_WORDS) -> str | None:
  """Gopher quality filter (Rae et al. 2021, A.1.1); returns the failing rule or None."""
  ws = words(text, lang)
  n = len(ws)
  if n < min_words:
    return "gopher_min_words"
  if n > max_words:
    return "gopher_max_words"
  cjk = lang in CJK_LANGUAGES
  if not cjk:
    mean_len = sum(map(len, ws)) / n
    if mean_len < min_mean_word_length or mean_len > max_mean_word_length:
      return "gopher_mean_word_length"
  # "symbol-to-word ratio greater than 0.1 for either the hash symbol or the ellipsis"
  if text.count("#") / n > max_symbol_word_ratio:
    return "gopher_hash_word_ratio"
  if sum(text.count(e) for e in ELLIPSES) / n > max_symbol_word_ratio:
    return "gopher_ellipsis_word_ratio"
  ls = lines(text)
  if ls:
    if sum(line.startswith(BULLETS) for line in ls) / len(ls) > max_bullet_lines_ratio:
      return "gopher_bullet_lines"
    if sum(line.endswith(ELLIPSES) for line in ls) / len(ls) > max_ellipsis_lines_ratio:
      return "gopher_ellipsis_lines"
  # Per distinct word, weighted by its count: a 300-word page has ~150 distinct words,
  # and Counter counts in C, so the per-word Python checks run half as often.
  counts = collections.Counter(ws)
  alpha_words = sum(c for w, c in counts.items() if w.isalpha() or any(ch.isalpha() for ch in w))
  if alpha_words / n < min_alpha_words_ratio:
    return "gopher_alpha_words"
  if not cjk and min_stop_words > 0:
    stops = set(stop_words)
    # Occurrences, not distinct words, as datatrove and dolma count them.
    if sum(c for w, c in counts.items() if w.strip(".,;:!?\"'()[]").lower() in stops) < min_stop_words:
      return "gopher_stop_words"
  return None


def gopher_repetition(text: str, lang: str = "", *, max_dup_line_frac: float = 0.30,
                      max_dup_para_frac: float = 0.30, max_dup_line_char_frac: float = 0.20,
                      max_dup_para_char_frac: float = 0.20,
                      top_ngram_max_char_frac=((2, 0.20), (3, 0.18), (4, 0.16)),
                      dup_ngram_max_char_frac=((5, 0.15), (6, 0.14), (7, 0.13), (8, 0.12),
                                               (9, 0.11), (10, 0.10))) -> str | None:
  """Gopher repetition filter (Rae et al. 2021, A.1.2, table A1); returns the failing rule or None."""
  frac, char_frac = duplicate_fractions(lines(text))
  if frac > max_dup_line_frac:
    return "gopher_dup_line_frac"
  if char_frac > max_dup_line_char_frac:
    return "gopher_dup_line_char_frac"
  frac, char_frac = duplicate_fractions(paragraphs(text))
  if frac > max_dup_para_frac:
    return "gopher_dup_para_frac"
  if char_frac > max_dup_para_char_frac:
    return "gopher_dup_para_char_frac"
  index = _NgramIndex(words(text, lang))  # shared by all n: the (n-1)-gram ids build the n-gram ids
  for n, limit in top_ngram_max_char_frac:
    if index.top_char_fraction(n) > limit:
      return f"gopher_top_{n}gram"
  for n, limit in dup_ngram_max_char_frac:
    if index.duplicate_char_fraction(n) > limit:
      return f"gopher_dup_{n}gram"
  return None


def count_sentences(text: str) -> int:
  """Sentences as runs ending in . ! ? (C4 used a tokenizer; this is the regex stand-in)."""
  return len(_SENTENCE_END_RE.findall(text))


def c4_clean(text: str, *, min_words_per_line: int = 5, min_sentences: int = 3,
             end_marks=C4_END_MARKS, drop_javascript: bool = True, drop_policy: bool = True,
             drop_lorem_ipsum: bool = True, drop_curly_bracket: bool = True,
             max_word_length: int = 1000, bad_words=()) -> tuple[str | None, str | None]:
  """C4's rules (Raffel et al. 2020, 2.2): (cleaned text, None) or (None, failing rule).

  Page rules remove the whole document; line rules drop lines and keep the rest.
  The curly-bracket rule removes every page of code, as in C4; switch it off for code.
  """
  lowered = text.lower()
  if drop_lorem_ipsum and "lorem ipsum" in lowered:
    return None, "c4_lorem_ipsum"
  if drop_curly_bracket and "{" in text:
    return None, "c4_curly_bracket"
  if bad_words:
    lowered_words = set(re.findall(r"\w+", lowered))
    if any(b in lowered_words for b in bad_words):
      return None, "c4_bad_words"
  kept = []
  for line in lines(text):
    ws = line.split()
    low = line.lower()
    if not line.endswith(tuple(end_marks)):
      continue
    if len(ws) < min_words_per_line:
      continue
    if any(len(w) > max_word_length for w in ws):
      continue
    if drop_javascript and "javascript" in low:
      continue
    if drop_policy and any(s in low for s in C4_POLICY_SUBSTRINGS):
      continue
    kept.append(line)
  cleaned = "\n".join(kept)
  if not kept:
    return None, "c4_no_lines_left"
  if count_sentences(cleaned) < min_sentences:
    return None, "c4_min_sentences"
  return cleaned, None


def fineweb_quality(text: str, *, max_line_punct_frac: float = 0.12,
                    max_dup_line_char_frac: float = 0.1, max_short_line_frac: float = 0.67,
                    short_line_length: int = 30,
                    end_marks=C4_END_MARKS + ("'", "…", "”", "’", ":", ";")) -> str | None:
  """FineWeb's added rules (Penedo et al. 2024, 3.3); returns the failing rule or None.

  Removed when: fraction of lines ending in punctuation <= 0.12; fraction of
  characters in duplicated lines >= 0.1; fraction of lines shorter than 30
  characters >= 0.67.
  """
  ls = lines(text)
  if not ls:
    return "fineweb_empty"
  if sum(line.endswith(tuple(end_marks)) for line in ls) / len(ls) <= max_line_punct_frac:
    return "fineweb_line_punct"
  if duplicate_fractions(ls)[1] >= max_dup_line_char_frac:
    return "fineweb_dup_line_chars"
  if sum(len(line) < short_line_length for line in ls) / len(ls) >= max_short_line_frac:
    return "fineweb_short_lines"
  return None
