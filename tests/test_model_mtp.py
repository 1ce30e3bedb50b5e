"""Multi-token prediction (maxlm/model/mtp.py) against a NumPy reference; D = 0 changes nothing."""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import maxlm
from maxlm.model import mtp as mtp_lib
from maxlm.model import objective
from maxlm.model import transformer

CFG = maxlm.ModelConfig(vocab_size=64, d_model=16, n_layers=2, n_heads=4, n_kv_heads=2,
                        head_dim=4, d_ff=32, rope_theta=1e4)


def _batch(B=2, T=12, V=64, seed=None):
  """Packed rows: row 0 holds documents of 5 and 4 tokens then 3 padding; row 1 one document."""
  rng = np.random.default_rng(seed)
  seg = np.array([[1] * 5 + [2] * 4 + [0] * 3, [1] * T], np.int32)[:B]
  pos = np.zeros_like(seg)
  for b in range(B):
    for s in set(seg[b]) - {0}:
      idx = np.where(seg[b] == s)[0]
      pos[b, idx] = np.arange(len(idx))
  inputs = rng.integers(0, V, (B, T)).astype(np.int32)
  targets = np.concatenate([inputs[:, 1:], np.zeros((B, 1), np.int32)], 1)
  # A target counts when it is the next token of the same document.
  loss_mask = np.concatenate([(seg[:, 1:] == seg[:, :-1]) & (seg[:, :-1] > 0),
                              np.zeros((B, 1), bool)], 1).astype(np.int32)
  return dict(inputs=inputs, targets=targets, loss_mask=loss_mask, segment_ids=seg,
              positions=pos, domain_ids=np.zeros((B, T), np.int32))


def test_depth_mask_never_crosses_a_document():
  b = _batch()
  got = np.asarray(mtp_lib.depth_mask(jnp.asarray(b["loss_mask"]), jnp.asarray(b["segment_ids"]),
                                      1))
  # Row 0: doc 1 = positions 0..4, doc 2 = 5..8. Depth 1 at i predicts t_{i+2}:
  # valid for i = 0..2 (targets up to position 4) and 5..6 (up to 8).
  want0 = [1, 1, 1, 0, 0, 1, 1, 0, 0, 0, 0, 0]
  want1 = [1] * 10 + [0, 0]  # one document of 12: t_{i+2} exists for i <= 9
  np.testing.assert_array_equal(got, np.array([want0, want1], np.float32))


def test_depth_zero_changes_nothing():
  """D = 0: the params tree is the trunk's and the loss is bit for bit the pre-MTP loss."""
  key = jax.random.PRNGKey(3)
  p0 = maxlm.init_params(CFG, key)
  p1 = maxlm.init_params(dataclasses.replace(CFG, mtp_depth=1), key)
  assert "mtp" not in p0 and set(p1) == set(p0) | {"mtp"}
  for a, b in zip(jax.tree.leaves(p0), jax.tree.leaves({k: p1[k] for k in p0})):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))  # trunk draws unchanged
  plain = transformer.Transformer(CFG).init(key, *[jnp.zeros((1, 1), jnp.int32)] * 2,
                                            jnp.zeros((1, 1), jnp.int32))["params"]
  for a, b in zip(jax.tree.leaves(p0), jax.tree.leaves(flax_unbox(plain))):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))

  b = _batch()
  total, aux = objective.next_token_sums(p0, b, model_config=CFG, num_domains=1)
  # The pre-MTP loss, written out: optax cross entropy on the public forward's logits.
  logits = maxlm.forward(CFG, p0, b["inputs"], b["segment_ids"], b["positions"])
  want = (optax.softmax_cross_entropy_with_integer_labels(logits, b["targets"])
          * b["loss_mask"]).sum()
  assert float(total) == float(want) == float(aux["nll_sum"])
  assert not any(k.startswith("mtp") for k in aux)
  # The trunk's loss does not depend on whether MTP modules ride along.
  _, aux1 = objective.next_token_sums(p1, b, model_config=dataclasses.replace(CFG, mtp_depth=1),
                                      num_domains=1)
  assert float(aux1["nll_sum"]) == float(aux["nll_sum"])


def flax_unbox(tree):
  import flax.linen as nn
  return nn.meta.unbox(tree)


# --- NumPy reference --------------------------------------------------------

def _rms(x, scale, eps):
  return x / np.sqrt(np.mean(x * x, -1, keepdims=True) + eps) * scale


