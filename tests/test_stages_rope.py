"""RoPE variants against Hugging Face's definitions (transformers' ROPE_INIT_FUNCTIONS).

Three levels: inverse frequencies and attention factor equal HF's init
functions; cos/sin tables equal LlamaRotaryEmbedding's; and a LlamaForCausalLM
with each `rope_parameters` type, imported through maxlm.interop, gives the
same logits (sequences longer than the original context, so scaling matters).
"""
import numpy as np
import pytest

import torch  # noqa: E402  (the `reference` extra, requirements-reference.txt)
import transformers  # noqa: E402
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS  # noqa: E402

pytestmark = pytest.mark.torch  # not run on the Python 3.12 CI stack (.ci/run)

import maxlm  # noqa: E402
from maxlm.interop import import_checkpoint  # noqa: E402
from maxlm.model import rope  # noqa: E402

_CASES = {
    "default_theta_5e5": dict(rope_type="default", rope_theta=500_000.0),
    "linear_4": dict(rope_type="linear", factor=4.0, rope_theta=10_000.0),
    "dynamic_ntk_4": dict(rope_type="dynamic", factor=4.0, rope_theta=10_000.0),
    "yarn_8": dict(rope_type="yarn", factor=8.0, rope_theta=10_000.0,
                   original_max_position_embeddings=16),
    "yarn_betas_mscale": dict(rope_type="yarn", factor=4.0, rope_theta=50_000.0, beta_fast=16,
                              beta_slow=2, mscale=1.0, mscale_all_dim=0.5,
                              original_max_position_embeddings=32),
    "yarn_explicit_attention_factor": dict(rope_type="yarn", factor=2.0, rope_theta=10_000.0,
                                           attention_factor=1.3, truncate=False,
                                           original_max_position_embeddings=16),
    "llama3_8": dict(rope_type="llama3", factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
                     rope_theta=500_000.0, original_max_position_embeddings=16),
}
_MAX_POS = 16  # the "original" context: test sequences are longer


def _hf_config(params, head_dim=16, **kw):
  return transformers.LlamaConfig(
      hidden_size=64, intermediate_size=96, num_hidden_layers=2, vocab_size=128,
      num_attention_heads=4, num_key_value_heads=2, head_dim=head_dim,
      max_position_embeddings=_MAX_POS, rope_parameters=dict(params), **kw)


def _maxlm_scaling(params):
  """The maxlm rope_scaling dict: HF's parameters plus the lengths HF reads from the config."""
  s = {k: v for k, v in params.items() if k != "rope_theta"}
  return None if s["rope_type"] == "default" else {**s, "max_position_embeddings": _MAX_POS}


@pytest.mark.parametrize("case", sorted(_CASES))
@pytest.mark.parametrize("head_dim", [16, 64])
def test_inv_freq_and_attention_factor_match_hf(case, head_dim):
  params = _CASES[case]
  hf_cfg = _hf_config(params, head_dim=head_dim)
  seq_lens = [None, 40] if params["rope_type"] == "dynamic" else [None]
  for seq_len in seq_lens:
    if params["rope_type"] == "default":
      want = 1.0 / (params["rope_theta"] ** (torch.arange(0, head_dim, 2).float() / head_dim))
      want_af = 1.0
    else:
      want, want_af = ROPE_INIT_FUNCTIONS[params["rope_type"]](hf_cfg, None, seq_len=seq_len)
    got = rope.inv_frequencies(head_dim, params["rope_theta"], _maxlm_scaling(params),
                               seq_len=seq_len)
    np.testing.assert_allclose(np.asarray(got), want.numpy(), rtol=2e-6, atol=0)
    assert got.attention_factor == pytest.approx(want_af, rel=1e-12)


@pytest.mark.parametrize("case", sorted(_CASES))
def test_cos_sin_tables_match_hf(case):
  params = _CASES[case]
  hf_cfg = _hf_config(params)
  emb = transformers.models.llama.modeling_llama.LlamaRotaryEmbedding(hf_cfg)
  T = 48  # 3x the original context: dynamic NTK kicks in
  pos = np.arange(T)[None]
  cos_hf, sin_hf = emb(torch.zeros(1, T, 16), torch.as_tensor(pos))
  inv = rope.inv_frequencies(16, params["rope_theta"], _maxlm_scaling(params))
  cos, sin = rope.cos_sin(pos, inv)
  # HF's tables repeat the H/2 angles twice (rotate-half layout).
  np.testing.assert_allclose(np.asarray(cos), cos_hf.numpy()[..., :8], atol=2e-6)
  np.testing.assert_allclose(np.asarray(sin), sin_hf.numpy()[..., :8], atol=2e-6)
  np.testing.assert_allclose(cos_hf.numpy()[..., :8], cos_hf.numpy()[..., 8:])


@pytest.mark.parametrize("case", sorted(_CASES))
def test_imported_model_logits_match_hf(case, tmp_path):
  params = _CASES[case]
  torch.manual_seed(0)
  model = transformers.LlamaForCausalLM(_hf_config(params)).eval()
  with torch.no_grad():
    for _, p in model.named_parameters():
      p.normal_(0.0, 0.2)
  model.save_pretrained(tmp_path, safe_serialization=True)
  # maxlm keeps the lengths HF reads from config.json's top level inside the
  # rope_scaling dict; the importer carries rope_parameters as saved, which
  # for dynamic NTK lacks max_position_embeddings, so it is given here.
  overrides = None
  if params["rope_type"] == "dynamic":
    overrides = {"rope_scaling": _maxlm_scaling(params)}
  cfg, mparams = import_checkpoint(str(tmp_path), model_overrides=overrides)
  assert (cfg.rope_scaling_dict or {}).get("rope_type", "default") == params["rope_type"]
  tokens = np.random.default_rng(0).integers(0, 128, (2, 40), dtype=np.int32)
  with torch.no_grad():
    want = model(torch.as_tensor(tokens, dtype=torch.long)).logits.numpy()
  got = np.asarray(maxlm.forward(cfg, mparams, tokens))
  err = np.max(np.abs(got - want)) / np.max(np.abs(want))
  assert err < 1e-4, f"{case}: max|diff|/max|hf| = {err:.2e}"


def test_unknown_type_and_missing_length_fail_loudly():
  with pytest.raises(NotImplementedError, match="longrope"):
    rope.inv_frequencies(16, 1e4, {"rope_type": "longrope", "factor": 2.0})
  with pytest.raises(ValueError, match="original_max_position_embeddings"):
    rope.inv_frequencies(16, 1e4, {"rope_type": "yarn", "factor": 2.0})
