"""maxlm's AdamW (maxlm/optim/guarded.py) against optax's clip + adamw, bit for bit.

Its update is re-derived from the kept moments so XLA can update the donated
state in place; that must not change a bit of training: updates, moments, counts
and params equal optax.chain(clip_by_global_norm, adamw) exactly over several
steps (clipping on and off, masked weight decay, a warmup schedule), a skipped
step keeps the old state bit for bit, and in the compiled step no moment is copied.
"""
import re

import jax
import jax.numpy as jnp
import numpy as np
import optax

from maxlm.optim import make_optimizer, make_schedule, update_unless_skipped, weight_decay_mask

HP = dict(b1=0.9, b2=0.95, eps=1e-8, weight_decay=0.1, clip_norm=1.0)


def _reference(sched):
  return optax.chain(optax.clip_by_global_norm(HP["clip_norm"]),
                     optax.adamw(sched, b1=HP["b1"], b2=HP["b2"], eps=HP["eps"],
                                 weight_decay=HP["weight_decay"], mask=weight_decay_mask))


def _params(rng):
  return {"w_dv": rng.standard_normal((8, 16)).astype(np.float32),
          "attn": {"w_q_dnh": rng.standard_normal((8, 2, 4)).astype(np.float32),
                   "scale_d": rng.standard_normal((8,)).astype(np.float32)}}


def _bits_equal(a, b):
  la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
  assert jax.tree.structure(a) == jax.tree.structure(b)
  return all(np.asarray(x).dtype == np.asarray(y).dtype and np.asarray(x).tobytes() == np.asarray(y).tobytes()
             for x, y in zip(la, lb))


def test_updates_and_state_equal_optax_bit_for_bit():
  rng = np.random.default_rng()
  schedule = dict(name="cosine", warmup_steps=2)
  tx, _ = make_optimizer(peak_lr=3e-3, schedule=schedule, total_steps=10, **HP)
  ref = _reference(make_schedule(peak_lr=3e-3, total_steps=10, **schedule))
  params = _params(rng)
  s_ours, s_ref = tx.init(params), ref.init(params)
  assert _bits_equal(s_ours, s_ref)
  p_ours, p_ref = params, params
  update = jax.jit(lambda g, s, p: tx.update(g, s, p, apply_if=jnp.asarray(True)))
  for step in range(5):
    # Large gradients on odd steps: the global-norm clip is active on some steps only.
    scale = 10.0 if step % 2 else 0.01
    grads = jax.tree.map(lambda x: scale * rng.standard_normal(x.shape).astype(np.float32), params)
    u_ours, s_ours = update(grads, s_ours, p_ours)
    u_ref, s_ref = jax.jit(ref.update)(grads, s_ref, p_ref)
    assert _bits_equal(u_ours, u_ref), step
    assert _bits_equal(s_ours, s_ref), step
    p_ours, p_ref = optax.apply_updates(p_ours, u_ours), optax.apply_updates(p_ref, u_ref)
  assert int(s_ours[1][0].count) == 5


def test_a_skipped_update_keeps_the_state_and_params_bit_for_bit():
  rng = np.random.default_rng()
  tx, _ = make_optimizer(peak_lr=1e-2, schedule=dict(name="constant", warmup_steps=0),
                         total_steps=10, **HP)
  params = _params(rng)
  grads = jax.tree.map(lambda x: rng.standard_normal(x.shape).astype(np.float32), params)
  state = tx.init(params)
  _, state = tx.update(grads, state, params)  # non-zero moments and counts
  step = jax.jit(lambda g, s, p, ok: update_unless_skipped(tx, g, s, p, ok))
  bad = jax.tree.map(lambda g: jnp.asarray(g).at[(0,) * g.ndim].set(np.nan), grads)  # a NaN gradient
  new_p, new_s, _ = step(bad, state, params, jnp.asarray(False))
  assert _bits_equal(new_p, params) and _bits_equal(new_s, state)
  new_p, new_s, u = step(grads, state, params, jnp.asarray(True))
  # Jitted both: XLA fuses p + lr * u the same way in both (eagerly the rounding differs).
  p_ref, s_ref = jax.jit(lambda g, s, p: (lambda u, s: (optax.apply_updates(p, u), s))(
      *tx.update(g, s, p)))(grads, state, params)
  assert _bits_equal(new_s, s_ref) and _bits_equal(new_p, p_ref)
  # Any other optax transformation gets the same guard by a select on its outputs.
  sgd = optax.sgd(0.1)
  new_p, new_s, _ = jax.jit(lambda g, s, p, ok: update_unless_skipped(sgd, g, s, p, ok))(
      bad, sgd.init(params), params, jnp.asarray(False))
  assert _bits_equal(new_p, params)


