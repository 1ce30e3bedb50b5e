r"""Train-step throughput: maxlm against a plain JAX reference of the same model.

  python bench/train_step.py --preset=10m --seq_len=256 --batch=8 --steps=10
  python bench/train_step.py --preset=125m --seq_len=2048 --batch=8 --dtype=bfloat16   # GPU

Both sides run in this process on the same shapes and the same batch: maxlm's
jitted `train_step` (sharded state, donated, one-device mesh unless --mesh) and
a reference written here without maxlm — plain jnp functions, the same
Llama math (RMSNorm, RoPE, GQA, SwiGLU), optax AdamW with clipping. Prints
tokens/s for each, the ratio, and MFU where the device has a known peak.
"""

import argparse
import functools
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402

from configs import pretrain  # noqa: E402
from maxlm.model import ModelConfig, flops_per_token  # noqa: E402
from maxlm.monitor import mfu  # noqa: E402
from maxlm.optim import make_optimizer  # noqa: E402
from maxlm.sharding import batch_sharding, host_batch_to_global, make_mesh  # noqa: E402
from maxlm.train.state import create_state, state_shardings  # noqa: E402
from maxlm.train.step import train_step  # noqa: E402


# ----------------------------------------------------------------- reference
def ref_init(cfg, key):
  D, N, K, H, F, V, L = (cfg.d_model, cfg.n_heads, cfg.n_kv_heads, cfg.head_dim, cfg.d_ff,
                         cfg.vocab_size, cfg.n_layers)
  ks = iter(jax.random.split(key, 16))
  n = lambda *s: 0.02 * jax.random.normal(next(ks), s, jnp.float32)
  return dict(emb=n(V, D), head=n(D, V), norm=jnp.ones((D,)),
              layers=dict(wq=n(L, D, N * H), wk=n(L, D, K * H), wv=n(L, D, K * H),
                          wo=n(L, N * H, D), wg=n(L, D, F), wu=n(L, D, F), wd=n(L, F, D),
                          n1=jnp.ones((L, D)), n2=jnp.ones((L, D))))


