"""The loss seam and the loop's hooks.

train_step(..., loss_fn): the default loss is the old next-token step bit for
bit; a loss's `<name>_sum` terms are logged as `<name>`; distillation runs
through the same step, so a NaN in a distillation batch is refused in the step
(params and optimizer state bit-identical) and microbatches accumulate like
one big batch. The loop calls hooks on their schedule and at the end, writes
what they return and keeps their time out of the throughput.
"""
import dataclasses
import functools
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

import maxlm
from maxlm.distill import distill_loss, losses as distill_losses
from maxlm.model import forward, init_params
from maxlm.optim import make_optimizer
from maxlm.run import cli
from maxlm.run import distill as distill_run
from maxlm.run.pretrain import z_loss_weight
from maxlm.train import loop
from maxlm.train.losses import next_token_loss
from maxlm.train.rollback import SpikeGuard, Verdict
from maxlm.train.step import accumulate, train_step

from conftest import random_batch

CFG = maxlm.ModelConfig(vocab_size=64, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2,
                        head_dim=8, d_ff=64)
TEACHER = dataclasses.replace(CFG, d_model=48, n_layers=1)
B, T, K = 4, 16, 8


def _batch(seed=0):
  return random_batch(seed, B, T, CFG.vocab_size, num_domains=2)


def _state(seed=0):
  tx, sched = make_optimizer(peak_lr=1e-2, schedule=dict(name="constant", warmup_steps=0),
                             total_steps=10)
  params = init_params(CFG, jax.random.PRNGKey(seed))
  state = dict(params=params, opt_state=tx.init(params), step=jnp.zeros((), jnp.int32),
               rng=jax.random.PRNGKey(seed))
  return state, tx, sched


