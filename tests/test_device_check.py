"""bench/device_check.sh --dry-run: every step of the GPU check compiled and run on CPU, tiny shapes."""
import json
import math
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.slow
def test_device_check_dry_run_covers_every_section(tmp_path):
  env = {**os.environ, "OUT": str(tmp_path), "PYTHON": sys.executable}  # the venv running the tests
  proc = subprocess.run(["bash", os.path.join(ROOT, "bench/device_check.sh"), "--dry-run"],
                        env=env, capture_output=True, text=True, timeout=900)
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
  res = json.loads((tmp_path / "device_check.json").read_text())
  rows = res["rows"]
  bad = [r for r in rows if "error" in r or "skipped" in r]
  assert not bad, bad
  by = {s: [r for r in rows if r["section"] == s] for s in ("kernel", "train", "attention", "memory")}
  assert all(by.values()), {s: len(v) for s, v in by.items()}
  # Kernel against the dense reference: float32 and bfloat16, packed and windowed cases.
  assert {(r["dtype"], r["packed"], r["window"] is not None) for r in by["kernel"]} >= {
      ("float32", False, False), ("float32", True, True), ("bfloat16", True, True)}
  assert all(r["ok"] for r in by["kernel"]), by["kernel"]
  # Train steps ran: a freshly initialised tiny model's loss is about ln(V = 512).
  for r in by["train"]:
    assert abs(r["loss"] - math.log(512)) < 0.5 and r["tokens_per_s"] > 0 and r["temp_gib"] > 0
  assert {r["attention_impl"] for r in by["train"]} == {"xla", "pallas"}
  assert any(r["loss_chunk"] > 0 for r in by["train"])
  assert {(r["impl"], r["pass"]) for r in by["attention"]} == {
      (i, p) for i in ("kernel", "xla") for p in ("fwd", "fwd+bwd")}
  assert [r["loss_chunk"] > 0 for r in by["memory"]] == [False, True]
  md = (tmp_path / "device_check_rows.md").read_text()
  assert md.count("\n| kernel |") == len(by["kernel"]) and "| train | tiny pallas" in md
