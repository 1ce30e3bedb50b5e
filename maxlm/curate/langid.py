"""Language identification with CLD2 (pycld2), whose model ships inside the wheel.

CLD2 (Google's Compact Language Detector 2) scores character 4-grams with a
naive-Bayes model; C4 used langdetect and mC4 used CLD3, but CLD2 is the one
with a maintained wheel that carries its model, so nothing is downloaded. It reports, per language, the percent of the text's bytes
assigned to it; that percent / 100 is the confidence compared against the
threshold (FineWeb keeps English at fastText score >= 0.65; the default here
uses the same number on CLD2's scale).
"""

from __future__ import annotations

import pycld2


def detect(text: str) -> tuple[str, float]:
  """(ISO code of the top language, share of the text's bytes in it); ("un", 0) if unknown."""
  try:
    _, _, details = pycld2.detect(text)
  except pycld2.error:
    # CLD2 rejects invalid UTF-8 (lone surrogates); drop them and retry once.
    _, _, details = pycld2.detect(text.encode("utf-8", "ignore").decode("utf-8"))
  name, code, percent, _ = details[0]
  if code == "un":
    return "un", 0.0
  return code, percent / 100.0
