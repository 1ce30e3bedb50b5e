"""The run's report: documents and bytes per stage, removals per rule, read errors,
duplicate-cluster sizes and languages, as summary.json and a Markdown table.

The pipeline writes raw counts (counts.jsonl, one [[stage, kind, key], [docs,
bytes]] per line) and read errors (read_errors.jsonl); this module turns them
into the summary after the run, on the driver, where they are small.
"""

from __future__ import annotations

import collections
import json
import os

from maxlm.curate import minhash

MAX_LISTED_ERRORS = 1000


class ErrorBudgetExceeded(RuntimeError):
  pass


def _read_jsonl(path):
  if not os.path.exists(path):
    return []
  with open(path, encoding="utf-8") as f:
    return [json.loads(line) for line in f if line.strip()]


def summarize(counts, read_errors, stage_names, config: dict) -> dict:
  kept, removed = {}, collections.defaultdict(dict)
  removed_bytes = collections.Counter()
  clusters, langs, notes = {}, {}, collections.defaultdict(dict)
  for (stage, kind, key), (n, nbytes) in counts:
    if kind == "kept":
      kept[stage] = (n, nbytes)
    elif kind == "removed":
      removed[stage][key] = n
      removed_bytes[stage] += nbytes
    elif kind == "cluster_size":
      clusters[int(key)] = n
    elif kind == "lang":
      langs[key] = n
    elif kind == "note":
      notes[stage][key] = n
  stages, prev = [], None
  for name in stage_names:
    out_docs, out_bytes = kept.get(name, (0, 0))
    n_removed = sum(removed[name].values())
    if prev is None:
      in_docs, in_bytes = out_docs + n_removed, out_bytes
    else:
      in_docs, in_bytes = prev
    stages.append({"stage": name, "docs_in": in_docs, "bytes_in": in_bytes, "docs_out": out_docs,
                   "bytes_out": out_bytes, "removed": dict(sorted(removed[name].items())),
                   "notes": notes.get(name, {})})
    prev = (out_docs, out_bytes)
  errors_per_file = collections.Counter(e["file"] for e in read_errors)
  summary = {
      "stages": stages,
      "read": {"docs": kept.get("read", (0, 0))[0], "errors": len(read_errors),
               "errors_per_file": dict(sorted(errors_per_file.items())),
               "errors_listed": sorted(read_errors, key=lambda e: (e["file"], e["line"] or 0))[:MAX_LISTED_ERRORS]},
      "duplicate_cluster_sizes": dict(sorted(clusters.items())),
      "languages": dict(sorted(langs.items(), key=lambda kv: -kv[1])),
  }
  nd = config.get("near_dedup", {})
  if nd.get("enabled"):
    b, r = nd["bands"], nd["rows"]
    if not b or not r:
      b, r = minhash.choose_bands_rows(nd["threshold"], nd["num_perm"], 1.0 - nd["fn_weight"],
                                        nd["fn_weight"])
    t = nd["threshold"]
    summary["near_dedup"] = {
        "bands": b, "rows": r, "threshold": t, "num_perm": nd["num_perm"], "verify": nd["verify"],
        "candidate_probability": {f"{s:.2f}": round(float(minhash.candidate_probability(s, b, r)), 4)
                                  for s in (t - 0.1, t - 0.05, t, t + 0.05, t + 0.1) if 0 < s <= 1}}
  return summary


def markdown(summary: dict) -> str:
  rows = ["| stage | docs in | docs out | MB in | MB out | removed (rule: docs) |",
          "|---|---:|---:|---:|---:|---|"]
  for s in summary["stages"]:
    rules = ", ".join(f"{k}: {v}" for k, v in s["removed"].items()) or "-"
    rows.append(f"| {s['stage']} | {s['docs_in']} | {s['docs_out']} | {s['bytes_in'] / 1e6:.3f} "
                f"| {s['bytes_out'] / 1e6:.3f} | {rules} |")
  out = ["# Curation report", "", *rows, ""]
  if summary["duplicate_cluster_sizes"]:
    out += ["Near-duplicate cluster sizes (size: clusters): "
            + ", ".join(f"{k}: {v}" for k, v in summary["duplicate_cluster_sizes"].items()), ""]
  if "near_dedup" in summary:
    nd = summary["near_dedup"]
    out += [f"MinHash LSH: b = {nd['bands']} bands x r = {nd['rows']} rows of {nd['num_perm']} permutations; "
            "candidate probability 1-(1-s^r)^b: "
            + ", ".join(f"s={k}: {v}" for k, v in nd["candidate_probability"].items()), ""]
  if summary["read"]["errors"]:
    out += ["Read errors per file: "
            + ", ".join(f"{k}: {v}" for k, v in summary["read"]["errors_per_file"].items()), ""]
  return "\n".join(out)


def write_report(output: str, stage_names, config: dict) -> dict:
  counts = _read_jsonl(os.path.join(output, "counts.jsonl"))
  errors = _read_jsonl(os.path.join(output, "read_errors.jsonl"))
  summary = summarize(counts, errors, stage_names, config)
  with open(os.path.join(output, "summary.json"), "w", encoding="utf-8") as f:
    json.dump(summary, f, indent=1, ensure_ascii=False)
  with open(os.path.join(output, "summary.md"), "w", encoding="utf-8") as f:
    f.write(markdown(summary))
  return summary


def check_error_budget(summary: dict, max_error_fraction: float) -> None:
  errors, docs = summary["read"]["errors"], summary["read"]["docs"]
  if errors and errors / (errors + docs) > max_error_fraction:
    raise ErrorBudgetExceeded(
        f"{errors} of {errors + docs} input records were unreadable "
        f"({errors / (errors + docs):.2%} > read.max_error_fraction = {max_error_fraction:.2%}); "
        f"see read_errors.jsonl and summary.json for files and lines")
