"""Hugging Face interop: logits match transformers' LlamaForCausalLM, and round trips are exact.

Torch and transformers are test-only requirements; the library reads and writes
safetensors through numpy. Models are tiny (D=64, 2 layers, V=128) with random
weights, norms included, so a swapped norm or a mis-grouped head would show.

Logit agreement is measured as max|maxlm - hf| / max|hf| over the whole [B, T, V]
block: a relative error against the logit scale, not per element (elementwise
relative error is meaningless near zero logits).
"""
import dataclasses
import json

import jax
import ml_dtypes
import numpy as np
import pytest

import torch  # noqa: E402  (the `reference` extra, requirements-reference.txt)
import transformers  # noqa: E402

from hf_fixtures import hf_logits, random_maxlm_params, randomize, rel_err  # noqa: E402

pytestmark = pytest.mark.torch  # not run on the Python 3.12 CI stack (.ci/run)

import maxlm  # noqa: E402
from maxlm import ModelConfig  # noqa: E402
from maxlm.interop import (export_checkpoint, import_checkpoint,  # noqa: E402
                           model_config_from_hf)

RTOL = 1e-4
_TINY = dict(hidden_size=64, intermediate_size=96, num_hidden_layers=2, vocab_size=128,
             num_attention_heads=4, num_key_value_heads=2)


def _hf_model(seed=0, **overrides):
  """A random-weight float32 LlamaForCausalLM in eval mode."""
  return randomize(
      transformers.LlamaForCausalLM(transformers.LlamaConfig(**{**_TINY, **overrides})), seed)


def _tokens(seed=0, B=2, T=12):
  return np.random.default_rng(seed).integers(0, _TINY["vocab_size"], (B, T), dtype=np.int32)


def _save(model, path, **kwargs):
  model.save_pretrained(path, safe_serialization=True, **kwargs)
  return path


_CASES = {
    "gqa_untied": dict(),
    "theta500k_tied": dict(rope_theta=500000.0, tie_word_embeddings=True),
    "mqa_head_dim_32": dict(num_key_value_heads=1, head_dim=32),
    "mha_linear_rope": dict(num_key_value_heads=4, rms_norm_eps=1e-5,
                            rope_scaling={"rope_type": "linear", "factor": 4.0}),
}


@pytest.mark.parametrize("case", sorted(_CASES))
def test_logits_match_transformers(case, tmp_path):
  model = _hf_model(**_CASES[case])
  cfg, params = import_checkpoint(_save(model, tmp_path))
  tokens = _tokens()
  err = rel_err(maxlm.forward(cfg, params, tokens), hf_logits(model, tokens))
  print(f"{case}: max|diff|/max|hf logit| = {err:.2e}")
  assert err < RTOL


def test_config_fields_parsed(tmp_path):
  model = _hf_model(rope_theta=500000.0, head_dim=32, num_key_value_heads=1,
                    tie_word_embeddings=True, rms_norm_eps=1e-5)
  cfg, params = import_checkpoint(_save(model, tmp_path))
  assert (cfg.d_model, cfg.n_layers, cfg.n_heads, cfg.n_kv_heads, cfg.head_dim, cfg.d_ff,
          cfg.vocab_size) == (64, 2, 4, 1, 32, 96, 128)
  assert (cfg.rope_theta, cfg.rope_scaling, cfg.norm_eps, cfg.tie_embeddings) == (
      500000.0, None, 1e-5, True)
  assert "lm_head_dv" not in params
  assert params["layers"]["block"]["attn"]["w_q_dnh"].shape == (2, 64, 4, 32)


def test_transformers_4x_and_5x_config_keys_agree(tmp_path):
  """A 4.x-style config.json (rope_theta/rope_scaling, no head_dim) gives the same model."""
  model = _hf_model(rope_theta=500000.0, rope_scaling={"rope_type": "linear", "factor": 2.0})
  path = _save(model, tmp_path)
  hf5 = json.loads((path / "config.json").read_text())
  assert hf5["rope_parameters"] == {"rope_type": "linear", "factor": 2.0, "rope_theta": 500000.0}
  cfg5, params5 = import_checkpoint(path)

  hf4 = {k: v for k, v in hf5.items() if k not in ("rope_parameters", "head_dim", "dtype")}
  hf4.update(rope_theta=500000.0, rope_scaling={"type": "linear", "factor": 2.0},
             torch_dtype="float32", transformers_version="4.44.0")
  (path / "config.json").write_text(json.dumps(hf4))
  cfg4, params4 = import_checkpoint(path)
  assert cfg4 == cfg5
  assert cfg5.rope_theta == 500000.0
  assert cfg5.rope_scaling_dict == {"rope_type": "linear", "factor": 2.0}
  tokens = _tokens()
  assert rel_err(maxlm.forward(cfg4, params4, tokens), hf_logits(model, tokens)) < RTOL


def test_unscanned_override_same_logits(tmp_path):
  model = _hf_model()
  path = _save(model, tmp_path)
  cfg, params = import_checkpoint(path, model_overrides={"scan_layers": False})
  assert not cfg.scan_layers and "layer_1" in params and "layers" not in params
  tokens = _tokens()
  assert rel_err(maxlm.forward(cfg, params, tokens), hf_logits(model, tokens)) < RTOL


