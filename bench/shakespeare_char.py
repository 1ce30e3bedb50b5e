r"""nanoGPT's shakespeare_char run, trained with maxlm: validation loss next to nanoGPT's.

  python bench/shakespeare_char.py input.txt                  # the CPU recipe, 2000 steps
  python bench/shakespeare_char.py input.txt --steps=200      # a quick look

input.txt is char-rnn's Tiny Shakespeare (public domain; no package ships it):
  curl -LO https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt
(1,115,394 characters, sha256 86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed).

Data as nanoGPT's data/shakespeare_char/prepare.py: the 65 characters of the
text are the vocabulary (sorted), the first 90% is train and the last 10% val;
batches are random 64-character windows (nanoGPT's get_batch). The model,
optimizer and schedule come from configs/pretrain.py:shakespeare_char and
the update is maxlm's jitted `train_step`. nanoGPT's published number for this
recipe (nanoGPT README, "baby GPT" on a CPU): val loss about 1.88.
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
SOURCE_URL = "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt"

from configs import pretrain  # noqa: E402
from maxlm.model import ModelConfig, init_params  # noqa: E402
from maxlm.optim import make_optimizer  # noqa: E402
from maxlm.train.step import eval_step, train_step  # noqa: E402

NANOGPT_VAL_LOSS = {"cpu": 1.88, "gpu": 1.4697}  # nanoGPT README


def char_codec(text: str):
  """(encode, vocabulary): the sorted set of the text's characters, as nanoGPT."""
  chars = sorted(set(text))
  index = {ch: i for i, ch in enumerate(chars)}
  return (lambda s: np.fromiter((index[ch] for ch in s), np.int32, len(s))), chars


def get_batch(data, rng, batch: int, seq_len: int) -> dict:
  """nanoGPT's get_batch: `batch` random windows; targets are inputs shifted by one."""
  ix = rng.integers(0, len(data) - seq_len, batch)
  x = np.stack([data[i:i + seq_len] for i in ix])  # [B, T]
  y = np.stack([data[i + 1:i + 1 + seq_len] for i in ix])  # [B, T]
  ones = np.ones_like(x)
  return dict(inputs=x, targets=y, segment_ids=ones,
              positions=np.broadcast_to(np.arange(seq_len, dtype=np.int32), x.shape).copy(),
              loss_mask=ones.astype(np.float32), domain_ids=np.zeros_like(x))


def estimate_loss(eval_fn, params, data, iters: int, batch: int, seq_len: int) -> float:
  rng = np.random.default_rng(1234)  # the same windows for every evaluation
  nats = tokens = 0.0
  for _ in range(iters):
    aux = eval_fn(params, get_batch(data, rng, batch, seq_len))
    nats += float(aux["domain_loss_sum"].sum())
    tokens += float(aux["domain_count"].sum())
  return nats / tokens


def main():
  ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  ap.add_argument("data", help="Tiny Shakespeare input.txt (see above for where to get it)")
  ap.add_argument("--steps", type=int, default=0, help="0 = the config's (2000)")
  ap.add_argument("--eval_iters", type=int, default=200,
                  help="val batches per evaluation (nanoGPT's CPU recipe uses 20)")
  ap.add_argument("--seed", type=int, default=0)
  args = ap.parse_args()
  c = pretrain.get_config("shakespeare_char")
  steps = args.steps or c.train.steps
  T, B = c.data.seq_len, c.train.global_batch

  if not os.path.isfile(args.data):
    sys.exit(f"{args.data}: not found. It is char-rnn's public Tiny Shakespeare text: {SOURCE_URL}")
  text = open(args.data, encoding="utf-8").read()
  encode, chars = char_codec(text)
  ids = encode(text)
  n = int(0.9 * len(ids))
  train_ids, val_ids = ids[:n], ids[n:]
  print(f"{len(text):,} chars, vocab {len(chars)}; train {len(train_ids):,}, val {len(val_ids):,}")

  cfg = ModelConfig.from_any(c.model)
  assert len(chars) <= cfg.vocab_size
  tx, sched = make_optimizer(total_steps=steps, **{k: v for k, v in c.optim.to_dict().items()})
  params = init_params(cfg, jax.random.PRNGKey(args.seed))
  state = dict(params=params, opt_state=tx.init(params), step=jnp.zeros((), jnp.int32),
               rng=jax.random.PRNGKey(args.seed))
  print(f"maxlm Llama block: {cfg.param_counts()['total']:,} params")
  step_fn = jax.jit(functools.partial(train_step, model_config=cfg, tx=tx, schedule=sched,
                                      microbatches=1, num_domains=1), donate_argnums=0)
  eval_fn = jax.jit(functools.partial(eval_step, model_config=cfg, num_domains=1))

  rng = np.random.default_rng(args.seed)
  t0 = time.time()
  for i in range(1, steps + 1):
    state, m = step_fn(state, get_batch(train_ids, rng, B, T))
    if i % c.train.eval_every == 0 or i == steps:
      val = estimate_loss(eval_fn, state["params"], val_ids, args.eval_iters, B, T)
      print(f"step {i:5d}  train {float(m['loss']):.4f}  val {val:.4f}  "
            f"({time.time() - t0:.0f}s)", flush=True)
  train = estimate_loss(eval_fn, state["params"], train_ids, args.eval_iters, B, T)
  print(f"\nshakespeare_char CPU recipe, {steps} steps, batch {B}, context {T}:")
  print(f"  maxlm   train {train:.4f}  val {val:.4f}")
  print(f"  nanoGPT val about {NANOGPT_VAL_LOSS['cpu']:.2f} (README; 2000 steps)")


if __name__ == "__main__":
  main()
