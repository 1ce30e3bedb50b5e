"""Stability options and the in-step skip: z-loss, QK-norm, dropout, per-group metrics.

z-loss is checked against a NumPy log-sum-exp; the skip against bit equality of
every param and optimizer leaf before and after a refused update.
"""
import dataclasses
import os
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import maxlm
from maxlm.model import forward, init_params
from maxlm.optim import make_optimizer
from maxlm.train.step import loss_sums, train_step

from conftest import random_batch

CFG = maxlm.ModelConfig(vocab_size=64, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2,
                        head_dim=8, d_ff=64)
B, T = 4, 16


def _batch(seed=0):
  return random_batch(seed, B, T, CFG.vocab_size, num_domains=1)


def _state(cfg, seed=0):
  tx, sched = make_optimizer(peak_lr=1e-2, schedule=dict(name="constant", warmup_steps=0),
                             total_steps=10)
  params = init_params(cfg, jax.random.PRNGKey(seed))
  state = dict(params=params, opt_state=tx.init(params), step=jnp.zeros((), jnp.int32),
               rng=jax.random.PRNGKey(seed))
  step = jax.jit(functools.partial(train_step, model_config=cfg, tx=tx, schedule=sched,
                                   microbatches=1, num_domains=1))
  return state, step


def _equal_trees(a, b):
  return all(np.array_equal(np.asarray(x), np.asarray(y))
             for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


# ------------------------------------------------------------------ z-loss

def test_z_loss_matches_numpy():
  cfg = dataclasses.replace(CFG, z_loss=1e-2)
  params = init_params(cfg, jax.random.PRNGKey(0))
  b = _batch()
  total, aux = loss_sums(params, b, model_config=cfg, num_domains=1)
  logits = np.asarray(forward(cfg, params, b["inputs"]), np.float64)
  m = logits.max(-1, keepdims=True)
  log_z = (m + np.log(np.exp(logits - m).sum(-1, keepdims=True)))[..., 0]  # [B, T]
  nll = log_z - np.take_along_axis(logits, b["targets"][..., None], -1)[..., 0]
  want_z = (1e-2 * log_z ** 2 * b["loss_mask"]).sum()
  np.testing.assert_allclose(float(aux["z_loss_sum"]), want_z, rtol=1e-5)
  np.testing.assert_allclose(float(aux["nll_sum"]), (nll * b["loss_mask"]).sum(), rtol=1e-5)
  np.testing.assert_allclose(float(total), (nll * b["loss_mask"]).sum() + want_z, rtol=1e-5)
  # Off by default: no term, the objective is the cross entropy.
  total0, aux0 = loss_sums(params, b, model_config=CFG, num_domains=1)
  assert "z_loss_sum" not in aux0 and float(total0) == float(aux0["nll_sum"])


# ------------------------------------------------------------------ QK-norm

def test_qk_norm_changes_the_forward_and_has_finite_grads():
  cfg = dataclasses.replace(CFG, qk_norm=True)
  params = init_params(cfg, jax.random.PRNGKey(0))
  attn = params["layers"]["block"]["attn"]
  assert attn["q_norm"]["scale_h"].shape == (2, 8) and attn["k_norm"]["scale_h"].shape == (2, 8)
  # The same weights without the norms: a different function.
  plain = jax.tree.map(lambda x: x, params)
  del plain["layers"]["block"]["attn"]["q_norm"], plain["layers"]["block"]["attn"]["k_norm"]
  assert jax.tree.structure(plain) == jax.tree.structure(init_params(CFG, jax.random.PRNGKey(0)))
  b = _batch()
  assert not np.allclose(forward(cfg, params, b["inputs"]), forward(CFG, plain, b["inputs"]))
  grads = jax.grad(lambda p: loss_sums(p, b, model_config=cfg, num_domains=1)[0])(params)
  g = grads["layers"]["block"]["attn"]
  assert all(np.isfinite(x).all() for x in jax.tree.leaves(grads))
  assert np.abs(g["q_norm"]["scale_h"]).sum() > 0 and np.abs(g["k_norm"]["scale_h"]).sum() > 0


def test_defaults_leave_the_param_tree_unchanged():
  params = init_params(CFG, jax.random.PRNGKey(0))
  names = {jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_leaves_with_path(params)}
  assert not any("q_norm" in n or "k_norm" in n for n in names)
  assert CFG.param_counts()["total"] == sum(x.size for x in jax.tree.leaves(params))
  cfg = dataclasses.replace(CFG, qk_norm=True)
  assert cfg.param_counts()["total"] == sum(
      x.size for x in jax.tree.leaves(init_params(cfg, jax.random.PRNGKey(0))))


# ------------------------------------------------------------------ dropout

def test_dropout_zero_is_the_old_step_and_positive_is_seeded():
  b = _batch()
  s0, step0 = _state(CFG)
  s0, m0 = step0(s0, b)
  # dropout=0: forward with or without an rng is the deterministic forward, bit for bit.
  params = init_params(CFG, jax.random.PRNGKey(0))
  np.testing.assert_array_equal(forward(CFG, params, b["inputs"]),
                                forward(CFG, params, b["inputs"], dropout_rng=jax.random.PRNGKey(3)))
  cfg = dataclasses.replace(CFG, dropout=0.3)
  logits = [forward(cfg, params, b["inputs"], dropout_rng=jax.random.PRNGKey(k)) for k in (1, 1, 2)]
  np.testing.assert_array_equal(logits[0], logits[1])  # deterministic given the rng
  assert not np.allclose(logits[0], logits[2])
  np.testing.assert_array_equal(forward(cfg, params, b["inputs"]),
                                forward(CFG, params, b["inputs"]))  # eval: no dropout
  # In the step: same seed -> same run; the mask changes from step to step.
  runs = []
  for _ in range(2):
    s, step = _state(cfg)
    losses = []
    for _ in range(2):
      s, m = step(s, b)
      losses.append(float(m["loss"]))
    runs.append(losses)
  assert runs[0] == runs[1]
  s, step = _state(cfg)
  frozen = dict(s, step=jnp.ones((), jnp.int32))  # same params, next step's rng
  _, ma = step(s, b)
  _, mb = step(frozen, b)
  assert float(ma["loss"]) != float(mb["loss"])
  assert float(ma["loss"]) != float(m0["loss"])


# ------------------------------------------------------------------ metrics

def test_step_metrics_groups_update_ratio_and_max_logit():
  s, step = _state(CFG)
  b = _batch()
  params = s["params"]
  new, m = step(s, b)
  groups = {k for k in m if k.startswith("grad_norm/")}
  assert groups == {f"grad_norm/{g}" for g in ("embedding", "attention", "mlp", "norms", "lm_head")}
  np.testing.assert_allclose(np.sqrt(sum(float(m[k]) ** 2 for k in groups)), float(m["grad_norm"]),
                             rtol=1e-5)
  logits = np.asarray(forward(CFG, params, b["inputs"]))
  want = (np.abs(logits).max(-1) * b["loss_mask"]).max()
  np.testing.assert_allclose(float(m["max_abs_logit"]), want, rtol=1e-6)
  du = [np.asarray(x) - np.asarray(y) for x, y in zip(jax.tree.leaves(new["params"]),
                                                      jax.tree.leaves(params))]
  ratio = np.sqrt(sum((d ** 2).sum() for d in du)) / np.sqrt(
      sum((np.asarray(p) ** 2).sum() for p in jax.tree.leaves(params)))
  np.testing.assert_allclose(float(m["update_rms_ratio"]), ratio, rtol=1e-3)
  assert int(m["skipped"]) == 0


# ------------------------------------------------------------------ skip

def test_skipped_step_keeps_params_and_opt_state_bit_identical():
  s, step = _state(CFG)
  s, _ = step(s, _batch(0))  # non-trivial optimizer moments
  before = jax.device_get(s)
  s2, m = step(s, _batch(1), dict(loss_lo=-np.inf, loss_hi=np.float32(0.5)))  # loss ~4.2 > 0.5
  assert int(m["skipped"]) == 1 and int(s2["step"]) == int(before["step"]) + 1
  assert _equal_trees(s2["params"], before["params"])
  assert _equal_trees(s2["opt_state"], before["opt_state"])
  s3, m = step(s2, _batch(1), dict(loss_lo=-np.inf, loss_hi=np.inf))  # inside: applied
  assert int(m["skipped"]) == 0 and not _equal_trees(s3["params"], before["params"])


def test_a_nan_gradient_never_reaches_the_params():
  s, step = _state(CFG)
  before = jax.device_get(s)
  b = _batch()
  b["loss_mask"] = b["loss_mask"] * np.float32(np.nan)  # NaN loss and NaN gradients
  s2, m = step(s, b)  # no limits given: non-finite values are always refused
  assert not np.isfinite(float(m["loss"])) and int(m["skipped"]) == 1
  assert _equal_trees(s2["params"], before["params"])
  assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(s2["params"]))


def test_loss_plot_marks_events(tmp_path):
  from maxlm.monitor.plots import loss_figure, plot_loss_curve
  rows = [dict(step=s, loss=5.0 - 0.1 * s) for s in range(1, 20)]
  events = [dict(step=8, action="skip", values=dict(loss=9.0)),
            dict(step=12, action="rollback", restore_step=8, values=dict(loss=float("nan")))]
  ax = loss_figure(rows, events=events).axes[0]
  labels = [t.get_text() for t in ax.get_legend().get_texts()]
  assert "spike: skip" in labels and "spike: rollback" in labels
  xs = sorted(line.get_xdata()[0] for line in ax.lines if line.get_linestyle() == ":")
  assert xs == [8, 12]
  assert os.path.exists(plot_loss_curve(rows, str(tmp_path / "l.png"), events=events))
