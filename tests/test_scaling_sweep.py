"""Sweeps: shapes from N, isoFLOP points with exact FLOP accounting, names,
manifest, running points with a fake trainer, skipping finished ones, and
collecting workdirs into the results CSV."""

import csv
import json
import math
import os
import shlex
import sys

import pytest

from maxlm.model import ModelConfig, flops_per_token
from maxlm.scaling import cli, runs, sweep

CONFIG = os.path.join(os.path.dirname(__file__), "..", "configs", "scaling_sweep.py")

# A stand-in for `python -m maxlm.train`: writes the files the real driver
# writes at the end of a run, with a loss that falls with steps and d_model.
FAKE_TRAIN = r'''
import json, os, sys
args = dict(a[2:].split("=", 1) for a in sys.argv[1:] if a.startswith("--"))
wd = args["workdir"]
os.makedirs(wd, exist_ok=True)
steps, batch, seq = int(args["config.train.steps"]), int(args["config.train.global_batch"]), int(args["config.data.seq_len"])
loss = 2.0 + 50.0 / int(args["config.model.d_model"]) + 20.0 / steps
with open(os.path.join(wd, "metrics.jsonl"), "w") as f:
  for s in (1, steps):
    f.write(json.dumps({"step": s, "loss": loss, "tokens_seen": s * batch * seq, "tokens_per_s": 1000.0 * s, "wall_s": 0.1 * s}) + "\n")
  f.write(json.dumps({"step": steps, "eval/web/loss": loss + 0.1, "eval/code/loss": loss + 0.2}) + "\n")
with open(os.path.join(wd, "done.json"), "w") as f:
  json.dump({"step": steps, "final_loss": loss, "tokens_seen": steps * batch * seq, "wall_s": 1.5}, f)
with open(os.path.join(os.path.dirname(wd), "calls.txt"), "a") as f:
  f.write(os.path.basename(wd) + "\n")
'''


@pytest.mark.parametrize("n_target", [1e5, 3e6, 1e8, 7e9])
def test_shape_for_params_hits_the_target(n_target):
  model = sweep.shape_for_params(n_target, vocab_size=32768)
  cfg = ModelConfig(**model)
  cfg.validate()
  n = cfg.param_counts()["non_embedding"]
  # Rounding d_model to a head_dim multiple and layers to an integer leaves N within a factor 1.6.
  assert n_target / 1.6 < n < n_target * 1.6
  assert model["d_model"] % model["head_dim"] == 0 and model["n_heads"] * model["head_dim"] == model["d_model"]
  assert model["d_ff"] >= 8 / 3 * model["d_model"] and model["d_ff"] % 64 == 0
  if n_target >= 1e8:  # past the 1-layer floor the aspect ratio is near the rule's 64
    assert 32 <= model["d_model"] / model["n_layers"] <= 128


def test_isoflop_points_spend_their_budget_exactly():
  config = cli.load_config(f"{CONFIG}:tiny")
  points = sweep.points_from_config(config)
  assert {p.budget for p in points} == set(config.budgets)
  for p in points:
    cfg = ModelConfig(**p.model)
    fpt = flops_per_token(cfg, p.seq_len)
    assert p.flops_per_token == fpt
    assert p.tokens == p.steps * p.global_batch * p.seq_len
    assert p.flops == p.tokens * fpt
    # Whole steps: the realised compute is the budget to within one step.
    assert abs(p.flops - p.budget) <= 0.5 * p.global_batch * p.seq_len * fpt + 1
    assert p.n_non_embedding == cfg.param_counts()["non_embedding"]
  # Each budget brackets its centre size, sqrt(C / (6 tokens_per_param)), from both sides.
  for c in config.budgets:
    n = [p.n_non_embedding for p in points if p.budget == c]
    assert min(n) < math.sqrt(c / (6 * config.tokens_per_param)) < max(n)


def test_names_are_deterministic_and_unique():
  config = cli.load_config(f"{CONFIG}:small")
  a = [p.name for p in sweep.points_from_config(config)]
  b = [p.name for p in sweep.points_from_config(cli.load_config(f"{CONFIG}:small"))]
  assert a == b and len(set(a)) == len(a)
  assert a[0] == "c1e17_d320_l6_t7.6e8"


def test_six_nd_accounting_and_rules():
  config = cli.load_config(f"{CONFIG}:grid", ["flops=6nd", "train.lr_rule=deepseek", "train.batch_rule=deepseek"])
  for p in sweep.points_from_config(config):
    assert p.flops == pytest.approx(6 * p.n_non_embedding * p.tokens)
    assert p.peak_lr == pytest.approx(0.3118 * p.flops ** -0.125, rel=0.2)  # planned vs realised C
    assert p.global_batch & (p.global_batch - 1) == 0  # power of two
  with pytest.raises(KeyError):
    cli.load_config(f"{CONFIG}:grid", ["train.lr_rul=deepseek"])


