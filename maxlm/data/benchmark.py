r"""Input pipeline throughput, in tokens per CPU-second (= per core).

  python -m maxlm.data.benchmark [--seq_len=2048] [--batch=16] [--steps=50]

(a) tokenizing raw text into shards (prepare, one process) against plain
    SentencePiece encode of the same text in the same run;
(b) reading shards -> mix -> pack -> batch, with no worker processes or read
    threads, so all work is on the measuring core.
CPU time (time.process_time) is the denominator, so a machine shared with
other jobs still gives per-core figures; wall-clock rates are printed too.
bench/data_pipeline.py compares (b) with the rate the `1b` preset consumes.
"""

from __future__ import annotations

import os
import tempfile
import time

from maxlm.data import config as config_lib
from maxlm.data import pipeline
from maxlm.data import prepare as prepare_lib
from maxlm.data import tokenizer as tokenizer_lib


def _timed(fn):
  w, c = time.perf_counter(), time.process_time()
  out = fn()
  return out, time.perf_counter() - w, time.process_time() - c


def bench_tokenize(data_config, tokenizer_path: str, out_dir: str) -> dict:
  """(a): prepare() vs sp.encode on the same training documents."""
  texts = [t for p in pipeline.plan_sources(data_config) for t, _ in p.train]
  sp = tokenizer_lib.load(tokenizer_path)
  ids, w_sp, c_sp = _timed(lambda: sp.encode(texts))
  n = sum(len(x) for x in ids)
  _, w_pr, c_pr = _timed(lambda: prepare_lib.prepare(data_config, tokenizer_path, out_dir,
                                                     workers=1, progress=False))
  return dict(tokens=n, chars=sum(len(t) for t in texts),
              sentencepiece_tok_per_cpu_s=n / c_sp, prepare_tok_per_cpu_s=n / c_pr,
              sentencepiece_tok_per_s=n / w_sp, prepare_tok_per_s=n / w_pr)


def bench_pipeline(data_config, tokenizer_path: str, *, seq_len: int, batch: int,
                   steps: int) -> dict:
  """(b): batches/s of make_train_iterator, single-threaded, after warm-up."""
  c = data_config
  c.read_threads, c.prefetch_batches, c.worker_count = 0, 0, 0
  it = pipeline.make_train_iterator(c, tokenizer_path=tokenizer_path, seq_len=seq_len,
                                    global_batch=batch, seed=0)
  next(it)

  def run():
    real = 0
    for _ in range(steps):
      real += int(next(it)["loss_mask"].sum())
    return real
  real, w, cpu = _timed(run)
  n = steps * batch * seq_len
  return dict(tokens=n, real_fraction=real / n, tok_per_cpu_s=n / cpu, tok_per_s=n / w)


def run(seq_len: int = 2048, batch: int = 16, steps: int = 50, variant: str = "three_domains",
        workdir: str | None = None) -> dict:
  workdir = workdir or tempfile.mkdtemp(prefix="maxlm_data_bench_")
  c = config_lib.default_data_config(variant)
  tok = tokenizer_lib.build_tokenizer(c, workdir)
  shards = os.path.join(workdir, "shards")
  a = bench_tokenize(c, tok, shards)
  raw = bench_pipeline(config_lib.default_data_config(variant), tok, seq_len=seq_len,
                       batch=batch, steps=steps)
  c = config_lib.default_data_config(variant)
  c.prepared_dir = shards
  b = bench_pipeline(c, tok, seq_len=seq_len, batch=batch, steps=steps)
  return dict(tokenize=a, pipeline_raw=raw, pipeline_shards=b)


def main(argv):
  del argv
  from absl import flags  # pylint: disable=g-import-not-at-top
  f = flags.FLAGS
  r = run(f.seq_len, f.batch, f.steps)
  a = r["tokenize"]
  print(f"(a) tokenize {a['tokens']:,} tokens ({a['chars']:,} chars):")
  print(f"    sentencepiece encode  {a['sentencepiece_tok_per_cpu_s']:12,.0f} tok/cpu-s "
        f"({a['sentencepiece_tok_per_s']:,.0f} tok/s wall)")
  print(f"    prepare -> shards     {a['prepare_tok_per_cpu_s']:12,.0f} tok/cpu-s "
        f"({a['prepare_tok_per_s']:,.0f} tok/s wall)")
  for k, name in (("pipeline_shards", "shards"), ("pipeline_raw", "raw text")):
    b = r[k]
    print(f"(b) {name:9s} -> mix -> pack -> batch: {b['tok_per_cpu_s']:12,.0f} tok/cpu-s "
          f"({b['tok_per_s']:,.0f} tok/s wall, {b['real_fraction']:.1%} non-padding)")


if __name__ == "__main__":
  from absl import flags  # pylint: disable=g-import-not-at-top,ungrouped-imports
  flags.DEFINE_integer("seq_len", 2048, "T")
  flags.DEFINE_integer("batch", 16, "rows per batch")
  flags.DEFINE_integer("steps", 50, "batches timed")
  from maxlm import cli  # pylint: disable=g-import-not-at-top
  cli.run(main)  # one-line input errors, quiet library logs