def _rope(x_btnh, pos_bt, theta):
  H = x_btnh.shape[-1]
  inv = 1.0 / theta ** (np.arange(0, H, 2) / H)
  ang = pos_bt[..., None, None] * inv  # [B, T, 1, H/2]
  x1, x2 = x_btnh[..., :H // 2], x_btnh[..., H // 2:]
  return np.concatenate([x1 * np.cos(ang) - x2 * np.sin(ang),
                         x2 * np.cos(ang) + x1 * np.sin(ang)], -1)


def _attention(q, k, v, seg):
  B, T, N, H = q.shape
  G = N // k.shape[2]
  out = np.zeros_like(q)
  for b in range(B):
    mask = (seg[b][:, None] == seg[b][None, :]) & np.tri(T, dtype=bool)
    for n in range(N):
      s = np.where(mask, q[b, :, n] @ k[b, :, n // G].T / np.sqrt(H), -np.inf)
      p = np.exp(s - s.max(-1, keepdims=True))
      out[b, :, n] = (p / p.sum(-1, keepdims=True)) @ v[b, :, n // G]
  return out


def _block(x, p, seg, pos, cfg):
  a = p["attn"]
  h = _rms(x, p["attn_norm"]["scale_d"], cfg.norm_eps)
  q = _rope(np.einsum("btd,dnh->btnh", h, a["w_q_dnh"]), pos, cfg.rope_theta)
  k = _rope(np.einsum("btd,dkh->btkh", h, a["w_k_dkh"]), pos, cfg.rope_theta)
  v = np.einsum("btd,dkh->btkh", h, a["w_v_dkh"])
  x = x + np.einsum("btnh,nhd->btd", _attention(q, k, v, seg), a["w_o_nhd"])
  m = p["mlp"]
  h = _rms(x, p["mlp_norm"]["scale_d"], cfg.norm_eps)
  g = h @ m["w_gate_df"]
  return x + ((g / (1 + np.exp(-g))) * (h @ m["w_up_df"])) @ m["w_down_fd"]


def _numpy_mtp_ce_sum(cfg, params, resid, b, k=1):
  """Depth-1 cross entropy summed over positions whose t_{i+2} is in the same document."""
  p = jax.tree.map(np.asarray, params["mtp"][f"depth_{k}"])
  emb = np.asarray(params["embedding_vd"])
  B, T = b["inputs"].shape
  nxt = np.zeros_like(b["inputs"])
  nxt[:, :T - k] = b["inputs"][:, k:]
  e = _rms(emb[nxt], p["embed_norm"]["scale_d"], cfg.norm_eps)
  h = _rms(resid, p["hidden_norm"]["scale_d"], cfg.norm_eps)
  x = np.concatenate([e, h], -1) @ p["w_proj_ed"]
  x = _block(x, p["block"], b["segment_ids"], b["positions"], cfg)
  logits = _rms(x, p["final_norm"]["scale_d"], cfg.norm_eps) @ np.asarray(params["lm_head_dv"])
  logp = logits - logits.max(-1, keepdims=True)
  logp = logp - np.log(np.exp(logp).sum(-1, keepdims=True))
  total = 0.0
  for bi in range(B):
    for i in range(T - k):
      same = b["segment_ids"][bi, i + k] == b["segment_ids"][bi, i] > 0
      if same and b["loss_mask"][bi, i + k]:
        total -= logp[bi, i, b["targets"][bi, i + k]]
  return total


@pytest.mark.parametrize("chunk", [0, 5])
def test_depth_one_loss_matches_numpy(chunk):
  cfg = dataclasses.replace(CFG, mtp_depth=1, mtp_weight=0.3, loss_chunk=chunk)
  params = maxlm.init_params(cfg, jax.random.PRNGKey(np.random.default_rng().integers(1 << 30)))
  # Non-trivial norm scales, so a swapped or missing norm would show.
  params["mtp"]["depth_1"] = jax.tree_util.tree_map_with_path(
      lambda path, x: x * (1.0 + 0.5 * np.random.default_rng().random(x.shape))
      if "norm" in jax.tree_util.keystr(path) else x, params["mtp"]["depth_1"])
  b = _batch()
  total, aux = objective.next_token_sums(params, b, model_config=cfg, num_domains=1)
  resid, _ = transformer.forward_outputs(cfg, params, b["inputs"], b["segment_ids"],
                                         b["positions"], output="both")
  want = _numpy_mtp_ce_sum(cfg, params, np.asarray(resid, np.float64), b)
  np.testing.assert_allclose(float(aux["mtp_sum"]), want, rtol=1e-4)
  np.testing.assert_allclose(float(aux["mtp_1_sum"]), want, rtol=1e-4)
  np.testing.assert_allclose(float(total), float(aux["nll_sum"]) + 0.3 * want, rtol=1e-4)


def test_trunk_alone_serves_forward_and_export(tmp_path):
  """Generation/eval forward ignore the MTP params; HF export writes the trunk's tensors only."""
  from safetensors.numpy import load_file
  from maxlm.interop import hf
  cfg1 = dataclasses.replace(CFG, mtp_depth=2)
  p1 = maxlm.init_params(cfg1, jax.random.PRNGKey(0))
  trunk = {k: v for k, v in p1.items() if k != "mtp"}
  tokens = np.random.default_rng().integers(0, CFG.vocab_size, (1, 7)).astype(np.int32)
  np.testing.assert_array_equal(np.asarray(maxlm.forward(cfg1, p1, tokens)),
                                np.asarray(maxlm.forward(CFG, trunk, tokens)))
  hf.export_checkpoint(cfg1, p1, str(tmp_path / "a"))
  hf.export_checkpoint(CFG, trunk, str(tmp_path / "b"))
  a, b = load_file(str(tmp_path / "a/model.safetensors")), load_file(str(tmp_path / "b/model.safetensors"))
  assert set(a) == set(b) and not any("mtp" in k for k in a)
  for k in a:
    np.testing.assert_array_equal(a[k], b[k])


def test_param_count_includes_mtp_modules():
  cfg = dataclasses.replace(CFG, mtp_depth=2)
  params = maxlm.init_params(cfg, jax.random.PRNGKey(0))
  assert sum(x.size for x in jax.tree.leaves(params)) == cfg.param_counts()["total"]
  assert sum(x.size for x in jax.tree.leaves(params["mtp"])) == cfg.param_counts()["mtp"]


def test_mtp_with_context_parallel_is_refused():
  """MTP's shift along T would pair tokens across zigzag chunks: validation names both fields."""
  import pytest as _pytest
  from configs import pretrain
  from maxlm.train.validate import ConfigError, validate_config
  config = pretrain.get_config("tiny")
  config.model.mtp_depth = 1
  config.mesh.context = 2
  config.mesh.data, config.mesh.fsdp = 1, -1
  with _pytest.raises(ConfigError, match="mtp_depth=1 with mesh.context=2"):
    validate_config(config, 8)
