"""The mixture schedule: stages of source weights, and the weights at a step.

A pure function of the step (no iterator, no grain), shared by the mixer
(maxlm/data/mixing.py, which re-exports it) and the data config's check
(maxlm/data/config.py), which runs at every prepare and training start-up.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np


@dataclasses.dataclass(frozen=True)
class Stage:
  start: int  # first step of the stage
  weights: tuple[float, ...]  # per source, in source order (unnormalised)
  linear: bool = False  # ramp linearly from the previous stage's start to `start`


def make_stages(base_weights: Sequence[float], names: Sequence[str], schedule,
                tokens_per_step: int) -> list[Stage]:
  """Config schedule -> stages in steps. Stage 0 is the sources' own weights.

  Each schedule entry: dict(start=..., unit='step'|'tokens',
  weights={source: w}, transition='switch'|'linear'); a source missing from
  `weights` gets 0. 'tokens' counts global tokens (rows x seq_len).
  """
  stages = [Stage(0, tuple(float(w) for w in base_weights))]
  for i, e in enumerate(schedule or ()):
    e = dict(e.to_dict() if hasattr(e, "to_dict") else e)
    unit = e.get("unit", "step")
    if unit not in ("step", "tokens"):
      raise ValueError(f"data.schedule[{i}].unit={unit!r}: expected 'step' or 'tokens'")
    start = int(e["start"]) if unit == "step" else int(e["start"]) // tokens_per_step
    unknown = set(e["weights"]) - set(names)
    if unknown:
      raise ValueError(f"data.schedule[{i}].weights names unknown sources {sorted(unknown)}")
    if e.get("transition", "switch") not in ("switch", "linear"):
      raise ValueError(f"data.schedule[{i}].transition={e.get('transition')!r}: "
                       "expected 'switch' or 'linear'")
    if start <= stages[-1].start:
      raise ValueError(f"data.schedule[{i}].start: stages must start at increasing steps")
    w = tuple(float(e["weights"].get(n, 0.0)) for n in names)
    if sum(w) <= 0:
      raise ValueError(f"data.schedule[{i}].weights sum to 0")
    stages.append(Stage(start, w, e.get("transition", "switch") == "linear"))
  return stages


def weights_at(stages: Sequence[Stage], step: int) -> np.ndarray:
  """Normalised source weights at `step` (a pure function of step)."""
  k = max(i for i, s in enumerate(stages) if s.start <= step)
  w = np.asarray(stages[k].weights, np.float64)
  if k + 1 < len(stages) and stages[k + 1].linear:
    nxt = stages[k + 1]
    frac = (step - stages[k].start) / (nxt.start - stages[k].start)
    w = (1 - frac) * w / w.sum() + frac * np.asarray(nxt.weights) / sum(nxt.weights)
  return w / w.sum()
