"""Model families through HF interop: Qwen2 (q/k/v biases) and Mistral (sliding window).

Each test builds a tiny random-weight model with transformers (2 layers, D=64,
V=128), saves it, imports it with maxlm and compares float32 logits with
transformers' own. Agreement is max|maxlm - hf| / max|hf| over the whole
[B, T, V] block (a relative error against the logit scale). Mistral runs on a
sequence four times its window, so a window that is off by one or ignored shows.
The mask itself is checked against a hand-built NumPy mask on packed rows.
"""
import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import torch  # noqa: E402  (the `reference` extra)
import transformers  # noqa: E402

pytestmark = pytest.mark.torch  # not run on the Python 3.12 CI stack (.ci/run)

import maxlm  # noqa: E402
from maxlm.interop import export_checkpoint, import_checkpoint, model_config_from_hf  # noqa: E402
from maxlm.model import attention as attention_lib  # noqa: E402
from maxlm.model import decode as decode_lib  # noqa: E402
from maxlm.model import transformer  # noqa: E402

RTOL = 1e-4
WINDOW = 5
_TINY = dict(hidden_size=64, intermediate_size=96, num_hidden_layers=2, vocab_size=128,
             num_attention_heads=4, num_key_value_heads=2, head_dim=16)
_FAMILIES = {
    "llama": (transformers.LlamaConfig, transformers.LlamaForCausalLM),
    "qwen2": (transformers.Qwen2Config, transformers.Qwen2ForCausalLM),
    "mistral": (transformers.MistralConfig, transformers.MistralForCausalLM),
}


def _rel_err(a, b):
  return float(np.max(np.abs(np.asarray(a) - np.asarray(b))) / np.max(np.abs(np.asarray(b))))


def _hf_model(family, seed=0, **overrides):
  """A random-weight float32 model of `family` in eval mode; biases and norms non-trivial."""
  config_cls, model_cls = _FAMILIES[family]
  torch.manual_seed(seed)
  model = model_cls(config_cls(**{**_TINY, **overrides})).eval()
  with torch.no_grad():
    for name, p in model.named_parameters():
      if name.endswith("norm.weight"):
        p.copy_(1.0 + 0.2 * torch.randn_like(p))
      else:  # biases included: a dropped or mis-reshaped bias moves the logits
        p.normal_(0.0, 0.2)
  return model


def _hf_logits(model, tokens_bt):
  with torch.no_grad():
    return model(torch.as_tensor(tokens_bt, dtype=torch.long)).logits.float().numpy()


def _tokens(seed=0, B=2, T=20):
  return np.random.default_rng(seed).integers(0, _TINY["vocab_size"], (B, T), dtype=np.int32)


def _saved(model, path):
  model.save_pretrained(path, safe_serialization=True)
  return path


_CASES = {
    "qwen2_untied": ("qwen2", dict()),
    "qwen2_tied_theta1m": ("qwen2", dict(tie_word_embeddings=True, rope_theta=1e6)),
    "qwen2_all_layers_windowed": ("qwen2", dict(use_sliding_window=True, sliding_window=WINDOW,
                                                max_window_layers=0)),
    "mistral_window": ("mistral", dict(sliding_window=WINDOW)),
    "mistral_window_mqa": ("mistral", dict(sliding_window=WINDOW, num_key_value_heads=1)),
    "mistral_no_window": ("mistral", dict(sliding_window=None)),
    "llama_attention_bias": ("llama", dict(attention_bias=True)),
}


@pytest.mark.parametrize("case", sorted(_CASES))
def test_logits_match_transformers(case, tmp_path):
  family, overrides = _CASES[case]
  model = _hf_model(family, **overrides)
  cfg, params = import_checkpoint(_saved(model, tmp_path))
  assert cfg.qkv_bias == (family == "qwen2" or bool(overrides.get("attention_bias")))
  assert cfg.o_bias == bool(overrides.get("attention_bias"))
  assert cfg.sliding_window == (WINDOW if overrides.get("sliding_window") else None)
  tokens = _tokens(T=4 * WINDOW)  # longer than the window: the window changes the logits
  err = _rel_err(maxlm.forward(cfg, params, tokens), _hf_logits(model, tokens))
  print(f"{case}: max|diff|/max|hf logit| = {err:.2e}")
  assert err < RTOL


