"""Golden tests for the quality rules: one document just inside and one just outside
every threshold, with the expected values computed by hand from the definitions
in maxlm/curate/rules.py (Gopher A.1, C4 2.2, FineWeb 3.3)."""

import collections
import math
import random

import pytest

from maxlm.curate import langid, normalize, rules

# Five-letter distinct filler words: no letter-free words, no repeated n-grams.
def _fill(n, start=0):
  return [f"w{i:04d}" for i in range(start, start + n)]


def _gq(text, **kw):
  return rules.gopher_quality(text, **kw)


# --- Gopher quality ---------------------------------------------------------

def test_gopher_word_count():
  base = ["the", "and"]
  assert _gq(" ".join(base + _fill(48))) is None                  # 50 words
  assert _gq(" ".join(base + _fill(47))) == "gopher_min_words"    # 49 words
  assert _gq(" ".join(base + _fill(99_998))) is None              # 100,000 words
  assert _gq(" ".join(base + _fill(99_999))) == "gopher_max_words"


def test_gopher_mean_word_length():
  # 50 words: "the", "and" + 48 x "abc": 150 chars / 50 = 3.0 -> kept; one "ab": 2.98 -> removed.
  assert _gq(" ".join(["the", "and"] + ["abc"] * 48)) is None
  assert _gq(" ".join(["the", "and", "ab"] + ["abc"] * 47)) == "gopher_mean_word_length"
  # 6 + 47 x 10 + 24 = 500 chars / 50 = 10.0 -> kept; one more char: 10.02 -> removed.
  hi = ["the", "and"] + ["abcdefghij"] * 47
  assert _gq(" ".join(hi + ["x" * 24])) is None
  assert _gq(" ".join(hi + ["x" * 25])) == "gopher_mean_word_length"


@pytest.mark.parametrize("symbol,rule", [("#", "gopher_hash_word_ratio"),
                                         ("...", "gopher_ellipsis_word_ratio")])
def test_gopher_symbol_word_ratio(symbol, rule):
  ws = ["the", "and"] + _fill(48)
  inside = [w + symbol if 2 <= i < 7 else w for i, w in enumerate(ws)]    # 5 / 50 = 0.1
  outside = [w + symbol if 2 <= i < 8 else w for i, w in enumerate(ws)]   # 6 / 50 = 0.12
  assert _gq(" ".join(inside)) is None
  assert _gq(" ".join(outside)) == rule


def test_gopher_bullet_lines():
  lines = [f"the and {' '.join(_fill(3, 3 * i))}" for i in range(20)]  # 20 lines, 100 words
  inside = "\n".join(("• " + l) if i < 18 else l for i, l in enumerate(lines))   # 18/20 = 0.9
  outside = "\n".join(("• " + l) if i < 19 else l for i, l in enumerate(lines))  # 19/20 = 0.95
  assert _gq(inside) is None
  assert _gq(outside) == "gopher_bullet_lines"


def test_gopher_ellipsis_lines():
  lines = [f"the and {' '.join(_fill(8, 8 * i))}" for i in range(10)]  # 10 lines, 100 words
  inside = "\n".join(l + ("..." if i < 3 else ".") for i, l in enumerate(lines))   # 3/10
  outside = "\n".join(l + ("..." if i < 4 else ".") for i, l in enumerate(lines))  # 4/10
  assert _gq(inside) is None
  assert _gq(outside) == "gopher_ellipsis_lines"


def test_gopher_alpha_words():
  ws = ["the", "and"] + _fill(48)
  inside = ["123" if 2 <= i < 12 else w for i, w in enumerate(ws)]    # 40/50 = 0.8 with a letter
  outside = ["123" if 2 <= i < 13 else w for i, w in enumerate(ws)]   # 39/50 = 0.78
  assert _gq(" ".join(inside)) is None
  assert _gq(" ".join(outside)) == "gopher_alpha_words"


def test_gopher_stop_words():
  assert _gq(" ".join(["The", "with."] + _fill(48))) is None          # 2 (case, punctuation ignored)
  assert _gq(" ".join(["the"] + _fill(49))) == "gopher_stop_words"   # 1


def test_gopher_cjk_counts_characters():
  zh = "数据清洗" * 13  # 52 characters, no spaces: 52 "words" for zh, 1 word otherwise
  assert rules.gopher_quality(zh, "zh") is None
  assert rules.gopher_quality(zh, "en") == "gopher_min_words"
  assert rules.gopher_quality("数据清洗" * 12, "zh") == "gopher_min_words"  # 48


