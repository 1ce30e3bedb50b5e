"""Model-based scoring: the mean token log-probability of each document under a maxlm model.

The practice of scoring a corpus with a small model trained on reference text
and dropping what it finds least likely goes back to CCNet (Wenzek et al. 2020,
KenLM perplexity against Wikipedia) and is used with early checkpoints of the
model itself to clean the rest of its corpus. Here the scorer is any maxlm
workdir with a params export:

  <workdir>/params/                  maxlm.checkpoint.export_params output
  <workdir>/config.json              the run's config; its "model" entry -> maxlm.ModelConfig
  <workdir>/tokenizer/tokenizer.model   (else config.json's data.tokenizer.path)

Each document is tokenized, prefixed with <s> when the run trained with it,
cut to `seq_len` tokens (the head of the document: the score estimates the
whole from its start), and scored by `maxlm.forward`; score = mean over
predicted tokens of log p(token | prefix) in nats, perplexity = exp(-score).
Documents are scored in fixed-shape batches ([batch_size, seq_len], right
padded), so XLA compiles one program per worker; padding sits after every real
token and attention is causal, so it changes no real token's log-probability.

In Beam, `ModelScore` batches documents with `BatchElements` and loads the
model once per worker process in `DoFn.setup` (shared by the DoFn instances of
that process through a module-level cache).
"""

from __future__ import annotations

import json
import math
import os
import threading

import apache_beam as beam
import numpy as np

from maxlm.curate.stages import make_reject

_CACHE, _CACHE_LOCK = {}, threading.Lock()


def _read_run_config(workdir: str) -> dict:
  with open(os.path.join(workdir, "config.json"), encoding="utf-8") as f:
    return json.load(f)


def tokenizer_path(workdir: str, run_config: dict | None = None) -> str:
  path = os.path.join(workdir, "tokenizer", "tokenizer.model")
  if os.path.isfile(path):
    return path
  run_config = run_config or _read_run_config(workdir)
  path = (run_config.get("data", {}).get("tokenizer", {}) or {}).get("path") or ""
  if not os.path.exists(path):  # a .model, a tokenizer.json or an HF dir
    raise FileNotFoundError(f"model_score: no tokenizer in {workdir}/tokenizer/ and "
                            f"config.json's data.tokenizer.path={path!r} does not exist")
  return path


class Scorer:
  """A maxlm model and its tokenizer; `score(texts)` -> [(mean log-prob, n tokens scored)]."""

  def __init__(self, workdir: str, *, seq_len: int = 512, batch_size: int = 16, tokenizer: str = ""):
    import jax
    import jax.numpy as jnp
    import maxlm
    from maxlm import checkpoint
    from maxlm.data import tokenizer as tokenizer_lib

    run_config = _read_run_config(workdir)
    self.model_config = maxlm.ModelConfig(**run_config["model"])
    self.params = checkpoint.load_params(os.path.join(workdir, "params"))
    self.tok = tokenizer_lib.load(tokenizer or tokenizer_path(workdir, run_config))
    # BOS as training framed documents: the tokenizer's own id, when it has one.
    self.bos_id = self.tok.bos_id
    self.add_bos = bool(run_config.get("data", {}).get("add_bos", True)) and self.bos_id is not None
    self.seq_len, self.batch_size = seq_len, batch_size
    cfg = self.model_config

    @jax.jit
    def token_logprobs(params, tokens_bt):
      # log p(tokens[:, t+1] | tokens[:, :t+1]) for t < T-1: [B, T-1]
      logits_btv = maxlm.forward(cfg, params, tokens_bt)
      logp_btv = jax.nn.log_softmax(logits_btv[:, :-1].astype(jnp.float32), axis=-1)
      return jnp.take_along_axis(logp_btv, tokens_bt[:, 1:, None], axis=-1)[..., 0]

    self._token_logprobs = token_logprobs

  def encode(self, text: str) -> list[int]:
    ids = ([self.bos_id] if self.add_bos else []) + self.tok.encode(text)
    return ids[:self.seq_len]

  def score(self, texts) -> list[tuple[float, int]]:
    out = []
    for start in range(0, len(texts), self.batch_size):
      chunk = [self.encode(t) for t in texts[start:start + self.batch_size]]
      tokens = np.zeros((self.batch_size, self.seq_len), np.int32)  # fixed shape: one compile
      mask = np.zeros((self.batch_size, self.seq_len - 1), np.float32)
      for i, ids in enumerate(chunk):
        tokens[i, :len(ids)] = ids
        mask[i, :len(ids) - 1] = 1.0  # positions that predict a real token
      logp = np.asarray(self._token_logprobs(self.params, tokens))
      for i in range(len(chunk)):
        n = int(mask[i].sum())
        out.append((float((logp[i] * mask[i]).sum() / n) if n else float("nan"), n))
    return out