def test_window_matters_at_this_length(tmp_path):
  """The Mistral comparison can fail: without the window the logits differ from HF's."""
  model = _hf_model("mistral", sliding_window=WINDOW)
  cfg, params = import_checkpoint(_saved(model, tmp_path))
  tokens = _tokens(T=4 * WINDOW)
  full = maxlm.forward(dataclasses.replace(cfg, sliding_window=None), params, tokens)
  assert _rel_err(full, _hf_logits(model, tokens)) > 100 * RTOL


def test_qwen2_bias_params_imported(tmp_path):
  model = _hf_model("qwen2")
  cfg, params = import_checkpoint(_saved(model, tmp_path))
  attn = params["layers"]["block"]["attn"]
  assert attn["b_q_nh"].shape == (2, 4, 16) and attn["b_k_kh"].shape == (2, 2, 16)
  # head-major: HF's flat bias index n*H + h is maxlm's [n, h]
  hf_bias = model.model.layers[1].self_attn.k_proj.bias.detach().numpy()
  np.testing.assert_array_equal(attn["b_k_kh"][1], hf_bias.reshape(2, 16))
  counts = cfg.param_counts()
  assert counts["total"] == sum(p.numel() for p in model.parameters())


def _numpy_mask(seg_bt, window):
  """Same document, causal, and fewer than `window` steps back: the reference."""
  B, T = seg_bt.shape
  out = np.zeros((B, T, T), bool)
  for b in range(B):
    for i in range(T):
      for j in range(T):
        out[b, i, j] = seg_bt[b, i] == seg_bt[b, j] and 0 <= i - j < window
  return out


def test_window_mask_keeps_packed_documents_apart():
  seg_bt = np.array([[1, 1, 1, 1, 1, 1, 1, 2, 2, 2, 2, 2, 0, 0],
                     [1, 1, 2, 2, 2, 2, 2, 2, 2, 2, 3, 3, 3, 3]], np.int32)
  got = np.asarray(attention_lib.make_attention_mask(jnp.asarray(seg_bt), jnp.asarray(seg_bt),
                                                     window=3))
  np.testing.assert_array_equal(got, _numpy_mask(seg_bt, 3))


