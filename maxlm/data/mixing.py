"""Mixing packed rows of several sources by token share, on a schedule.

Written by hand because Grain's `IterDataset.mix` takes fixed proportions of
*elements*; pretraining needs (a) shares of *tokens*, (b) weights that change
with the training step (annealing, long-context stages, replay), (c) sources
that run out (epoch caps) or are down-weighted as they are reused, and (d) a
count of how often each document was served, saved with the checkpoint.

Selection is deterministic "largest deficit first": every source holds a credit
= (tokens it should have had) - (tokens it had); each row goes to the active
source with the largest credit, then all credits move by the row's real tokens
times the current weights. With fixed weights every source stays within one
row of its share at all times, so a share over 10k rows is exact to ~1e-4.
The weights are a pure function of the step (rows emitted // rows per step)
and of the saved state, so a resumed run emits exactly the same rows.

Online mixing (maxlm/data/online_mixing.py) is one more schedule source:
`set_online(from_step, weights, rule_state)` replaces the scheduled weights
from that step on; the entries and the rule's state are part of this
iterator's state, so a checkpoint restores the trajectory.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
from typing import Sequence

import grain
import numpy as np

# The schedule (stages, weights per step) has its own light module, so that checking a data
# config (maxlm.data.config.validate, every prepare and training start-up) imports no grain.
from maxlm.data.schedule import Stage, make_stages, weights_at  # noqa: F401  (re-exported)

STATE_KEY = "maxlm_mix"  # marks this stage's state inside Grain's nested state


@dataclasses.dataclass(frozen=True)
class SourceInfo:
  name: str
  num_docs: int  # training documents of the source (one epoch)


class ScheduledMixIterDataset(grain.IterDataset):
  """Mixes per-source row datasets by token share on a step schedule."""

  def __init__(self, parents: Sequence[grain.IterDataset], infos: Sequence[SourceInfo],
               stages: Sequence[Stage], rows_per_step: int, reuse_decay: float = 1.0):
    super().__init__(list(parents))
    self._infos = tuple(infos)
    self._stages = tuple(stages)
    self._rows_per_step = rows_per_step
    self._reuse_decay = reuse_decay

  def __iter__(self):
    return _ScheduledMixIterator([p.__iter__() for p in self._parents], self._infos,
                                 self._stages, self._rows_per_step, self._reuse_decay)

  def __str__(self):
    return f"ScheduledMixIterDataset({[i.name for i in self._infos]})"


class _ScheduledMixIterator(grain.DatasetIterator):

  def __init__(self, parents, infos, stages, rows_per_step, reuse_decay):
    super().__init__(parents)
    self._infos = infos
    self._stages = stages
    self._rows_per_step = rows_per_step
    self._reuse_decay = reuse_decay
    n = len(infos)
    self._rows = 0
    self._credit = np.zeros(n)
    self._tokens = np.zeros(n, np.int64)
    self._exhausted = np.zeros(n, bool)
    self._served = np.zeros(n, np.int64)  # documents started, per source
    self._online = dict(entries=[], rule_state=None)  # [(from_step, weights)], online_mixing's

  def set_online(self, from_step: int, weights, rule_state=None) -> None:
    """Online-mixing weights (per source) for steps >= from_step; refuses a step already served."""
    if self._rows > from_step * self._rows_per_step:
      raise ValueError(f"online mixing: weights for step {from_step} arrive after the mixer served"
                       f" rows of step {self._rows // self._rows_per_step} (set"
                       " data.prefetch_batches=0 with data.online_mixing)")
    if len(weights) != len(self._infos) or sum(weights) <= 0:
      raise ValueError(f"online mixing: {len(weights)} weights summing to {sum(weights)} for"
                       f" {len(self._infos)} sources")
    self._online["entries"].append([int(from_step), [float(w) for w in weights]])
    self._online["rule_state"] = rule_state

  def online_state(self) -> dict:
    return self._online

  @property
  def source_names(self) -> list[str]:
    return [i.name for i in self._infos]

  def current_weights(self) -> np.ndarray:
    """Effective weights now: schedule x reuse decay, 0 for exhausted sources."""
    step = self._rows // self._rows_per_step
    w = weights_at(self._stages, step)
    live = [e for e in self._online["entries"] if e[0] <= step]
    if live:
      w = np.asarray(live[-1][1], np.float64) / sum(live[-1][1])
    epochs = self._served // np.maximum(1, [i.num_docs for i in self._infos])
    w = w * self._reuse_decay ** epochs
    w[self._exhausted] = 0
    return w / w.sum() if w.sum() > 0 else w

  def __next__(self):
    while True:
      w = self.current_weights()
      if not w.any():
        raise StopIteration
      # Largest deficit first; ties go to the first source (deterministic).
      i = int(np.argmax(np.where(w > 0, self._credit, -np.inf)))
      try:
        row = next(self._parents[i])
      except StopIteration:
        # Epoch cap reached (the source is a finite repeat): drop it from the mix.
        logging.warning("data: source %r exhausted (epoch cap) after %d rows; "
                        "its weight goes to the others", self._infos[i].name, self._rows)
        self._exhausted[i] = True
        self._credit[i] = 0.0
        continue
      break
    seg = row["inputs_segment_ids"]
    n = int(np.count_nonzero(seg))
    self._credit += w * n
    self._credit[i] -= n
    self._credit[w == 0] = 0.0  # a source switched off must not bank credit
    self._tokens[i] += n
    # A document is served when its first piece (offset 0) is emitted.
    starts = (row["doc_offsets"] == 0) & (seg > 0)
    self._served[i] += int(np.count_nonzero(starts))
    self._rows += 1
    return row

  def get_state(self):
    return {
        "parents": {inf.name: p.get_state() for inf, p in zip(self._infos, self._parents)},
        STATE_KEY: {
            "rows": self._rows,
            "rows_per_step": self._rows_per_step,
            "stages": [dataclasses.asdict(s) for s in self._stages],
            "online": copy.deepcopy(self._online),
            "sources": {
                inf.name: {"credit": float(self._credit[k]),
                           "tokens": int(self._tokens[k]),
                           "served": int(self._served[k]),
                           "exhausted": bool(self._exhausted[k]),
                           "num_docs": inf.num_docs}
                for k, inf in enumerate(self._infos)},
        },
    }

  def set_state(self, state):
    mine = state[STATE_KEY]
    names = [i.name for i in self._infos]
    if [dict(s, weights=tuple(s["weights"])) for s in mine["stages"]] != \
        [dataclasses.asdict(s) for s in self._stages]:
      # An explicit decision of whoever changed the config; say so loudly.
      logging.warning("data: mixture schedule changed on resume: was %s, now %s",
                      mine["stages"], [dataclasses.asdict(s) for s in self._stages])
    if mine["rows_per_step"] != self._rows_per_step:
      logging.warning("data: rows per step changed on resume (%d -> %d): the "
                      "schedule follows the new batch size", mine["rows_per_step"],
                      self._rows_per_step)
    self._rows = mine["rows"]
    self._online = copy.deepcopy(mine.get("online", dict(entries=[], rule_state=None)))
    for k, name in enumerate(names):
      s = mine["sources"].get(name)
      if s is None:
        logging.warning("data: source %r is new on resume; it starts from scratch", name)
        continue
      self._parents[k].set_state(state["parents"][name])
      self._credit[k] = s["credit"]
      self._tokens[k] = s["tokens"]
      self._served[k] = s["served"]
      self._exhausted[k] = s["exhausted"]
      if s["num_docs"] != self._infos[k].num_docs:
        logging.warning("data: source %r changed size on resume (%d -> %d documents)",
                        name, s["num_docs"], self._infos[k].num_docs)
    for name in set(mine["sources"]) - set(names):
      logging.warning("data: source %r was dropped from the mix on resume", name)

  def __str__(self):
    return "ScheduledMixIterator"


def find_mixer(iterator):
  """The mixing iterator inside a pipeline's chain of Grain iterators, or None."""
  if isinstance(iterator, _ScheduledMixIterator):
    return iterator
  for attr in ("_parents", "_maybe_nonnative_parent", "_parent", "_iterator"):
    parents = getattr(iterator, attr, None)
    if parents is None:
      continue
    for p in parents if isinstance(parents, (list, tuple)) else (parents,):
      found = find_mixer(p)
      if found is not None:
        return found
  return None


