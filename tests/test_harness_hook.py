"""In-training lm-eval (maxlm/eval/harness_hook.py) on a local task directory the test builds.

The model is test_eval_probes' exact bigram transformer, so the accuracy of a
multiple-choice task is computed independently from its log-probability table.
"""

import json
import os

import ml_collections
import numpy as np
import pytest

from maxlm.eval import harness_hook
from test_eval_probes import CharTokenizer, bigram_model, seq_logprob


def _write_tasks(root, rows):
  root.mkdir(exist_ok=True)
  with open(root / "mc.jsonl", "w") as f:
    f.write("".join(json.dumps(r) + "\n" for r in rows))
  (root / "mc.yaml").write_text(f"""task: ctxmix_tiny_mc
dataset_path: json
dataset_kwargs:
  data_files:
    test: {root / 'mc.jsonl'}
test_split: test
output_type: multiple_choice
doc_to_text: "{{{{q}}}}"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: "{{{{answer}}}}"
target_delimiter: ""
metric_list:
  - metric: acc
""")


def test_harness_hook_accuracy_matches_the_table(tmp_path):
  cfg, params, logp = bigram_model(5)
  tok = CharTokenizer()
  rng = np.random.default_rng()
  letters = "abcde"
  rows = []
  for _ in range(6):
    q = "".join(rng.choice(list(letters), 2))
    rows.append(dict(q=q, choices=list(rng.choice(list(letters), 3, replace=False)),
                     answer=int(rng.integers(3))))
  _write_tasks(tmp_path / "tasks", rows)
  hc = ml_collections.ConfigDict(dict(tasks=(str(tmp_path / "tasks"),), every=5, limit=4,
                                      num_fewshot=0, batch_size=4))
  ev = harness_hook.HarnessEvaluator(hc, model_config=cfg, tokenizer=tok, max_length=16,
                                     workdir=str(tmp_path))
  assert ev.tasks == ["ctxmix_tiny_mc"]
  metrics = ev(5, dict(params=params))
  # Independent: the choice with the highest log P(choice | BOS q) is the prediction.
  correct = []
  for r in rows[:4]:  # limit=4
    ctx = [tok.bos_id] + tok.encode(r["q"])
    scores = [seq_logprob(logp, ctx + tok.encode(c)) for c in r["choices"]]
    correct.append(int(np.argmax(scores)) == r["answer"])
  assert metrics == {"harness/ctxmix_tiny_mc/acc": pytest.approx(np.mean(correct))}
  assert os.path.getsize(tmp_path / "harness.png") > 0


def test_harness_metrics_names_and_filters():
  res = {"results": {"t": {"alias": "t", "sample_len": 4, "acc,none": 0.5, "acc_stderr,none": "N/A",
                           "exact_match,strict-match": 0.25, "bits_per_byte,none": float("nan")}}}
  assert harness_hook.harness_metrics(res) == {"harness/t/acc": 0.5,
                                               "harness/t/exact_match_strict-match": 0.25}


def test_bad_task_entries_fail_clearly(tmp_path):
  with pytest.raises(ValueError, match="does not exist"):
    harness_hook.resolve_tasks([str(tmp_path / "nope.yaml")])
  (tmp_path / "empty").mkdir()
  with pytest.raises(ValueError, match="holds no YAML file with a 'task:' name"):
    harness_hook.resolve_tasks([str(tmp_path / "empty")])
  assert harness_hook.resolve_tasks(["hellaswag"]) == (["hellaswag"], [])