def ref_loss(params, tokens, targets, cfg, dtype):
  N, K, H = cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
  B, T = tokens.shape

  def norm(x, w):
    x32 = x.astype(jnp.float32)
    return (x32 * jax.lax.rsqrt((x32 ** 2).mean(-1, keepdims=True) + cfg.norm_eps) * w).astype(dtype)

  inv = 1.0 / cfg.rope_theta ** (jnp.arange(0, H, 2) / H)
  ang = jnp.arange(T)[:, None] * inv[None]
  cos, sin = jnp.cos(ang)[None, :, None], jnp.sin(ang)[None, :, None]

  def rope(x):
    x1, x2 = jnp.split(x.astype(jnp.float32), 2, -1)
    return jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], -1).astype(dtype)

  causal = jnp.tril(jnp.ones((T, T), bool))

  def layer(x, w):
    h = norm(x, w["n1"])
    q = rope((h @ w["wq"].astype(dtype)).reshape(B, T, N, H))
    k = rope((h @ w["wk"].astype(dtype)).reshape(B, T, K, H))
    v = (h @ w["wv"].astype(dtype)).reshape(B, T, K, H)
    k, v = jnp.repeat(k, N // K, axis=2), jnp.repeat(v, N // K, axis=2)
    s = jnp.einsum("bqnh,bknh->bnqk", q, k, preferred_element_type=jnp.float32) / np.sqrt(H)
    p = jax.nn.softmax(jnp.where(causal, s, -1e30), -1).astype(dtype)
    a = jnp.einsum("bnqk,bknh->bqnh", p, v).reshape(B, T, N * H)
    x = x + a @ w["wo"].astype(dtype)
    h = norm(x, w["n2"])
    x = x + (jax.nn.silu(h @ w["wg"].astype(dtype)) * (h @ w["wu"].astype(dtype))) @ w["wd"].astype(dtype)
    return x, None

  x = params["emb"][tokens].astype(dtype)
  x, _ = jax.lax.scan(layer, x, params["layers"])
  logits = (norm(x, params["norm"]) @ params["head"].astype(dtype)).astype(jnp.float32)
  return optax.softmax_cross_entropy_with_integer_labels(logits, targets).mean()


def ref_step_fn(cfg, tx, dtype):
  @functools.partial(jax.jit, donate_argnums=(0, 1))
  def step(params, opt_state, tokens, targets):
    loss, grads = jax.value_and_grad(ref_loss)(params, tokens, targets, cfg, dtype)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss
  return step


# ----------------------------------------------------------------- timing
def time_steps(run, steps):
  run()  # compile
  run()
  t = time.perf_counter()
  for _ in range(steps):
    out = run()
  jax.block_until_ready(out)
  return (time.perf_counter() - t) / steps


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--preset", default="10m", choices=list(pretrain.PRESETS))
  ap.add_argument("--seq_len", type=int, default=256)
  ap.add_argument("--batch", type=int, default=8)
  ap.add_argument("--steps", type=int, default=10)
  ap.add_argument("--dtype", default="float32")
  ap.add_argument("--remat", default="none")
  ap.add_argument("--attention_impl", default="xla")
  ap.add_argument("--mesh", default="1,1,1", help="data,fsdp,tensor for maxlm (-1 = rest)")
  ap.add_argument("--skip_reference", action="store_true")
  a = ap.parse_args()

  mc = pretrain.get_config(a.preset).model.to_dict()
  mc.update(compute_dtype=a.dtype, remat=a.remat, attention_impl=a.attention_impl)
  cfg = ModelConfig(**mc)
  B, T = a.batch, a.seq_len
  rng = np.random.default_rng(0)
  tokens = rng.integers(0, cfg.vocab_size, (B, T)).astype(np.int32)
  targets = np.roll(tokens, -1, axis=1)
  tx, sched = make_optimizer(peak_lr=1e-4, total_steps=1000,
                             schedule=dict(name="constant", warmup_steps=0))
  fpt = flops_per_token(cfg, T)
  print(f"{a.preset}: {cfg.param_counts()['total']:,} params, B={B} T={T} dtype={a.dtype} "
        f"device={jax.devices()[0].device_kind} x{jax.device_count()}")

  # maxlm
  mesh_shape = tuple(int(x) for x in a.mesh.split(","))
  devices = jax.devices() if -1 in mesh_shape else jax.devices()[:int(np.prod(mesh_shape))]
  mesh = make_mesh(*mesh_shape, devices=devices)
  rules = pretrain.RULES
  sh = state_shardings(cfg, tx, mesh, rules)
  state = create_state(cfg, tx, 0, sh)
  bsh = batch_sharding(mesh, rules)
  batch = host_batch_to_global(dict(
      inputs=tokens, targets=targets, segment_ids=np.ones((B, T), np.int32),
      positions=np.broadcast_to(np.arange(T, dtype=np.int32), (B, T)),
      loss_mask=np.ones((B, T), np.float32), domain_ids=np.zeros((B, T), np.int32)), bsh)
  step = jax.jit(functools.partial(train_step, model_config=cfg, tx=tx, schedule=sched,
                                   microbatches=1, num_domains=1, rules=rules),
                 in_shardings=(sh, bsh), out_shardings=(sh, None), donate_argnums=0)
  box = [state]

  def run_maxlm():
    box[0], m = step(box[0], batch)
    return m["loss"]

  with jax.set_mesh(mesh):
    t_maxlm = time_steps(run_maxlm, a.steps)
  n_dev = len(devices)
  tps = B * T / t_maxlm
  u = mfu(tps, fpt, n_dev)
  print(f"maxlm     : {t_maxlm * 1e3:8.2f} ms/step  {tps:10.0f} tok/s"
        + (f"  MFU {u:.1%}" if u is not None else "  (MFU: no peak for this device)"))
  del box, state

  if a.skip_reference:
    return
  # The same optimizer recipe, without maxlm's weight-decay mask (cost is identical).
  ref_tx = optax.chain(optax.clip_by_global_norm(1.0),
                       optax.adamw(1e-4, b1=0.9, b2=0.95, eps=1e-8, weight_decay=0.1))
  params = ref_init(cfg, jax.random.PRNGKey(0))
  rbox = [params, ref_tx.init(params)]
  ref_step = ref_step_fn(cfg, ref_tx, jnp.dtype(a.dtype))
  jt, jtg = jnp.asarray(tokens), jnp.asarray(targets)

  def run_ref():
    rbox[0], rbox[1], loss = ref_step(rbox[0], rbox[1], jt, jtg)
    return loss

  t_ref = time_steps(run_ref, a.steps)
  print(f"reference : {t_ref * 1e3:8.2f} ms/step  {B * T / t_ref:10.0f} tok/s  (one device)")
  print(f"ratio maxlm/reference throughput: {t_ref / t_maxlm:.3f}")


if __name__ == "__main__":
  main()
