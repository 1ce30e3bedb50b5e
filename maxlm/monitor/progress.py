"""'[k/n] what; elapsed, ETA' lines for long loops whose items differ in cost.

A sweep's points differ in FLOPs by orders of magnitude, so the ETA is
elapsed time per unit of cost done times the cost left (cost 1 per item when
none is given: the plain mean time per item). Lines go to stderr, flushed,
so they interleave correctly with a child's output and survive `| tee`.
"""

from __future__ import annotations

import sys
import time


def duration(s: float) -> str:
  """12s, 3m05s, 1h02m."""
  s = max(0.0, float(s))
  if s < 60:
    return f"{s:.0f}s"
  if s < 3600:
    return f"{int(s // 60)}m{int(s % 60):02d}s"
  return f"{int(s // 3600)}h{int(s % 3600 // 60):02d}m"


class Progress:
  """Counts finished items out of `total` (with total cost `total_cost`) and prints a line each."""

  def __init__(self, total: int, *, desc: str, total_cost: float | None = None, out=None,
               clock=time.monotonic):
    self.total, self.desc = int(total), desc
    self.total_cost = float(total if total_cost is None else total_cost)
    self.count, self.cost_done = 0, 0.0
    self._out = out if out is not None else sys.stderr
    self._clock = clock
    self._t0 = clock()

  @property
  def elapsed(self) -> float:
    return self._clock() - self._t0

  def eta(self, elapsed: float | None = None) -> float | None:
    """Seconds left: time per unit of cost so far, times the cost left."""
    if self.cost_done <= 0:
      return None
    elapsed = self.elapsed if elapsed is None else elapsed
    return elapsed / self.cost_done * max(0.0, self.total_cost - self.cost_done)

  def update(self, what: str = "", cost: float = 1.0, n: int = 1) -> str:
    """Marks `n` items done (together costing `cost`); prints and returns the line."""
    self.count += n
    self.cost_done += cost
    elapsed = self.elapsed
    eta = self.eta(elapsed)
    left = "done" if self.count >= self.total else (
        f"ETA {duration(eta)}" if eta is not None else "ETA ?")
    line = (f"{self.desc} [{self.count}/{self.total}]" + (f" {what}" if what else "")
            + f"; {duration(elapsed)} elapsed, {left}")
    print(line, file=self._out, flush=True)
    return line
