"""Text normalisation: mojibake repair, Unicode NFC, control characters, whitespace.

ftfy (Speer 2019) repairs text decoded with the wrong codec ("cafÃ©" -> "café");
NFC makes visually equal strings byte-equal, which exact dedup and n-gram
matching rely on. Control characters other than tab and newline carry no text
and break downstream tokenizers and pycld2, so they are dropped.

Speed: ftfy.fix_text runs every fixer on every line, and its mojibake detector
(ftfy.badness.is_bad, one large regex) costs ~0.6 us per character -- it was the
whole cost of normalisation on non-ASCII text. `fix_mojibake` gives the same
result as fix_text with the options below but calls ftfy only on lines that can
change: lines with a character one of the enabled fixers acts on (C1 and other
control characters, terminal escapes, odd line breaks, surrogates), or lines
with two adjacent non-ASCII characters (or one of Ã Â Œ œ: every badness
pattern needs one of these) whose non-ASCII runs, with 3 characters of
context, look bad to is_bad (every badness pattern is 2-3 characters long).
Clean typographic text (“quotes”, dashes, accents inside ASCII words) then
never reaches ftfy.
HTML entities are not unescaped (unescape_html=False): extracted HTML is
already unescaped, and in other text "&amp;" may be meant literally (code).
"""

from __future__ import annotations

import re
import unicodedata

import ftfy
from ftfy import badness, chardata

# C0 and C1 controls except \t and \n; \r is folded into \n first.
_CONTROL_RE = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")
_SPACES_RE = re.compile(r"[ \t\u00a0\u2000-\u200a\u202f\u205f\u3000]+")
_BLANK_LINES_RE = re.compile(r"\n{3,}")
_SPACE_RUNS_RE = re.compile("  +")
_OTHER_SPACES_RE = re.compile(r"[\t\u00a0\u2000-\u200a\u202f\u205f\u3000]")  # _SPACES_RE less " "
# What str.strip() removes beyond " ", "\n", _SPACES_RE and the controls _CONTROL_RE drops.
_OTHER_STRIPPED_RE = re.compile("[\u1680\u2028\u2029]")
_NON_ASCII_RUN_RE = re.compile(r"[^\x00-\x7f]+")
# Characters ftfy's non-encoding fixers act on (fix_c1_controls, fix_line_breaks,
# fix_surrogates, remove_terminal_escapes, remove_control_chars).
_FTFY_OTHER_RE = re.compile("[" + re.escape("".join(map(chr, sorted(chardata.CONTROL_CHARS))))
                            + "\x1b\r\x80-\x9f\x85\u2028\u2029\ud800-\udfff]")
# Every pattern of ftfy 6's badness regex holds two adjacent non-ASCII characters, a C1
# control, or one of these four (tests/test_curate_rules.py checks this against ftfy).
_MOJIBAKE_HINT_RE = re.compile("[^\x00-\x7f]{2}|[\x80-\x9f\u00c3\u00c2\u0152\u0153]")
_FTFY_OPTIONS = dict(unescape_html=False, normalization=None, uncurl_quotes=False,
                     fix_latin_ligatures=False, fix_character_width=False)


def _line_needs_ftfy(line: str) -> bool:
  if _FTFY_OTHER_RE.search(line):
    return True
  if line.isascii() or not _MOJIBAKE_HINT_RE.search(line):
    return False
  windows = "\n".join(line[max(m.start() - 3, 0):m.end() + 3] for m in _NON_ASCII_RUN_RE.finditer(line))
  return badness.is_bad(windows)


def repair_mojibake(text: str) -> str:
  """ftfy.fix_text(text, **_FTFY_OPTIONS), calling ftfy only on the lines it could change."""
  if text.isascii() and not _FTFY_OTHER_RE.search(text):
    return text  # mojibake needs non-ASCII characters
  # ftfy fixes "\n"-terminated segments independently; so do we, skipping the clean ones.
  pieces = text.split("\n")
  for i, piece in enumerate(pieces):
    segment = piece + "\n" if i < len(pieces) - 1 else piece
    if segment and _line_needs_ftfy(segment):
      fixed = ftfy.fix_text(segment, **_FTFY_OPTIONS)
      pieces[i] = fixed[:-1] if i < len(pieces) - 1 and fixed.endswith("\n") else fixed
  return "\n".join(pieces)


def normalize_text(text: str, *, fix_mojibake: bool = True, nfc: bool = True,
                   strip_control: bool = True, collapse_whitespace: bool = True) -> str:
  if fix_mojibake:
    # Only the encoding repairs: ftfy's other fixes (quotes, ligatures) change real text.
    text = repair_mojibake(text)
  if nfc:
    text = unicodedata.normalize("NFC", text)
  if "\r" in text:
    text = text.replace("\r\n", "\n").replace("\r", "\n")
  if strip_control:
    text = _CONTROL_RE.sub("", text)
  if collapse_whitespace:
    # Runs of spaces become one space, lines are stripped, at most one blank line.
    text = _collapse_spaces(text)
    if strip_control and (text.isascii() or not _OTHER_STRIPPED_RE.search(text)):
      # Only " " and "\n" are left that str.strip removes, and at most one " " at
      # either end of a line: two replaces strip every line (the first line's head
      # and the last line's tail go with the final strip).
      text = text.replace(" \n", "\n").replace("\n ", "\n")
    else:
      text = "\n".join(line.strip() for line in text.split("\n"))
    if "\n\n\n" in text:  # a substring test is ~10x faster than the regex scan
      text = _BLANK_LINES_RE.sub("\n\n", text)
    text = text.strip()
  return text


def _collapse_spaces(text: str) -> str:
  """_SPACES_RE.sub(" ", text). That regex matches every single space (4M matches on
  24 MB of prose, half the normalisation time); text whose only spacing is " "
  needs only its runs of "  " shortened."""
  if "\t" in text or (not text.isascii() and _OTHER_SPACES_RE.search(text)):
    return _SPACES_RE.sub(" ", text)
  return _SPACE_RUNS_RE.sub(" ", text) if "  " in text else text
