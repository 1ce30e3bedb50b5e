"""Benchmark: kernels.flash_attention against the dense XLA reference, same process.

Usage:
  python -m kernels.bench_attention            # GPU/TPU: the issue-4 shapes
  python -m kernels.bench_attention --tiny     # any backend; forced on CPU

For each shape it times the forward and forward+backward of both paths
(median of --iters runs after a compile-and-warm-up call) and prints
milliseconds, TFLOP/s (4*B*T*S*N*H forward, 2.5x that for forward+backward,
halved when causal, as FlashAttention-2 counts them) and the kernel/XLA speed
ratio. On CPU the kernel runs in the Pallas interpreter, so the numbers only
prove the script runs; they say nothing about kernel speed.
"""

from __future__ import annotations

import argparse
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from kernels.flash_attention import flash_attention
from kernels.reference import attention_reference

# (B, T, N, K, H): B*T = 16k tokens, as issue 4 asks.
FULL_SHAPES = [(16, 1024, 16, 4, 128), (8, 2048, 16, 4, 128), (4, 4096, 16, 16, 128),
               (2, 8192, 16, 4, 128), (2, 8192, 32, 8, 64), (1, 16384, 16, 4, 128)]
TINY_SHAPES = [(1, 64, 2, 1, 16), (2, 128, 4, 2, 32)]


def _packed(B, T, docs=4, seed=0):
  """Segment ids with `docs` random-length documents per row."""
  rng = np.random.default_rng(seed)
  cuts_bd = np.sort(rng.choice(np.arange(1, T), size=(B, docs - 1)), axis=1)
  return jnp.asarray(np.stack([np.searchsorted(c, np.arange(T), side="right") + 1
                               for c in cuts_bd]), jnp.int32)


def _time(fn, *args, iters):
  jax.block_until_ready(fn(*args))  # compile and warm up
  times = []
  for _ in range(iters):
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - start)
  return statistics.median(times)


def _temp_mib(fn, *args):
  """Peak scratch memory XLA plans for `fn` (compiled memory analysis), in MiB."""
  try:
    stats = fn.lower(*args).compile().memory_analysis()
    return stats.temp_size_in_bytes / 2**20
  except Exception:  # pylint: disable=broad-except  (not every backend reports it)
    return float("nan")


def _cudnn(seg, causal):
  """jax.nn.dot_product_attention on cuDNN; packed batches need a dense [B,1,T,S] mask."""
  def attn(q, k, v):
    mask = None
    if seg is not None:
      mask = (seg[:, :, None] == seg[:, None, :])[:, None]
    return jax.nn.dot_product_attention(q, k, v, mask=mask, is_causal=causal,
                                        implementation="cudnn")
  return attn


def _fwd_bwd(attn):
  def loss(q, k, v):
    return jnp.sum(attn(q, k, v).astype(jnp.float32))
  return jax.jit(jax.grad(loss, argnums=(0, 1, 2)))


def bench(shapes, *, dtype, packed, causal, iters, interpret, block):
  print(f"backend={jax.default_backend()} device={jax.devices()[0].device_kind} "
        f"jax={jax.__version__} dtype={jnp.dtype(dtype).name} causal={causal} packed={packed}"
        f" interpret={interpret}")
  print(f"{'B':>3} {'T':>6} {'N':>3} {'K':>3} {'H':>4} | {'pass':>7} | {'kernel ms':>10}"
        f" {'TFLOP/s':>8} {'MiB':>7} | {'xla ms':>10} {'TFLOP/s':>8} {'MiB':>7} | {'xla/kernel':>10}"
        f" | {'cudnn ms':>9} {'cudnn/kernel':>12}")
  for B, T, N, K, H in shapes:
    rng = np.random.default_rng(0)
    q = jnp.asarray(rng.standard_normal((B, T, N, H)), dtype)
    k = jnp.asarray(rng.standard_normal((B, T, K, H)), dtype)
    v = jnp.asarray(rng.standard_normal((B, T, K, H)), dtype)
    seg = _packed(B, T) if packed else None
    kernel = lambda q, k, v: flash_attention(q, k, v, segment_ids=seg, causal=causal,
                                             block_q=block, block_k=block, interpret=interpret)
    dense = lambda q, k, v: attention_reference(q, k, v, segment_ids=seg, causal=causal)
    flops = 4 * B * T * T * N * H * (0.5 if causal else 1.0)
    for name, make, mult in (("fwd", jax.jit, 1.0), ("fwd+bwd", _fwd_bwd, 3.5)):
      t_kernel = _time(make(kernel), q, k, v, iters=iters)
      m_kernel = _temp_mib(make(kernel), q, k, v)
      try:
        t_xla = _time(make(dense), q, k, v, iters=iters)
        m_xla = _temp_mib(make(dense), q, k, v)
      except Exception as e:  # pylint: disable=broad-except  (dense logits may not fit)
        print(f"  xla {name} failed: {type(e).__name__}")
        t_xla = m_xla = float("nan")
      t_cudnn = float("nan")
      if jax.default_backend() == "gpu":
        try:
          t_cudnn = _time(make(_cudnn(seg, causal)), q, k, v, iters=iters)
        except Exception as e:  # pylint: disable=broad-except
          print(f"  cudnn {name} failed: {type(e).__name__}: {str(e)[:120]}")
      tf = lambda t: flops * mult / t / 1e12
      print(f"{B:>3} {T:>6} {N:>3} {K:>3} {H:>4} | {name:>7} | {t_kernel * 1e3:>10.2f}"
            f" {tf(t_kernel):>8.3f} {m_kernel:>7.1f} | {t_xla * 1e3:>10.2f} {tf(t_xla):>8.3f}"
            f" {m_xla:>7.1f} | {t_xla / t_kernel:>10.2f} | {t_cudnn * 1e3:>9.2f}"
            f" {t_cudnn / t_kernel:>12.2f}")


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--tiny", action="store_true", help="tiny shapes (forced on CPU)")
  parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"])
  parser.add_argument("--iters", type=int, default=5)
  parser.add_argument("--block", type=int, default=128)
  parser.add_argument("--non_causal", action="store_true")
  args = parser.parse_args()
  on_cpu = jax.default_backend() == "cpu"
  tiny = args.tiny or on_cpu
  for packed in (False, True):
    bench(TINY_SHAPES if tiny else FULL_SHAPES, dtype=jnp.dtype(args.dtype), packed=packed,
          causal=not args.non_causal, iters=2 if on_cpu else args.iters, interpret=on_cpu,
          block=32 if tiny else args.block)


if __name__ == "__main__":
  main()
