"""What a person watching the run sees: a tqdm bar on a terminal, else one line per interval."""

from __future__ import annotations

import sys


class Console:
  """`mode`: auto (a bar on a tty) | bar | lines. Only the main process prints."""

  def __init__(self, *, total: int, initial: int, mode: str = "auto", enabled: bool = True):
    self.enabled = enabled
    self._bar = None
    if enabled and (mode == "bar" or (mode == "auto" and sys.stderr.isatty())):
      from tqdm.auto import tqdm  # pylint: disable=g-import-not-at-top
      self._bar = tqdm(total=total, initial=initial, desc="train", unit="step")

  def interval(self, step: int, m: dict) -> None:
    """One logging interval's summary `m` (loss, grad_norm, lr, tokens_per_s[, mfu])."""
    if self._bar is not None:
      self._bar.set_postfix(loss=f"{m['loss']:.3f}", tok_s=f"{m['tokens_per_s']:.0f}")
    elif self.enabled:
      print(f"step {step:6d}  loss {m['loss']:.4f}  grad_norm {m['grad_norm']:.3f}  "
            f"lr {m['lr']:.2e}  tok/s {m['tokens_per_s']:.0f}"
            + (f"  mfu {m['mfu']:.1%}" if "mfu" in m else ""), flush=True)

  def line(self, text: str) -> None:
    """A line of its own (held-out losses, a finished run), above the bar if there is one."""
    if self._bar is not None:
      self._bar.write(text)
    elif self.enabled:
      print(text, flush=True)

  def advance(self) -> None:
    if self._bar is not None:
      self._bar.update(1)

  def moved(self, step: int) -> None:
    """The step counter jumped (a rollback)."""
    if self._bar is not None:
      self._bar.n = step

  def close(self) -> None:
    if self._bar is not None:
      self._bar.close()
