"""Online data mixing: source weights that follow the training signal, inside the run.

Every `update_every` steps the run measures a loss per domain (held-out, on
the live params) and a rule turns the losses into new domain weights. The
rules are pure functions of (their state, the losses): numpy only, no jax, so
they are unit-tested by hand and their state is a small JSON dict that is
saved with the data iterator's state (a resumed run continues the same
trajectory; see maxlm/data/mixing.py `set_online`).

Rules (`rule`):
  doremi  DoReMi's exponentiated-gradient step (Xie et al. 2023, arXiv:2305.10429,
          Algorithm 1) on the excess loss over a reference run:
            lambda_d = max(L_d - L_ref_d, 0)
            log a_d  += eta * lambda_d ;  a = softmax(log a)
          L_ref comes from a finished run's metrics.jsonl (its last record with
          every `eval/<domain>/loss`). Domains the model has not yet caught up
          on (largest excess) gain weight.
  odm     Online Data Mixing (Albalak et al. 2023, arXiv:2312.02406): an EXP3
          bandit whose arms are domains. Reward = the loss reduction of the
          domain since the previous update (for the first update, since the
          uniform predictor, log V), importance-weighted by the arm's current
          probability and smoothed:  R_d <- beta R_d + (1 - beta) r_d / pi_d;
          pi = (1 - D eps) softmax(eta R) + eps  (eps: exploration).
Then, for either rule, the output weights are smoothed across updates and
floored:
  w = smoothing * w_prev + (1 - smoothing) * w_rule      (an EMA; 0 = no memory)
  w = floor + (1 - D * floor) * w                         (each domain >= floor)
A domain's weight is split over its sources in proportion to their base
weights (`data.sources.<name>.weight`), equally when those are all 0.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from typing import Mapping, Sequence

import numpy as np

RULES = ("doremi", "odm")


@dataclasses.dataclass(frozen=True)
class MixingConfig:
  rule: str  # one of RULES
  domains: tuple[str, ...]  # the arms, in domain-id order
  eta: float = 1.0  # step size of the exponentiated gradient / bandit temperature
  smoothing: float = 0.0  # EMA factor on the output weights across updates, in [0, 1)
  floor: float = 0.0  # minimum weight per domain; D * floor < 1
  reference: Mapping[str, float] | None = None  # doremi: reference loss per domain
  beta: float = 0.9  # odm: smoothing of the estimated reward
  exploration: float = 0.0  # odm: eps, the probability mass spread uniformly
  initial_loss: float | None = None  # odm: the loss "before" the first update (log V)

  def validate(self, where: str = "data.online_mixing") -> None:
    D = len(self.domains)
    if self.rule not in RULES:
      raise ValueError(f"{where}.rule={self.rule!r} is not one of {RULES}")
    if not 0 <= self.smoothing < 1:
      raise ValueError(f"{where}.smoothing={self.smoothing} must be in [0, 1)")
    if self.floor < 0 or D * self.floor >= 1:
      raise ValueError(f"{where}.floor={self.floor} must be >= 0 with {D} domains x floor < 1")
    if self.eta <= 0:
      raise ValueError(f"{where}.eta={self.eta} must be > 0")
    if self.rule == "doremi":
      missing = sorted(set(self.domains) - set(self.reference or {}))
      if missing:
        raise ValueError(f"{where}.reference_metrics has no loss for domains {missing}")
    if self.rule == "odm":
      if not 0 <= self.beta < 1:
        raise ValueError(f"{where}.beta={self.beta} must be in [0, 1)")
      if self.exploration < 0 or D * self.exploration >= 1:
        raise ValueError(f"{where}.exploration={self.exploration} must be >= 0 with"
                         f" {D} domains x exploration < 1")
      if self.initial_loss is None:
        raise ValueError(f"{where}: odm needs initial_loss (log of the vocabulary size)")


def initial_state(cfg: MixingConfig, weights: Sequence[float]) -> dict:
  """The rule's state before any update; `weights` are the starting domain weights."""
  w = np.asarray(weights, np.float64)
  w = w / w.sum()
  state = dict(rule=cfg.rule, updates=0, weights=w.tolist())
  if cfg.rule == "doremi":
    state["log_alpha"] = np.log(np.maximum(w, 1e-300)).tolist()
  else:
    state["reward"] = [0.0] * len(w)
    state["prev_loss"] = [float(cfg.initial_loss)] * len(w)
  return state


def _floor(cfg: MixingConfig, w: np.ndarray) -> np.ndarray:
  return cfg.floor + (1 - len(w) * cfg.floor) * w / w.sum()


def _softmax(x: np.ndarray) -> np.ndarray:
  e = np.exp(x - x.max())
  return e / e.sum()


