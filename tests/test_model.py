"""Model semantics against independent references: a NumPy attention, per-document runs."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import maxlm
from maxlm.model.attention import dense_attention

CFG = maxlm.ModelConfig(vocab_size=128, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2,
                        head_dim=8, d_ff=64, rope_theta=5e5)


def _numpy_attention(q, k, v, seg):
  """Loop-per-head NumPy reference: causal, same-segment, GQA by head index // group."""
  B, T, N, H = q.shape
  K = k.shape[2]
  out = np.zeros_like(q)
  for b in range(B):
    for n in range(N):
      kh = n // (N // K)
      s = q[b, :, n] @ k[b, :, kh].T / np.sqrt(H)
      mask = (seg[b][:, None] == seg[b][None, :]) & np.tri(T, dtype=bool)
      s = np.where(mask, s, -np.inf)
      p = np.exp(s - s.max(-1, keepdims=True))
      out[b, :, n] = (p / p.sum(-1, keepdims=True)) @ v[b, :, kh]
  return out


def test_dense_attention_matches_numpy():
  rng = np.random.default_rng()
  B, T, N, K, H = 2, 12, 6, 2, 8
  q, k, v = (rng.standard_normal(s).astype(np.float32) for s in
             [(B, T, N, H), (B, T, K, H), (B, T, K, H)])
  seg = np.array([[1] * 5 + [2] * 4 + [0] * 3, [1] * 12], np.int32)
  got = dense_attention(jnp.asarray(q), jnp.asarray(k), jnp.asarray(v), jnp.asarray(seg))
  np.testing.assert_allclose(np.asarray(got), _numpy_attention(q, k, v, seg), atol=1e-5)


@pytest.mark.parametrize("scan", [True, False])
def test_packed_row_equals_documents_run_alone(scan):
  cfg = maxlm.ModelConfig(**{**CFG.__dict__, "rope_scaling": None, "scan_layers": scan})
  params = maxlm.init_params(cfg, jax.random.PRNGKey(1))
  rng = np.random.default_rng()
  lens = [5, 7, 3]
  docs = [rng.integers(0, cfg.vocab_size, n).astype(np.int32) for n in lens]
  T = 18  # 15 real tokens + 3 padding
  tokens = np.zeros((1, T), np.int32)
  seg = np.zeros((1, T), np.int32)
  pos = np.zeros((1, T), np.int32)
  start = 0
  for i, d in enumerate(docs):
    tokens[0, start:start + len(d)] = d
    seg[0, start:start + len(d)] = i + 1
    pos[0, start:start + len(d)] = np.arange(len(d))
    start += len(d)
  packed = np.asarray(maxlm.forward(cfg, params, tokens, seg, pos))
  assert packed.dtype == np.float32 and packed.shape == (1, T, cfg.vocab_size)
  start = 0
  for d in docs:
    alone = np.asarray(maxlm.forward(cfg, params, d[None]))
    np.testing.assert_allclose(packed[0, start:start + len(d)], alone[0], atol=2e-5, rtol=1e-5)
    start += len(d)


def test_scan_and_unrolled_layers_agree():
  params_scan = maxlm.init_params(CFG, jax.random.PRNGKey(0))
  cfg_loop = maxlm.ModelConfig(**{**CFG.__dict__, "rope_scaling": None, "scan_layers": False})
  # Unstack [L, ...] scanned params into layer_i entries.
  params_loop = {k: v for k, v in params_scan.items() if k != "layers"}
  for i in range(CFG.n_layers):
    params_loop[f"layer_{i}"] = jax.tree.map(lambda x: x[i], params_scan["layers"])
  tokens = np.random.default_rng().integers(0, CFG.vocab_size, (2, 9)).astype(np.int32)
  np.testing.assert_allclose(np.asarray(maxlm.forward(CFG, params_scan, tokens)),
                             np.asarray(maxlm.forward(cfg_loop, params_loop, tokens)), atol=1e-5)


@pytest.mark.parametrize("remat", ["full", "save_dots"])
def test_remat_does_not_change_gradients(remat):
  cfg_r = maxlm.ModelConfig(**{**CFG.__dict__, "rope_scaling": None, "remat": remat})
  params = maxlm.init_params(CFG, jax.random.PRNGKey(0))
  tokens = np.random.default_rng().integers(0, CFG.vocab_size, (2, 8)).astype(np.int32)
  loss = lambda cfg: lambda p: maxlm.forward(cfg, p, tokens).mean()
  g0 = jax.grad(loss(CFG))(params)
  g1 = jax.grad(loss(cfg_r))(params)
  for a, b in zip(jax.tree.leaves(g0), jax.tree.leaves(g1)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-6, rtol=1e-5)


def test_bfloat16_compute_stays_close_and_returns_float32_logits():
  cfg16 = maxlm.ModelConfig(**{**CFG.__dict__, "rope_scaling": None, "compute_dtype": "bfloat16"})
  params = maxlm.init_params(CFG, jax.random.PRNGKey(0))
  tokens = np.random.default_rng().integers(0, CFG.vocab_size, (2, 8)).astype(np.int32)
  lo32 = np.asarray(maxlm.forward(CFG, params, tokens))
  lo16 = maxlm.forward(cfg16, params, tokens)
  assert lo16.dtype == jnp.float32
  np.testing.assert_allclose(np.asarray(lo16), lo32, atol=0.05)


def test_param_count_matches_tree():
  for tied in (False, True):
    cfg = maxlm.ModelConfig(**{**CFG.__dict__, "rope_scaling": None, "tie_embeddings": tied})
    params = maxlm.init_params(cfg, jax.random.PRNGKey(0))
    n = sum(x.size for x in jax.tree.leaves(params))
    assert n == cfg.param_counts()["total"]


def test_flops_per_token_formula():
  # PaLM appendix B: 6 * matmul params + 12 * L * N * H * T.
  from maxlm.model import flops_per_token
  c = CFG.param_counts()
  expected = 6 * (c["non_embedding"] + CFG.vocab_size * CFG.d_model) + 12 * 2 * 4 * 8 * 256
  assert flops_per_token(CFG, 256) == expected


@pytest.mark.parametrize("seq_len,window", [(256, 64), (48, 64), (64, 64)])
def test_flops_per_token_bounds_attention_by_the_sliding_window(seq_len, window):
  from maxlm.model import flops_per_token
  from maxlm.model.attention import make_attention_mask
  cfg = maxlm.ModelConfig(**{**CFG.__dict__, "rope_scaling": None, "sliding_window": window})
  c = cfg.param_counts()
  # By hand: L=2, N=4, H=8; keys per query = the window when the sequence is longer.
  keys = 64 if seq_len > window else seq_len
  expected = 6 * (c["non_embedding"] + cfg.vocab_size * cfg.d_model) + 12 * 2 * 4 * 8 * keys
  assert flops_per_token(cfg, seq_len) == expected
  # The count is the most keys any query sees under the attention's own mask.
  seg = jnp.ones((1, seq_len), jnp.int32)
  mask = np.asarray(make_attention_mask(seg, seg, causal=True, window=window))
  assert mask.reshape(-1, seq_len).sum(-1).max() == keys
  # No window: the full sequence, as before.
  assert flops_per_token(CFG, seq_len) == (
      6 * (c["non_embedding"] + cfg.vocab_size * cfg.d_model) + 12 * 2 * 4 * 8 * seq_len)
