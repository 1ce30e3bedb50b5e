"""Hugging Face checkpoints in and out: Llama, Mistral and Qwen2 config.json + safetensors.

  cfg, params = import_checkpoint("path/to/Llama-3.2-1B")
  logits_btv = maxlm.forward(cfg, params, tokens_bt)
  export_checkpoint(cfg, params, "out/")  # AutoModelForCausalLM.from_pretrained("out/") loads it

No torch: tensors are read and written with safetensors' numpy API (bf16 via
ml_dtypes). The families are one network with two options (ModelConfig):

  llama    LlamaForCausalLM: the plain block; RoPE variants of rope.py (Llama 3.1
           'llama3', linear, dynamic, yarn)
  mistral  MistralForCausalLM: `sliding_window` W on every layer (model.sliding_window:
           a query sees itself and the W-1 tokens before it, of its own document)
  qwen2    Qwen2ForCausalLM: biases on q, k, v (model.qkv_bias); a window only with
           `use_sliding_window`, and then only when every layer has it

Llama's `attention_bias=true` biases q, k, v and o_proj (model.qkv_bias and
model.o_bias); it exports as a Llama with attention_bias. Anything else the
maxlm model cannot compute (MLP biases; other activations; per-layer windows; RoPE types
rope.py lacks; quantized weights) is refused naming the config.json field,
never silently dropped. Export writes the family the options call for.

Layout mapping. HF stores torch Linear weights as [out, in] and applies x W^T;
maxlm stores [in, out...] with the head axis split out, so every projection is
a transpose plus a reshape. HF's flattened head axis is head-major
(`view(B, T, N, H)`), matching maxlm's [.., N, H]. RoPE needs no permutation:
both use the rotate-half layout (rope.py); transformers' `convert_llama_weights`
already permuted Meta's interleaved q/k into it. GQA grouping is the same in
both: kv head k serves query heads k*N/K .. (k+1)*N/K - 1 (HF `repeat_kv`).

Returned params are host numpy arrays (float32 unless `param_dtype` is
overridden), so a large model can be placed straight onto a mesh with
`jax.device_put(params, shardings)` without first landing on one device.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn
from safetensors import safe_open
from safetensors.numpy import save_file

from maxlm.model import rope
from maxlm.model.config import ModelConfig

log = logging.getLogger(__name__)

_ARCHITECTURES = {"llama": "LlamaForCausalLM", "mistral": "MistralForCausalLM",
                  "qwen2": "Qwen2ForCausalLM"}
# ModelConfig fields an import may override: numerics and execution, and RoPE
# (context extension of an imported model). Shape fields must come from the checkpoint.
_OVERRIDABLE = ("compute_dtype", "param_dtype", "remat", "attention_impl", "scan_layers",
                "init_std", "rope_theta", "rope_scaling", "norm_eps", "dropout", "z_loss")
SAVE_DTYPES = ("float32", "bfloat16", "float16")


# --- Per-layer tensor mapping -------------------------------------------------
# HF suffix under `model.layers.{i}.` -> (maxlm path under the block, HF shape,
# hf->maxlm, maxlm->hf). Shapes and reshapes are functions of the config.

def _layer_map(cfg: ModelConfig) -> dict[str, tuple[tuple[str, str], tuple, Callable, Callable]]:
  D, N, K, H, F = cfg.d_model, cfg.n_heads, cfg.n_kv_heads, cfg.head_dim, cfg.d_ff
  ident = lambda w: w
  out = {
      # q_proj [N*H, D] -> [D, N*H] -> [D, N, H]
      "self_attn.q_proj.weight": (("attn", "w_q_dnh"), (N * H, D),
                                  lambda w: w.T.reshape(D, N, H), lambda w: w.reshape(D, N * H).T),
      "self_attn.k_proj.weight": (("attn", "w_k_dkh"), (K * H, D),
                                  lambda w: w.T.reshape(D, K, H), lambda w: w.reshape(D, K * H).T),
      "self_attn.v_proj.weight": (("attn", "w_v_dkh"), (K * H, D),
                                  lambda w: w.T.reshape(D, K, H), lambda w: w.reshape(D, K * H).T),
      # o_proj [D, N*H] -> [N*H, D] -> [N, H, D]
      "self_attn.o_proj.weight": (("attn", "w_o_nhd"), (D, N * H),
                                  lambda w: w.T.reshape(N, H, D), lambda w: w.reshape(N * H, D).T),
      "mlp.gate_proj.weight": (("mlp", "w_gate_df"), (F, D), lambda w: w.T, lambda w: w.T),
      "mlp.up_proj.weight": (("mlp", "w_up_df"), (F, D), lambda w: w.T, lambda w: w.T),
      "mlp.down_proj.weight": (("mlp", "w_down_fd"), (D, F), lambda w: w.T, lambda w: w.T),
      "input_layernorm.weight": (("attn_norm", "scale_d"), (D,), ident, ident),
      "post_attention_layernorm.weight": (("mlp_norm", "scale_d"), (D,), ident, ident),
  }
  if cfg.qkv_bias:  # Qwen2: q_proj.bias [N*H] -> [N, H] (head-major, as the weights)
    out.update({
        "self_attn.q_proj.bias": (("attn", "b_q_nh"), (N * H,), lambda b: b.reshape(N, H),
                                  lambda b: b.reshape(N * H)),
        "self_attn.k_proj.bias": (("attn", "b_k_kh"), (K * H,), lambda b: b.reshape(K, H),
                                  lambda b: b.reshape(K * H)),
        "self_attn.v_proj.bias": (("attn", "b_v_kh"), (K * H,), lambda b: b.reshape(K, H),
                                  lambda b: b.reshape(K * H)),
    })
  if cfg.o_bias:  # Llama attention_bias=True: o_proj.bias [D]
    out["self_attn.o_proj.bias"] = (("attn", "b_o_d"), (D,), ident, ident)
  return out


# --- config.json <-> ModelConfig ----------------------------------------------

def _rope_from_hf(hf: Mapping[str, Any]) -> tuple[float, dict | None]:
  """(theta, maxlm rope_scaling) from 5.x `rope_parameters` or 4.x `rope_theta`/`rope_scaling`."""
  params = hf.get("rope_parameters")
  if params is not None and any(isinstance(v, Mapping) for v in params.values()):
    # 5.x nests one dict per layer type (Gemma 3 style); Llama never does.
    raise ValueError(f"per-layer-type rope_parameters {sorted(params)} are not supported")
  # 5.x folds theta into rope_parameters; a 4.x file has it at top level.
  params = dict(params if params is not None else (hf.get("rope_scaling") or {}))
  theta = float(params.pop("rope_theta", hf.get("rope_theta", 10000.0)))
  # 4.x files from before transformers 4.43 spell the key "type".
  rope_type = params.pop("rope_type", params.pop("type", "default"))
  if params.get("partial_rotary_factor", 1.0) != 1.0:
    raise ValueError("partial_rotary_factor != 1 is not supported: maxlm rotates the whole head")
  params.pop("partial_rotary_factor", None)
  if rope_type == "default":
    return theta, None
  # Lists (LongRoPE factors) become tuples: ModelConfig must stay hashable for jit.
  scaling = {k: tuple(v) if isinstance(v, list) else v for k, v in params.items()}
  return theta, {"rope_type": rope_type, **scaling}


def _refuse_unsupported(hf: Mapping[str, Any]) -> str:
  """The family (model_type) of a config maxlm can compute; else a ValueError naming the field."""
  model_type = hf.get("model_type")
  archs = hf.get("architectures") or [_ARCHITECTURES.get(model_type, "")]
  if model_type not in _ARCHITECTURES or any(a not in _ARCHITECTURES.values() for a in archs):
    raise ValueError(f"unsupported checkpoint: model_type={model_type!r} architectures={archs};"
                     f" maxlm imports {sorted(_ARCHITECTURES.values())}")
  refusals = [
      # Llama's attention_bias (q, k, v and o) is computed; Qwen2's q/k/v biases are implied by
      # its type, and transformers' Mistral and Qwen2 never read attention_bias.
      (hf.get("attention_bias", False) and model_type != "llama",
       f"attention_bias=true in a {model_type} config (only Llama's is read)"),
      (hf.get("mlp_bias", False), "mlp_bias=true (maxlm MLP has no biases)"),
      (hf.get("hidden_act", "silu") not in ("silu", "swish"),
       f"hidden_act={hf.get('hidden_act')!r} (maxlm's MLP is SwiGLU)"),
      ("quantization_config" in hf, "a quantized checkpoint (quantization_config)"),
  ]
  for bad, what in refusals:
    if bad:
      raise ValueError(f"unsupported checkpoint feature: {what}")
  return model_type


_LAYER_TYPES = ("full_attention", "sliding_attention")


def _sliding_window(hf: Mapping[str, Any], model_type: str) -> int | None:
  """The window W every layer applies, or None; refuses what one window cannot express.

  As transformers computes it: Mistral windows every layer whenever
  `sliding_window` is set; Qwen2 only with `use_sliding_window`, and then the
  layers from `max_window_layers` on (5.x spells it out in `layer_types`);
  Llama has no window.
  """
  L = hf["num_hidden_layers"]
  window = hf.get("sliding_window")
  if model_type == "llama":
    window = None
  if model_type == "qwen2" and not hf.get("use_sliding_window", False):
    window = None
  types = hf.get("layer_types")
  bad = sorted(set(types or ()) - set(_LAYER_TYPES))
  if bad:
    raise ValueError(f"unsupported checkpoint feature: layer_types {bad} (maxlm computes"
                     f" {list(_LAYER_TYPES)})")
  if model_type == "qwen2":
    if types is None:  # a 4.x file: derived from max_window_layers as transformers does
      first = hf.get("max_window_layers", 28) if window is not None else L
      types = ["full_attention" if i < first else "sliding_attention" for i in range(L)]
    if len(set(types)) > 1:
      raise ValueError(
          "unsupported checkpoint feature: layer_types mixes full_attention and"
          f" sliding_attention (use_sliding_window with max_window_layers="
          f"{hf.get('max_window_layers')}); maxlm applies one window to every layer")
    if types and types[0] == "full_attention":
      window = None
  elif any(t == "sliding_attention" for t in types or ()) and window is None:
    raise ValueError("unsupported checkpoint feature: layer_types has sliding_attention but"
                     " sliding_window is null")
  if window is not None and (not isinstance(window, int) or window < 1):
    raise ValueError(f"unsupported checkpoint feature: sliding_window={window!r} (a positive"
                     " integer or null)")
  return window


def model_config_from_hf(hf: Mapping[str, Any], model_overrides: Mapping[str, Any] | None = None
                         ) -> ModelConfig:
  """ModelConfig from a parsed HF config.json dict (transformers 4.x or 5.x keys)."""
  model_type = _refuse_unsupported(hf)
  llama_bias = model_type == "llama" and bool(hf.get("attention_bias", False))
  theta, scaling = _rope_from_hf(hf)
  n_heads = hf["num_attention_heads"]
  cfg = ModelConfig(
      vocab_size=hf["vocab_size"],
      d_model=hf["hidden_size"],
      n_layers=hf["num_hidden_layers"],
      n_heads=n_heads,
      n_kv_heads=hf.get("num_key_value_heads") or n_heads,  # absent/null in old MHA configs
      head_dim=hf.get("head_dim") or hf["hidden_size"] // n_heads,
      d_ff=hf["intermediate_size"],
      rope_theta=theta,
      rope_scaling=scaling,
      norm_eps=hf.get("rms_norm_eps", 1e-6),  # LlamaConfig's default
      # PretrainedConfig defaults to tied, but Llama/Mistral/Qwen2 configs default to untied.
      tie_embeddings=bool(hf.get("tie_word_embeddings", False)),
      init_std=hf.get("initializer_range", 0.02),
      sliding_window=_sliding_window(hf, model_type),
      qkv_bias=model_type == "qwen2" or llama_bias,
      o_bias=llama_bias,
  )
  overrides = dict(model_overrides or {})
  bad = sorted(set(overrides) - set(_OVERRIDABLE))
  if bad:
    raise ValueError(f"model_overrides {bad} cannot be overridden on import (shapes come from"
                     f" the checkpoint); allowed: {list(_OVERRIDABLE)}")
  cfg = dataclasses.replace(cfg, **overrides)
  cfg.validate()
  # Fail at import, not at the first forward, on a RoPE variant rope.py lacks.
  rope.inv_frequencies(cfg.head_dim, cfg.rope_theta, cfg.rope_scaling_dict)
  return cfg


# ModelConfig fields a stage takes from an HF parent: its shape, RoPE and family options
# (execution fields -- dtypes, remat, attention_impl -- stay the stage config's).
STAGE_MODEL_FIELDS = ("vocab_size", "d_model", "n_layers", "n_heads", "n_kv_heads", "head_dim",
                      "d_ff", "rope_theta", "rope_scaling", "norm_eps", "tie_embeddings",
                      "sliding_window", "qkv_bias", "o_bias")


def stage_model_fields(hf_dir) -> dict:
  """{field: value} for `config.model` of a stage whose parent is the HF directory hf_dir."""
  with open(os.path.join(os.fspath(hf_dir), "config.json")) as f:
    cfg = model_config_from_hf(json.load(f))
  return {k: cfg.rope_scaling_dict if k == "rope_scaling" else getattr(cfg, k)
          for k in STAGE_MODEL_FIELDS}


def hf_family(model_config) -> str:
  """The HF model_type that computes `model_config`: llama with attention_bias (q/k/v and
  o biases), qwen2 (q/k/v biases), mistral (a sliding window and no biases), else llama."""
  cfg = ModelConfig.from_any(model_config)
  if cfg.o_bias:  # Llama attention_bias: q, k, v and o together, no window
    if not cfg.qkv_bias or cfg.sliding_window is not None:
      raise ValueError(f"model.o_bias=True with qkv_bias={cfg.qkv_bias}, sliding_window="
                       f"{cfg.sliding_window}: no Llama/Mistral/Qwen2 family computes it")
    return "llama"
  if cfg.qkv_bias:
    return "qwen2"
  return "mistral" if cfg.sliding_window is not None else "llama"


def hf_config_from_model(model_config, *, dtype: str = "float32",
                         max_position_embeddings: int = 2048) -> dict:
  """The config.json dict of the HF family (hf_family) that computes `model_config`.

  Writes the 5.x `rope_parameters` and also the 4.x `rope_theta`/`rope_scaling`,
  so either major version reads the right RoPE (each ignores the other's keys).
  maxlm does not track the context length; `max_position_embeddings` only matters
  to RoPE types that read it (dynamic NTK, YaRN without an explicit original length).
  """
  cfg = ModelConfig.from_any(model_config)
  if cfg.qk_norm:  # none of the three families has q/k norms: exporting would drop weights
    raise ValueError("model.qk_norm=True has no Llama/Mistral/Qwen2 equivalent; export refused")
  if cfg.mtp_depth:
    log.warning("export: the %d multi-token-prediction modules are not exported (HF has"
                " no such module); the trunk is", cfg.mtp_depth)
  family = hf_family(cfg)
  scaling = cfg.rope_scaling_dict
  scaling = None if scaling is None else {k: list(v) if isinstance(v, tuple) else v
                                          for k, v in scaling.items()}
  rope_parameters = {"rope_theta": cfg.rope_theta, "rope_type": "default", **(scaling or {})}
  hf = {
      "architectures": [_ARCHITECTURES[family]],
      "model_type": family,
      "vocab_size": cfg.vocab_size,
      "hidden_size": cfg.d_model,
      "num_hidden_layers": cfg.n_layers,
      "num_attention_heads": cfg.n_heads,
      "num_key_value_heads": cfg.n_kv_heads,
      "head_dim": cfg.head_dim,
      "intermediate_size": cfg.d_ff,
      "hidden_act": "silu",
      "rms_norm_eps": cfg.norm_eps,
      "tie_word_embeddings": cfg.tie_embeddings,
      "rope_parameters": rope_parameters,
      "rope_theta": cfg.rope_theta,
      "rope_scaling": scaling,
      "max_position_embeddings": max_position_embeddings,
      "initializer_range": cfg.init_std,
      "dtype": dtype,
  }
  if family == "llama":
    hf.update(attention_bias=cfg.o_bias, mlp_bias=False)
  elif family == "mistral":
    hf.update(sliding_window=cfg.sliding_window)
  else:  # qwen2: one window for every layer, or none (max_window_layers=0: from layer 0)
    windowed = cfg.sliding_window is not None
    hf.update(use_sliding_window=windowed, sliding_window=cfg.sliding_window,
              max_window_layers=0 if windowed else cfg.n_layers,
              layer_types=["sliding_attention" if windowed else "full_attention"] * cfg.n_layers)
  return hf


# --- Reading safetensors --------------------------------------------------------

def _shard_files(hf_dir: str) -> list[str]:
  index = os.path.join(hf_dir, "model.safetensors.index.json")
  if os.path.exists(index):
    with open(index) as f:
      weight_map = json.load(f)["weight_map"]
    return [os.path.join(hf_dir, name) for name in sorted(set(weight_map.values()))]
  single = os.path.join(hf_dir, "model.safetensors")
  if os.path.exists(single):
    return [single]
  raise FileNotFoundError(f"{hf_dir} has neither model.safetensors nor"
                          " model.safetensors.index.json (.bin checkpoints are not read: no torch)")


def _empty_params(cfg: ModelConfig, dtype) -> dict:
  """Stacked [L, ...] block arrays plus top-level arrays, to be filled tensor by tensor."""
  block: dict = {}
  for (module, name), hf_shape, to_maxlm, _ in _layer_map(cfg).values():
    shape = to_maxlm(np.empty(hf_shape, np.uint8)).shape  # cheap way to get maxlm's shape
    block.setdefault(module, {})[name] = np.empty((cfg.n_layers,) + shape, dtype)
  params = {"embedding_vd": None, "final_norm": {"scale_d": None}, "layers": {"block": block}}
  if not cfg.tie_embeddings:
    params["lm_head_dv"] = None
  return params


def import_checkpoint(hf_dir, model_overrides: Mapping[str, Any] | None = None
                      ) -> tuple[ModelConfig, dict]:
  """Reads an HF Llama / Mistral / Qwen2 checkpoint directory into (ModelConfig, params).

  `model_overrides` sets execution fields the checkpoint does not carry, e.g.
  {"compute_dtype": "bfloat16", "remat": "full", "scan_layers": False}; see
  _OVERRIDABLE. Params follow cfg.scan_layers: stacked under params['layers']
  (default) or per layer under params['layer_{i}']. Half-precision tensors are
  upcast to param_dtype (float32 by default), exactly.
  """
  hf_dir = os.fspath(hf_dir)
  with open(os.path.join(hf_dir, "config.json")) as f:
    raw = json.load(f)
  cfg, model_family = model_config_from_hf(raw, model_overrides), raw.get("model_type")
  dtype = jnp.dtype(cfg.param_dtype)
  layer_map = _layer_map(cfg)
  params = _empty_params(cfg, dtype)
  block = params["layers"]["block"]
  top = {  # HF name -> (setter, HF shape, hf->maxlm)
      "model.embed_tokens.weight": ((cfg.vocab_size, cfg.d_model), lambda w: w,
                                    lambda a: params.__setitem__("embedding_vd", a)),
      "model.norm.weight": ((cfg.d_model,), lambda w: w,
                            lambda a: params["final_norm"].__setitem__("scale_d", a)),
  }
  if not cfg.tie_embeddings:
    top["lm_head.weight"] = ((cfg.vocab_size, cfg.d_model), lambda w: w.T,
                             lambda a: params.__setitem__("lm_head_dv", a))
  expected = set(top) | {f"model.layers.{i}.{s}" for i in range(cfg.n_layers) for s in layer_map}
  seen = set()

  for path in _shard_files(hf_dir):
    with safe_open(path, framework="np") as f:
      for name in f.keys():
        if name == "lm_head.weight" and cfg.tie_embeddings:
          continue  # some exporters write the tied copy anyway; the embedding is the truth
        if name.endswith("rotary_emb.inv_freq"):
          continue  # a buffer old checkpoints saved; recomputed from rope_theta
        if name not in expected:
          why = (f" (a {model_family} config.json implies no biases)"
                 if name.endswith(".bias") else "")
          raise ValueError(f"unexpected tensor {name!r} in {path}{why}")
        w = f.get_tensor(name)
        m = re.fullmatch(r"model\.layers\.(\d+)\.(.+)", name)
        hf_shape, to_maxlm = (layer_map[m.group(2)][1:3] if m else top[name][:2])
        if tuple(w.shape) != hf_shape:
          raise ValueError(f"tensor {name!r} has shape {tuple(w.shape)}, config.json implies"
                           f" {hf_shape}")
        a = to_maxlm(w).astype(dtype)
        if m:
          module, leaf = layer_map[m.group(2)][0]
          block[module][leaf][int(m.group(1))] = a
        else:
          top[name][2](np.ascontiguousarray(a))
        seen.add(name)
  missing = sorted(expected - seen)
  if missing:
    raise ValueError(f"checkpoint {hf_dir} lacks {len(missing)} tensors, e.g. {missing[:3]}")
  if not cfg.scan_layers:
    params = _unstack(params, cfg.n_layers)
  return cfg, params


# --- Writing ------------------------------------------------------------------

def _unstack(params: dict, n_layers: int) -> dict:
  """Scanned layout (params['layers']['block'], leading L axis) -> params['layer_{i}']['block']."""
  out = {k: v for k, v in params.items() if k != "layers"}
  block = params["layers"]["block"]
  for i in range(n_layers):
    out[f"layer_{i}"] = {"block": jax.tree_util.tree_map(lambda x: x[i], block)}
  return out


def _layer_blocks(params: Mapping, n_layers: int) -> list[Mapping]:
  """Per-layer block trees from either a scanned or an unscanned param tree."""
  if "layers" in params:
    block = params["layers"]["block"]
    L = jax.tree_util.tree_leaves(block)[0].shape[0]
    if L != n_layers:
      raise ValueError(f"params hold {L} stacked layers, model_config.n_layers={n_layers}")
    return [jax.tree_util.tree_map(lambda x: x[i], block) for i in range(n_layers)]
  try:
    return [params[f"layer_{i}"]["block"] for i in range(n_layers)]
  except KeyError as e:
    raise ValueError(f"params have neither 'layers' (scanned) nor {e.args[0]!r} (unscanned)")


def export_checkpoint(model_config, params, out_dir, *, dtype: str = "float32",
                      max_position_embeddings: int = 2048) -> None:
  """Writes `out_dir/config.json` + `out_dir/model.safetensors` (family: hf_family).

  Accepts scanned or unscanned params, boxed (nn.LogicallyPartitioned) or not,
  on host or on device (fully addressable: on multi-host meshes gather first).
  `dtype` is the tensor dtype on disk: float32 (exact) or bfloat16/float16.
  """
  cfg = ModelConfig.from_any(model_config)
  if dtype not in SAVE_DTYPES:
    raise ValueError(f"dtype={dtype!r} is not one of {SAVE_DTYPES}")
  out_dtype = jnp.dtype(dtype)
  params = jax.device_get(nn.meta.unbox(params))

  def put(name, a):
    tensors[name] = np.ascontiguousarray(np.asarray(a).astype(out_dtype))

  tensors: dict[str, np.ndarray] = {}
  put("model.embed_tokens.weight", params["embedding_vd"])
  put("model.norm.weight", params["final_norm"]["scale_d"])
  if not cfg.tie_embeddings:
    put("lm_head.weight", np.asarray(params["lm_head_dv"]).T)
  layer_map = _layer_map(cfg)
  for i, block in enumerate(_layer_blocks(params, cfg.n_layers)):
    for suffix, ((module, leaf), hf_shape, _, to_hf) in layer_map.items():
      w = to_hf(np.asarray(block[module][leaf]))
      assert w.shape == hf_shape, (suffix, w.shape, hf_shape)
      put(f"model.layers.{i}.{suffix}", w)

  os.makedirs(out_dir, exist_ok=True)
  # "format": "pt" is what transformers checks in the safetensors metadata.
  save_file(tensors, os.path.join(out_dir, "model.safetensors"), metadata={"format": "pt"})
  hf = hf_config_from_model(cfg, dtype=dtype, max_position_embeddings=max_position_embeddings)
  with open(os.path.join(out_dir, "config.json"), "w") as f:
    json.dump(hf, f, indent=2, sort_keys=True)
    f.write("\n")
