"""Needle in a haystack harness: golden needle positions, and a perfect score for
a synthetic model that copies its input (an ideal induction head)."""
import json
import os

import numpy as np
import pytest

from maxlm.eval import needle

V = 64
FILLER = list(range(10, 40))  # never contains the key or answer tokens
KEY = [5, 6, 7]  # "the secret number is"


def _needle_fn(answer):
  digits = [50 + int(c) for c in str(answer)]  # answer tokens 50..59
  return KEY + digits + [8], digits


def copy_model(tokens_bt):
  """Predicts, at every position, the token that followed the latest earlier
  occurrence of the current 3-token suffix (uniform when there is none)."""
  B, T = tokens_bt.shape
  logits = np.zeros((B, T, V), np.float32)
  for b in range(B):
    seq = list(tokens_bt[b])
    for t in range(2, T):
      suffix = seq[t - 2:t + 1]
      for j in range(t - 1, 1, -1):
        if seq[j - 2:j + 1] == suffix:
          logits[b, t, seq[j + 1]] = 10.0
          break
  return logits


@pytest.mark.parametrize("depth,golden", [(0.0, 1), (0.25, 1 + 12), (0.5, 1 + 24),
                                          (0.75, 1 + 36), (1.0, 1 + 48)])
def test_needle_lands_at_the_requested_depth(depth, golden):
  # 60 tokens = 1 prefix + 48 filler + 8 needle + 3 question.
  needle_ids, _ = _needle_fn(1234)
  prompt, at = needle.make_prompt(FILLER, needle_ids, KEY, 60, depth, prefix_ids=[1])
  assert len(prompt) == 60 and at == golden
  assert list(prompt[at:at + len(needle_ids)]) == needle_ids
  assert list(prompt[-3:]) == KEY and prompt[0] == 1
  filler = [t for i, t in enumerate(prompt[1:-3], 1) if not at <= i < at + len(needle_ids)]
  assert filler == (FILLER * 2)[:48]


def test_copy_model_scores_perfectly_and_heatmap_is_written(tmp_path):
  results = needle.evaluate(copy_model, filler_ids=FILLER, needle_fn=_needle_fn,
                            question_ids=KEY, lengths=[32, 64, 96],
                            depths=[0.0, 0.3, 0.6, 1.0], prefix_ids=[1])
  assert len(results) == 12
  assert all(r["greedy_correct"] and r["teacher_forced_correct"] for r in results)
  assert all(r["answer_loglik"] > -0.05 for r in results)  # log p ~ 0 (logit 10 of 64)
  png = needle.heatmap(results, str(tmp_path / "heatmap.png"))
  assert os.path.getsize(png) > 0
  json.dumps(results)  # JSON-serialisable as written by run()


def test_a_model_that_cannot_copy_scores_zero():
  rng = np.random.default_rng(0)
  noise = lambda toks: rng.normal(size=(*toks.shape, V)).astype(np.float32)
  results = needle.evaluate(noise, filler_ids=FILLER, needle_fn=_needle_fn, question_ids=KEY,
                            lengths=[32], depths=[0.0, 1.0])
  assert not any(r["greedy_correct"] for r in results)
