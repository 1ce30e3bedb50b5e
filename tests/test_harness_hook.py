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


def test_harness_hook_accuracy_matches_the_table(tmp_path, capsys):
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
                                     workdir=str(tmp_path), progress=True)
  assert ev.tasks == ["ctxmix_tiny_mc"]
  metrics = ev(5, dict(params=params))
  # Progress on stderr: the last line counts every request (limit=4 documents x 3 choices).
  last = [l for l in capsys.readouterr().err.splitlines() if l.startswith("harness loglikelihood")][-1]
  assert last.startswith("harness loglikelihood [12/12] requests;") and last.endswith("done")
  assert ev.last_stats["rows"] == 12
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


@pytest.mark.slow
def test_training_run_logs_harness_and_mtp_next_to_the_trunk_loss(tmp_path, tokenizer_path):
  """One tiny run with both options on: config.eval.harness every 4 steps on the live params,
  and model.mtp_depth=1. metrics.jsonl carries the trunk's `loss`, the MTP term `mtp` and
  `harness/<task>/acc` (a fraction of the `limit` documents), and harness.png is drawn."""
  from conftest import tiny_test_config
  from maxlm.monitor import read_jsonl
  from maxlm.run.pretrain import train
  rng = np.random.default_rng()
  rows = [dict(q=" the", choices=["king", "queen", "lord"], answer=int(rng.integers(3)))
          for _ in range(4)]
  _write_tasks(tmp_path / "tasks", rows)
  cfg = tiny_test_config(**{
      "data.tokenizer.path": tokenizer_path, "train.steps": 8, "model.mtp_depth": 1,
      "eval.harness.tasks": (str(tmp_path / "tasks"),), "eval.harness.every": 4,
      "eval.harness.limit": 4, "eval.harness.batch_size": 4})
  summary = train(cfg, str(tmp_path / "run"))
  assert summary["step"] == 8
  lines = read_jsonl(str(tmp_path / "run" / "metrics.jsonl"))
  steps = [r for r in lines if "loss" in r]
  assert steps and all(np.isfinite(r["loss"]) and r["mtp"] > 0 for r in steps)
  # MTP predicts a token further ahead than the trunk: its loss is not the trunk's.
  assert all(r["mtp"] != r["loss"] for r in steps)
  harness = [r for r in lines if "harness/ctxmix_tiny_mc/acc" in r]
  assert [r["step"] for r in harness] == [4, 8]
  assert all(r["harness/ctxmix_tiny_mc/acc"] in (0.0, 0.25, 0.5, 0.75, 1.0) for r in harness)
  assert os.path.getsize(tmp_path / "run" / "harness.png") > 0
