"""lm-eval requests split across hosts (issue 16.2): two processes give one process's numbers.

Two CPU processes joined by jax.distributed on localhost hold a random tiny
model with its params sharded over both (fsdp=2, one device each), and run the
in-training harness evaluator (maxlm/eval/harness_hook.py) on a local
multiple-choice task and a rolling-perplexity task. The reference is one
process with the same params, whole, and twice the per-process batch (so the
global batches are the same rows). Each process must report the full metrics
and every per-request log-likelihood equal to the reference's, while its
devices ran only its share of the requests: the counts are checked against
the split computed here from the number of requests alone.
"""
import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HERE = os.path.dirname(os.path.abspath(__file__))
N_MC, N_ROLL, PER_HOST_BATCH = 11, 5, 4


def _write_tasks(root, seed):
  rng = np.random.default_rng(seed)
  letters = list("abcde .")
  mc = [dict(q="".join(rng.choice(letters, int(rng.integers(1, 9)))),
             choices=["".join(rng.choice(letters, int(rng.integers(1, 5)))) for _ in range(3)],
             answer=int(rng.integers(3))) for _ in range(N_MC)]
  roll = [dict(text="".join(rng.choice(letters, int(rng.integers(3, 40))))) for _ in range(N_ROLL)]
  os.makedirs(root, exist_ok=True)
  for name, rows in (("mc", mc), ("roll", roll)):
    with open(os.path.join(root, f"{name}.jsonl"), "w") as f:
      f.write("".join(json.dumps(r) + "\n" for r in rows))
  common = "dataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {}\ntest_split: test\n"
  with open(os.path.join(root, "mc.yaml"), "w") as f:
    f.write("task: hosts_mc\n" + common.format(os.path.join(root, "mc.jsonl")) +
            'output_type: multiple_choice\ndoc_to_text: "{{q}}"\ndoc_to_choice: "{{choices}}"\n'
            'doc_to_target: "{{answer}}"\ntarget_delimiter: ""\nmetric_list:\n  - metric: acc\n'
            "  - metric: acc_norm\n")
  with open(os.path.join(root, "roll.yaml"), "w") as f:
    f.write("task: hosts_roll\n" + common.format(os.path.join(root, "roll.jsonl")) +
            'output_type: loglikelihood_rolling\ndoc_to_text: ""\ndoc_to_target: "{{text}}"\n'
            "metric_list:\n  - metric: word_perplexity\n  - metric: bits_per_byte\n")
  return mc, roll


def _worker(out_path, task_dir, process_id, num_processes, port, batch_size):
  """One process: the harness evaluator on sharded params; writes what it saw as JSON."""
  import jax
  if num_processes > 1:
    jax.distributed.initialize(f"localhost:{port}", num_processes=num_processes,
                               process_id=process_id)
  import flax.linen as nn
  import ml_collections
  sys.path.insert(0, HERE)
  sys.path.insert(0, ROOT)
  from configs.pretrain import RULES
  from test_eval_probes import CharTokenizer
  from maxlm.eval import harness_hook, lm_eval_model
  from maxlm.model import ModelConfig, init_params
  from maxlm.sharding import logical_shardings, make_mesh

  tok = CharTokenizer()
  cfg = ModelConfig(vocab_size=tok.vocab_size, d_model=32, n_layers=2, n_heads=2, n_kv_heads=1,
                    head_dim=16, d_ff=64)
  mesh = make_mesh(data=1, fsdp=-1)  # weights split over every process's devices
  boxed = jax.eval_shape(lambda r: init_params(cfg, r, boxed=True), jax.random.PRNGKey(0))
  shardings = logical_shardings(nn.get_partition_spec(boxed), mesh, RULES)
  params = jax.jit(lambda r: init_params(cfg, r), out_shardings=shardings)(jax.random.PRNGKey(7))
  spans = [not x.is_fully_addressable for x in jax.tree.leaves(params)]
  assert any(spans) == (num_processes > 1), spans

  seen = []
  orig_ll, orig_roll = lm_eval_model.MaxlmLM.loglikelihood, lm_eval_model.MaxlmLM.loglikelihood_rolling

  def ll(self, requests):
    out = orig_ll(self, requests)
    seen.extend(["ll", list(r.args), o[0], o[1]] for r, o in zip(requests, out))
    return out

  def roll(self, requests):
    out = orig_roll(self, requests)
    seen.extend(["roll", list(r.args), o, None] for r, o in zip(requests, out))
    return out

  lm_eval_model.MaxlmLM.loglikelihood, lm_eval_model.MaxlmLM.loglikelihood_rolling = ll, roll
  hc = ml_collections.ConfigDict(dict(tasks=(task_dir,), every=1, limit=0, num_fewshot=0,
                                      batch_size=batch_size))
  ev = harness_hook.HarnessEvaluator(hc, model_config=cfg, tokenizer=tok, max_length=16,
                                     plot=False)
  with jax.set_mesh(mesh):
    metrics = ev(1, dict(params=params))
  with open(out_path, "w") as f:
    json.dump(dict(metrics=metrics, requests=seen, stats=ev.last_stats,
                   process_count=jax.process_count()), f)


