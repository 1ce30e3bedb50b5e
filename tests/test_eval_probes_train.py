"""In-training probes: a tiny run with `config.eval.probes` logs probe/* to metrics.jsonl."""
import json
import math
import os

from conftest import tiny_test_config
from maxlm.eval import probes as probes_lib
from maxlm.generate import load_model
from maxlm.monitor import read_jsonl
from maxlm.train.driver import train

PROBES = [dict(id="cat", type="completion", prompt="The cat sat on the", target=" mat"),
          dict(id="order", type="contrastive", texts=["the end of the day", "day the of end the"])]


def test_tiny_run_logs_probes(tmp_path, tokenizer_path):
  probe_file = tmp_path / "probes.jsonl"
  probe_file.write_text("".join(json.dumps(p) + "\n" for p in PROBES))
  workdir = str(tmp_path / "run")
  cfg = tiny_test_config(**{"data.tokenizer.path": tokenizer_path, "train.steps": 8,
                            "eval.probes": str(probe_file), "eval.probe_every": 4})
  train(cfg, workdir)
  rows = [r for r in read_jsonl(os.path.join(workdir, "metrics.jsonl"))
          if any(k.startswith("probe/") for k in r)]
  assert [r["step"] for r in rows] == [4, 8]  # probe_every, then the end
  keys = {"probe/cat/logp", "probe/cat/mean_logp", "probe/order/margin", "probe/order/pass",
          "probe/pass_frac"}
  for r in rows:
    assert keys <= set(r), r
    assert r["probe/cat/logp"] < 0 and math.isfinite(r["probe/order/margin"])
    assert r["probe/order/pass"] in (0.0, 1.0)
  # The logged values are the final checkpoint's, scored outside the driver.
  cfg_m, params, _ = load_model(workdir)
  want = probes_lib.probe_metrics(cfg_m, params, tokenizer_path,
                                  probes_lib.load_probes(str(probe_file)))
  for k, v in want.items():
    assert math.isclose(rows[-1][k], v, rel_tol=1e-4, abs_tol=1e-4), k
