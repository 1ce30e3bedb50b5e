"""A Llama-family decoder as Flax linen modules.

Flax here is functional: `Transformer(cfg).init` returns a plain params pytree
and `apply` is a pure function of (params, tokens, segment_ids, positions).
Every weight declares logical axes (`nn.with_logical_partitioning`); the rules
table in `config.mesh.rules` maps them to mesh axes (maxlm.sharding), so no
layer knows the mesh. Layers receive the ModelConfig only, never the stage
config.

Logical axis names: batch, length, act_embed (activations), and for weights
vocab, embed, heads, kv, head_dim, mlp, layers (the scanned layer axis).
"""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp

from maxlm.model import attention as attention_lib
from maxlm.model import rope
from maxlm.model.config import ModelConfig

_ACT_BTD = ("batch", "length", "act_embed")


def _init(cfg: ModelConfig, names, std=None):
  return nn.with_logical_partitioning(nn.initializers.normal(std or cfg.init_std), names)


class RMSNorm(nn.Module):
  """RMSNorm (Zhang & Sennrich 2019), statistics in float32 whatever the input dtype."""
  eps: float
  dtype: jnp.dtype

  @nn.compact
  def __call__(self, x_btd):
    scale_d = self.param("scale_d", nn.with_logical_partitioning(nn.initializers.ones, ("embed",)),
                         (x_btd.shape[-1],), jnp.float32)
    x = x_btd.astype(jnp.float32)
    x = x * jax.lax.rsqrt(jnp.mean(x * x, axis=-1, keepdims=True) + self.eps)
    return (x * scale_d).astype(self.dtype)


class Attention(nn.Module):
  """Grouped-query self-attention with RoPE on per-document positions."""
  cfg: ModelConfig

  @nn.compact
  def __call__(self, x_btd, segment_ids_bt, positions_bt):
    cfg, dt = self.cfg, jnp.dtype(self.cfg.compute_dtype)
    D, N, K, H = cfg.d_model, cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
    w_q_dnh = self.param("w_q_dnh", _init(cfg, ("embed", "heads", "head_dim")), (D, N, H))
    w_k_dkh = self.param("w_k_dkh", _init(cfg, ("embed", "kv", "head_dim")), (D, K, H))
    w_v_dkh = self.param("w_v_dkh", _init(cfg, ("embed", "kv", "head_dim")), (D, K, H))
    w_o_nhd = self.param("w_o_nhd", _init(cfg, ("heads", "head_dim", "embed")), (N, H, D))
    x_btd = x_btd.astype(dt)
    q_btnh = jnp.einsum("btd,dnh->btnh", x_btd, w_q_dnh.astype(dt))
    k_btkh = jnp.einsum("btd,dkh->btkh", x_btd, w_k_dkh.astype(dt))
    v_btkh = jnp.einsum("btd,dkh->btkh", x_btd, w_v_dkh.astype(dt))
    inv_freq_h = rope.inv_frequencies(H, cfg.rope_theta, cfg.rope_scaling_dict)
    q_btnh = rope.apply_rope(q_btnh, positions_bt, inv_freq_h)
    k_btkh = rope.apply_rope(k_btkh, positions_bt, inv_freq_h)
    out_btnh = attention_lib.attention(q_btnh, k_btkh, v_btkh, segment_ids_bt,
                                       impl=cfg.attention_impl)
    return jnp.einsum("btnh,nhd->btd", out_btnh, w_o_nhd.astype(dt))


class MLP(nn.Module):
  """SwiGLU feed-forward (Shazeer 2020): down(silu(x W_gate) * x W_up)."""
  cfg: ModelConfig

  @nn.compact
  def __call__(self, x_btd):
    cfg, dt = self.cfg, jnp.dtype(self.cfg.compute_dtype)
    D, F = cfg.d_model, cfg.d_ff
    w_gate_df = self.param("w_gate_df", _init(cfg, ("embed", "mlp")), (D, F))
    w_up_df = self.param("w_up_df", _init(cfg, ("embed", "mlp")), (D, F))
    w_down_fd = self.param("w_down_fd", _init(cfg, ("mlp", "embed")), (F, D))
    x_btd = x_btd.astype(dt)
    gate_btf = jnp.einsum("btd,df->btf", x_btd, w_gate_df.astype(dt))
    up_btf = jnp.einsum("btd,df->btf", x_btd, w_up_df.astype(dt))
    return jnp.einsum("btf,fd->btd", nn.silu(gate_btf) * up_btf, w_down_fd.astype(dt))


