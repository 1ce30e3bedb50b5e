"""Documents, rejects, and the per-document stages (normalise, language ID, quality rules).

A document is a plain dict {"id", "text", "source", "meta"}; `meta` gathers what
stages learn about it (language, scores, lines dropped). A stage that removes a
document emits a reject instead: the document plus "stage" and "rule" (and an
optional "detail"), so every removal can be traced to the rule that made it.

`DocStage` is the one Beam PTransform behind every per-document stage: it maps a
PCollection of documents to {"docs": kept, "rejects": removed, "notes": kept
documents a stage wants listed (e.g. masked contamination)}. The functions it
wraps are plain Python, so the benchmark runs the same code outside Beam.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import apache_beam as beam

from maxlm.curate import langid, normalize, rules


@dataclasses.dataclass
class Reject:
  rule: str
  detail: Any = None


@dataclasses.dataclass
class Note:
  """Keep `doc`, and list it in the stage's notes output with `detail`."""
  doc: dict
  kind: str
  detail: Any = None


def make_reject(doc: dict, stage: str, rule: str, detail: Any = None) -> dict:
  out = dict(doc, stage=stage, rule=rule)
  if detail is not None:
    out["detail"] = detail
  return out


def rank_key(doc: dict, score_field: str = "quality_score") -> tuple[float, str]:
  """Order in which duplicates are kept: highest score first, then smallest id."""
  # 0.0 - x, not -x: -0.0 and 0.0 encode differently and Beam groups by encoded bytes.
  return (0.0 - float(doc["meta"].get(score_field, 0.0)), doc["id"])


class _StageFn(beam.DoFn):
  """Runs `make_fn()` once per worker (setup), then the returned function per document."""

  def __init__(self, stage: str, make_fn: Callable[[], Callable[[dict], Any]], notes: bool = False):
    self._stage, self._make_fn, self._notes = stage, make_fn, notes

  def setup(self):
    self._fn = self._make_fn()

  def process(self, doc):
    try:
      out = self._fn(doc)
    except Exception as e:  # a bad document must not stop the run; it is counted instead.
      out = Reject(f"error:{type(e).__name__}", str(e)[:200])
    if isinstance(out, Reject):
      yield beam.pvalue.TaggedOutput("rejects", make_reject(doc, self._stage, out.rule, out.detail))
    elif isinstance(out, Note):
      if not self._notes:
        raise ValueError(f"stage {self._stage} returned a Note but was built without DocStage(notes=True)")
      yield out.doc
      yield beam.pvalue.TaggedOutput(
          "notes", {"id": doc["id"], "stage": self._stage, "kind": out.kind, "detail": out.detail})
    else:
      yield out


class DocStage(beam.PTransform):
  """A per-document stage: `make_fn()` builds `fn(doc) -> doc | Reject | Note` on each worker.

  notes: the stage can return Notes, and its output has "notes" (the pipeline then writes
  notes/); stages without add no writer (each output costs the runner a few stages).
  """

  def __init__(self, stage: str, make_fn: Callable[[], Callable[[dict], Any]], notes: bool = False):
    super().__init__(label=stage)
    self.stage, self._make_fn, self._notes = stage, make_fn, notes

  def expand(self, docs):
    tags = ("rejects", "notes") if self._notes else ("rejects",)
    out = docs | beam.ParDo(_StageFn(self.stage, self._make_fn, self._notes)).with_outputs(
        *tags, main="docs")
    result = {"docs": out.docs, "rejects": out.rejects}
    if self._notes:
      result["notes"] = out.notes
    return result


# ---------------------------------------------------------------------------
# The stages. Each takes its own sub-config as keyword arguments.
# ---------------------------------------------------------------------------

def Normalize(*, fix_mojibake=True, nfc=True, strip_control=True, collapse_whitespace=True,
              enabled=True) -> DocStage:
  del enabled
  opts = dict(fix_mojibake=fix_mojibake, nfc=nfc, strip_control=strip_control,
              collapse_whitespace=collapse_whitespace)

  def make():
    def fn(doc):
      text = normalize.normalize_text(doc["text"], **opts)
      if not text:
        return Reject("empty_after_normalize")
      return dict(doc, text=text)
    return fn
  return DocStage("normalize", make)


def LanguageId(*, languages=("en",), threshold=0.65, enabled=True) -> DocStage:
  """Labels meta.lang / meta.lang_score; keeps `languages` (all if empty) at >= threshold."""
  del enabled
  keep = frozenset(languages)

  def make():
    def fn(doc):
      lang, score = langid.detect(doc["text"])
      doc = dict(doc, meta=dict(doc["meta"], lang=lang, lang_score=score))
      if keep and lang not in keep:
        return Reject("lang_not_kept", lang)
      if score < threshold:
        return Reject("lang_low_confidence", round(score, 3))
      return doc
    return fn
  return DocStage("langid", make)


def _rule_stage(stage: str, rule_fn, kwargs: dict) -> DocStage:
  def make():
    def fn(doc):
      rule = rule_fn(doc["text"], doc["meta"].get("lang", ""), **kwargs)
      return Reject(rule) if rule else doc
    return fn
  return DocStage(stage, make)


def GopherQuality(enabled=True, **kwargs) -> DocStage:
  del enabled
  return _rule_stage("gopher_quality", rules.gopher_quality, kwargs)


def GopherRepetition(enabled=True, **kwargs) -> DocStage:
  del enabled
  return _rule_stage("gopher_repetition", rules.gopher_repetition, kwargs)


def FineWebQuality(enabled=True, **kwargs) -> DocStage:
  del enabled
  return _rule_stage("fineweb", lambda text, lang, **kw: rules.fineweb_quality(text, **kw), kwargs)


def C4Lines(enabled=True, **kwargs) -> DocStage:
  del enabled

  def make():
    def fn(doc):
      cleaned, rule = rules.c4_clean(doc["text"], **kwargs)
      if rule:
        return Reject(rule)
      dropped = len(rules.lines(doc["text"])) - len(cleaned.split("\n"))
      return dict(doc, text=cleaned, meta=dict(doc["meta"], c4_lines_dropped=dropped))
    return fn
  return DocStage("c4", make)
