r"""Generation throughput: KV-cache prefill and decode against recomputing the forward per token.

  python bench/generate.py --presets=tiny,10m --batches=1,32              # CPU
  python bench/generate.py --presets=1b --batches=1,32 --dtype=bfloat16 \
      --prompt_len=512 --new_tokens=256 --no_recompute                   # GPU

For each preset and batch size, on random weights and random prompts:
  prefill  tokens/s = B * prompt_len / (one jitted `prefill` call)
  decode   tokens/s = B * new_tokens / (new_tokens jitted `decode_step` calls)
  recompute tokens/s = B * new_tokens / (new_tokens full forwards over the
           sequence so far, greedy), the no-cache baseline. Its sequence
           lengths are rounded up to multiples of 16 (few compiles); zeros
           past the end are in the causal future and cost a little extra work.
decode / recompute is the cache's speed-up. Every shape is compiled and run
once before it is timed.
"""

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from configs import pretrain  # noqa: E402
from maxlm.generate import Sampling, decode_step, left_pad, prefill  # noqa: E402
from maxlm.model import ModelConfig, forward, init_params  # noqa: E402

_GREEDY = Sampling()
_forward = jax.jit(forward, static_argnums=0)


def _round_up(n, m):
  return -(-n // m) * m


def time_cache(cfg, params, prompts_bt, n_new):
  """(prefill seconds, decode seconds) for one batch; greedy."""
  B, P = prompts_bt.shape
  tokens, seg, pos = left_pad(list(prompts_bt), P)
  max_len = P + _round_up(n_new, 16)
  rng = jax.random.PRNGKey(0)

  def run():
    t0 = time.perf_counter()
    tok_b, cache, _ = prefill(params, tokens, seg, pos, rng, cfg=cfg, sampling=_GREEDY,
                              max_len=max_len)
    tok_b.block_until_ready()
    t1 = time.perf_counter()
    position_b = jnp.full((B,), P, jnp.int32)
    for i in range(n_new):
      tok_b, cache, _ = decode_step(params, cache, tok_b, position_b + i, rng, cfg=cfg,
                                    sampling=_GREEDY)
    tok_b.block_until_ready()
    return t1 - t0, time.perf_counter() - t1

  run()  # compile both
  return run()


def time_recompute(cfg, params, prompts_bt, n_new):
  """Seconds for n_new greedy tokens, each from a full forward of the sequence so far."""
  B, P = prompts_bt.shape

  def run():
    buf = np.zeros((B, _round_up(P + n_new, 16)), np.int32)
    buf[:, :P] = prompts_bt
    t0 = time.perf_counter()
    for n in range(P, P + n_new):
      logits_btv = _forward(cfg, params, jnp.asarray(buf[:, :_round_up(n, 16)]))
      buf[:, n] = np.asarray(jnp.argmax(logits_btv[:, n - 1], axis=-1))  # host sync per token
    return time.perf_counter() - t0

  run()  # compile every length bucket
  return run()


def main():
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--presets", default="tiny,10m")
  ap.add_argument("--batches", default="1,32")
  ap.add_argument("--prompt_len", type=int, default=128)
  ap.add_argument("--new_tokens", type=int, default=64)
  ap.add_argument("--dtype", default="float32", help="compute dtype")
  ap.add_argument("--no_recompute", action="store_true", help="skip the no-cache baseline")
  args = ap.parse_args()
  print(f"device: {jax.devices()[0].device_kind}  prompt_len={args.prompt_len}"
        f"  new_tokens={args.new_tokens}  dtype={args.dtype}")
  print(f"{'preset':>8} {'B':>4} {'prefill tok/s':>14} {'decode tok/s':>13}"
        f" {'recompute tok/s':>16} {'decode/recompute':>17}")
  for preset in args.presets.split(","):
    cfg = ModelConfig.from_any(
        {**pretrain.model_config(preset).to_dict(), "compute_dtype": args.dtype})
    params = jax.jit(init_params, static_argnums=0)(cfg, jax.random.PRNGKey(0))
    for B in map(int, args.batches.split(",")):
      prompts_bt = np.random.default_rng(B).integers(
          0, cfg.vocab_size, (B, args.prompt_len)).astype(np.int32)
      t_pre, t_dec = time_cache(cfg, params, prompts_bt, args.new_tokens)
      pre, dec = B * args.prompt_len / t_pre, B * args.new_tokens / t_dec
      line = f"{preset:>8} {B:>4} {pre:>14.0f} {dec:>13.0f}"
      if not args.no_recompute:
        rec = B * args.new_tokens / time_recompute(cfg, params, prompts_bt, args.new_tokens)
        line += f" {rec:>16.0f} {dec / rec:>16.1f}x"
      print(line, flush=True)


if __name__ == "__main__":
  main()