# --- Gopher repetition --------------------------------------------------------

_OFF = dict(max_dup_line_frac=1, max_dup_para_frac=1, max_dup_line_char_frac=1,
            max_dup_para_char_frac=1, top_ngram_max_char_frac=(), dup_ngram_max_char_frac=())


def _rep(text, **kw):
  return rules.gopher_repetition(text, **dict(_OFF, **kw))


def test_duplicate_fractions_golden():
  # "aa", "bbbb", "aa", "aa": 2 of 4 elements repeat; their 4 of 10 characters.
  assert rules.duplicate_fractions(["aa", "bbbb", "aa", "aa"]) == (0.5, 0.4)


@pytest.mark.parametrize("sep,kind", [("\n", "line"), ("\n\n", "para")])
def test_gopher_dup_element_frac(sep, kind):
  # 20 elements; the repeated one is short so only the count rule is near its limit.
  def doc(n_dup):
    uniq = [" ".join(_fill(10, 10 * i)) for i in range(20 - n_dup - 1)]
    return sep.join(uniq + ["ok"] * (n_dup + 1))
  kw = {f"max_dup_{kind}_frac": 0.30}
  assert _rep(doc(6), **kw) is None                       # 6/20 = 0.30
  assert _rep(doc(7), **kw) == f"gopher_dup_{kind}_frac"  # 7/20 = 0.35


@pytest.mark.parametrize("sep,kind", [("\n", "line"), ("\n\n", "para")])
def test_gopher_dup_element_char_frac(sep, kind):
  # 10 elements of 10 characters; 2 duplicates carry 20 of 100 characters -> kept;
  # one unique element a character shorter: 20 of 99 -> removed.
  def doc(short):
    uniq = [f"u{i:09d}" for i in range(7)]
    uniq[0] = uniq[0][:10 - short]
    return sep.join(uniq + ["d" * 10] * 3)
  kw = {f"max_dup_{kind}_char_frac": 0.20}
  assert _rep(doc(0), **kw) is None
  assert _rep(doc(1), **kw) == f"gopher_dup_{kind}_char_frac"