def _free_port():
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def _launch(out, task_dir, pid, n, port, batch):
  env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=1")
  return subprocess.Popen([sys.executable, __file__, out, task_dir, str(pid), str(n), str(port),
                           str(batch)], cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                          stderr=subprocess.PIPE, text=True)


def _wait(procs):
  for p in procs:
    _, err = p.communicate(timeout=1800)  # a hang guard, not a time limit
    assert p.returncode == 0, err[-3000:]


def _share(n_rows, per_host, hosts, me):
  """Rows process `me` runs: global batches of per_host x hosts, contiguous slices each."""
  got = 0
  for start in range(0, n_rows, per_host * hosts):
    n = min(per_host * hosts, n_rows - start)
    got += min(per_host, max(0, n - me * per_host))
  return got


@pytest.mark.slow
def test_two_processes_split_the_requests_and_agree_with_one(tmp_path):
  task_dir = str(tmp_path / "tasks")
  mc, roll = _write_tasks(task_dir, seed=int(np.random.default_rng().integers(1 << 30)))
  port = _free_port()
  procs = [_launch(str(tmp_path / f"p{p}.json"), task_dir, p, 2, port, PER_HOST_BATCH)
           for p in range(2)]
  procs.append(_launch(str(tmp_path / "ref.json"), task_dir, 0, 1, 0, 2 * PER_HOST_BATCH))
  _wait(procs)
  ref = json.load(open(tmp_path / "ref.json"))
  hosts = [json.load(open(tmp_path / f"p{p}.json")) for p in range(2)]
  assert ref["process_count"] == 1 and all(h["process_count"] == 2 for h in hosts)

  n_ll = sum(len(r["choices"]) for r in mc)
  assert sum(1 for r in ref["requests"] if r[0] == "ll") == n_ll
  assert sum(1 for r in ref["requests"] if r[0] == "roll") == N_ROLL
  assert set(ref["metrics"]) == {"harness/hosts_mc/acc", "harness/hosts_mc/acc_norm",
                                 "harness/hosts_roll/word_perplexity",
                                 "harness/hosts_roll/bits_per_byte"}
  for h in hosts:
    # Every process gets the whole result list, in lm-eval's order, with the reference's values.
    assert [r[:2] for r in h["requests"]] == [r[:2] for r in ref["requests"]]
    got = np.array([r[2] for r in h["requests"]])
    want = np.array([r[2] for r in ref["requests"]])
    np.testing.assert_allclose(got, want, rtol=1e-6)
    assert [r[3] for r in h["requests"]] == [r[3] for r in ref["requests"]]
    assert set(h["metrics"]) == set(ref["metrics"])
    for k, v in ref["metrics"].items():
      assert h["metrics"][k] == pytest.approx(v, rel=1e-6), k

  # The split: each scoring call (loglikelihood, then rolling windows) is cut alone.
  n_windows = ref["stats"]["rows"] - n_ll  # one process ran every row
  assert n_windows >= N_ROLL  # texts up to 40 chars in windows of 16 tokens
  for p, h in enumerate(hosts):
    want = (_share(n_ll, PER_HOST_BATCH, 2, p) + _share(n_windows, PER_HOST_BATCH, 2, p))
    assert h["stats"]["rows"] == want, (p, h["stats"])
    assert h["stats"]["calls"] == ref["stats"]["calls"]  # both processes enter every call
  assert sum(h["stats"]["rows"] for h in hosts) == n_ll + n_windows
  assert all(h["stats"]["rows"] < n_ll + n_windows for h in hosts)


if __name__ == "__main__":
  _worker(sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]),
          int(sys.argv[6]))
