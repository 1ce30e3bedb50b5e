"""Host-side summary of a logging interval: means, per-domain losses, throughput, MFU."""

from __future__ import annotations

import numpy as np

from maxlm.monitor import mfu

# Metrics the summary treats itself rather than as a plain mean.
_OWN = ("loss", "grad_norm", "lr", "tokens", "domain_loss_sum", "domain_count")


def interval_summary(ms: list[dict], domains, *, elapsed_s: float, tokens_per_step: int,
                     fpt: float, n_devices: int) -> dict:
  """Means over the steps `ms` of one interval (host metrics of train_step)."""
  out = {k: float(np.mean([m[k] for m in ms])) for k in ("loss", "grad_norm", "lr")}
  # Any other scalar the step reports (per-group grad norms, update ratio, max
  # logit, skipped, z_loss) is averaged too; `skipped` as a mean is the share skipped.
  out.update({k: float(np.mean([m[k] for m in ms])) for k in ms[0]
              if k not in _OWN and np.ndim(ms[0][k]) == 0})
  dsum = np.sum([m["domain_loss_sum"] for m in ms], axis=0)
  dcnt = np.sum([m["domain_count"] for m in ms], axis=0)
  for i, name in enumerate(domains):
    if dcnt[i] > 0:
      out[f"train/{name}/loss"] = float(dsum[i] / dcnt[i])
  step_s = elapsed_s / len(ms)
  out["step_s"] = step_s
  out["tokens_per_s"] = tokens_per_step / step_s
  u = mfu(out["tokens_per_s"], fpt, n_devices)
  if u is not None:
    out["mfu"] = u
  return out