def update(cfg: MixingConfig, state: dict, losses: Mapping[str, float]) -> dict:
  """One update: (state, {domain: loss}) -> new state (its 'weights' are the new domain weights)."""
  if state["rule"] != cfg.rule:
    raise ValueError(f"online mixing state is for rule {state['rule']!r}, config says {cfg.rule!r}")
  missing = [d for d in cfg.domains if d not in losses or not math.isfinite(losses[d])]
  if missing:
    raise ValueError(f"online mixing: no finite loss for domains {missing} (got {dict(losses)})")
  L = np.asarray([losses[d] for d in cfg.domains], np.float64)
  w_prev = np.asarray(state["weights"], np.float64)
  new = dict(state, updates=state["updates"] + 1)
  if cfg.rule == "doremi":
    ref = np.asarray([cfg.reference[d] for d in cfg.domains], np.float64)
    excess = np.maximum(L - ref, 0.0)
    log_alpha = np.asarray(state["log_alpha"]) + cfg.eta * excess
    log_alpha -= log_alpha.max()  # renormalised in log space: no overflow over long runs
    new["log_alpha"] = log_alpha.tolist()
    new["excess"] = excess.tolist()
    w_rule = _softmax(log_alpha)
  else:
    gain = np.asarray(state["prev_loss"]) - L  # loss reduction since the last update
    reward = cfg.beta * np.asarray(state["reward"]) + (1 - cfg.beta) * gain / w_prev
    new["reward"], new["prev_loss"], new["gain"] = reward.tolist(), L.tolist(), gain.tolist()
    D = len(L)
    w_rule = (1 - D * cfg.exploration) * _softmax(cfg.eta * reward) + cfg.exploration
  w = _floor(cfg, cfg.smoothing * w_prev + (1 - cfg.smoothing) * w_rule)
  new["weights"] = w.tolist()
  return new


def source_weights(domain_weights: Sequence[float], domains: Sequence[str],
                   source_domains: Sequence[str], base_weights: Sequence[float]) -> list[float]:
  """Domain weights -> per-source weights (split within a domain by base weight)."""
  out = []
  for dom, base in zip(source_domains, base_weights):
    peers = [b for d, b in zip(source_domains, base_weights) if d == dom]
    share = base / sum(peers) if sum(peers) > 0 else 1.0 / len(peers)
    out.append(float(domain_weights[list(domains).index(dom)] * share))
  return out


def from_data_config(data_config, vocab_size: int) -> MixingConfig | None:
  """MixingConfig from `data.online_mixing` (None when no rule is set); reads the reference run."""
  from maxlm.data import config as config_lib  # pylint: disable=g-import-not-at-top
  om = data_config.get("online_mixing")
  if not om or not om.get("rule"):
    return None
  domains = tuple(config_lib.domain_names(data_config))
  reference = None
  if om.rule == "doremi":
    reference = reference_losses(om.reference_metrics, domains, om.get("reference_key",
                                                                       "eval/{domain}/loss"))
  cfg = MixingConfig(rule=om.rule, domains=domains, eta=float(om.eta),
                     smoothing=float(om.smoothing), floor=float(om.floor), reference=reference,
                     beta=float(om.beta), exploration=float(om.exploration),
                     initial_loss=math.log(vocab_size))
  cfg.validate()
  return cfg


def schedule_for(data_config) -> tuple:
  """The mixture schedule the run follows: data.schedule, or a recorded trajectory to replay."""
  om = data_config.get("online_mixing")
  if om and om.get("replay"):
    from maxlm.data import config as config_lib  # pylint: disable=g-import-not-at-top
    return recorded_schedule(om.replay, [s["name"] for s in config_lib.iter_sources(data_config)])
  return tuple(data_config.get("schedule", ()))


# ---------------------------------------------------------------------------
# Reading runs' metrics.jsonl: a reference run's losses, a recorded trajectory.

def _records(metrics_path: str):
  if os.path.isdir(metrics_path):
    metrics_path = os.path.join(metrics_path, "metrics.jsonl")
  if not os.path.exists(metrics_path):
    raise FileNotFoundError(f"online mixing: {metrics_path} does not exist")
  with open(metrics_path) as f:
    for n, line in enumerate(f, 1):
      if line.strip():
        try:
          yield json.loads(line)
        except json.JSONDecodeError as e:
          raise ValueError(f"{metrics_path}:{n}: not JSON ({e})") from None


def reference_losses(metrics_path: str, domains: Sequence[str],
                     key: str = "eval/{domain}/loss") -> dict[str, float]:
  """{domain: loss} from the last record of a run's metrics.jsonl that has every domain's key."""
  found = None
  for rec in _records(metrics_path):
    if all(key.format(domain=d) in rec for d in domains):
      found = {d: float(rec[key.format(domain=d)]) for d in domains}
  if found is None:
    raise ValueError(f"online mixing: {metrics_path} has no record with "
                     f"{[key.format(domain=d) for d in domains]}")
  return found


