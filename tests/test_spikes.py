"""Loss-spike detection and the rollback policy on synthetic loss curves."""

import math

import numpy as np
import pytest

from maxlm.monitor.spikes import (SpikeConfig, SpikeMonitor, good_checkpoint, robust_band,
                                  skip_window)


def _curve(n, seed=0, noise=0.03):
  """A clean pretraining-like curve: power-law descent plus noise; grad norm ~1."""
  rng = np.random.default_rng(seed)
  steps = np.arange(1, n + 1)
  loss = 2.5 + 8.0 * steps ** -0.5 + noise * rng.standard_normal(n)
  gnorm = np.exp(0.1 * rng.standard_normal(n)) * (1 + 3 * steps ** -0.5)
  return loss, gnorm


def _run(mon, loss, gnorm, every=50, stop_at_first=True):
  """Feeds the monitor like the driver; returns the first non-ok decision (or None)."""
  for i, (l, g) in enumerate(zip(loss, gnorm)):
    step = i + 1
    d = mon.observe(step, l, g)
    if d.action != "ok" and stop_at_first:
      return d
    if step % every == 0:
      mon.saved(step)
  return None


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("method", ["mad", "ema"])
def test_clean_curve_no_false_alarm(seed, method):
  loss, gnorm = _curve(2000, seed)
  assert _run(SpikeMonitor(SpikeConfig(method=method)), loss, gnorm) is None


def test_garbage_window_high_rolls_back_and_skips():
  loss, gnorm = _curve(600)
  loss[430:440] += 4.0  # a window of random token ids: loss jumps (batch 430 -> step 431)
  gnorm[430:440] *= 5
  mon = SpikeMonitor(SpikeConfig(good_after=50, margin_steps=10))
  d = _run(mon, loss, gnorm)
  assert d.action == "rollback" and d.step == 431
  assert any("loss" in r and "above" in r for r in d.reasons)
  # Checkpoint 400's 50-step window (400, 450] holds the spike, so it is not
  # good yet; 350's passed: restore 350, skip its batches through the spike + 10.
  assert d.restore_step == 350 and d.skip == (350, 441)
  ev = d.event()
  assert ev["skip_batches"] == [350, 441] and ev["thresholds"]["loss"][1] < loss[430]
  mon.rolled_back(d)
  assert mon.rollbacks == 1 and mon.saved_steps[-1] == 350
  # The replay after the restore, on clean data, raises nothing.
  clean, cg = _curve(600, seed=1)
  for step in range(351, 600):
    assert mon.observe(step, clean[step - 1], cg[step - 1]).action == "ok"


def test_newline_window_low_is_a_spike():
  loss, gnorm = _curve(600)
  loss[500:520] = 0.05  # a window of newlines: trivially predictable
  d = _run(SpikeMonitor(SpikeConfig()), loss, gnorm)
  assert d.step == 501 and "below" in d.reasons[0]


def test_non_finite_is_always_a_spike_even_in_warmup():
  mon = SpikeMonitor(SpikeConfig(action="skip", warmup=100))
  assert mon.observe(1, 5.0, 1.0).action == "ok"
  d = mon.observe(2, float("nan"), 1.0)
  assert d.action == "skip" and "nan" in d.reasons[0]
  assert mon.observe(3, 5.0, float("inf")).action == "skip"
  assert len(mon.histories["loss"]) == 1  # spikes never enter the history


def test_grad_norm_spike_alone():
  loss, gnorm = _curve(400)
  gnorm[300] *= 50
  d = _run(SpikeMonitor(SpikeConfig(action="log")), loss, gnorm)
  assert d.step == 301 and d.action == "log" and d.reasons[0].startswith("grad_norm")


def test_rollback_cap_and_no_good_checkpoint_stop():
  mon = SpikeMonitor(SpikeConfig(warmup=10, good_after=5, max_rollbacks=1))
  for s in range(1, 21):
    mon.observe(s, 3.0 + 0.01 * (s % 3), 1.0)
  d = mon.observe(21, 100.0, 1.0)
  assert d.action == "stop" and "no good checkpoint" in d.message
  mon.saved(10)
  d = mon.observe(22, 100.0, 1.0)
  assert d.action == "rollback" and d.restore_step == 10
  mon.rolled_back(d)
  for s in range(11, 20):
    mon.observe(s, 3.0, 1.0)
  d = mon.observe(20, 100.0, 1.0)
  assert d.action == "stop" and "max_rollbacks" in d.message


def test_late_observation_ignores_checkpoints_after_the_spike():
  # The driver observes at log intervals: a save at 440 can precede the
  # observation of the spike at 431; it holds the spiked update, so never use it.
  loss, gnorm = _curve(600)
  loss[430] += 5.0
  mon = SpikeMonitor(SpikeConfig(good_after=20))
  for s in range(1, 431):
    assert mon.observe(s, loss[s - 1], gnorm[s - 1]).action == "ok"
    if s % 20 == 0:
      mon.saved(s)
  mon.saved(440)
  d = mon.observe(431, loss[430], gnorm[430])
  assert d.action == "rollback" and d.restore_step == 400


def test_pure_helpers():
  c, lo, hi = robust_band([1, 2, 3, 4, 100], 3, 3)
  assert c == 3 and math.isclose(hi - c, 3 * 1.4826) and math.isclose(c - lo, 3 * 1.4826)
  # Checkpoint 100's window (100, 150] holds the spike at 120, so 50 is the good one.
  assert good_checkpoint([50, 100, 150], [120], 160, 50) == 50
  assert good_checkpoint([50, 100], [], 140, 50) == 50  # 100's window is not over yet
  assert skip_window(400, 431, 10) == (400, 441)
  with pytest.raises(ValueError, match="monitor.spikes.action"):
    SpikeMonitor(SpikeConfig(action="explode"))
