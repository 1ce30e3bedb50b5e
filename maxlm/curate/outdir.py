"""Claiming a curation output directory, so two runs' documents never mix.

A curation run writes whole files (Beam sinks), so an output directory that
already holds documents of another run would end up with both runs' shards,
the second run's summary and no dedup across them. `claim` therefore:
  - takes an empty (or missing) directory, writing run.json (the run's identity:
    a hash of its config and of its input files' names, sizes and mtimes);
  - on a directory holding the *same* run: returns its summary when that run
    completed (nothing to redo), else clears its partial outputs to redo it --
    Beam cannot resume a half-written sink, so "resume" means "finish the same
    run", never "mix another into it";
  - on anything else refuses with one line, unless `overwrite`, which removes
    the outputs curation writes (never other files: if any remain, it refuses).
Local directories only; for gs:// and other remote outputs the check is skipped
with a warning (use a fresh prefix per run there).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil

RUN_FILE = "run.json"
# What maxlm.curate writes under its output directory (pipeline.py, report.py, Beam temp).
_OWN_DIRS = ("docs", "rejects", "notes")
_OWN_FILES = ("read_errors.jsonl", "counts.jsonl", "summary.json", "summary.md", RUN_FILE)


def fingerprint(config: dict, files: list[tuple[str, str]]) -> str:
  h = hashlib.sha256(json.dumps(config, sort_keys=True, default=list).encode())
  for path, source in files:
    st = os.stat(path) if "://" not in path else None
    h.update(json.dumps([path, source, st and st.st_size, st and st.st_mtime_ns]).encode())
  return h.hexdigest()


def _own(name: str) -> bool:
  return (name in _OWN_DIRS or name in _OWN_FILES or name.endswith(".png")
          or name.startswith("beam-temp-"))


def _clear(output: str) -> None:
  for name in os.listdir(output):
    if _own(name):
      path = os.path.join(output, name)
      shutil.rmtree(path) if os.path.isdir(path) else os.remove(path)


def claim(output: str, fp: str, overwrite: bool = False) -> dict | None:
  """Prepares `output` for the run `fp`; returns the summary if that run is already complete."""
  if "://" in output:
    logging.warning("curate: not checking remote output %s for earlier runs", output)
    return None
  entries = os.listdir(output) if os.path.isdir(output) else []
  if entries:
    try:
      with open(os.path.join(output, RUN_FILE)) as f:
        old = json.load(f)
    except (OSError, ValueError):
      old = None
    if old and old.get("fingerprint") == fp and not overwrite:
      if old.get("complete") and os.path.exists(os.path.join(output, "summary.json")):
        logging.info("curate: %s already holds this run, complete; nothing to do", output)
        with open(os.path.join(output, "summary.json")) as f:
          return json.load(f)
      logging.info("curate: %s holds an unfinished attempt of this run; redoing it", output)
    elif not overwrite:
      what = "another curation run" if old else f"{len(entries)} entries ({', '.join(sorted(entries)[:3])}...)"
      raise FileExistsError(f"curate: --output={output} is not empty: it holds {what}. Pass "
                            "--overwrite to replace it, or choose a new directory")
    _clear(output)
    others = sorted(os.listdir(output))
    if others:
      raise FileExistsError(f"curate: --output={output} holds files curation did not write "
                            f"({', '.join(others[:3])}); not overwriting them. Choose a new directory")
  os.makedirs(output, exist_ok=True)
  _write(output, {"fingerprint": fp, "complete": False})
  return None


def mark_complete(output: str, fp: str) -> None:
  if "://" not in output:
    _write(output, {"fingerprint": fp, "complete": True})


def _write(output: str, rec: dict) -> None:
  tmp = os.path.join(output, RUN_FILE + ".tmp")
  with open(tmp, "w") as f:
    json.dump(rec, f)
  os.replace(tmp, os.path.join(output, RUN_FILE))
