"""AdamW whose update is derived from the already-kept moments: a skipped step in place.

The training step skips an update (keeps every param and moment bit for bit)
when the loss or gradient norm is not finite or leaves the spike band. Done as
`where(ok, new, old)` on the outputs of `optax.adamw`, XLA cannot update the
donated state in place: `optax.scale_by_adam` reads the old moments twice,
once for the new moments and once (fused) for the update computed from them,
and nothing orders that second read before the select that overwrites the old
buffer, so XLA copies the whole optimizer state and params (3 x 4.6 GiB for
the 1.24B-param `1b`) and holds the new moments as temporaries.

Here the moments are advanced and kept-or-reverted first (the only reader of
the old moments, in place), and the update is derived from those kept moments
with the same float operations `scale_by_adam` uses, so the bits are those of
`optax.chain(clip_by_global_norm, adamw)` whenever the step is applied
(tests/test_optim_guarded.py checks bit equality over several steps). The
optimizer state keeps optax's structure, so checkpoints and shardings are
unchanged.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax


def _keep(apply_if):
  if apply_if is None:
    return lambda new, old: new
  return lambda new, old: jnp.where(apply_if, new, old)


def clipped_adamw(schedule, *, b1: float, b2: float, eps: float, weight_decay: float,
                  clip_norm: float, mask):
  """optax.chain(clip_by_global_norm(clip_norm), adamw(...)) with an `apply_if` update.

  `update(grads, state, params, apply_if=ok)`: with ok false the returned state
  is the old one bit for bit (the returned updates are then meaningless: the
  caller keeps its params with the same predicate). apply_if None: always applied.
  """
  clip = optax.clip_by_global_norm(clip_norm)
  adam = optax.scale_by_adam(b1=b1, b2=b2, eps=eps)
  tail = optax.chain(optax.add_decayed_weights(weight_decay, mask),
                     optax.scale_by_learning_rate(schedule))
  reference = optax.chain(clip, optax.adamw(schedule, b1=b1, b2=b2, eps=eps,
                                            weight_decay=weight_decay, mask=mask))

  def update(grads, state, params=None, *, apply_if=None):
    keep = _keep(apply_if)
    clip_state, (adam_state, *tail_state) = state
    g, clip_state = clip.update(grads, clip_state)
    _, adam_new = adam.update(g, adam_state)  # its moments only: its update is re-derived
    adam_new = jax.tree.map(keep, adam_new, adam_state)
    # scale_by_adam's update (nesterov off, eps_root 0), from the kept moments.
    mu_hat = optax.tree.bias_correction(adam_new.mu, b1, adam_new.count)
    nu_hat = optax.tree.bias_correction(adam_new.nu, b2, adam_new.count)
    u = jax.tree.map(lambda m, v: m / (jnp.sqrt(v + 0.0) + eps), mu_hat, nu_hat)
    u, tail_new = tail.update(u, tuple(tail_state), params)
    tail_new = jax.tree.map(keep, tail_new, tuple(tail_state))
    return u, (clip_state, (adam_new, *tail_new))

  update.applies_if = True  # read by update_unless_skipped
  return optax.GradientTransformationExtraArgs(reference.init, update)


def update_unless_skipped(tx, grads, opt_state, params, ok):
  """(params, opt_state, updates): the update applied where `ok`, else the old bits kept.

  A transformation from `clipped_adamw` keeps its own state (in place); any
  other optax transformation gets a select on its outputs.
  """
  keep = _keep(ok)
  if getattr(tx.update, "applies_if", False):
    updates, new_opt = tx.update(grads, opt_state, params, apply_if=ok)
  else:
    updates, new_opt = tx.update(grads, opt_state, params)
    new_opt = jax.tree.map(keep, new_opt, opt_state)
  new_params = jax.tree.map(keep, optax.apply_updates(params, updates), params)
  return new_params, new_opt, updates