def test_manifest_lines_are_pretrain_commands(tmp_path):
  config = cli.load_config(f"{CONFIG}:tiny")
  points = sweep.points_from_config(config)
  commands = runs.write_sweep(points, str(tmp_path), "configs/pretrain.py", "tiny", config.launch.command)
  with open(tmp_path / runs.MANIFEST) as f:
    assert f.read().splitlines() == commands
  argv = shlex.split(commands[0])
  assert argv[:4] == ["python", "-m", "maxlm.train", "--config=configs/pretrain.py:tiny"]
  assert argv[4] == f"--workdir={tmp_path}/{points[0].name}"
  flags = dict(a.split("=", 1) for a in argv[5:])
  m = points[0].model
  for k in ("d_model", "n_layers", "n_heads", "n_kv_heads", "head_dim", "d_ff", "vocab_size"):
    assert int(flags[f"--config.model.{k}"]) == m[k]
  assert int(flags["--config.train.steps"]) == points[0].steps
  assert float(flags["--config.optim.peak_lr"]) == pytest.approx(config.train.peak_lr)


def test_run_skips_finished_and_collect_writes_csv(tmp_path, capsys):
  fake = tmp_path / "fake_train.py"
  fake.write_text(FAKE_TRAIN)
  root = tmp_path / "sweep"
  template = f"{shlex.quote(sys.executable)} {shlex.quote(str(fake))} --workdir={{workdir}} {{overrides}}"
  cli.main(["sweep", f"--config={CONFIG}:tiny", f"--root={root}", "--set", "budgets=[1e12, 3e12]",
            "--set", f"launch.command={template!r}"])
  points = runs.read_points(str(root))
  assert len(points) >= 6
  # One point finished before the sweep runs: it must not be rerun.
  first = points[0]["workdir"]
  os.makedirs(first)
  with open(os.path.join(first, runs.DONE), "w") as f:
    json.dump({"step": 1, "final_loss": 9.0, "tokens_seen": 10, "wall_s": 0.0}, f)
  assert runs.collect(str(root))[0]["final_loss"] == 9.0
  codes = runs.run(str(root), log=lambda *_: None)
  assert set(codes) == {p["name"] for p in points[1:]} and not any(codes.values())
  calls = (root / "calls.txt").read_text().split()
  assert sorted(calls) == sorted(p["name"] for p in points[1:])
  assert runs.run(str(root), log=lambda *_: None) == {}  # everything is finished now

  cli.main(["collect", str(root), "--out", str(tmp_path / "results.csv")])
  with open(tmp_path / "results.csv") as f:
    rows = list(csv.DictReader(f))
  assert len(rows) == len(points)
  row = {r["name"]: r for r in rows}[points[1]["name"]]
  p = points[1]
  assert int(row["tokens"]) == p["tokens"]
  assert float(row["flops"]) == pytest.approx(p["tokens"] * p["flops_per_token"])
  assert int(row["n_non_embedding"]) == p["n_non_embedding"] and int(row["n_total"]) == p["n_total"]
  assert float(row["eval/web/loss"]) == pytest.approx(float(row["final_loss"]) + 0.1)
  assert float(row["eval/code/loss"]) == pytest.approx(float(row["final_loss"]) + 0.2)
  assert float(row["eval_loss"]) == pytest.approx(float(row["final_loss"]) + 0.15)  # mean over domains
  assert float(row["tokens_per_s"]) > 0 and float(row["wall_s"]) == 1.5
  capsys.readouterr()
  # The results CSV feeds the fitter with its default column names.
  cli.main(["fit", str(tmp_path / "results.csv"), "--method", "kaplan", "--json"])
  assert "alpha_C" in json.loads(capsys.readouterr().out)["kaplan"]


def test_collect_ignores_unfinished_points(tmp_path):
  config = cli.load_config(f"{CONFIG}:tiny")
  points = sweep.points_from_config(config)[:3]
  runs.write_sweep(points, str(tmp_path), "configs/pretrain.py", "tiny", config.launch.command)
  os.makedirs(tmp_path / points[1].name)
  (tmp_path / points[1].name / runs.METRICS).write_text(json.dumps({"step": 1, "loss": 5.0}) + "\n")
  assert runs.collect(str(tmp_path)) == []
