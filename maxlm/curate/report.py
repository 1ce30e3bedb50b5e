"""The run's report: documents and bytes per stage and source, removals per rule, read
errors, duplicate-cluster sizes, languages and score distributions, as summary.json,
a Markdown table and PNG charts (matplotlib, Agg backend: no display needed).

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
  per_source = collections.defaultdict(lambda: collections.defaultdict(dict))
  scores = collections.defaultdict(dict)
  for (stage, kind, key), (n, nbytes) in counts:
    # The counts come in no fixed order (Beam's combine): a source's kept and
    # removed counts for a stage may arrive either way round, so neither resets the other.
    if kind == "source_kept":
      entry = per_source[key].setdefault(stage, {"docs_out": 0, "bytes_out": 0, "removed": 0})
      entry["docs_out"], entry["bytes_out"] = n, nbytes
    elif kind == "source_removed":
      per_source[key].setdefault(stage, {"docs_out": 0, "bytes_out": 0, "removed": 0})
      per_source[key][stage]["removed"] += n
    elif kind == "score_hist":
      scores[stage][key] = n
    elif kind == "kept":
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
      # source -> stage -> docs and bytes out, docs removed ("" = read errors, which have no source)
      "sources": {src: {name: st[name] for name in stage_names if name in st}
                  for src, st in sorted(per_source.items())},
      # stage -> lower edge of the bin -> kept documents
      "score_histograms": {stage: dict(sorted(h.items(), key=lambda kv: float(kv[0])))
                           for stage, h in sorted(scores.items())},
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
  if summary.get("sources"):
    names = [s["stage"] for s in summary["stages"]]
    out += ["Documents out per source and stage:", "",
            "| source | " + " | ".join(names) + " |", "|---|" + "---:|" * len(names)]
    for src, st in summary["sources"].items():
      out.append(f"| {src or '(read errors)'} | "
                 + " | ".join(str(st.get(n, {}).get("docs_out", 0)) for n in names) + " |")
    out.append("")
  for stage, hist in summary.get("score_histograms", {}).items():
    out += [f"{stage} scores (bin: docs): " + ", ".join(f"{k}: {v}" for k, v in hist.items()), ""]
  if summary.get("charts"):
    out += [f"![{os.path.splitext(c)[0]}]({c})" for c in summary["charts"]] + [""]
  if summary["read"]["errors"]:
    out += ["Read errors per file: "
            + ", ".join(f"{k}: {v}" for k, v in summary["read"]["errors_per_file"].items()), ""]
  return "\n".join(out)


def charts(summary: dict, output: str) -> list[str]:
  """Writes the report's PNG charts under `output`; returns their file names."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  written = []

  def save(fig, name):
    fig.tight_layout()
    fig.savefig(os.path.join(output, name), dpi=100)
    plt.close(fig)
    written.append(name)

  stages = summary["stages"]
  names = [s["stage"] for s in stages]
  fig, ax = plt.subplots(figsize=(max(6, 0.8 * len(names)), 4))
  kept = [s["docs_out"] for s in stages]
  removed = [sum(s["removed"].values()) for s in stages]
  ax.bar(names, kept, label="kept")
  ax.bar(names, removed, bottom=kept, label="removed")
  ax.set_xlabel("stage")
  ax.set_ylabel("documents")
  ax.set_title("Documents kept and removed per stage")
  ax.legend()
  ax.tick_params(axis="x", rotation=45)
  save(fig, "stages.png")

  rules = [(f"{s['stage']}: {rule}", n) for s in stages for rule, n in s["removed"].items()]
  if rules:
    rules.sort(key=lambda kv: kv[1])
    fig, ax = plt.subplots(figsize=(7, max(2.5, 0.3 * len(rules) + 1)))
    ax.barh([r for r, _ in rules], [n for _, n in rules])
    ax.set_xlabel("documents removed")
    ax.set_ylabel("stage: rule")
    ax.set_title("Removals per rule")
    save(fig, "rules.png")

  if summary.get("sources"):
    srcs = list(summary["sources"])
    fig, ax = plt.subplots(figsize=(max(6, 0.8 * len(names)), 4))
    for src in srcs:
      ax.plot(names, [summary["sources"][src].get(n, {}).get("docs_out", 0) for n in names],
              marker="o", label=os.path.basename(src.rstrip("/")) or "(read errors)")
    ax.set_xlabel("stage")
    ax.set_ylabel("documents out")
    ax.set_title("Documents per source after each stage")
    ax.tick_params(axis="x", rotation=45)
    ax.legend(fontsize=7)
    save(fig, "sources.png")

  hists = {"duplicate cluster size": summary["duplicate_cluster_sizes"], "language": summary["languages"]}
  hists.update({f"{k} score": v for k, v in summary.get("score_histograms", {}).items()})
  hists = {k: v for k, v in hists.items() if v}
  if hists:
    fig, axes = plt.subplots(1, len(hists), figsize=(4 * len(hists), 3.5), squeeze=False)
    for ax, (title, h) in zip(axes[0], hists.items()):
      ax.bar([str(k) for k in h], list(h.values()))
      ax.set_title(title)
      ax.set_xlabel(title)
      ax.set_ylabel("documents")
      ax.tick_params(axis="x", rotation=60, labelsize=7)
    save(fig, "distributions.png")
  return written


def write_report(output: str, stage_names, config: dict, with_charts: bool = True) -> dict:
  counts = _read_jsonl(os.path.join(output, "counts.jsonl"))
  errors = _read_jsonl(os.path.join(output, "read_errors.jsonl"))
  summary = summarize(counts, errors, stage_names, config)
  if with_charts:
    summary["charts"] = charts(summary, output)
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