def _ngram_doc(gram, count, total_chars):
  """`count` copies of the n-gram `gram`, separated by distinct fillers, `total_chars` word chars."""
  filler_chars = total_chars - count * sum(map(len, gram))
  fillers = [f"{i:03d}" for i in range(filler_chars // 3)] + (["z" * (filler_chars % 3)] if filler_chars % 3 else [])
  per_gap = math.ceil(len(fillers) / count)
  ws = []
  for c in range(count):
    ws += list(gram) + fillers[c * per_gap:(c + 1) * per_gap]
  return " ".join(ws)


@pytest.mark.parametrize("n,limit", [(2, 0.20), (3, 0.18), (4, 0.16)])
def test_gopher_top_ngram(n, limit):
  gram, count = ["ab", "cd", "ef", "gh"][:n], 6
  covered = 2 * n * count
  total = math.ceil(covered / limit - 1e-9)  # smallest word-char total with covered/total <= limit
  inside, outside = _ngram_doc(gram, count, total), _ngram_doc(gram, count, total - 1)
  assert rules.top_ngram_char_fraction(inside.split(), n) == covered / total
  kw = dict(top_ngram_max_char_frac=((n, limit),))
  assert _rep(inside, **kw) is None
  assert _rep(outside, **kw) == f"gopher_top_{n}gram"


@pytest.mark.parametrize("n,limit", [(5, 0.15), (6, 0.14), (7, 0.13), (8, 0.12), (9, 0.11), (10, 0.10)])
def test_gopher_dup_ngram(n, limit):
  gram = [f"g{i:02d}" for i in range(n)]  # 3 chars a word; the second copy covers 3n chars
  covered = 3 * n
  total = math.ceil(covered / limit - 1e-9)
  inside, outside = _ngram_doc(gram, 2, total), _ngram_doc(gram, 2, total - 1)
  assert rules.duplicate_ngram_char_fraction(inside.split(), n) == covered / total
  kw = dict(dup_ngram_max_char_frac=((n, limit),))
  assert _rep(inside, **kw) is None
  assert _rep(outside, **kw) == f"gopher_dup_{n}gram"


def test_dup_ngram_counts_overlaps_once():
  # "a a a a a a" with n=2: occurrences 2..5 of ("a","a") cover words 1..5 once each: 5/6.
  assert rules.duplicate_ngram_char_fraction(["a"] * 6, 2) == 5 / 6


# --- C4 -------------------------------------------------------------------

_S = "This line has enough words in it."


def test_c4_line_rules():
  text = "\n".join([
      _S, _S.replace(".", "!"), _S.replace(".", "?"),
      "No terminal punctuation at the end",     # dropped: no end mark
      "Four words only here.",                   # dropped: 4 < 5 words
      "Five words are here now.",                # kept: 5 words
      "Please enable JavaScript to view this.",  # dropped: javascript
      "Read our privacy policy for more info.",  # dropped: policy
      "x" * 1000 + " is a long word here.",      # kept: 1000-char word
      "x" * 1001 + " is a long word here.",      # dropped: 1001-char word
  ])
  cleaned, rule = rules.c4_clean(text)
  assert rule is None
  assert cleaned.split("\n") == [_S, _S.replace(".", "!"), _S.replace(".", "?"),
                                 "Five words are here now.", "x" * 1000 + " is a long word here."]


def test_c4_page_rules():
  assert rules.c4_clean("\n".join([_S] * 3))[1] is None                       # 3 sentences
  assert rules.c4_clean("\n".join([_S] * 2))[1] == "c4_min_sentences"         # 2
  assert rules.c4_clean(_S + " " + _S + " " + _S)[1] is None                   # 3 on one line
  assert rules.c4_clean("\n".join([_S] * 3 + ["Lorem ipsum dolor."]))[1] == "c4_lorem_ipsum"
  assert rules.c4_clean("\n".join([_S] * 3 + ["f(x) { return 1; }"]))[1] == "c4_curly_bracket"
  assert rules.c4_clean("\n".join([_S] * 3 + ["f(x) { return 1; }"]), drop_curly_bracket=False)[1] is None
  assert rules.c4_clean("Short.\nNo end mark here at all")[1] == "c4_no_lines_left"


# --- FineWeb --------------------------------------------------------------

def _line(i, end=""):
  return f"line number {i:04d} has more than thirty chars" + end  # 42+ chars


def test_fineweb_line_punct():
  # 25 lines; removed when the fraction ending in punctuation is <= 0.12.
  assert rules.fineweb_quality("\n".join(_line(i, "." if i < 3 else "") for i in range(25))) == "fineweb_line_punct"
  assert rules.fineweb_quality("\n".join(_line(i, "." if i < 4 else "") for i in range(25))) is None


def test_fineweb_dup_line_chars():
  lines = [_line(i, ".") for i in range(10)]  # equal lengths
  assert rules.fineweb_quality("\n".join(lines + [lines[0]])) is None                    # 1/11 < 0.1
  assert rules.fineweb_quality("\n".join(lines[:9] + [lines[0]])) == "fineweb_dup_line_chars"  # 1/10


def test_fineweb_short_lines():
  def doc(n_short):
    return "\n".join([f"short {i}." for i in range(n_short)] + [_line(i, ".") for i in range(100 - n_short)])
  assert rules.fineweb_quality(doc(66)) is None
  assert rules.fineweb_quality(doc(67)) == "fineweb_short_lines"  # 67/100 >= 0.67


# --- normalise and language ID -----------------------------------------------

def test_normalize():
  assert normalize.normalize_text("cafÃ©") == "café"                       # mojibake
  assert normalize.normalize_text("cafe\u0301") == "caf\u00e9"             # NFC
  assert normalize.normalize_text("a\x00b\x1b\tc\r\nd") == "ab c\nd"       # controls, CRLF
  assert normalize.normalize_text("  a   b \n\n\n\n c ") == "a b\n\nc"     # whitespace
  assert normalize.normalize_text("a  b", collapse_whitespace=False) == "a  b"


def test_normalize_whitespace_equals_line_by_line_definition():
  """The fast whitespace path (substring tests and two replaces) against the plain
  definition: every run of spacing -> " ", every line str.strip()-ed, <= 1 blank line."""
  import re
  import unicodedata
  spaces = re.compile(r"[ \t\u00a0\u2000-\u200a\u202f\u205f\u3000]+")
  controls = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")

  def reference(text, strip_control):
    text = unicodedata.normalize("NFC", normalize.repair_mojibake(text))
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    if strip_control:
      text = controls.sub("", text)
    text = "\n".join(line.strip() for line in spaces.sub(" ", text).split("\n"))
    return re.sub(r"\n{3,}", "\n\n", text).strip()

  rng = random.Random(0)
  alphabet = list("ab \n\n\t\r") + ["  ", "   ", "\u00a0", "\u2003", "\u1680", "\u2028", "\u2029",
                                       "\x0b", "\x0c", "\x1c", "\x85", "\u3000", "\u00e9", "\x00"]
  for _ in range(5000):
    text = "".join(rng.choice(alphabet) for _ in range(rng.randrange(0, 30)))
    for strip_control in (True, False):
      assert normalize.normalize_text(text, strip_control=strip_control) == reference(text, strip_control), (
          repr(text), strip_control)


def test_langid():
  en = "The committee published its annual report on the state of public libraries in the region."
  fr = "Le comité a publié son rapport annuel sur l'état des bibliothèques publiques de la région."
  assert langid.detect(en)[0] == "en" and langid.detect(en)[1] >= 0.9
  assert langid.detect(fr)[0] == "fr"
  assert langid.detect("12345 67890") == ("un", 0.0)


# ---------------------------------------------------------------------------
# The fast paths give the reference results
# ---------------------------------------------------------------------------

def _ref_top_ngram(ws, n):
  """Gopher's top n-gram character fraction, written the slow obvious way."""
  if len(ws) < n:
    return 0.0
  counts = collections.Counter(tuple(ws[i:i + n]) for i in range(len(ws) - n + 1))
  count = max(counts.values())
  if count < 2:
    return 0.0
  return max(sum(map(len, g)) for g, c in counts.items() if c == count) * count / sum(map(len, ws))


def _ref_dup_ngram(ws, n):
  if len(ws) < n:
    return 0.0
  seen, covered = set(), [False] * len(ws)
  for i in range(len(ws) - n + 1):
    g = tuple(ws[i:i + n])
    if g in seen:
      for j in range(i, i + n):
        covered[j] = True
    seen.add(g)
  return sum(len(w) for w, c in zip(ws, covered) if c) / sum(map(len, ws))


def test_numpy_ngram_rules_match_reference():
  rng = random.Random(0)
  for trial in range(300):
    vocab = [("w" * rng.randint(1, 4)) + str(k) for k in range(rng.randint(1, 30))]
    ws = [rng.choice(vocab) for _ in range(rng.randint(0, 80))]
    if trial % 3 == 0 and ws:  # planted repeats
      ws = ws + ws[:rng.randint(1, len(ws))]
    for n in range(2, 11):
      assert rules.top_ngram_char_fraction(ws, n) == pytest.approx(_ref_top_ngram(ws, n), abs=1e-12)
      assert rules.duplicate_ngram_char_fraction(ws, n) == pytest.approx(_ref_dup_ngram(ws, n), abs=1e-12)


def test_repair_mojibake_equals_ftfy():
  import ftfy
  from maxlm.curate import normalize
  lines = ["Il était une fois — “quoted” text, naïve café; 3 × 4 ≈ 12 °C … done",
           "The cafÃ© served â€œcoffeeâ€\x9d and crÃ¨me brÃ»lÃ©e for 5â‚¬.", "plain ascii line",
           "\x1b[31mred\x1b[0m text é", "tab\there\r", "Ã  la carte", "", "&amp; é", "a\u2028b", "x\x00y",
           "Ð¼Ð¾Ñ\x81ÐºÐ²Ð°", "Ã\xa0 bientôt"]
  rng = random.Random(0)
  for _ in range(300):
    text = "\n".join(rng.choice(lines) for _ in range(rng.randint(1, 10)))
    assert normalize.repair_mojibake(text) == ftfy.fix_text(text, **normalize._FTFY_OPTIONS)


def test_mojibake_hint_covers_ftfy_badness():
  """The pre-filter may skip a line only if ftfy's badness regex cannot match it."""
  import re as re_
  from ftfy import badness
  from maxlm.curate import normalize
  chars = set("ÃÂŒœ°")
  for v in badness.MOJIBAKE_CATEGORIES.values():
    for m in re_.finditer(r"(.)-(.)|(.)", v):
      chars.update(m.group(3) or "".join(map(chr, range(ord(m.group(1)), ord(m.group(2)) + 1))))
  chars = sorted(chars)
  rng = random.Random(1)
  n_bad = 0
  for _ in range(50_000):
    s = "".join(rng.choice(chars) if rng.random() < 0.3 else rng.choice("aZ .,!?-\t9")
                for _ in range(rng.randint(1, 5)))
    if badness.is_bad(s):
      n_bad += 1
      assert normalize._MOJIBAKE_HINT_RE.search(s), repr(s)
  assert n_bad > 1000
