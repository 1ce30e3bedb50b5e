"""Reports the driver writes to the workdir: data reuse and bad input.

`write_reports(data_config, iterator, workdir)` is meant to be called next to
each checkpoint save: the reuse counts come from the same iterator state that
the checkpoint holds, so the report always matches what a resume will see.
"""

from __future__ import annotations

import json
import os

import numpy as np

from maxlm.data import config as config_lib
from maxlm.data import mixing
from maxlm.data import shards as shards_lib
from maxlm.data import sources as sources_lib

reuse_report = mixing.reuse_report
format_reuse_report = mixing.format_reuse_report


def error_report(data_config) -> str:
  """Bad input per file and kind, over every configured source.

  With data.prepared_dir set it is what prepare recorded (shards.ERRORS):
  the raw files need not exist where training runs.
  """
  parts = []
  if data_config.get("prepared_dir"):
    recorded = shards_lib.load_errors(data_config.prepared_dir)
    for s in config_lib.iter_sources(data_config):
      e = recorded.get(s["name"], {})
      if e.get("total"):
        parts.append(f"[{s['name']}] {e['total']} bad inputs\n{e['report']}")
    return "\n".join(parts) or "no bad input"
  for s in config_lib.iter_sources(data_config):
    _, errors = sources_lib.cached_documents(s, data_config.get("error_budget", -1))
    if errors.total:
      parts.append(f"[{s['name']}] {errors.total} bad inputs\n{errors.report()}")
  return "\n".join(parts) or "no bad input"


def write_reports(data_config, iterator, workdir: str, process_index: int = 0) -> str:
  """Writes data_reuse.json / .txt and data_errors.txt; returns the table."""
  report = reuse_report(iterator)
  os.makedirs(workdir, exist_ok=True)
  suffix = "" if process_index == 0 else f".process{process_index}"
  table = format_reuse_report(report)
  plain = {name: {k: (v.tolist() if isinstance(v, np.ndarray) else v)
                  for k, v in r.items() if k not in ("doc_counts", "doc_id_lo")}
           for name, r in report.items()}
  with open(os.path.join(workdir, f"data_reuse{suffix}.json"), "w") as f:
    json.dump(plain, f, indent=2)
  with open(os.path.join(workdir, f"data_reuse{suffix}.txt"), "w") as f:
    f.write(table + "\n")
  with open(os.path.join(workdir, "data_errors.txt"), "w") as f:
    f.write(error_report(data_config) + "\n")
  return table
