"""A fastText-style text classifier: hashed word n-gram features + logistic regression.

fastText (Joulin et al. 2017, "Bag of Tricks for Efficient Text Classification")
classifies with a linear model over hashed word and word-bigram features; it is
what CCNet, DCLM (Li et al. 2024) and FineWeb-Edu-style quality filters train on
"reference high-quality text vs random crawl". The model here is the same
family without fastText's embedding bottleneck: features are lowercased \\w+
words and word bigrams hashed (crc32, stable across processes, unlike Python's
hash) into `n_buckets`, with log(1 + count) weights, L2-normalised; the weights
are fitted by scikit-learn's LogisticRegression (in the environment through
lm-eval), multinomial when there are more than two labels (domain labels).

Applying the model needs only numpy: it is saved as one .npz (weights, bias,
labels, feature settings), so a Beam worker loads it in `setup` without sklearn.
  binary (quality):   meta[score_field] = P(positive label)
  several (domains):  meta[label_field] = the most likely label, meta[score_field] its probability
"""

from __future__ import annotations

import json
import re
import zlib

import numpy as np

from maxlm.curate.stages import DocStage, Reject

_TOKEN_RE = re.compile(r"\w+")


def features(text: str, n_buckets: int, ngrams: int = 2) -> tuple[np.ndarray, np.ndarray]:
  """(bucket indices, weights) of a text's hashed word 1..ngrams-grams, L2-normalised."""
  toks = _TOKEN_RE.findall(text.lower())
  grams = list(toks)
  for n in range(2, ngrams + 1):
    grams += [" ".join(toks[i:i + n]) for i in range(len(toks) - n + 1)]
  if not grams:
    return np.zeros(0, np.int64), np.zeros(0, np.float32)
  buckets = np.fromiter((zlib.crc32(g.encode("utf-8")) for g in grams), np.int64, len(grams)) % n_buckets
  idx, counts = np.unique(buckets, return_counts=True)
  w = np.log1p(counts).astype(np.float32)
  return idx, w / np.linalg.norm(w)


def _matrix(texts, n_buckets, ngrams):
  import scipy.sparse
  rows, cols, vals = [], [], []
  for i, t in enumerate(texts):
    idx, w = features(t, n_buckets, ngrams)
    rows.append(np.full(len(idx), i)), cols.append(idx), vals.append(w)
  return scipy.sparse.csr_matrix(
      (np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))), shape=(len(texts), n_buckets))


class Classifier:
  def __init__(self, weights: np.ndarray, bias: np.ndarray, labels, n_buckets: int, ngrams: int):
    self.weights = np.asarray(weights, np.float32)  # [n_buckets, C] (C = 1 when binary)
    self.bias = np.asarray(bias, np.float32)  # [C]
    self.labels, self.n_buckets, self.ngrams = list(labels), int(n_buckets), int(ngrams)

  @classmethod
  def train(cls, texts, labels, *, n_buckets: int = 1 << 18, ngrams: int = 2, l2: float = 1.0,
            seed: int = 0) -> "Classifier":
    from sklearn.linear_model import LogisticRegression
    classes = sorted(set(labels))
    if len(classes) < 2:
      raise ValueError(f"need at least two labels to train a classifier, got {classes}")
    x = _matrix(texts, n_buckets, ngrams)
    model = LogisticRegression(C=1.0 / l2, max_iter=1000, random_state=seed)
    model.fit(x, [classes.index(y) for y in labels])
    return cls(model.coef_.T, model.intercept_, classes, n_buckets, ngrams)

  def probabilities(self, text: str) -> np.ndarray:
    """P(label) for every label, in `self.labels` order."""
    idx, w = features(text, self.n_buckets, self.ngrams)
    z = w @ self.weights[idx] + self.bias
    if len(self.labels) == 2:  # sklearn's binary model: one logit for labels[1]
      p1 = 1.0 / (1.0 + np.exp(-z[0]))
      return np.array([1.0 - p1, p1])
    z = z - z.max()
    e = np.exp(z)
    return e / e.sum()

  def predict(self, text: str) -> tuple[str, float]:
    p = self.probabilities(text)
    k = int(np.argmax(p))
    return self.labels[k], float(p[k])

  def save(self, path: str) -> None:
    with open(path, "wb") as f:
      np.savez_compressed(f, weights=self.weights, bias=self.bias,
                          meta=np.frombuffer(json.dumps({"labels": self.labels, "n_buckets": self.n_buckets,
                                                         "ngrams": self.ngrams}).encode(), np.uint8))

  @classmethod
  def load(cls, path: str) -> "Classifier":
    import io

    from apache_beam.io.filesystems import FileSystems
    with FileSystems.open(path) as f:
      z = np.load(io.BytesIO(f.read()))
    meta = json.loads(z["meta"].tobytes().decode())
    return cls(z["weights"], z["bias"], meta["labels"], meta["n_buckets"], meta["ngrams"])


def ClassifierScore(*, model="", positive_label="", score_field="quality_score", label_field="",
                    min_score=0.0, enabled=True) -> DocStage:
  """Scores documents with a saved Classifier; removes those under `min_score` (rule
  "classifier_score"). Binary model: the score is P(positive_label) (default: the
  second label in sorted order, "positive" against "negative"). Several labels:
  meta[label_field] gets the top label and the score is its probability."""
  del enabled
  if not model:
    raise ValueError("classifier.model is empty: train one with python -m maxlm.curate train-classifier")

  def make():
    clf = Classifier.load(model)
    pos = clf.labels.index(positive_label) if positive_label else len(clf.labels) - 1

    def fn(doc):
      p = clf.probabilities(doc["text"])
      meta = dict(doc["meta"])
      if len(clf.labels) == 2 and not label_field:
        score = float(p[pos])
      else:
        k = int(np.argmax(p))
        meta[label_field or "label"] = clf.labels[k]
        score = float(p[k])
      meta[score_field] = round(score, 6)
      if score < min_score:
        return Reject("classifier_score", round(score, 4))
      return dict(doc, meta=meta)
    return fn
  return DocStage("classifier", make)


def read_labelled(patterns: dict[str, list[str]], text_field: str = "text", max_docs: int = 0):
  """{label: [glob, ...]} -> (texts, labels), through the curate readers (JSONL, Parquet, text, WARC)."""
  from maxlm.curate import read
  texts, labels = [], []
  for label, globs in sorted(patterns.items()):
    n = 0
    for path, source in read.match_inputs(globs):
      for kind, rec in read.read_file(path, source, text_field=text_field):
        if kind == "doc" and (not max_docs or n < max_docs):
          texts.append(rec["text"]), labels.append(label)
          n += 1
  return texts, labels

