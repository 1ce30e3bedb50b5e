"""Metrics to JSONL (the source of truth that tools read) and TensorBoard.

Each line of metrics.jsonl is written whole or not at all: one `write` of
the encoded line on an O_APPEND descriptor, and on any failure (a full disk
mid-write) the file is cut back to its previous length. A torn last line left
by an older writer (or a crash of the machine) is dropped when the file is
opened again, and `read_jsonl` skips undecodable lines with a warning, so a
plot at the end of a resumed run never crashes on one.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import shutil

import numpy as np

from maxlm.errors import RunError

log = logging.getLogger(__name__)


class MetricsWriteError(RunError):
  """A metrics line could not be written (the file is left as it was before it)."""


def _plain(v):
  v = np.asarray(v)
  return v.item() if v.ndim == 0 else v.tolist()


def _free(path: str) -> str:
  try:
    return f"{shutil.disk_usage(os.path.dirname(path) or '.').free:,} bytes free"
  except OSError:
    return "free space unknown"


def _drop_torn_tail(fd: int, path: str) -> None:
  """Cuts a last line that has no newline (an interrupted write) off the file."""
  size = os.fstat(fd).st_size
  if size == 0:
    return
  tail_from = max(0, size - (1 << 20))
  tail = os.pread(fd, size - tail_from, tail_from)
  if tail.endswith(b"\n"):
    return
  cut = tail.rfind(b"\n")
  keep = tail_from + cut + 1 if cut >= 0 else (0 if tail_from == 0 else None)
  if keep is None:  # a single line over 1 MiB with no newline: leave it to the reader
    return
  os.ftruncate(fd, keep)
  log.warning("%s: dropped a torn last line (%d bytes, an interrupted write) before appending",
              path, size - keep)


def append_line(fd: int, path: str, line: str) -> None:
  """Appends `line` + newline to `fd` (opened O_APPEND) whole, or leaves the file unchanged."""
  data = (line + "\n").encode("utf-8")
  before = os.fstat(fd).st_size
  try:
    written = 0
    while written < len(data):  # a short write is possible; finish it or undo it
      written += os.write(fd, data[written:])
  except OSError as e:
    try:
      os.ftruncate(fd, before)
    except OSError:
      pass
    what = "no space left on device" if e.errno == errno.ENOSPC else f"{e.strerror or e}"
    raise MetricsWriteError(f"could not append to {path}: {what} ({_free(path)}); the file"
                            " keeps every line before this one") from e


class MetricWriter:
  """Appends one JSON object per call to <workdir>/metrics.jsonl and mirrors scalars to TensorBoard.

  Only process 0 writes; other hosts get a writer that does nothing.
  """

  def __init__(self, workdir: str, *, tensorboard: bool = True, enabled: bool = True):
    self.enabled = enabled
    self.path = os.path.join(workdir, "metrics.jsonl")
    self._tb = None
    self._fd = None
    if enabled:
      os.makedirs(workdir, exist_ok=True)
      self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
      rd = os.open(self.path, os.O_RDWR)
      try:
        _drop_torn_tail(rd, self.path)
      finally:
        os.close(rd)
      if tensorboard:
        from tensorboardX import SummaryWriter  # lazy: optional at import time
        self._tb = SummaryWriter(os.path.join(workdir, "tensorboard"))

  def write(self, step: int, metrics: dict) -> None:
    if not self.enabled:
      return
    row = {"step": int(step), **{k: _plain(v) for k, v in metrics.items()}}
    append_line(self._fd, self.path, json.dumps(row))
    if self._tb is not None:
      for k, v in row.items():
        if k != "step" and isinstance(v, (int, float)):
          self._tb.add_scalar(k, v, step)

  def close(self) -> None:
    if self.enabled and self._fd is not None:
      os.close(self._fd)
      self._fd = None
      if self._tb is not None:
        self._tb.close()


def read_jsonl(path: str) -> list[dict]:
  """Every decodable line of a JSONL file; undecodable ones are skipped and reported."""
  rows, bad = [], []
  with open(path, encoding="utf-8", errors="replace") as f:
    for n, line in enumerate(f, 1):
      if not line.strip():
        continue
      try:
        rows.append(json.loads(line))
      except ValueError:
        bad.append((n, line.endswith("\n")))
  if bad:
    torn = [n for n, complete in bad if not complete]
    log.warning("%s: skipped %d undecodable line(s) (%s)%s", path, len(bad),
                ", ".join(f"line {n}" for n, _ in bad[:5]) + (" ..." if len(bad) > 5 else ""),
                "; the last is torn (an interrupted write)" if torn else "")
  return rows


def write_json_atomic(path: str, obj, **dump_kwargs) -> None:
  """Writes JSON to a temporary file and renames it over `path`: old or new, never torn."""
  tmp = f"{path}.tmp-{os.getpid()}"
  try:
    with open(tmp, "w", encoding="utf-8") as f:
      json.dump(obj, f, **dump_kwargs)
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
  except OSError as e:
    try:
      os.remove(tmp)
    except OSError:
      pass
    what = "no space left on device" if e.errno == errno.ENOSPC else f"{e.strerror or e}"
    raise MetricsWriteError(f"could not write {path}: {what} ({_free(path)})") from e
