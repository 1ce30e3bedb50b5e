"""A Llama-family decoder as Flax linen modules.

Flax here is functional: `Transformer(cfg).init` returns a plain params pytree
and `apply` is a pure function of (params, tokens, segment_ids, positions).
Every weight declares logical axes (`nn.with_logical_partitioning`); the rules
table in `config.mesh.rules` maps them to mesh axes (maxlm.sharding), so no
layer knows the mesh. Layers receive the ModelConfig only, never the stage
config.

Logical axis names: batch, length, act_embed (activations), and for weights
vocab, embed, heads, kv, head_dim, mlp, layers (the scanned layer axis).

Stability options (ModelConfig): `qk_norm` adds an RMSNorm over H on q and k
before RoPE (OLMo 2, Gemma 3; params `q_norm`/`k_norm`, each `scale_h`);
`qkv_bias` adds Qwen2's q/k/v biases (`b_q_nh`, `b_k_kh`, `b_v_kh`) and
`sliding_window` Mistral's window (attention.make_attention_mask);
`dropout` drops the attention and MLP outputs before the residual add, only in
the training module (`deterministic=False`, which needs a 'dropout' rng). With
the defaults neither adds a param or an op, so trees and HF interop are unchanged.

Generation passes an optional KV cache (maxlm/model/decode.py) through the
same modules: the cache is an explicit pytree argument and result, never a
flax variable collection, so the params tree and `forward` are unchanged.
"""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp

from maxlm.model import attention as attention_lib
from maxlm.model import decode as decode_lib
from maxlm.model import rope
from maxlm.model.config import ModelConfig

_ACT_BTD = ("batch", "length", "act_embed")


def _init(cfg: ModelConfig, names, std=None):
  return nn.with_logical_partitioning(nn.initializers.normal(std or cfg.init_std), names)


class RMSNorm(nn.Module):
  """RMSNorm (Zhang & Sennrich 2019) over the last axis, statistics in float32.

  The model dim by default (`scale_d`, axis 'embed'); QK-norm uses it over the
  head dim (`scale_h`, axis 'head_dim').
  """
  eps: float
  dtype: jnp.dtype
  scale_name: str = "scale_d"
  axis_name: str = "embed"

  @nn.compact
  def __call__(self, x_btd):
    scale_d = self.param(self.scale_name,
                         nn.with_logical_partitioning(nn.initializers.ones, (self.axis_name,)),
                         (x_btd.shape[-1],), jnp.float32)
    x = x_btd.astype(jnp.float32)
    x = x * jax.lax.rsqrt(jnp.mean(x * x, axis=-1, keepdims=True) + self.eps)
    return (x * scale_d).astype(self.dtype)


def _head_norm(cfg: ModelConfig, dt, name: str) -> RMSNorm:
  return RMSNorm(cfg.norm_eps, dt, scale_name="scale_h", axis_name="head_dim", name=name)