def test_train_steps_equal_those_with_optax_adamw_bit_for_bit():
  """The whole train_step (tiny model, 3 steps, one skipped) with maxlm's AdamW and optax's."""
  import functools
  import maxlm
  from maxlm.model import init_params
  from maxlm.train.step import train_step
  cfg = maxlm.ModelConfig(vocab_size=64, d_model=16, n_layers=1, n_heads=2, n_kv_heads=1,
                          head_dim=8, d_ff=32)
  rng = np.random.default_rng()
  schedule = dict(name="cosine", warmup_steps=0)
  ours, sched = make_optimizer(peak_lr=1e-2, schedule=schedule, total_steps=10, **HP)
  ref = _reference(sched)
  params = init_params(cfg, jax.random.PRNGKey(int(rng.integers(1 << 30))))
  states = [dict(params=params, opt_state=tx.init(params), step=jnp.zeros((), jnp.int32),
                 rng=jax.random.PRNGKey(0)) for tx in (ours, ref)]
  steps = [jax.jit(functools.partial(train_step, model_config=cfg, num_domains=1, tx=tx,
                                     schedule=sched)) for tx in (ours, ref)]
  for i in range(3):
    b = dict(inputs=rng.integers(0, 64, (2, 8)), targets=rng.integers(0, 64, (2, 8)),
             segment_ids=np.ones((2, 8), np.int32), loss_mask=np.ones((2, 8), np.float32),
             positions=np.broadcast_to(np.arange(8), (2, 8)), domain_ids=np.zeros((2, 8), np.int32))
    limits = dict(loss_hi=jnp.asarray(-1.0)) if i == 1 else None  # step 1 is skipped
    out = [step(s, b, limits) for step, s in zip(steps, states)]
    states = [o[0] for o in out]
    assert _bits_equal(states[0], states[1]), i
    assert int(out[0][1]["skipped"]) == (i == 1)
    ratio = float(out[0][1]["update_rms_ratio"])
    assert ratio == float(out[1][1]["update_rms_ratio"]) and (ratio == 0) == (i == 1)


def test_compiled_guarded_step_copies_no_moment():
  """Donated state, an update guarded by a predicate: XLA writes the moments in place."""
  tx, _ = make_optimizer(peak_lr=1e-2, schedule=dict(name="constant", warmup_steps=0),
                         total_steps=10, **HP)
  params = {"w_fd": jnp.zeros((256, 512)), "v_df": jnp.zeros((512, 256))}
  state = dict(params=params, opt_state=tx.init(params))
  plain = optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(1e-2, weight_decay=0.1))

  def step(tx):
    def f(state, grads):
      ok = optax.global_norm(grads) < 1e3
      p, o, _ = update_unless_skipped(tx, grads, state["opt_state"], state["params"], ok)
      return dict(params=p, opt_state=o)
    return f

  def moment_copies(tx):
    s = dict(params=params, opt_state=tx.init(params))
    hlo = jax.jit(step(tx), donate_argnums=0).lower(s, params).compile().as_text()
    return len(re.findall(r"copy\(%state__opt_state[^ ]*__(mu|nu)__", hlo))

  assert moment_copies(plain) > 0  # optax's outputs behind a select: the moments are copied
  assert moment_copies(tx) == 0
  del state