def find_mix_state(state) -> dict | None:
  """The mixer's own state inside a whole pipeline's nested Grain state."""
  if isinstance(state, dict):
    if STATE_KEY in state:
      return state[STATE_KEY]
    for v in state.values():
      found = find_mix_state(v)
      if found is not None:
        return found
  elif isinstance(state, (list, tuple)):
    for v in state:
      found = find_mix_state(v)
      if found is not None:
        return found
  return None


def reuse_report(iterator_or_state) -> dict:
  """Tokens, documents served and epochs per source, from an iterator or state.

  From a training iterator (reuse.HostBatches), per-document counts are
  included: 'doc_counts' indexed by doc_id - 'doc_id_lo' over the source's id
  range (held-out ids stay 0), and 'max_doc_count'. From a bare state they are
  absent (None).
  """
  state = iterator_or_state
  counts = {}
  if hasattr(state, "doc_counts"):
    counts = state.doc_counts()
  if hasattr(state, "get_state"):
    state = state.get_state()
  if isinstance(state, (str, bytes)):
    state = json.loads(state)
  mine = find_mix_state(state)
  if mine is None:
    raise ValueError("no maxlm mixer state found in this iterator state")
  out = {}
  for name, s in mine["sources"].items():
    lo, c = counts.get(name, (0, None))
    out[name] = dict(tokens=s["tokens"], docs_served=s["served"], num_docs=s["num_docs"],
                     epochs=s["served"] / max(1, s["num_docs"]),
                     max_doc_count=None if c is None else int(c.max(initial=0)),
                     exhausted=s["exhausted"], doc_counts=c, doc_id_lo=lo)
  return out


def format_reuse_report(report: dict) -> str:
  total = sum(r["tokens"] for r in report.values()) or 1
  lines = [f"{'source':16s} {'tokens':>12s} {'share':>7s} {'docs':>8s} {'served':>8s} "
           f"{'epochs':>7s} {'max/doc':>7s}"]
  for name, r in report.items():
    lines.append(f"{name:16s} {r['tokens']:12d} {r['tokens'] / total:7.1%} {r['num_docs']:8d} "
                 f"{r['docs_served']:8d} {r['epochs']:7.2f} "
                 + (f"{r['max_doc_count']:7d}" if r["max_doc_count"] is not None else "      -")
                 + ("  (capped)" if r["exhausted"] else ""))
  return "\n".join(lines)
