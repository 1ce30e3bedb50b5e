"""Text normalisation: mojibake repair, Unicode NFC, control characters, whitespace.

ftfy (Speer 2019) repairs text decoded with the wrong codec ("cafÃ©" -> "café");
NFC makes visually equal strings byte-equal, which exact dedup and n-gram
matching rely on. Control characters other than tab and newline carry no text
and break downstream tokenizers and pycld2, so they are dropped.
"""

from __future__ import annotations

import re
import unicodedata

import ftfy

# C0 and C1 controls except \t and \n; \r is folded into \n first.
_CONTROL_RE = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")
_SPACES_RE = re.compile(r"[ \t\u00a0\u2000-\u200a\u202f\u205f\u3000]+")
_BLANK_LINES_RE = re.compile(r"\n{3,}")


def normalize_text(text: str, *, fix_mojibake: bool = True, nfc: bool = True,
                   strip_control: bool = True, collapse_whitespace: bool = True) -> str:
  # Mojibake needs non-ASCII characters; skipping ftfy on ASCII text saves most of its cost.
  if fix_mojibake and not text.isascii():
    # Only the encoding repairs: ftfy's other fixes (quotes, ligatures) change real text.
    text = ftfy.fix_text(text, normalization=None, uncurl_quotes=False, fix_latin_ligatures=False,
                         fix_character_width=False)
  if nfc:
    text = unicodedata.normalize("NFC", text)
  text = text.replace("\r\n", "\n").replace("\r", "\n")
  if strip_control:
    text = _CONTROL_RE.sub("", text)
  if collapse_whitespace:
    # Runs of spaces become one space, lines are right-stripped, at most one blank line.
    text = _SPACES_RE.sub(" ", text)
    text = "\n".join(line.strip() for line in text.split("\n"))
    text = _BLANK_LINES_RE.sub("\n\n", text).strip()
  return text