class Attention(nn.Module):
  """Grouped-query self-attention with RoPE on per-document positions."""
  cfg: ModelConfig

  @nn.compact
  def __call__(self, x_btd, segment_ids_bt, positions_bt, kv=None):
    """`kv` (decoding only): decode.LayerCache; then returns (out_btd, updated kv)."""
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
    if cfg.qkv_bias:  # Qwen2 (and Llama attention_bias): biases on q, k, v, added before RoPE
      zeros = nn.initializers.zeros
      b_q_nh = self.param("b_q_nh", nn.with_logical_partitioning(zeros, ("heads", "head_dim")),
                          (N, H))
      b_k_kh = self.param("b_k_kh", nn.with_logical_partitioning(zeros, ("kv", "head_dim")),
                          (K, H))
      b_v_kh = self.param("b_v_kh", nn.with_logical_partitioning(zeros, ("kv", "head_dim")),
                          (K, H))
      q_btnh = q_btnh + b_q_nh.astype(dt)
      k_btkh = k_btkh + b_k_kh.astype(dt)
      v_btkh = v_btkh + b_v_kh.astype(dt)
    if cfg.qk_norm:
      # Before RoPE, as OLMo 2 / Gemma 3: the rotation preserves the norm, so the
      # attention logits stay bounded by |scale_q| |scale_k| H whatever the weights do.
      q_btnh = _head_norm(cfg, dt, "q_norm")(q_btnh)
      k_btkh = _head_norm(cfg, dt, "k_norm")(k_btkh)
    inv_freq_h = rope.inv_frequencies(H, cfg.rope_theta, cfg.rope_scaling_dict)
    q_btnh = rope.apply_rope(q_btnh, positions_bt, inv_freq_h)
    k_btkh = rope.apply_rope(k_btkh, positions_bt, inv_freq_h)
    if kv is None:
      out_btnh = attention_lib.attention(q_btnh, k_btkh, v_btkh, segment_ids_bt,
                                         impl=cfg.attention_impl, window=cfg.sliding_window)
      return self._out(out_btnh, w_o_nhd, dt)
    out_btnh, kv = decode_lib.cached_attention(q_btnh, k_btkh, v_btkh, segment_ids_bt, kv,
                                               impl=cfg.attention_impl, window=cfg.sliding_window)
    return self._out(out_btnh, w_o_nhd, dt), kv

  def _out(self, out_btnh, w_o_nhd, dt):
    """The output projection, plus Llama's o_proj bias (attention_bias=True) when on."""
    y_btd = jnp.einsum("btnh,nhd->btd", out_btnh, w_o_nhd.astype(dt))
    if self.cfg.o_bias:
      b_o_d = self.param("b_o_d", nn.with_logical_partitioning(nn.initializers.zeros, ("embed",)),
                         (self.cfg.d_model,))
      y_btd = y_btd + b_o_d.astype(dt)
    return y_btd


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
  deterministic: bool = True  # False: dropout on (training), needs a 'dropout' rng

  def _drop(self, y_btd):
    if self.cfg.dropout == 0.0:  # no op at all: the default model is unchanged
      return y_btd
    return nn.Dropout(self.cfg.dropout, deterministic=self.deterministic)(y_btd)

  @nn.compact
  def __call__(self, x_btd, segment_ids_bt, positions_bt, kv=None):
    cfg, dt = self.cfg, jnp.dtype(self.cfg.compute_dtype)
    x_btd = nn.with_logical_constraint(x_btd, _ACT_BTD)
    h_btd = RMSNorm(cfg.norm_eps, dt, name="attn_norm")(x_btd)
    attn = Attention(cfg, name="attn")
    if kv is None:
      x_btd = x_btd + self._drop(attn(h_btd, segment_ids_bt, positions_bt))
    else:
      a_btd, kv = attn(h_btd, segment_ids_bt, positions_bt, kv)
      x_btd = x_btd + a_btd
    h_btd = RMSNorm(cfg.norm_eps, dt, name="mlp_norm")(x_btd)
    x_btd = x_btd + self._drop(MLP(cfg, name="mlp")(h_btd))
    x_btd = nn.with_logical_constraint(x_btd, _ACT_BTD)
    return x_btd if kv is None else (x_btd, kv)


class _ScannedBlock(nn.Module):
  """Block with the (carry, xs) signature nn.scan wants."""
  cfg: ModelConfig
  deterministic: bool = True

  @nn.compact
  def __call__(self, x_btd, segment_ids_bt, positions_bt):
    block = Block(self.cfg, self.deterministic, name="block")
    return block(x_btd, segment_ids_bt, positions_bt), None


class _CachedScannedBlock(nn.Module):
  """Block for decoding: this layer's K/V cache is scanned in (xs) and out (ys)."""
  cfg: ModelConfig
  fresh: bool  # the cache is empty and this call fills it from slot 0 (prefill)

  @nn.compact
  def __call__(self, x_btd, segment_ids_bt, positions_bt, k_bskh, v_bskh, kv_segment_ids_bs,
               index):
    kv = decode_lib.LayerCache(k_bskh, v_bskh, kv_segment_ids_bs, index, self.fresh)
    x_btd, kv = Block(self.cfg, name="block")(x_btd, segment_ids_bt, positions_bt, kv)
    return x_btd, (kv.k_bskh, kv.v_bskh)