def test_windowed_attention_equals_dense_reference():
  """attention(window=W) on packed rows against a NumPy softmax over the reference mask;
  xla and the pallas kernel (whose own window counts the keys before the query)."""
  rng = np.random.default_rng(0)
  B, T, N, K, H = 2, 24, 4, 2, 8
  q, k, v = (rng.normal(size=s).astype(np.float32) for s in [(B, T, N, H), (B, T, K, H),
                                                               (B, T, K, H)])
  seg = np.array([[1] * 15 + [2] * 9, [1] * 4 + [2] * 20], np.int32)
  mask_bts = _numpy_mask(seg, WINDOW)
  kk = np.repeat(k, N // K, axis=2)  # query head n uses kv head n // (N/K)
  vv = np.repeat(v, N // K, axis=2)
  logits = np.einsum("btnh,bsnh->bnts", q, kk) / np.sqrt(H)
  logits = np.where(mask_bts[:, None], logits, -np.inf)
  p = np.exp(logits - logits.max(-1, keepdims=True))
  p /= p.sum(-1, keepdims=True)
  ref = np.einsum("bnts,bsnh->btnh", p, vv)
  for impl in ("xla", "pallas"):
    got = attention_lib.attention(q, k, v, jnp.asarray(seg), impl=impl, window=WINDOW)
    np.testing.assert_allclose(np.asarray(got), ref, atol=2e-5, rtol=2e-5, err_msg=impl)


def test_window_refused_where_unimplemented(tmp_path):
  x = jnp.zeros((1, 8, 2, 8))
  with pytest.raises(ValueError, match="sliding_window"):
    attention_lib.attention(x, x, x, None, impl="cudnn", window=4)
  # and at config time, naming both fields, before anything is traced
  with pytest.raises(ValueError, match="sliding_window=5 needs model.attention_impl"):
    import_checkpoint(_saved(_hf_model("mistral", sliding_window=5), tmp_path),
                      model_overrides={"attention_impl": "splash"})


def test_decode_with_window_equals_forward(tmp_path):
  """Prefill then one-token steps through the KV cache give the full forward's logits
  past the window (the cache mask applies the window on slots)."""
  model = _hf_model("mistral", sliding_window=WINDOW)
  cfg, params = import_checkpoint(_saved(model, tmp_path))
  tokens = _tokens(B=1, T=3 * WINDOW)
  ref = np.asarray(maxlm.forward(cfg, params, tokens))
  P = 4
  cache = decode_lib.init_cache(cfg, 1, tokens.shape[1])
  seg, pos = transformer.default_segments_and_positions(jnp.asarray(tokens))
  out, cache = transformer.forward_with_cache(cfg, params, tokens[:, :P], seg[:, :P], pos[:, :P],
                                              cache, fresh=True)
  steps = [np.asarray(out)]
  for t in range(P, tokens.shape[1]):
    out, cache = transformer.forward_with_cache(cfg, params, tokens[:, t:t + 1],
                                                seg[:, t:t + 1], pos[:, t:t + 1], cache)
    steps.append(np.asarray(out))
  assert _rel_err(np.concatenate(steps, axis=1), ref) < RTOL


def _hf_dict(family, **overrides):
  config_cls, _ = _FAMILIES[family]
  return {**config_cls(**_TINY).to_dict(), "architectures": [_FAMILIES[family][1].__name__],
          **overrides}


@pytest.mark.parametrize("family, overrides, match", [
    ("qwen2", dict(use_sliding_window=True, sliding_window=8, max_window_layers=1,
                   layer_types=["full_attention", "sliding_attention"]), "layer_types"),
    ("qwen2", dict(layer_types=["full_attention", "chunked_attention"]), "layer_types"),
    ("mistral", dict(sliding_window=0), "sliding_window"),
    ("mistral", dict(hidden_act="gelu"), "hidden_act"),
])
def test_unsupported_fields_named(family, overrides, match):
  with pytest.raises(ValueError, match=match):
    model_config_from_hf(_hf_dict(family, **overrides))


def test_qwen2_4x_config_windows_from_max_window_layers():
  """A 4.x Qwen2 config.json has no layer_types: max_window_layers decides, as transformers."""
  base = {k: v for k, v in _hf_dict("qwen2").items() if k != "layer_types"}
  mixed = dict(base, use_sliding_window=True, sliding_window=8, max_window_layers=1)
  with pytest.raises(ValueError, match="max_window_layers=1"):
    model_config_from_hf(mixed)
  assert model_config_from_hf(dict(mixed, max_window_layers=0)).sliding_window == 8
  assert model_config_from_hf(dict(mixed, use_sliding_window=False)).sliding_window is None


def test_llama_attention_bias_params_imported_and_matter(tmp_path):
  """o_proj's bias lands in b_o_d; dropping it moves the logits (the comparison can fail)."""
  model = _hf_model("llama", attention_bias=True)
  cfg, params = import_checkpoint(_saved(model, tmp_path))
  attn = params["layers"]["block"]["attn"]
  np.testing.assert_array_equal(attn["b_o_d"][1],
                                model.model.layers[1].self_attn.o_proj.bias.detach().numpy())
  assert cfg.param_counts()["total"] == sum(p.numel() for p in model.parameters())
  tokens = _tokens()
  no_o = jax.tree_util.tree_map(np.asarray, params)
  no_o["layers"]["block"]["attn"]["b_o_d"] = np.zeros_like(attn["b_o_d"])
  assert _rel_err(maxlm.forward(cfg, no_o, tokens), _hf_logits(model, tokens)) > 100 * RTOL


@pytest.mark.parametrize("case", ["qwen2_untied", "qwen2_all_layers_windowed", "mistral_window",
                                  "llama_attention_bias"])
def test_export_loads_as_the_same_family(case, tmp_path):
  """import -> export -> AutoModelForCausalLM: the family class, the same logits."""
  family, overrides = _CASES[case]
  model = _hf_model(family, **overrides)
  cfg, params = import_checkpoint(_saved(model, tmp_path / "in"))
  export_checkpoint(cfg, params, tmp_path / "out")
  assert json.loads((tmp_path / "out" / "config.json").read_text())["model_type"] == family
  back = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "out",
                                                           dtype=torch.float32).eval()
  assert type(back) is type(model)
  tokens = _tokens(seed=1, T=4 * WINDOW)
  assert _rel_err(_hf_logits(back, tokens), _hf_logits(model, tokens)) < RTOL
  cfg2, params2 = import_checkpoint(tmp_path / "out")
  assert cfg2 == cfg
  for a, b in zip(jax.tree_util.tree_leaves(params2), jax.tree_util.tree_leaves(params)):
    assert np.array_equal(a, b)