def get_scorer(workdir: str, **kwargs) -> Scorer:
  """One Scorer per (process, workdir, options): the model is loaded once per worker."""
  key = (os.path.abspath(workdir), tuple(sorted(kwargs.items())))
  with _CACHE_LOCK:
    if key not in _CACHE:
      _CACHE[key] = Scorer(workdir, **kwargs)
    return _CACHE[key]


class _ScoreBatchFn(beam.DoFn):
  def __init__(self, workdir, scorer_kwargs, score_field, max_perplexity, min_tokens):
    self._workdir, self._kwargs = workdir, scorer_kwargs
    self._field, self._max_ppl, self._min_tokens = score_field, max_perplexity, min_tokens

  def setup(self):
    self._scorer = get_scorer(self._workdir, **self._kwargs)

  def process(self, docs):
    for doc, (logp, n) in zip(docs, self._scorer.score([d["text"] for d in docs])):
      ppl = math.exp(-logp) if n else float("inf")
      doc = dict(doc, meta=dict(doc["meta"], **{self._field: round(logp, 6),
                                                 "model_ppl": round(ppl, 4), "model_tokens": n}))
      if n < self._min_tokens:
        yield beam.pvalue.TaggedOutput("rejects", make_reject(doc, "model_score", "model_too_short", n))
      elif self._max_ppl and ppl > self._max_ppl:
        yield beam.pvalue.TaggedOutput(
            "rejects", make_reject(doc, "model_score", "model_perplexity", round(ppl, 2)))
      else:
        yield doc


class ModelScore(beam.PTransform):
  """Scores every document with a maxlm model: {"docs", "rejects"}.

  meta[score_field] = mean token log-prob (nats), meta.model_ppl = its perplexity;
  documents above `max_perplexity` (0 = keep all) are removed by rule
  "model_perplexity".
  """

  def __init__(self, *, workdir="", tokenizer="", seq_len=512, batch_size=16, max_perplexity=0.0,
               min_tokens=1, score_field="model_logprob", enabled=True):
    super().__init__(label="model_score")
    if not workdir:
      raise ValueError("model_score.workdir is empty: give a maxlm workdir with params/ and config.json")
    for name in ("config.json", "params"):
      if not os.path.exists(os.path.join(workdir, name)):
        raise FileNotFoundError(f"model_score.workdir={workdir!r} has no {name}")
    self._args = (workdir, dict(seq_len=seq_len, batch_size=batch_size, tokenizer=tokenizer),
                  score_field, max_perplexity, min_tokens)
    self._batch_size = batch_size

  def expand(self, docs):
    out = (docs
           | "batch" >> beam.BatchElements(min_batch_size=self._batch_size,
                                           max_batch_size=self._batch_size)
           | "score" >> beam.ParDo(_ScoreBatchFn(*self._args)).with_outputs("rejects", main="docs"))
    return {"docs": out.docs, "rejects": out.rejects}