def _remat_policy(name: str):
  return {
      "full": jax.checkpoint_policies.nothing_saveable,
      # Keep matmul outputs, recompute the cheap elementwise ops (norms, silu, rope).
      "save_dots": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
  }[name]


class MTPModule(nn.Module):
  """One multi-token-prediction depth (maxlm/model/mtp.py): two norms, the [2D, D] projection, one block, the head's norm."""
  cfg: ModelConfig
  deterministic: bool = True

  @nn.compact
  def __call__(self, h_btd, emb_btd, segment_ids_bt, positions_bt):
    """Returns (h^k [B, T, D] for the next depth, final-normed hidden for the head)."""
    cfg, dt = self.cfg, jnp.dtype(self.cfg.compute_dtype)
    D = cfg.d_model
    e_btd = RMSNorm(cfg.norm_eps, dt, name="embed_norm")(emb_btd)
    h_btd = RMSNorm(cfg.norm_eps, dt, name="hidden_norm")(h_btd)
    w_proj_ed = self.param("w_proj_ed", _init(cfg, ("embed", None)), (2 * D, D))
    eh_bte = jnp.concatenate([e_btd, h_btd], axis=-1)  # [B, T, 2D], embedding first as DeepSeek
    x_btd = jnp.einsum("bte,ed->btd", eh_bte, w_proj_ed.astype(dt))
    block_cls = Block
    if cfg.remat != "none":
      block_cls = nn.remat(block_cls, policy=_remat_policy(cfg.remat))
    x_btd = block_cls(cfg, self.deterministic, name="block")(x_btd, segment_ids_bt, positions_bt)
    return x_btd, RMSNorm(cfg.norm_eps, dt, name="final_norm")(x_btd)


