"""One run per workdir: a lock file naming its holder.

`<workdir>/run.lock` holds {pid, host, since, argv} of the run that owns the
workdir, and that process keeps an exclusive `flock` on it while it runs. A
second run refuses with the holder named. The lock is released on exit
(normal or by exception); after a kill -9 the file stays but the kernel drops
the flock and the pid is gone, so the next run on the same host sees the lock
as stale, says so, and takes it over.

A lock left by another host cannot be checked from here (its pid means
nothing on this machine, and flock is not reliable across network file
systems), so it refuses and names the file to delete once that host's run is
known to be gone.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import os
import socket
import sys
import time

from maxlm.errors import RunError

log = logging.getLogger(__name__)

LOCK_NAME = "run.lock"


class WorkdirLocked(RunError):
  """Another run holds the workdir."""


def _pid_alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:  # exists, owned by someone else
    return True
  return True


def _describe(holder: dict) -> str:
  since = holder.get("since")
  when = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(since)) if since else "?"
  return f"pid {holder.get('pid')} on host {holder.get('host')} since {when}"


def _read(fd) -> dict:
  os.lseek(fd, 0, os.SEEK_SET)
  raw = os.read(fd, 1 << 16)
  try:
    return json.loads(raw) if raw.strip() else {}
  except ValueError:
    return {}


class WorkdirLock:
  """Holds `<workdir>/run.lock` from acquire() to release()."""

  def __init__(self, workdir: str):
    self.path = os.path.join(os.path.abspath(workdir), LOCK_NAME)
    self._fd = None

  def acquire(self) -> "WorkdirLock":
    os.makedirs(os.path.dirname(self.path), exist_ok=True)
    fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
      try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
      except OSError as e:
        if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
          raise
        raise WorkdirLocked(f"workdir {os.path.dirname(self.path)} is in use by another run"
                            f" ({_describe(_read(fd))}); wait for it to finish, stop it, or use"
                            " another --workdir") from None
      holder, host = _read(fd), socket.gethostname()
      if holder.get("pid"):  # not released cleanly: a crash, a kill -9, or another host
        if holder.get("host") != host:
          raise WorkdirLocked(
              f"workdir {os.path.dirname(self.path)} is locked by {_describe(holder)}, which"
              f" this host ({host}) cannot check; if that run is gone, delete {self.path}")
        if _pid_alive(holder["pid"]) and holder["pid"] != os.getpid():
          # Alive yet holding no flock: a file system without working flock, or a pid
          # reused after the holder died. Only a person can tell which.
          raise WorkdirLocked(
              f"workdir {os.path.dirname(self.path)} is locked by {_describe(holder)}, which is"
              f" still running; stop it, or if that pid is not a maxlm run, delete {self.path}")
        log.warning("workdir lock %s was left by %s, which is no longer running;"
                    " taking it over", self.path, _describe(holder))
      record = dict(pid=os.getpid(), host=host, since=time.time(), argv=sys.argv[:8])
      os.ftruncate(fd, 0)
      os.lseek(fd, 0, os.SEEK_SET)
      os.write(fd, json.dumps(record).encode())
      os.fsync(fd)
    except BaseException:
      os.close(fd)
      raise
    self._fd = fd
    return self

  def release(self) -> None:
    if self._fd is None:
      return
    try:
      os.ftruncate(self._fd, 0)  # an empty file: released (a pid in it: not released)
    except OSError:
      pass  # the flock still goes with the fd, and the pid with the process
    finally:
      os.close(self._fd)  # drops the flock
      self._fd = None


@contextlib.contextmanager
def workdir_lock(workdir: str, *, enabled: bool = True):
  """Holds the workdir's lock for the `with` block (no-op when not `enabled`: other hosts)."""
  if not enabled:
    yield None
    return
  lock = WorkdirLock(workdir).acquire()
  try:
    yield lock
  finally:
    lock.release()
