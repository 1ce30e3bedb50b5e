r"""Everything one lent H100/H200 should show, in one call: `bench/device_check.sh` runs this.

  bash bench/device_check.sh               # on the GPU machine (wheels from bench/prepare_device_wheels.sh)
  python bench/device_check.py --dry-run   # any machine: every step compiled on CPU, tiny shapes (CI)

Sections, in order of what a short lease must not miss; each item is skipped
(and says so) once `--budget_s` is spent, so the run always ends with its JSON:

  kernel     kernels.flash_attention values and gradients against the dense
             reference (kernels.reference), float32 and bfloat16, packed
             documents, GQA, sliding window: max errors relative to the
             reference's scale, and pass/fail at stated tolerances.
  train      maxlm's jitted train_step (chunked loss as configured) for the 125m and
             1b presets at seq 2048 in bfloat16, per attention implementation and
             remat policy: compiled temp/argument bytes (skipped when over the
             device's memory), tokens/s and MFU over timed steps.
  attention  TFLOP/s of the kernel, cuDNN and the XLA path at T = 2k, 8k, 16k
             (causal, H = 128, packed and unpacked), forward and forward+backward
             (kernels/bench_attention.measure).
  memory     compiled temp bytes of the 1b step with dense against chunked loss
             (bench/memory.step_memory), the figure the CPU benchmark estimates.

Writes <out>/device_check.json (every row, with device, jax version, timings)
and <out>/device_check_rows.md (rows ready for BENCHMARKS.md).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import functools
import json
import os
import sys
import time
import traceback

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

GIB = 1024 ** 3


class Budget:
  """Wall-clock budget: `left()` seconds remain; items check it before starting."""

  def __init__(self, seconds: float):
    self.t0, self.seconds = time.perf_counter(), seconds

  def left(self) -> float:
    return self.seconds - (time.perf_counter() - self.t0)


# Shares of --budget_s per section; what a section leaves unused passes to the next.
# An item already started runs to its end, so the last share keeps a margin.
SHARES = dict(kernel=0.12, train=0.5, attention=0.25, memory=0.13)


# --------------------------------------------------------------------- kernel
def _rel_err(got, want):
  got, want = np.asarray(got, np.float32), np.asarray(want, np.float32)
  return float(np.abs(got - want).max() / max(np.abs(want).max(), 1e-30))


# Relative to the reference's max |value|: f32 allows TF32-like matmuls on GPU.
_KERNEL_TOL = {"float32": 5e-3, "bfloat16": 3e-2}


def kernel_rows(dry: bool, budget: Budget) -> list[dict]:
  from kernels.flash_attention import flash_attention
  from kernels.reference import attention_reference
  from kernels.bench_attention import _packed
  B, T, N, K, H = (1, 64, 4, 2, 16) if dry else (2, 2048, 16, 4, 128)
  cases = [dict(packed=False, window=None), dict(packed=True, window=None),
           dict(packed=True, window=(24 if dry else 512))]
  rows = []
  for dtype in ("float32", "bfloat16"):
    for case in cases:
      row = dict(section="kernel", dtype=dtype, B=B, T=T, N=N, K=K, H=H, **case)
      if budget.left() <= 0:
        rows.append({**row, "skipped": "budget"})
        continue
      rng = np.random.default_rng()
      q = jnp.asarray(rng.standard_normal((B, T, N, H)), dtype)
      k = jnp.asarray(rng.standard_normal((B, T, K, H)), dtype)
      v = jnp.asarray(rng.standard_normal((B, T, K, H)), dtype)
      do = jnp.asarray(rng.standard_normal((B, T, N, H)), jnp.float32)
      seg = _packed(B, T, seed=int(rng.integers(1 << 30))) if case["packed"] else None

      def loss(fn):
        return lambda q, k, v: jnp.sum(fn(q, k, v).astype(jnp.float32) * do)

      kern = lambda q, k, v: flash_attention(q, k, v, segment_ids=seg, causal=True,
                                             window=case["window"], interpret=dry,
                                             block_q=32 if dry else 128, block_k=32 if dry else 128)
      # The reference runs in float32 on the same (rounded) inputs.
      ref = lambda q, k, v: attention_reference(q.astype(jnp.float32), k.astype(jnp.float32),
                                                v.astype(jnp.float32), segment_ids=seg,
                                                causal=True, window=case["window"])
      try:
        o1, g1 = jax.jit(kern)(q, k, v), jax.jit(jax.grad(loss(kern), (0, 1, 2)))(q, k, v)
        o0, g0 = jax.jit(ref)(q, k, v), jax.jit(jax.grad(loss(ref), (0, 1, 2)))(q, k, v)
        errs = dict(out=_rel_err(o1, o0), dq=_rel_err(g1[0], g0[0]), dk=_rel_err(g1[1], g0[1]),
                    dv=_rel_err(g1[2], g0[2]))
        row.update(rel_err=errs, ok=max(errs.values()) <= _KERNEL_TOL[dtype],
                   tol=_KERNEL_TOL[dtype])
      except Exception as e:  # pylint: disable=broad-except  (a failure is a result here)
        row.update(error=f"{type(e).__name__}: {str(e)[:300]}", ok=False)
      print("kernel", json.dumps(row), flush=True)
      rows.append(row)
  return rows


# ---------------------------------------------------------------------- train
def _device_bytes() -> float:
  stats = getattr(jax.devices()[0], "memory_stats", lambda: None)()
  return float((stats or {}).get("bytes_limit", float("inf")))


def train_plan(dry: bool) -> list[tuple[str, str, str, int | None]]:
  """(preset, attention impl, remat, loss_chunk or None = as configured), most wanted first."""
  if dry:  # both implementations that run on CPU, a remat policy, the chunked loss
    return [("tiny", "xla", "none", None), ("tiny", "pallas", "save_dots", 16)]
  plan = [("1b", impl, "save_dots", None) for impl in ("pallas", "cudnn", "xla")]
  plan += [("125m", impl, "none", None) for impl in ("pallas", "cudnn", "xla")]
  plan += [("1b", impl, "none", None) for impl in ("pallas", "cudnn")]
  plan += [("1b", impl, "full", None) for impl in ("pallas", "cudnn")]
  return plan


def train_rows(dry: bool, budget: Budget, *, rows_per_device: int, seq_len: int,
               steps: int) -> list[dict]:
  from configs import pretrain
  from maxlm.model import ModelConfig, flops_per_token
  from maxlm.monitor import mfu
  from maxlm.optim import make_optimizer
  from maxlm.sharding import batch_sharding, host_batch_to_global, make_mesh
  from maxlm.train.state import create_state, state_shardings
  from maxlm.train.step import train_step

  mesh = make_mesh(1, 1, 1, devices=jax.devices()[:1])
  rules = pretrain.RULES
  tx, sched = make_optimizer(peak_lr=1e-4, total_steps=1000,
                             schedule=dict(name="constant", warmup_steps=0))
  B, T = rows_per_device, seq_len
  out = []
  for preset, impl, remat, chunk in train_plan(dry):
    mc = pretrain.get_config(preset).model.to_dict()
    mc.update(compute_dtype="bfloat16", attention_impl=impl, remat=remat)
    if chunk is not None:
      mc["loss_chunk"] = chunk
    cfg = ModelConfig(**mc)
    row = dict(section="train", preset=preset, attention_impl=impl, remat=remat, rows=B,
               seq_len=T, dtype="bfloat16", loss_chunk=cfg.loss_chunk)
    if budget.left() <= 0:
      out.append({**row, "skipped": "budget"})
      continue
    try:
      sh = state_shardings(cfg, tx, mesh, rules)
      bsh = batch_sharding(mesh, rules)
      step = jax.jit(functools.partial(train_step, model_config=cfg, tx=tx, schedule=sched,
                                       microbatches=1, num_domains=1, rules=rules),
                     in_shardings=(sh, bsh), out_shardings=(sh, None), donate_argnums=0)
      rng = np.random.default_rng(0)
      tokens = rng.integers(0, cfg.vocab_size, (B, T)).astype(np.int32)
      host = dict(inputs=tokens, targets=np.roll(tokens, -1, 1),
                  segment_ids=np.ones((B, T), np.int32),
                  positions=np.broadcast_to(np.arange(T, dtype=np.int32), (B, T)),
                  loss_mask=np.ones((B, T), np.float32), domain_ids=np.zeros((B, T), np.int32))
      with jax.set_mesh(mesh):
        from maxlm.train.state import abstract_state
        t0 = time.perf_counter()
        compiled = step.lower(abstract_state(cfg, tx, 0, sh),
                              {k: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=bsh)
                               for k, v in host.items()}).compile()
        ma = compiled.memory_analysis()
        row.update(compile_s=time.perf_counter() - t0, temp_gib=ma.temp_size_in_bytes / GIB,
                   argument_gib=ma.argument_size_in_bytes / GIB)
        need = ma.temp_size_in_bytes + ma.argument_size_in_bytes
        if need > 0.95 * _device_bytes():
          row["skipped"] = f"does not fit: needs {need / GIB:.1f} GiB"
        else:
          state = create_state(cfg, tx, 0, sh)
          batch = host_batch_to_global(host, bsh)
          state, m = compiled(state, batch)
          jax.block_until_ready(m["loss"])
          t0 = time.perf_counter()
          for _ in range(steps):
            state, m = compiled(state, batch)
          jax.block_until_ready(m["loss"])
          dt = (time.perf_counter() - t0) / steps
          tps = B * T / dt
          u = mfu(tps, flops_per_token(cfg, T), 1)
          row.update(ms_per_step=dt * 1e3, tokens_per_s=tps, mfu=u, loss=float(m["loss"]))
          del state, batch
    except Exception as e:  # pylint: disable=broad-except
      row.update(error=f"{type(e).__name__}: {str(e)[:300]}")
    print("train", json.dumps(row), flush=True)
    out.append(row)
  return out


# ------------------------------------------------------------------ attention
def attention_rows(dry: bool, budget: Budget) -> list[dict]:
  from kernels import bench_attention
  shapes = [(1, 64, 2, 1, 16)] if dry else [(8, 2048, 16, 4, 128), (2, 8192, 16, 4, 128),
                                            (1, 16384, 16, 4, 128)]
  out = []
  for shape in shapes:
    for packed in (False, True):
      if budget.left() <= 0:
        out.append(dict(section="attention", shape=shape, packed=packed, skipped="budget"))
        continue
      rows = bench_attention.measure(shape, dtype=jnp.bfloat16, packed=packed, causal=True,
                                     iters=1 if dry else 5, interpret=dry, block=32 if dry else 128)
      for r in rows:
        r["section"] = "attention"
        print("attention", json.dumps(r), flush=True)
      out.extend(rows)
  return out


# --------------------------------------------------------------------- memory
def memory_rows(dry: bool, budget: Budget, *, rows_per_device: int, seq_len: int) -> list[dict]:
  from configs import pretrain
  from maxlm.model import ModelConfig
  from bench.memory import step_memory
  preset = "tiny" if dry else "1b"
  base = ModelConfig(**pretrain.get_config(preset).model.to_dict())
  out, dense = [], None
  for chunk in (0, base.loss_chunk or (16 if dry else 512)):
    if budget.left() <= 0:
      out.append(dict(section="memory", preset=preset, loss_chunk=chunk, skipped="budget"))
      continue
    m = step_memory(dataclasses.replace(base, compute_dtype="bfloat16", loss_chunk=chunk),
                    rows_per_device, seq_len)
    dense = dense or m
    row = dict(section="memory", preset=preset, rows=rows_per_device, seq_len=seq_len,
               remat=base.remat, loss_chunk=chunk, temp_gib=m["temp"] / GIB,
               ratio_vs_dense=m["temp"] / dense["temp"])
    print("memory", json.dumps(row), flush=True)
    out.append(row)
  return out


# ----------------------------------------------------------------------- rows
def markdown_rows(res: dict) -> str:
  """BENCHMARKS.md table rows from the results."""
  dev, date = res["device"], res["date"]
  lines = [f"<!-- device_check {date} on {dev}, jax {res['jax']}: `bash bench/device_check.sh` -->",
           "| section | what | figure |", "|---|---|---|"]
  for r in res["rows"]:
    if "skipped" in r or "error" in r:
      what = {k: v for k, v in r.items() if k not in ("section", "skipped", "error")}
      lines.append(f"| {r['section']} | {what} | {r.get('skipped') or r.get('error')} |")
    elif r["section"] == "kernel":
      lines.append(f"| kernel | {r['dtype']} packed={r['packed']} window={r['window']} "
                   f"T={r['T']} | max rel err {max(r['rel_err'].values()):.2e} "
                   f"({'ok' if r['ok'] else 'FAIL'} at {r['tol']}) |")
    elif r["section"] == "train":
      u = "n/a" if r.get("mfu") is None else f"{r['mfu']:.1%}"
      lines.append(f"| train | {r['preset']} {r['attention_impl']} remat={r['remat']} "
                   f"B={r['rows']} T={r['seq_len']} bf16 loss_chunk={r['loss_chunk']} | "
                   f"{r['tokens_per_s']:.0f} tok/s, MFU {u}, temp {r['temp_gib']:.1f} GiB |")
    elif r["section"] == "attention":
      lines.append(f"| attention | {r['impl']} {r['pass']} B={r['B']} T={r['T']} N={r['N']} "
                   f"K={r['K']} H={r['H']} packed={r['packed']} | {r['tflops']:.1f} TFLOP/s "
                   f"({r['ms']:.2f} ms) |")
    elif r["section"] == "memory":
      lines.append(f"| memory | {r['preset']} B={r['rows']} T={r['seq_len']} loss_chunk="
                   f"{r['loss_chunk']} | temp {r['temp_gib']:.2f} GiB "
                   f"({r['ratio_vs_dense']:.3f} of dense) |")
  return "\n".join(lines) + "\n"


SECTIONS = ("kernel", "train", "attention", "memory")


def main(argv=None) -> dict:
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--dry-run", action="store_true", help="CPU, tiny shapes, every step compiled")
  ap.add_argument("--out", default=os.environ.get("OUT", "/tmp/maxlm_device_check"))
  ap.add_argument("--budget_s", type=float, default=None,
                  help="wall-clock seconds for all sections, items past it skipped (default "
                  "420 on a device; none in a dry run, which must compile every step)")
  ap.add_argument("--sections", default=",".join(SECTIONS))
  ap.add_argument("--steps", type=int, default=5, help="timed train steps per configuration")
  a = ap.parse_args(argv)
  dry = a.dry_run
  a.budget_s = a.budget_s or (float("inf") if dry else 420.0)
  rows_per_device, seq_len = (2, 64) if dry else (8, 2048)
  os.makedirs(a.out, exist_ok=True)
  res = dict(date=datetime.date.today().isoformat(), device=jax.devices()[0].device_kind,
             backend=jax.default_backend(), jax=jax.__version__, dry_run=dry, rows=[])
  run = dict(
      kernel=lambda b: kernel_rows(dry, b),
      train=lambda b: train_rows(dry, b, rows_per_device=rows_per_device, seq_len=seq_len,
                                 steps=1 if dry else a.steps),
      attention=lambda b: attention_rows(dry, b),
      memory=lambda b: memory_rows(dry, b, rows_per_device=rows_per_device, seq_len=seq_len))
  carry = 0.0
  for name in a.sections.split(","):
    budget = Budget(SHARES[name] * a.budget_s + carry)
    t0 = time.perf_counter()
    try:
      res["rows"].extend(run[name](budget))
    except Exception as e:  # pylint: disable=broad-except  (keep the other sections' figures)
      traceback.print_exc()
      res["rows"].append(dict(section=name, error=f"{type(e).__name__}: {str(e)[:300]}"))
    res[f"{name}_s"] = time.perf_counter() - t0
    carry = max(budget.left(), 0.0)
    # Written after each section, so a run killed by its time limit still leaves figures.
    with open(os.path.join(a.out, "device_check.json"), "w") as f:
      json.dump(res, f, indent=1, default=str)
  with open(os.path.join(a.out, "device_check_rows.md"), "w") as f:
    f.write(markdown_rows(res))
  print(markdown_rows(res))
  return res


if __name__ == "__main__":
  main()