class Transformer(nn.Module):
  """Embedding -> L pre-norm blocks -> final RMSNorm -> LM head. Returns float32 logits.

  With `cache` (a decode.Cache) it returns (logits, updated cache): the new
  tokens' keys and values are written at cache.index and attention reads the
  whole cache. `fresh=True` says the cache is empty (prefill), so attention
  over the new tokens alone goes through the configured implementation.
  `deterministic=False` is the training module: dropout on (when cfg.dropout > 0).
  """
  cfg: ModelConfig
  deterministic: bool = True

  @nn.compact
  def __call__(self, tokens_bt, segment_ids_bt, positions_bt, cache=None, fresh=False,
               output: str = "logits"):
    """`output`: one of OUTPUTS ("hidden": the final-normed hidden [B, T, D] for a
    loss that applies the LM head itself; "both": (residual stream before the final
    norm, final-normed hidden), what multi-token prediction starts from)."""
    cfg, dt = self.cfg, jnp.dtype(self.cfg.compute_dtype)
    V, D = cfg.vocab_size, cfg.d_model
    emb_vd = self.param("embedding_vd", _init(cfg, ("vocab", "embed")), (V, D))
    # The lookup reads the table gathered over fsdp but still split by vocab
    # (SPMD turns that into a masked local gather + all-reduce); gathering
    # straight from the (vocab, embed)-sharded table makes XLA replicate it.
    emb_lookup_vd = nn.with_logical_constraint(emb_vd, ("vocab", None))
    x_btd = jnp.take(emb_lookup_vd, tokens_bt, axis=0).astype(dt)
    x_btd = nn.with_logical_constraint(x_btd, _ACT_BTD)
    if cache is not None:
      x_btd, cache = self._cached_layers(x_btd, segment_ids_bt, positions_bt, cache, fresh)
      return self._head(x_btd, emb_vd), cache

    block_cls = _ScannedBlock
    if cfg.remat != "none":
      block_cls = nn.remat(block_cls, policy=_remat_policy(cfg.remat), prevent_cse=not cfg.scan_layers)
    if cfg.scan_layers:
      # Each layer draws its own dropout mask: split the 'dropout' rng like the params'.
      stack = nn.scan(block_cls, variable_axes={"params": 0},
                      split_rngs={"params": True, "dropout": True},
                      in_axes=(nn.broadcast, nn.broadcast), length=cfg.n_layers,
                      metadata_params={nn.PARTITION_NAME: "layers"})
      x_btd, _ = stack(cfg, self.deterministic, name="layers")(x_btd, segment_ids_bt,
                                                               positions_bt)
    else:
      for i in range(cfg.n_layers):
        x_btd, _ = block_cls(cfg, self.deterministic, name=f"layer_{i}")(
            x_btd, segment_ids_bt, positions_bt)
    if output == "logits":
      return self._head(x_btd, emb_vd)
    if not cfg.tie_embeddings:  # created even when unused, so every output has one params tree
      self._head_weights()
    hidden_btd = RMSNorm(cfg.norm_eps, dt, name="final_norm")(x_btd)
    return hidden_btd if output == "hidden" else (x_btd, hidden_btd)

  def _cached_layers(self, x_btd, segment_ids_bt, positions_bt, cache, fresh):
    """The L blocks with a KV cache (no remat: decoding takes no gradients)."""
    cfg = self.cfg
    kv_seg_bs = decode_lib.write_segment_ids(cache, segment_ids_bt)
    if cfg.scan_layers:
      stack = nn.scan(_CachedScannedBlock, variable_axes={"params": 0},
                      split_rngs={"params": True},
                      in_axes=(nn.broadcast, nn.broadcast, 0, 0, nn.broadcast, nn.broadcast),
                      length=cfg.n_layers, metadata_params={nn.PARTITION_NAME: "layers"})
      x_btd, (k_lbskh, v_lbskh) = stack(cfg, fresh, name="layers")(
          x_btd, segment_ids_bt, positions_bt, cache.k_lbskh, cache.v_lbskh, kv_seg_bs,
          cache.index)
    else:
      ks, vs = [], []
      for i in range(cfg.n_layers):
        x_btd, (k_bskh, v_bskh) = _CachedScannedBlock(cfg, fresh, name=f"layer_{i}")(
            x_btd, segment_ids_bt, positions_bt, cache.k_lbskh[i], cache.v_lbskh[i], kv_seg_bs,
            cache.index)
        ks.append(k_bskh)
        vs.append(v_bskh)
      k_lbskh, v_lbskh = jnp.stack(ks), jnp.stack(vs)
    T = segment_ids_bt.shape[1]
    return x_btd, decode_lib.Cache(k_lbskh, v_lbskh, kv_seg_bs, cache.index + T)

  def _head_weights(self):
    cfg = self.cfg
    return self.param("lm_head_dv", _init(cfg, ("embed", "vocab")), (cfg.d_model, cfg.vocab_size))

  def _head(self, x_btd, emb_vd):
    cfg, dt = self.cfg, jnp.dtype(self.cfg.compute_dtype)
    x_btd = RMSNorm(cfg.norm_eps, dt, name="final_norm")(x_btd)
    w_dv = emb_vd.T if cfg.tie_embeddings else self._head_weights()
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
def _module(cfg: ModelConfig, deterministic: bool = True) -> Transformer:
  return Transformer(cfg, deterministic)


def init_params(model_config, rng, *, boxed: bool = False):
  """Initialises params; `boxed=True` keeps the nn.LogicallyPartitioned metadata."""
  cfg = ModelConfig.from_any(model_config)
  tokens_bt = jnp.zeros((1, 1), jnp.int32)
  seg, pos = default_segments_and_positions(tokens_bt)
  params = _module(cfg).init(rng, tokens_bt, seg, pos)["params"]
  if cfg.mtp_depth:  # an rng of their own: the trunk's params do not depend on mtp_depth
    params = {**params, "mtp": _init_mtp(cfg, rng)}
  return params if boxed else nn.meta.unbox(params)


# Folded into the init rng so the MTP modules never reuse the trunk's draws.
_MTP_INIT_SALT = 0x4D5450  # "MTP"


