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


def measure(shape, *, dtype, packed, causal, iters, interpret, block, impls=("kernel", "xla", "cudnn")):
  """Rows {shape, pass, impl, ms, tflops, temp_mib} for one shape, fwd and fwd+bwd.

  impls: kernel (kernels.flash_attention), xla (the dense reference), cudnn
  (GPU only; packed batches go to it as a dense [B, 1, T, S] mask). A path that
  fails (out of memory, unsupported) gets a row with its `error` instead.
  """
  B, T, N, K, H = shape
  rng = np.random.default_rng(0)
  q = jnp.asarray(rng.standard_normal((B, T, N, H)), dtype)
  k = jnp.asarray(rng.standard_normal((B, T, K, H)), dtype)
  v = jnp.asarray(rng.standard_normal((B, T, K, H)), dtype)
  seg = _packed(B, T) if packed else None
  fns = dict(
      kernel=lambda q, k, v: flash_attention(q, k, v, segment_ids=seg, causal=causal,
                                             block_q=block, block_k=block, interpret=interpret),
      xla=lambda q, k, v: attention_reference(q, k, v, segment_ids=seg, causal=causal),
      cudnn=_cudnn(seg, causal))
  flops = 4 * B * T * T * N * H * (0.5 if causal else 1.0)
  rows = []
  for name, make, mult in (("fwd", jax.jit, 1.0), ("fwd+bwd", _fwd_bwd, 3.5)):
    for impl in impls:
      row = dict(B=B, T=T, N=N, K=K, H=H, dtype=jnp.dtype(dtype).name, packed=packed,
                 causal=causal, impl=impl, **{"pass": name})
      if impl == "cudnn" and jax.default_backend() != "gpu":
        continue
      try:
        fn = make(fns[impl])
        t = _time(fn, q, k, v, iters=iters)
        row.update(ms=t * 1e3, tflops=flops * mult / t / 1e12, temp_mib=_temp_mib(fn, q, k, v))
      except Exception as e:  # pylint: disable=broad-except  (dense logits may not fit)
        row.update(error=f"{type(e).__name__}: {str(e)[:160]}")
      rows.append(row)
  return rows


def bench(shapes, *, dtype, packed, causal, iters, interpret, block):
  print(f"backend={jax.default_backend()} device={jax.devices()[0].device_kind} "
        f"jax={jax.__version__} dtype={jnp.dtype(dtype).name} causal={causal} packed={packed}"
        f" interpret={interpret}")
  print(f"{'B':>3} {'T':>6} {'N':>3} {'K':>3} {'H':>4} | {'pass':>7} | {'kernel ms':>10}"
        f" {'TFLOP/s':>8} {'MiB':>7} | {'xla ms':>10} {'TFLOP/s':>8} {'MiB':>7} | {'xla/kernel':>10}"
        f" | {'cudnn ms':>9} {'cudnn/kernel':>12}")
  nan = float("nan")
  for shape in shapes:
    rows = measure(shape, dtype=dtype, packed=packed, causal=causal, iters=iters,
                   interpret=interpret, block=block)
    for name in ("fwd", "fwd+bwd"):
      by = {r["impl"]: r for r in rows if r["pass"] == name}
      for r in by.values():
        if "error" in r:
          print(f"  {r['impl']} {name} failed: {r['error']}")
      g = lambda impl, key: by.get(impl, {}).get(key, nan)
      t_kernel, t_xla, t_cudnn = g("kernel", "ms"), g("xla", "ms"), g("cudnn", "ms")
      B, T, N, K, H = shape
      print(f"{B:>3} {T:>6} {N:>3} {K:>3} {H:>4} | {name:>7} | {t_kernel:>10.2f}"
            f" {g('kernel', 'tflops'):>8.3f} {g('kernel', 'temp_mib'):>7.1f} | {t_xla:>10.2f}"
            f" {g('xla', 'tflops'):>8.3f} {g('xla', 'temp_mib'):>7.1f} | {t_xla / t_kernel:>10.2f}"
            f" | {t_cudnn:>9.2f} {t_cudnn / t_kernel:>12.2f}")


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
