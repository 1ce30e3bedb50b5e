r"""Autoregressive generation with a KV cache: one jitted prefill, one jitted decode step.

  python -m maxlm.generate --checkpoint=/tmp/evalrun --prompt="Once upon a time" \
      --max_new_tokens=64 --temperature=0.8 --top_p=0.95 --stop=$'\n\n'

Batching: prompts of different lengths are LEFT-padded to a bucket length, so
every row writes its next token into the same cache slot and one decode step
serves the batch. Pads have segment id 0 (text has 1) and positions count from
each row's first real token, so a padded row computes exactly what the row
alone would (maxlm/model/decode.py holds the cache and its masking).

Sampling: temperature 0 is greedy; otherwise logits / temperature, then top-k
(k > 0) and top-p (nucleus, p < 1) filtering, then a categorical draw. The
sampling settings are static, so each setting compiles once.

Stop conditions: an end-of-sequence id (checked on the host every
`check_every` steps, so the device is not waited on every token) and stop
strings (the completion is cut before the first one).

Checkpoints: `load_model(path)` reads a maxlm workdir (its `params/` export,
else its newest checkpoint), one `checkpoints/<step>` directory of a run, or a
Hugging Face Llama / Mistral / Qwen2 directory (through maxlm.interop); a
Mistral window applies in the cache too (decode.attend_to_cache).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from maxlm import checkpoint as checkpoint_lib
from maxlm.data import tokenizer as tokenizer_lib
from maxlm.model import ModelConfig, init_params
from maxlm.model import decode as decode_lib
from maxlm.model.transformer import forward_with_cache


# ----------------------------------------------------------------- sampling

@dataclasses.dataclass(frozen=True)
class Sampling:
  temperature: float = 0.0  # 0 = greedy (argmax)
  top_k: int = 0  # keep the k most probable tokens; 0 = all
  top_p: float = 1.0  # keep the smallest set whose probability reaches p; 1 = all


def sample_logits(logits_bv, rng, sampling: Sampling):
  """Next token ids [B] from float32 logits [B, V]."""
  if sampling.temperature <= 0:
    return jnp.argmax(logits_bv, axis=-1).astype(jnp.int32)
  logits_bv = logits_bv / sampling.temperature
  neg = jnp.finfo(logits_bv.dtype).min
  if sampling.top_k > 0:
    kth_b1 = jax.lax.top_k(logits_bv, sampling.top_k)[0][:, -1:]
    logits_bv = jnp.where(logits_bv < kth_b1, neg, logits_bv)
  if sampling.top_p < 1.0:
    sorted_bv = jnp.sort(logits_bv, axis=-1)[:, ::-1]
    cum_bv = jnp.cumsum(jax.nn.softmax(sorted_bv, axis=-1), axis=-1)
    # A token stays if the mass before it is below p (the top token always stays).
    keep_bv = (cum_bv - jax.nn.softmax(sorted_bv, axis=-1)) < sampling.top_p
    cutoff_b1 = jnp.min(jnp.where(keep_bv, sorted_bv, jnp.inf), axis=-1, keepdims=True)
    logits_bv = jnp.where(logits_bv < cutoff_b1, neg, logits_bv)
  return jax.random.categorical(rng, logits_bv, axis=-1).astype(jnp.int32)


# ----------------------------------------------------------------- jitted steps

@functools.partial(jax.jit, static_argnames=("cfg", "sampling", "max_len"))
def prefill(params, tokens_bt, segment_ids_bt, positions_bt, rng, *, cfg: ModelConfig,
            sampling: Sampling, max_len: int):
  """Fills a fresh cache of max_len slots with left-padded prompts; samples the first token.

  Returns (next token [B], cache, logits of the last prompt position [B, V]).
  """
  B = tokens_bt.shape[0]
  cache = decode_lib.init_cache(cfg, B, max_len)
  logits_btv, cache = forward_with_cache(cfg, params, tokens_bt, segment_ids_bt, positions_bt,
                                         cache, fresh=True)
  logits_bv = logits_btv[:, -1]  # left padding: the last column is every row's last token
  return sample_logits(logits_bv, rng, sampling), cache, logits_bv


@functools.partial(jax.jit, static_argnames=("cfg", "sampling"), donate_argnames=("cache",))
def decode_step(params, cache, token_b, position_b, rng, *, cfg: ModelConfig,
                sampling: Sampling):
  """Feeds one token per row; returns (next token [B], cache, logits [B, V])."""
  seg_b1 = jnp.ones_like(token_b)[:, None]
  logits_b1v, cache = forward_with_cache(cfg, params, token_b[:, None], seg_b1,
                                         position_b[:, None], cache)
  logits_bv = logits_b1v[:, 0]
  return sample_logits(logits_bv, rng, sampling), cache, logits_bv


# ----------------------------------------------------------------- the loop

def _round_up(n: int, m: int) -> int:
  return -(-n // m) * m


def left_pad(prompts: Sequence[Sequence[int]], length: int, pad_id: int = 0):
  """(tokens, segment_ids, positions), each [B, length] int32, prompts right-aligned."""
  B = len(prompts)
  tokens = np.full((B, length), pad_id, np.int32)
  seg = np.zeros((B, length), np.int32)
  pos = np.zeros((B, length), np.int32)
  for b, p in enumerate(prompts):
    n = len(p)
    tokens[b, length - n:] = p
    seg[b, length - n:] = 1
    pos[b, length - n:] = np.arange(n)
  return tokens, seg, pos


def generate_ids(model_config, params, prompts: Sequence[Sequence[int]], *,
                 max_new_tokens: int, sampling: Sampling = Sampling(), eos_id: int | None = None,
                 stop_fn: Callable[[int, list[int]], bool] | None = None, seed: int = 0,
                 bucket: int = 64, check_every: int = 8, return_logits: bool = False):
  """Generates up to max_new_tokens after each prompt (lists of token ids).

  Returns one list of new ids per prompt, cut before `eos_id`; `stop_fn(row,
  ids)` may end a row early (stop strings). With return_logits, also returns
  float32 logits [B, steps, V] (the distribution each new token was drawn from).
  """
  cfg = ModelConfig.from_any(model_config)
  if not prompts:
    return ([], None) if return_logits else []
  for i, p in enumerate(prompts):
    if len(p) == 0:
      raise ValueError(f"prompt {i} is empty: generation needs at least one token (e.g. BOS)")
  if max_new_tokens < 1:
    raise ValueError(f"max_new_tokens={max_new_tokens} must be >= 1")
  B = len(prompts)
  P = _round_up(max(len(p) for p in prompts), bucket)  # few prompt shapes -> few compiles
  max_len = P + _round_up(max_new_tokens, bucket)
  tokens, seg, pos = left_pad(prompts, P)
  rng = jax.random.PRNGKey(seed)

  tok_b, cache, logits_bv = prefill(params, tokens, seg, pos, jax.random.fold_in(rng, 0),
                                    cfg=cfg, sampling=sampling, max_len=max_len)
  position_b = jnp.asarray([len(p) for p in prompts], jnp.int32)
  steps, logits = [tok_b], [logits_bv]
  out = [[] for _ in range(B)]
  done = np.zeros(B, bool)
  checked = 0
  for i in range(1, max_new_tokens + 1):
    if i == max_new_tokens or i % check_every == 0:
      # One host sync per check_every tokens: fold new tokens into the outputs.
      for t in np.asarray(jnp.stack(steps[checked:]), np.int64):
        for b in np.flatnonzero(~done):
          if eos_id is not None and t[b] == eos_id:
            done[b] = True
            continue
          out[b].append(int(t[b]))
          if stop_fn is not None and stop_fn(b, out[b]):
            done[b] = True
      checked = len(steps)
      if done.all() or i == max_new_tokens:
        break
    tok_b, cache, logits_bv = decode_step(params, cache, tok_b, position_b,
                                          jax.random.fold_in(rng, i), cfg=cfg, sampling=sampling)
    position_b = position_b + 1
    steps.append(tok_b)
    logits.append(logits_bv)
  if return_logits:
    return out, np.asarray(jnp.stack(logits[:checked], axis=1))
  return out


def _cut_at_stop(text: str, stop: Sequence[str]) -> tuple[str, bool]:
  cut = min((text.find(s) for s in stop if s and s in text), default=-1)
  return (text[:cut], True) if cut >= 0 else (text, False)


def generate_text(model_config, params, tokenizer, prompts: Sequence[str], *,
                  max_new_tokens: int = 64, sampling: Sampling = Sampling(),
                  stop: Sequence[str] = (), add_bos: bool = True, seed: int = 0,
                  max_context: int | None = None) -> list[str]:
  """Completions (text after each prompt, cut before the first stop string or EOS)."""
  ids = [([tokenizer.bos_id] if add_bos and tokenizer.bos_id is not None else []) + tokenizer.encode(p)
         for p in prompts]
  if max_context is not None:
    for i, p in enumerate(ids):
      if len(p) + max_new_tokens > max_context:
        raise ValueError(f"prompt {i} has {len(p)} tokens; with max_new_tokens={max_new_tokens}"
                         f" it exceeds the context of {max_context}")
  stop_fn = None
  if stop:
    stop_fn = lambda b, new: _cut_at_stop(tokenizer.decode(new), stop)[1]
  new_ids = generate_ids(model_config, params, ids, max_new_tokens=max_new_tokens,
                         sampling=sampling, eos_id=tokenizer.eos_id, stop_fn=stop_fn, seed=seed)
  return [_cut_at_stop(tokenizer.decode(n), stop)[0] for n in new_ids]


# ----------------------------------------------------------------- loading

# One tokenizer interface (maxlm.data.tokenizer): SentencePiece, tokenizer.json or an HF dir.
Tokenizer = tokenizer_lib.Tokenizer


def load_model(path: str, *, step: int | None = None):
  """(ModelConfig, params, Tokenizer) from a workdir, a checkpoint step dir or an HF dir.

  A workdir gives its `params/` export when `step` is None, else (or without
  an export) `checkpoints/<step or newest>/state`.
  """
  path = os.path.abspath(path)
  if not os.path.isdir(path):
    raise FileNotFoundError(f"checkpoint {path!r} does not exist")
  if os.path.isfile(os.path.join(path, "commit_success.txt")) or os.path.isdir(
      os.path.join(path, "state")):  # <workdir>/checkpoints/<step>
    workdir, state_dir, params_dir = os.path.dirname(os.path.dirname(path)), os.path.join(
        path, "state"), None
  elif os.path.isfile(os.path.join(path, "config.json")) and not os.path.isdir(
      os.path.join(path, "checkpoints")) and not os.path.isdir(os.path.join(path, "params")):
    return _load_hf(path)
  else:
    workdir, state_dir, params_dir = path, None, os.path.join(path, "params")
    if step is not None or not os.path.isdir(params_dir):
      steps = checkpoint_steps(path)
      if not steps:
        raise FileNotFoundError(f"{path} has neither params/ nor checkpoints/<step>/")
      if step is not None and step not in steps:
        raise FileNotFoundError(f"{path} has no checkpoint for step {step}; it has {steps}")
      state_dir, params_dir = os.path.join(path, "checkpoints", str(step or steps[-1]), "state"), None
  cfg_path = os.path.join(workdir, "config.json")
  if not os.path.isfile(cfg_path):
    raise FileNotFoundError(f"{cfg_path} is missing: cannot tell the model's shape")
  with open(cfg_path) as f:
    run_config = json.load(f)
  cfg = ModelConfig.from_any(run_config["model"])
  # An explicit target (this process's devices) so checkpoints written on another
  # device topology restore too; a target-less restore replays the saved shardings.
  abstract = jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype,
                                     sharding=jax.sharding.SingleDeviceSharding(jax.devices()[0])),
      jax.eval_shape(lambda: init_params(cfg, jax.random.PRNGKey(0))))
  if params_dir is not None:
    params = checkpoint_lib.load_params(params_dir, abstract)
  else:
    params = checkpoint_lib.load_state_params(state_dir, abstract)
  tok_path = os.path.join(workdir, "tokenizer", "tokenizer.model")
  if not os.path.isfile(tok_path):
    # A run given a ready tokenizer (data.tokenizer.path: a .model, a tokenizer.json
    # or an HF dir) uses it in place, no copy.
    given = run_config.get("data", {}).get("tokenizer", {}).get("path") or ""
    if not given or not os.path.exists(given):
      raise FileNotFoundError(f"{tok_path} is missing and the run's data.tokenizer.path"
                              f" ({given!r}) does not exist")
    tok_path = given
  tok = tokenizer_lib.load(tok_path)
  _check_vocab(cfg, tok, path)
  return cfg, params, tok


def checkpoint_steps(workdir: str) -> list[int]:
  d = os.path.join(workdir, "checkpoints")
  if not os.path.isdir(d):
    return []
  return sorted(int(n) for n in os.listdir(d)
                if n.isdigit() and os.path.isfile(os.path.join(d, n, "commit_success.txt")))


def _load_hf(hf_dir: str):
  from maxlm.interop import hf as hf_lib  # pylint: disable=g-import-not-at-top
  cfg, params = hf_lib.import_checkpoint(hf_dir)
  # The directory's tokenizer with the special ids its tokenizer_config.json /
  # config.json give (maxlm.data.tokenizer_io).
  tok = tokenizer_lib.load(hf_dir)
  _check_vocab(cfg, tok, hf_dir)
  return cfg, params, tok


def _check_vocab(cfg: ModelConfig, tok: Tokenizer, where: str) -> None:
  if tok.vocab_size > cfg.vocab_size:
    raise ValueError(f"{where}: the tokenizer {tok.path} has {tok.vocab_size} ids but the model"
                     f" vocabulary is {cfg.vocab_size}: they do not belong together")


# ----------------------------------------------------------------- entry point

def main(argv):
  del argv
  from absl import flags  # pylint: disable=g-import-not-at-top
  f = flags.FLAGS
  cfg, params, tok = load_model(f.checkpoint, step=f.step)
  texts = generate_text(cfg, params, tok, f.prompt, max_new_tokens=f.max_new_tokens,
                        sampling=Sampling(f.temperature, f.top_k, f.top_p), stop=f.stop,
                        seed=f.seed)
  for prompt, text in zip(f.prompt, texts):
    print(f"=== {prompt!r}\n{prompt}{text}")


if __name__ == "__main__":
  from absl import flags  # pylint: disable=g-import-not-at-top
  flags.DEFINE_string("checkpoint", None, "maxlm workdir, checkpoints/<step> dir or HF dir",
                      required=True)
  flags.DEFINE_integer("step", None, "checkpoint step of a workdir (default: params/ export)")
  flags.DEFINE_multi_string("prompt", [], "prompt text; repeat for a batch")
  flags.DEFINE_integer("max_new_tokens", 64, "tokens to generate per prompt")
  flags.DEFINE_float("temperature", 0.0, "0 = greedy")
  flags.DEFINE_integer("top_k", 0, "0 = off")
  flags.DEFINE_float("top_p", 1.0, "1 = off")
  flags.DEFINE_multi_string("stop", [], "stop string; repeatable")
  flags.DEFINE_integer("seed", 0, "sampling seed")
  from maxlm import cli  # pylint: disable=g-import-not-at-top
  cli.run(main)  # one-line input errors, quiet library logs