class Block(nn.Module):
  """Pre-norm residual block: x + attn(norm(x)), then x + mlp(norm(x))."""
  cfg: ModelConfig

  @nn.compact
  def __call__(self, x_btd, segment_ids_bt, positions_bt):
    cfg, dt = self.cfg, jnp.dtype(self.cfg.compute_dtype)
    x_btd = nn.with_logical_constraint(x_btd, _ACT_BTD)
    h_btd = RMSNorm(cfg.norm_eps, dt, name="attn_norm")(x_btd)
    x_btd = x_btd + Attention(cfg, name="attn")(h_btd, segment_ids_bt, positions_bt)
    h_btd = RMSNorm(cfg.norm_eps, dt, name="mlp_norm")(x_btd)
    x_btd = x_btd + MLP(cfg, name="mlp")(h_btd)
    return nn.with_logical_constraint(x_btd, _ACT_BTD)


class _ScannedBlock(nn.Module):
  """Block with the (carry, xs) signature nn.scan wants."""
  cfg: ModelConfig

  @nn.compact
  def __call__(self, x_btd, segment_ids_bt, positions_bt):
    return Block(self.cfg, name="block")(x_btd, segment_ids_bt, positions_bt), None


def _remat_policy(name: str):
  return {
      "full": jax.checkpoint_policies.nothing_saveable,
      # Keep matmul outputs, recompute the cheap elementwise ops (norms, silu, rope).
      "save_dots": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
  }[name]


class Transformer(nn.Module):
  """Embedding -> L pre-norm blocks -> final RMSNorm -> LM head. Returns float32 logits."""
  cfg: ModelConfig

  @nn.compact
  def __call__(self, tokens_bt, segment_ids_bt, positions_bt):
    cfg, dt = self.cfg, jnp.dtype(self.cfg.compute_dtype)
    V, D = cfg.vocab_size, cfg.d_model
    emb_vd = self.param("embedding_vd", _init(cfg, ("vocab", "embed")), (V, D))
    x_btd = jnp.take(emb_vd, tokens_bt, axis=0).astype(dt)

    block_cls = _ScannedBlock
    if cfg.remat != "none":
      block_cls = nn.remat(block_cls, policy=_remat_policy(cfg.remat), prevent_cse=not cfg.scan_layers)
    if cfg.scan_layers:
      stack = nn.scan(block_cls, variable_axes={"params": 0}, split_rngs={"params": True},
                      in_axes=(nn.broadcast, nn.broadcast), length=cfg.n_layers,
                      metadata_params={nn.PARTITION_NAME: "layers"})
      x_btd, _ = stack(cfg, name="layers")(x_btd, segment_ids_bt, positions_bt)
    else:
      for i in range(cfg.n_layers):
        x_btd, _ = block_cls(cfg, name=f"layer_{i}")(x_btd, segment_ids_bt, positions_bt)

    x_btd = RMSNorm(cfg.norm_eps, dt, name="final_norm")(x_btd)
    if cfg.tie_embeddings:
      w_dv = emb_vd.T
    else:
      w_dv = self.param("lm_head_dv", _init(cfg, ("embed", "vocab")), (D, V))
    logits_btv = jnp.einsum("btd,dv->btv", x_btd, w_dv.astype(dt),
                            preferred_element_type=jnp.float32)
    return nn.with_logical_constraint(logits_btv, ("batch", "length", "vocab"))


def default_segments_and_positions(tokens_bt, segment_ids_bt=None, positions_bt=None):
  """One document per row when no packing information is given."""
  B, T = tokens_bt.shape
  if segment_ids_bt is None:
    segment_ids_bt = jnp.ones((B, T), jnp.int32)
  if positions_bt is None:
    positions_bt = jnp.broadcast_to(jnp.arange(T, dtype=jnp.int32), (B, T))
  return segment_ids_bt, positions_bt


@functools.lru_cache(maxsize=None)
def _module(cfg: ModelConfig) -> Transformer:
  return Transformer(cfg)


def init_params(model_config, rng, *, boxed: bool = False):
  """Initialises params; `boxed=True` keeps the nn.LogicallyPartitioned metadata."""
  cfg = ModelConfig.from_any(model_config)
  tokens_bt = jnp.zeros((1, 1), jnp.int32)
  seg, pos = default_segments_and_positions(tokens_bt)
  params = _module(cfg).init(rng, tokens_bt, seg, pos)["params"]
  return params if boxed else nn.meta.unbox(params)


def forward(model_config, params, tokens, segment_ids=None, positions=None):
  """The public forward pass: float32 logits [B, T, V].

  `segment_ids` [B, T] (int, 0 = padding) keep packed documents apart;
  `positions` [B, T] are per-document positions used by RoPE. Jitted (the
  config is static); inside another jit it simply inlines.
  """
  cfg = ModelConfig.from_any(model_config)
  seg, pos = default_segments_and_positions(jnp.asarray(tokens), segment_ids, positions)
  return _forward(cfg, params, tokens, seg, pos)


@functools.partial(jax.jit, static_argnums=0)
def _forward(cfg: ModelConfig, params, tokens_bt, segment_ids_bt, positions_bt):
  return _module(cfg).apply({"params": params}, tokens_bt, segment_ids_bt, positions_bt)
