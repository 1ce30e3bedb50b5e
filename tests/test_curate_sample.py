"""`python -m maxlm.curate sample`: the raw corpus the README's curation commands run on.

Read back with zstandard / gzip / pyarrow directly (not maxlm's readers): the counts, the
planted exact and near copies, and that the three files hold one third of the documents each.
"""
import collections
import gzip
import io
import json
import subprocess
import sys

import pyarrow.parquet as pq
import pytest
import zstandard

from maxlm.curate import sample


def _read(out):
  zst = zstandard.ZstdDecompressor().stream_reader(open(out / "sample.jsonl.zst", "rb"))
  rows = [json.loads(l) for l in io.TextIOWrapper(zst, encoding="utf-8")]
  rows += pq.read_table(out / "sample.parquet").to_pylist()
  rows += [json.loads(l) for l in gzip.open(out / "sample.jsonl.gz", "rt", encoding="utf-8")]
  return rows


def test_sample_plants_exact_and_near_copies_in_three_formats(tmp_path):
  out = tmp_path / "raw"
  r = subprocess.run([sys.executable, "-m", "maxlm.curate", "sample", f"--out={out}", "--docs=60"],
                     capture_output=True, text=True, timeout=120)
  assert r.returncode == 0, r.stderr
  assert r.stdout.splitlines()[-1].startswith("60 documents (6 exact and 6 near copies")
  rows = _read(out)
  assert len(rows) == 60 and len({r["id"] for r in rows}) == 60
  assert {k for r in rows for k in r} == {"id", "text", "domain", "planted"}
  assert collections.Counter(r["planted"] for r in rows) == {"original": 48, "exact": 6, "near": 6}
  assert {r["domain"] for r in rows} <= {"prose", "code"}
  originals = [r["text"] for r in rows if r["planted"] == "original"]
  assert len(set(originals)) == 48
  for r in rows:
    if r["planted"] == "exact":
      assert r["text"] in originals
    elif r["planted"] == "near":
      words = r["text"].split(" ")
      # Three words replaced in one original: the same length, at most three positions differ.
      assert any(len(o.split(" ")) == len(words) and
                 0 < sum(a != b for a, b in zip(o.split(" "), words)) <= 3 for o in originals)
  # Deterministic: the same seed writes the same documents.
  assert sample.documents(60, seed=0) == sample.documents(60, seed=0)
  assert sample.documents(60, seed=0) != sample.documents(60, seed=1)


def test_sample_refuses_a_tiny_count(tmp_path, capsys):
  with pytest.raises(SystemExit) as e:
    sample.main([f"--out={tmp_path}", "--docs=3"])
  assert e.value.code == 2 and "--docs=3: give at least 10" in capsys.readouterr().err