def test_sharded_and_bf16_checkpoints(tmp_path):
  model = _hf_model()
  _, ref = import_checkpoint(_save(model, tmp_path / "single"))
  sharded = _save(model, tmp_path / "sharded", max_shard_size="100KB")
  assert (sharded / "model.safetensors.index.json").exists()
  _, got = import_checkpoint(sharded)
  jax.tree_util.tree_map(np.testing.assert_array_equal, got, ref)

  # bf16 on disk -> float32 params, equal to rounding the float32 weights to bf16.
  _, bf = import_checkpoint(_save(model.to(torch.bfloat16), tmp_path / "bf16"))
  rounded = jax.tree_util.tree_map(lambda x: x.astype(ml_dtypes.bfloat16).astype(np.float32), ref)
  assert all(x.dtype == np.float32 for x in jax.tree_util.tree_leaves(bf))
  jax.tree_util.tree_map(np.testing.assert_array_equal, bf, rounded)


_MAXLM = ModelConfig(vocab_size=128, d_model=64, n_layers=2, n_heads=4, n_kv_heads=2,
                     head_dim=32, d_ff=96, rope_theta=500000.0, norm_eps=1e-5)


@pytest.mark.parametrize("scan_layers", [True, False])
@pytest.mark.parametrize("tie", [False, True])
def test_export_import_round_trip_is_exact(scan_layers, tie, tmp_path):
  cfg = dataclasses.replace(_MAXLM, scan_layers=scan_layers, tie_embeddings=tie,
                            rope_scaling={"rope_type": "linear", "factor": 2.0})
  params = random_maxlm_params(cfg)
  export_checkpoint(cfg, params, tmp_path)
  got_cfg, got = import_checkpoint(tmp_path, model_overrides={"scan_layers": scan_layers})
  assert got_cfg == cfg
  assert jax.tree_util.tree_structure(got) == jax.tree_util.tree_structure(params)
  for a, b in zip(jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(params)):
    assert a.dtype == b.dtype and a.shape == b.shape
    assert np.array_equal(a, b)  # bitwise: float32 on disk, transposes only


@pytest.mark.parametrize("tie", [False, True])
def test_export_loads_in_transformers(tie, tmp_path):
  cfg = dataclasses.replace(_MAXLM, tie_embeddings=tie)
  params = random_maxlm_params(cfg)
  export_checkpoint(cfg, params, tmp_path)
  model = transformers.LlamaForCausalLM.from_pretrained(tmp_path, dtype=torch.float32).eval()
  assert model.config.rope_parameters["rope_theta"] == 500000.0
  assert model.config.head_dim == 32 and model.config.tie_word_embeddings == tie
  tokens = _tokens(seed=1)
  err = rel_err(maxlm.forward(cfg, params, tokens), hf_logits(model, tokens))
  print(f"export tie={tie}: max|diff|/max|hf logit| = {err:.2e}")
  assert err < RTOL


def _hf_dict(**overrides):
  return {**transformers.LlamaConfig(**_TINY).to_dict(), **overrides}


@pytest.mark.parametrize("overrides, match", [
    (dict(model_type="mistral", architectures=["MistralForCausalLM"], attention_bias=True),
     "attention_bias"),
    (dict(mlp_bias=True), "mlp_bias"),
    (dict(hidden_act="gelu"), "hidden_act"),
    (dict(model_type="mistral", architectures=["MistralForCausalLM"], sliding_window=-1),
     "sliding_window"),
    (dict(model_type="gpt2", architectures=["GPT2LMHeadModel"]), "unsupported checkpoint"),
    (dict(rope_parameters={"rope_type": "default", "rope_theta": 1e4,
                           "partial_rotary_factor": 0.5}), "partial_rotary_factor"),
])
def test_unsupported_features_refused(overrides, match):
  with pytest.raises(ValueError, match=match):
    model_config_from_hf(_hf_dict(**overrides))


def test_mistral_and_qwen2_configs_differ_from_llama_only_by_their_options():
  """Family options (tests/test_interop_families.py checks their logits): Mistral's window,
  Qwen2's biases; a Qwen2 window applies only with use_sliding_window."""
  base = _hf_dict()
  llama = model_config_from_hf(base)
  mistral = model_config_from_hf({**base, "model_type": "mistral",
                                  "architectures": ["MistralForCausalLM"], "sliding_window": 4096})
  qwen2 = model_config_from_hf({**base, "model_type": "qwen2", "architectures": ["Qwen2ForCausalLM"],
                                "sliding_window": 4096, "use_sliding_window": False})
  assert llama.sliding_window is None and not llama.qkv_bias
  assert mistral == dataclasses.replace(llama, sliding_window=4096)
  assert qwen2 == dataclasses.replace(llama, qkv_bias=True)


def test_unimplemented_rope_type_fails_at_import():
  # longrope (Phi-3) is a real HF rope type that maxlm does not implement.
  longrope = {"rope_type": "longrope", "short_factor": [1.0] * 8, "long_factor": [2.0] * 8,
              "original_max_position_embeddings": 4096, "rope_theta": 10000.0}
  with pytest.raises(NotImplementedError, match="longrope"):
    model_config_from_hf(_hf_dict(rope_parameters=longrope))


def test_overrides(tmp_path):
  with pytest.raises(ValueError, match="d_model"):
    model_config_from_hf(_hf_dict(), model_overrides={"d_model": 32})
  cfg = model_config_from_hf(_hf_dict(), {"compute_dtype": "bfloat16", "remat": "full"})
  assert (cfg.compute_dtype, cfg.remat) == ("bfloat16", "full")


def test_bias_tensors_refused(tmp_path):
  """Qwen2-style q/k/v biases in the weights are refused even if config.json is silent."""
  model = _hf_model(attention_bias=True)
  path = _save(model, tmp_path)
  hf = json.loads((path / "config.json").read_text())
  hf["attention_bias"] = False
  (path / "config.json").write_text(json.dumps(hf))
  with pytest.raises(ValueError, match="bias"):
    import_checkpoint(path)
