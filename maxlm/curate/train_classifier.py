"""Train the fastText-style classifier (maxlm.curate.classifier) on labelled local text.

  python -m maxlm.curate train-classifier --positive='ref/*.jsonl' --negative='raw/*.jsonl.zst' \
      --output=quality.npz
  python -m maxlm.curate.train_classifier --label=code='code/*.jsonl' --label=prose='books/*.txt' \
      --label=web='crawl/*.warc.gz' --output=domain.npz

Quality: reference high-quality text (--positive) against random raw text
(--negative); labels "positive" / "negative". Domains: one --label=NAME=GLOB[,GLOB]
per domain. Files are read with the curate readers (JSONL, Parquet, text, HTML,
WARC). A held-out share (hash of the text, deterministic) measures accuracy,
printed and saved next to the model as <output>.json.
"""

from __future__ import annotations

import json
import sys
import zlib

from absl import flags

from maxlm.curate import classifier

_POS = flags.DEFINE_string("positive", None, "comma-separated globs of high-quality text")
_NEG = flags.DEFINE_string("negative", None, "comma-separated globs of random raw text")
_LABEL = flags.DEFINE_multi_string("label", [], "NAME=GLOB[,GLOB]: documents of one label")
_OUTPUT = flags.DEFINE_string("output", None, "where to write the model (.npz)")
_TEXT_FIELD = flags.DEFINE_string("text_field", "text", "JSONL key / Parquet column of the text")
_BUCKETS = flags.DEFINE_integer("n_buckets", 1 << 18, "hashed feature buckets")
_NGRAMS = flags.DEFINE_integer("ngrams", 2, "word n-grams 1..N")
_L2 = flags.DEFINE_float("l2", 1.0, "L2 penalty (sklearn C = 1 / l2)")
_MAX_DOCS = flags.DEFINE_integer("max_docs", 0, "documents per label (0 = all)")
_HELDOUT = flags.DEFINE_float("heldout_fraction", 0.1, "share of documents held out for accuracy")


def train(patterns: dict, output: str, *, text_field="text", n_buckets=1 << 18, ngrams=2, l2=1.0,
          max_docs=0, heldout_fraction=0.1) -> dict:
  texts, labels = classifier.read_labelled(patterns, text_field, max_docs)
  # Held out by a hash of the text: stable across runs and machines.
  held = [zlib.crc32(t.encode("utf-8")) % 10_000 < heldout_fraction * 10_000 for t in texts]
  train_x = [t for t, h in zip(texts, held) if not h]
  train_y = [y for y, h in zip(labels, held) if not h]
  clf = classifier.Classifier.train(train_x, train_y, n_buckets=n_buckets, ngrams=ngrams, l2=l2)
  clf.save(output)
  test = [(t, y) for t, y, h in zip(texts, labels, held) if h]
  acc = sum(clf.predict(t)[0] == y for t, y in test) / len(test) if test else float("nan")
  stats = {"labels": clf.labels, "train_docs": len(train_x), "heldout_docs": len(test),
           "heldout_accuracy": acc, "docs_per_label": {k: labels.count(k) for k in clf.labels}}
  with open(output + ".json", "w", encoding="utf-8") as f:
    json.dump(stats, f, indent=1)
  return stats


def main(argv):
  del argv
  patterns = {}
  if _POS.value or _NEG.value:
    if not (_POS.value and _NEG.value):
      sys.exit("train-classifier: give both --positive and --negative")
    patterns = {"positive": _POS.value.split(","), "negative": _NEG.value.split(",")}
  for spec in _LABEL.value:
    name, _, globs = spec.partition("=")
    if not name or not globs:
      sys.exit(f"train-classifier: --label={spec!r} is not NAME=GLOB[,GLOB]")
    patterns[name] = globs.split(",")
  if len(patterns) < 2 or not _OUTPUT.value:
    sys.exit("usage: python -m maxlm.curate train-classifier (--positive=GLOB --negative=GLOB | "
             "--label=NAME=GLOB ...) --output=model.npz")
  stats = train(patterns, _OUTPUT.value, text_field=_TEXT_FIELD.value, n_buckets=_BUCKETS.value,
                ngrams=_NGRAMS.value, l2=_L2.value, max_docs=_MAX_DOCS.value,
                heldout_fraction=_HELDOUT.value)
  print(json.dumps(stats, indent=1))


if __name__ == "__main__":
  from maxlm import cli  # pylint: disable=g-import-not-at-top
  cli.run(main)  # one-line input errors, quiet library logs
