"""Progress of an evaluation: '<what> [k/n] <unit>; elapsed, ETA' on stderr, about ten lines.

Scoring reports every batch it reads back (maxlm.eval.scoring's `progress`);
a line per batch would bury the result under hundreds of lines, so this
prints when another tenth of the total is done, and always the last one
(whose count is the whole total: the number the summary after it is over).
Only process 0 prints; the others count silently, so a multi-host run shows
one set of lines.
"""

from __future__ import annotations

import jax

from maxlm.monitor.progress import Progress


class EvalProgress:
  """`update(n=k)`: k more of `total` items done; prints at each tenth and at the end."""

  def __init__(self, total: int, *, desc: str, unit: str, lines: int = 10, out=None):
    self.total, self.unit = int(total), unit
    self._step = max(1, -(-self.total // max(1, lines)))
    self._pending, self._next = 0, self._step
    self._line = Progress(self.total, desc=desc, out=out) if jax.process_index() == 0 else None
    self.count = 0
    self.last_line: str | None = None

  def update(self, n: int = 1) -> None:
    self.count += n
    self._pending += n
    if self.count >= self._next or self.count >= self.total:
      if self._line is not None:
        self.last_line = self._line.update(self.unit, cost=self._pending, n=self._pending)
      self._pending = 0
      while self._next <= self.count:
        self._next += self._step


def maybe(enabled: bool, total: int, *, desc: str, unit: str) -> EvalProgress | None:
  """An EvalProgress when `enabled` and there is something to count, else None (quiet)."""
  return EvalProgress(total, desc=desc, unit=unit) if enabled and total > 0 else None