WEIGHT_KEY = "mix/{source}"  # the metric each update logs per source


def recorded_schedule(metrics_path: str, sources: Sequence[str]) -> tuple[dict, ...]:
  """A recorded trajectory as a fixed `data.schedule`: one 'switch' stage per update.

  Reads the `mix/<source>` weights an online-mixing run logged at each update
  step; feeding the result to data.schedule replays exactly those weights.
  """
  stages = []
  for rec in _records(metrics_path):
    keys = [WEIGHT_KEY.format(source=s) for s in sources]
    if all(k in rec for k in keys):
      step = int(rec["step"])
      entry = dict(start=step, unit="step", transition="switch",
                   weights={s: float(rec[k]) for s, k in zip(sources, keys)})
      if stages and stages[-1]["start"] == step:
        stages[-1] = entry  # the same step written twice (a resume): the later one wins
      else:
        stages.append(entry)
  if not stages:
    raise ValueError(f"online mixing: {metrics_path} holds no mix/<source> weights for {list(sources)}")
  return tuple(stages)


# ---------------------------------------------------------------------------
# The updater the training loop calls as a hook.

class Updater:
  """`fn(step, state) -> metrics` for the loop's Hook: measure, update, hand the mixer new weights.

  `domain_losses(params) -> {domain: loss}` is supplied by the composition root
  (held-out loss on the live params; this module never imports the model).
  The rule's state lives in the mixer's iterator state (mixing.set_online), so
  whatever restores the data iterator restores the trajectory too.
  """

  def __init__(self, cfg: MixingConfig, mixer, *, source_names: Sequence[str],
               source_domains: Sequence[str], base_weights: Sequence[float], domain_losses,
               plot_path: str | None = None):
    self.cfg, self.mixer, self.plot_path = cfg, mixer, plot_path
    self.source_names, self.source_domains = tuple(source_names), tuple(source_domains)
    self.base_weights = tuple(base_weights)
    self.domain_losses = domain_losses

  def _domain_weights_now(self) -> list[float]:
    w = self.mixer.current_weights()
    return [float(sum(x for x, d in zip(w, self.source_domains) if d == dom))
            for dom in self.cfg.domains]

  def __call__(self, step: int, state) -> dict:
    losses = self.domain_losses(state["params"])
    rule_state = self.mixer.online_state()["rule_state"]
    if rule_state is None:  # first update: start from the weights in effect now
      rule_state = initial_state(self.cfg, self._domain_weights_now())
    new = update(self.cfg, rule_state, losses)
    weights = source_weights(new["weights"], self.cfg.domains, self.source_domains,
                             self.base_weights)
    self.mixer.set_online(step, weights, new)
    if self.plot_path:
      self.plot()
    out = {WEIGHT_KEY.format(source=s): w for s, w in zip(self.source_names, weights)}
    out.update({f"mix_domain/{d}": w for d, w in zip(self.cfg.domains, new["weights"])})
    out.update({f"mix_loss/{d}": float(losses[d]) for d in self.cfg.domains})
    return out

  def plot(self) -> str:
    """Source weights over steps (from the mixer's saved entries, so a resumed run's plot is whole)."""
    from maxlm.monitor.plots import plot_prefix  # pylint: disable=g-import-not-at-top
    rows = [dict(step=step, **{WEIGHT_KEY.format(source=n): w for n, w in zip(self.source_names, ws)})
            for step, ws in self.mixer.online_state()["entries"]]
    return plot_prefix(rows, "mix/", self.plot_path, title=f"online mixing ({self.cfg.rule})",
                       ylabel="source weight")


def make_updater(data_config, train_iter, *, vocab_size: int, domain_losses,
                 workdir: str | None = None) -> Updater | None:
  """The Updater for `data.online_mixing` over this run's train iterator (None when off)."""
  from maxlm.data import config as config_lib  # pylint: disable=g-import-not-at-top
  from maxlm.data import mixing  # pylint: disable=g-import-not-at-top
  cfg = from_data_config(data_config, vocab_size)
  if cfg is None:
    return None
  mixer = mixing.find_mixer(train_iter)
  if mixer is None:
    raise ValueError("data.online_mixing: the train iterator has no mixer to update")
  by_name = {s["name"]: s for s in config_lib.iter_sources(data_config)}
  srcs = [by_name[n] for n in mixer.source_names]  # the mixer's order is the weights' order
  return Updater(cfg, mixer, source_names=[s["name"] for s in srcs],
                 source_domains=[s["domain"] for s in srcs],
                 base_weights=[float(s["weight"]) for s in srcs], domain_losses=domain_losses,
                 plot_path=os.path.join(workdir, "mixing.png") if workdir else None)