def _leaves_equal(a, b):
  return all(np.array_equal(np.asarray(x), np.asarray(y))
             for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def test_default_loss_fn_is_the_model_config_shorthand_bit_for_bit():
  state, tx, sched = _state()
  b = _batch()
  common = dict(tx=tx, schedule=sched, microbatches=1)
  s1, m1 = jax.jit(functools.partial(train_step, loss_fn=next_token_loss(CFG, 2), **common))(
      state, b)
  s2, m2 = jax.jit(functools.partial(train_step, model_config=CFG, num_domains=2, **common))(
      state, b)
  assert _leaves_equal(s1, s2) and float(m1["loss"]) == float(m2["loss"])
  # The logged loss is the masked mean cross entropy, computed here with numpy.
  logits = np.asarray(forward(CFG, state["params"], b["inputs"]), np.float64)
  m = logits.max(-1, keepdims=True)
  log_z = (m + np.log(np.exp(logits - m).sum(-1, keepdims=True)))[..., 0]
  nll = log_z - np.take_along_axis(logits, b["targets"][..., None], -1)[..., 0]
  want = (nll * b["loss_mask"]).sum() / b["loss_mask"].sum()
  np.testing.assert_allclose(float(m1["loss"]), want, rtol=1e-5)
  with pytest.raises(TypeError, match="loss_fn"):
    train_step(state, b, tx=tx, schedule=sched)


def test_a_loss_fn_s_sums_are_logged_per_token_and_loss_sum_is_the_logged_loss():
  state, tx, sched = _state()
  base = next_token_loss(CFG, 2)

  def loss_fn(params, batch, rng):
    total, aux = base(params, batch, rng)
    # An extra term of 0.25 per scored token, reported as `extra`, and the objective as `loss`.
    aux = dict(aux, extra_sum=0.25 * aux["count"], loss_sum=total + 0.25 * aux["count"])
    return total + 0.25 * aux["count"], aux

  step = jax.jit(functools.partial(train_step, loss_fn=loss_fn, tx=tx, schedule=sched))
  _, m = step(state, _batch())
  _, m0 = jax.jit(functools.partial(train_step, loss_fn=base, tx=tx, schedule=sched))(
      state, _batch())
  np.testing.assert_allclose(float(m["extra"]), 0.25, rtol=1e-6)
  np.testing.assert_allclose(float(m["loss"]), float(m0["loss"]) + 0.25, rtol=1e-6)
  # A constant per token does not change the gradient.
  np.testing.assert_allclose(float(m["grad_norm"]), float(m0["grad_norm"]), rtol=1e-6)


def _distill_step(teacher_params, loss, **kw):
  state, tx, sched = _state()
  fn = functools.partial(distill_run._step, loss_kw=dict(  # pylint: disable=protected-access
      model_config=CFG, teacher_config=TEACHER, num_domains=2, loss=loss, temperature=1.0,
      top_k=K, afm_teacher_weight=0.9), alpha=0.5, alpha_end=-1.0, total_steps=10, tx=tx,
      schedule=sched, **kw)
  return state, jax.jit(fn)


def _offline_batch(seed=0, poison=False):
  b = _batch(seed)
  t_params = init_params(TEACHER, jax.random.PRNGKey(7))
  ids, lps = distill_losses.teacher_topk(forward(TEACHER, t_params, b["inputs"]), K)
  lps = np.asarray(lps, np.float32).copy()
  if poison:
    lps[1, 3, 0] = np.nan  # one corrupt value in a precomputed top-k store
  return dict(b, teacher_ids=np.asarray(ids), teacher_logprobs=lps)


def test_a_nan_in_a_distillation_batch_never_reaches_the_params():
  state, step = _distill_step(None, "topk")
  before = jax.tree.map(np.asarray, state)
  new, m = step(state, _offline_batch(poison=True), None, None)
  assert int(m["skipped"]) == 1 and not np.isfinite(float(m["loss"]))
  assert _leaves_equal(new["params"], before["params"])
  assert _leaves_equal(new["opt_state"], before["opt_state"])
  assert int(new["step"]) == 1  # the step counter still advances
  # The same batch without the NaN is applied, with the step's metrics.
  new, m = step(jax.tree.map(jnp.asarray, before), _offline_batch(), None, None)
  assert int(m["skipped"]) == 0 and np.isfinite(float(m["loss"]))
  assert not _leaves_equal(new["params"], before["params"])
  assert {"grad_norm/attention", "update_rms_ratio", "distill", "alpha"} <= set(m)
  np.testing.assert_allclose(float(m["alpha"]), 0.5, rtol=1e-6)


def test_online_distillation_step_matches_its_loss_and_accumulates_like_one_batch():
  t_params = init_params(TEACHER, jax.random.PRNGKey(7))
  b = _batch(3)
  state, one = _distill_step(t_params, "kl")
  _, two = _distill_step(t_params, "kl", microbatches=2)
  _, m1 = one(state, b, None, t_params)
  _, m2 = two(state, b, None, t_params)
  # The logged loss is the objective: 0.5 CE + 0.5 KL, here from the loss function itself.
  obj, aux = distill_loss(t_params, model_config=CFG, teacher_config=TEACHER, num_domains=2,
                          loss="kl", alpha=0.5)(state["params"], b, None)
  np.testing.assert_allclose(float(m1["loss"]), float(obj / aux["count"]), rtol=1e-5)
  np.testing.assert_allclose(float(m2["loss"]), float(m1["loss"]), rtol=1e-5)
  np.testing.assert_allclose(float(m2["grad_norm"]), float(m1["grad_norm"]), rtol=1e-4)
  # The accumulated gradient is the one-batch gradient (float32 sums in another order:
  # compared against each leaf's scale).
  fn = distill_loss(t_params, model_config=CFG, teacher_config=TEACHER, num_domains=2, loss="kl")
  rng = jax.random.PRNGKey(0)
  (_, _), g1 = accumulate(state["params"], b, 1, fn, rng)
  (_, _), g2 = accumulate(state["params"], b, 2, fn, rng)
  for x, y in zip(jax.tree.leaves(g1), jax.tree.leaves(g2)):
    np.testing.assert_allclose(np.asarray(y), np.asarray(x), atol=1e-5 * np.abs(x).max())


def test_z_loss_is_read_from_train_with_model_z_loss_as_deprecated_alias(caplog):
  def cfg(train_z, model_z=None):
    c = ml_collections.ConfigDict(dict(train=dict(z_loss=train_z), model=dict(d_model=8)))
    if model_z is not None:
      c.model.z_loss = model_z
    return c
  assert z_loss_weight(cfg(1e-4)) == 1e-4
  assert z_loss_weight(cfg(0.0)) == 0.0
  with caplog.at_level("WARNING"):
    assert z_loss_weight(cfg(0.0, 1e-3)) == 1e-3
  assert any("deprecated" in r.getMessage() for r in caplog.records)
  with pytest.raises(ValueError, match="disagree"):
    z_loss_weight(cfg(1e-4, 1e-3))


# ------------------------------------------------------------------ the loop


class _Writer:
  def __init__(self):
    self.rows = []

  def write(self, step, metrics):
    self.rows.append(dict(metrics, step=step))


class _Console:
  def interval(self, step, m): pass
  def line(self, text): pass
  def advance(self): pass
  def moved(self, step): pass


def _fake_run(steps, hooks, guard=None, log_every=2, elapsed=None):
  """A loop.Run over a counter: the step adds the batch to state['x']."""
  saved = []

  def summarise(host, step, elapsed_s):
    if elapsed is not None:
      elapsed.append(elapsed_s)
    return dict(loss=float(np.mean([m["loss"] for m in host])))

  run = loop.Run(
      state=dict(x=0), start_step=0, steps=steps,
      step_fn=lambda st, batch, limits: (dict(x=st["x"] + batch), dict(loss=float(batch))),
      next_batch=lambda step: step + 1,
      save=lambda step, st, force: saved.append((step, force)) or force,
      summarise=summarise, writer=_Writer(), console=_Console(),
      guard=guard or SpikeGuard(None), mesh=jax.sharding.Mesh(np.array(jax.devices()[:1]), ("d",)),
      log_every=log_every, hooks=hooks)
  return run, saved


def test_hooks_run_on_their_schedule_and_at_the_end_and_their_metrics_are_written():
  calls = []
  every3 = loop.Hook(every=3, fn=lambda step, st: calls.append(("a", step, st["x"])) or
                     {"a/x": st["x"]}, name="a")
  end_only = loop.Hook(every=0, fn=lambda step, st: calls.append(("b", step, st["x"])) or None,
                       name="b")
  no_end = loop.Hook(every=4, fn=lambda step, st: calls.append(("c", step, st["x"])) or None,
                     name="c", at_end=False)
  run, saved = _fake_run(7, [every3, end_only, no_end])
  out = loop.train(run)
  assert out.finished and out.step == 7 and out.state["x"] == sum(range(1, 8))
  # Steps 3 and 6 (not 7: the end call covers it), 4 for `c`; at the end a and b, not c.
  assert calls == [("a", 3, 6), ("c", 4, 10), ("a", 6, 21), ("a", 7, 28), ("b", 7, 28)]
  assert [(r["step"], r["a/x"]) for r in run.writer.rows if "a/x" in r] == [(3, 6), (6, 21),
                                                                            (7, 28)]
  assert out.last["a/x"] == 28  # the final hooks' metrics reach the run's summary
  assert saved[-1] == (7, True)  # the final save is forced


def test_hook_time_is_not_training_time():
  elapsed = []
  slow = loop.Hook(every=1, fn=lambda step, st: time.sleep(0.2), name="slow", at_end=False)
  run, _ = _fake_run(4, [slow], log_every=2, elapsed=elapsed)
  loop.train(run)
  assert len(elapsed) == 2 and max(elapsed) < 0.15, elapsed  # each interval held a 0.2 s hook


def test_a_stopping_guard_ends_the_run_with_its_reason_and_the_cli_exits_nonzero():
  class Stop(SpikeGuard):
    def check(self, step, host):
      return Verdict("stop", "spike at step 4: stopping as configured") if step == 4 else None
  run, saved = _fake_run(10, [], guard=Stop(None))
  out = loop.train(run)
  assert not out.finished and out.step == 4 and saved[-1] == (4, True)
  assert out.stopped == "spike at step 4: stopping as configured"
  summary = dict(step=4, stopped=out.stopped, preempted=True, final_loss=4.0)
  assert cli.failure([summary]) == "stopped at step 4: spike at step 4: stopping as configured"
  assert "loss is nan" in cli.failure([dict(step=9, preempted=False, final_loss=float("nan"))])
  assert cli.failure([dict(step=9, preempted=False, final_loss=2.0)]) is None
  assert cli.failure([dict(step=3, preempted=True, final_loss=2.0)]) is None  # resumable
