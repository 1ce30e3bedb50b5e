"""SIGTERM as a flag the loop checks, so a preempted run saves before it exits."""

from __future__ import annotations

import logging
import signal

log = logging.getLogger("maxlm.train")


class Preemption:
  """Context manager: `requested` turns True on SIGTERM (or when the loop asks to stop)."""

  def __init__(self):
    self.requested = False
    self._previous = None

  def __enter__(self):
    try:
      self._previous = signal.signal(signal.SIGTERM, self._handle)
    except ValueError:  # not the main thread (e.g. some notebook kernels): no handler
      self._previous = None
    return self

  def _handle(self, signum, frame):
    del signum, frame
    log.warning("SIGTERM received: saving a checkpoint after this step, then exiting")
    self.requested = True

  def __exit__(self, *exc):
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)