def _init_mtp(cfg: ModelConfig, rng):
  """{"depth_<k>": MTPModule params} for k = 1..mtp_depth (boxed)."""
  h_btd = jnp.zeros((1, 1, cfg.d_model), jnp.float32)
  seg, pos = default_segments_and_positions(jnp.zeros((1, 1), jnp.int32))
  base = jax.random.fold_in(rng, _MTP_INIT_SALT)
  return {f"depth_{k}": MTPModule(cfg).init(jax.random.fold_in(base, k), h_btd, h_btd, seg,
                                            pos)["params"]
          for k in range(1, cfg.mtp_depth + 1)}


OUTPUTS = ("logits", "hidden", "both")


def forward(model_config, params, tokens, segment_ids=None, positions=None, *,
            dropout_rng=None, return_hidden: bool = False):
  """The public forward pass: float32 logits [B, T, V].

  `segment_ids` [B, T] (int, 0 = padding) keep packed documents apart;
  `positions` [B, T] are per-document positions used by RoPE. Jitted (the
  config is static); inside another jit it simply inlines. Deterministic
  unless `dropout_rng` is given and cfg.dropout > 0 (the training step).
  `return_hidden=True` returns the final-normed hidden [B, T, D] (compute
  dtype) instead, for losses that apply `lm_head_weights` in chunks
  (maxlm.model.loss) so the [B, T, V] logits never exist.
  """
  return forward_outputs(model_config, params, tokens, segment_ids, positions,
                         dropout_rng=dropout_rng, output="hidden" if return_hidden else "logits")


def forward_outputs(model_config, params, tokens, segment_ids=None, positions=None, *,
                    dropout_rng=None, output: str = "logits"):
  """forward with a choice of OUTPUTS ("both": (residual [B, T, D], final-normed hidden))."""
  cfg = ModelConfig.from_any(model_config)
  if output not in OUTPUTS:
    raise ValueError(f"output={output!r} is not one of {OUTPUTS}")
  seg, pos = default_segments_and_positions(jnp.asarray(tokens), segment_ids, positions)
  rules = _hashable_rules(nn.get_logical_axis_rules())
  if dropout_rng is None or cfg.dropout == 0.0:
    return _forward(cfg, params, tokens, seg, pos, output, rules)
  return _forward_train(cfg, params, tokens, seg, pos, dropout_rng, output, rules)


def _hashable_rules(rules):
  """The logical-axis rules in effect as a static jit argument.

  They must be part of the jit's cache key: flax reads them from a context
  manager at trace time, which jax's cache does not see, so a second trace of
  the same config under other rules would silently reuse the first rules'
  sharding constraints.
  """
  return tuple((name, tuple(axes) if isinstance(axes, list) else axes) for name, axes in rules)


def lm_head_weights(model_config, params):
  """The LM head w_dv [D, V] (float32 params): the embedding's transpose when tied."""
  cfg = ModelConfig.from_any(model_config)
  return params["embedding_vd"].T if cfg.tie_embeddings else params["lm_head_dv"]


@functools.partial(jax.jit, static_argnums=(0, 5, 6))
def _forward(cfg: ModelConfig, params, tokens_bt, segment_ids_bt, positions_bt, output="logits",
             rules=()):
  with nn.logical_axis_rules(rules):
    return _module(cfg).apply({"params": params}, tokens_bt, segment_ids_bt, positions_bt,
                              output=output)


@functools.partial(jax.jit, static_argnums=(0, 6, 7))
def _forward_train(cfg: ModelConfig, params, tokens_bt, segment_ids_bt, positions_bt, rng,
                   output="logits", rules=()):
  with nn.logical_axis_rules(rules):
    return _module(cfg, False).apply({"params": params}, tokens_bt, segment_ids_bt, positions_bt,
                                     output=output, rngs={"dropout": rng})


def forward_with_cache(model_config, params, tokens_bt, segment_ids_bt, positions_bt, cache,
                       *, fresh: bool = False):
  """Forward of new tokens through a KV cache (decode.Cache): (float32 logits [B, T, V], cache).

  Not jitted here: generation jits prefill and the decode step around it.
  """
  cfg = ModelConfig.from_any(model_config)
  return _module(cfg).apply({"params": params}, tokens_bt, segment_ids_bt, positions_bt,
                            cache, fresh)
