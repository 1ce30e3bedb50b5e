r"""Compiled memory of the jitted train step, from XLA's memory analysis on abstract shapes.

  python bench/memory.py                       # 1b, seq 2048, 8 rows/device: dense vs chunked loss
  python bench/memory.py --chunks=256,512,1024 --preset=1b --seq_len=2048 --rows=8

Nothing is allocated: the state and batch are ShapeDtypeStructs carrying their
shardings, the step (maxlm.train.step.train_step, the one the driver jits) is
lowered and compiled for this process's first device, and the compiled
executable's `memory_analysis()` gives temporary (activations, gradients,
scratch), argument and output bytes. So the figures need no accelerator: they
are XLA's buffer assignment for the CPU backend, which schedules differently
from GPU/TPU but holds the same big buffers (the [B, T, V] logits and their
gradient above all).

Rows (`--what`):
  loss      peak temporary bytes with dense logits (model.loss_chunk = 0) against
            chunked cross entropy at each --chunks value, per remat policy and
            attention implementation, for the whole step and for the loss's
            forward + backward alone, with ratios to the same configuration's
            dense loss and to the baseline (the preset as configured, dense).
  context   the long-context step on a context-parallel axis against one device
            (issue 15.2, added by the context-parallelism work: `_context_rows`).
"""

import argparse
import dataclasses
import functools
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from jax.sharding import NamedSharding, PartitionSpec as P  # noqa: E402

from configs import pretrain  # noqa: E402
from maxlm.model import ModelConfig, init_params  # noqa: E402
import optax  # noqa: E402

from maxlm.optim import make_optimizer, weight_decay_mask  # noqa: E402
from maxlm.sharding import batch_sharding, make_mesh  # noqa: E402
from maxlm.train.state import abstract_state, state_shardings  # noqa: E402
from maxlm.train.step import loss_sums, train_step  # noqa: E402

GIB = 1024 ** 3


def _abstract_batch(B: int, T: int, sharding=None) -> dict:
  spec = lambda dt: jax.ShapeDtypeStruct((B, T), dt, sharding=sharding)
  return dict(inputs=spec(jnp.int32), targets=spec(jnp.int32), segment_ids=spec(jnp.int32),
              positions=spec(jnp.int32), loss_mask=spec(jnp.float32), domain_ids=spec(jnp.int32))


def _analysis(compiled, t0) -> dict:
  ma = compiled.memory_analysis()
  return dict(temp=ma.temp_size_in_bytes, argument=ma.argument_size_in_bytes,
              output=ma.output_size_in_bytes, alias=ma.alias_size_in_bytes,
              compile_s=time.perf_counter() - t0)


def _plain_optax(sched):
  """optax's clip + adamw, skipped by a select on its outputs: the step before
  maxlm/optim/guarded.py (same values, but XLA copies the donated state)."""
  return optax.chain(optax.clip_by_global_norm(1.0),
                     optax.adamw(sched, b1=0.9, b2=0.95, eps=1e-8, weight_decay=0.1,
                                 mask=weight_decay_mask))


def step_memory(cfg: ModelConfig, rows: int, seq_len: int, *, mesh_shape=(1, 1, 1),
                rules=pretrain.RULES, plain_optax: bool = False) -> dict:
  """Compiled bytes of one train step: temp, argument, output, and compile seconds."""
  devices = jax.devices()[:int(mesh_shape[0] * mesh_shape[1] * mesh_shape[2])]
  mesh = make_mesh(*mesh_shape, devices=devices)
  tx, sched = make_optimizer(peak_lr=1e-4, total_steps=1000,
                             schedule=dict(name="constant", warmup_steps=0))
  if plain_optax:
    tx = _plain_optax(sched)
  sh = state_shardings(cfg, tx, mesh, rules)
  state = abstract_state(cfg, tx, 0, sh)
  bsh = batch_sharding(mesh, rules)
  batch = _abstract_batch(rows * len(devices), seq_len, bsh)
  step = jax.jit(functools.partial(train_step, model_config=cfg, tx=tx, schedule=sched,
                                   microbatches=1, num_domains=3, rules=rules),
                 in_shardings=(sh, bsh), out_shardings=(sh, None), donate_argnums=0)
  t0 = time.perf_counter()
  with jax.set_mesh(mesh):
    compiled = step.lower(state, batch).compile()
  return _analysis(compiled, t0)


def grad_memory(cfg: ModelConfig, rows: int, seq_len: int) -> dict:
  """Compiled bytes of the loss's forward + backward alone (no optimizer update), one device."""
  params = jax.eval_shape(lambda r: init_params(cfg, r), jax.random.PRNGKey(0))
  grad_fn = jax.jit(jax.value_and_grad(
      lambda p, b: loss_sums(p, b, model_config=cfg, num_domains=3), has_aux=True))
  t0 = time.perf_counter()
  return _analysis(grad_fn.lower(params, _abstract_batch(rows, seq_len)).compile(), t0)


SCOPES = {"step": step_memory, "grad": grad_memory}


def _loss_rows(a) -> list[dict]:
  base = ModelConfig(**pretrain.get_config(a.preset).model.to_dict())
  V, B, T = base.vocab_size, a.rows, a.seq_len
  print(f"{a.preset}: V={V} B={B} T={T} {base.compute_dtype}; one [B, T, V] float32 logits "
        f"array = {B * T * V * 4 / GIB:.2f} GiB. Baseline: the preset as configured before "
        f"chunking (remat={base.remat}, attention={base.attention_impl}, loss_chunk=0)", flush=True)
  out = []
  if a.optax_baseline and "step" in a.scope.split(","):
    # Today's step before the in-place AdamW: the preset as configured, dense loss, optax's
    # outputs behind a select (the old train step), compiled in this same run.
    m = step_memory(dataclasses.replace(base, loss_chunk=0), B, T, plain_optax=True)
    out.append(dict(what="loss", scope="step", preset=a.preset, rows=B, seq_len=T,
                    remat=base.remat, attention_impl=base.attention_impl, dtype=base.compute_dtype,
                    loss_chunk=0, optimizer="optax select", **m))
    print(f"  step remat={base.remat:9s} attention={base.attention_impl:6s} loss_chunk=    0  temp "
          f"{m['temp'] / GIB:7.2f} GiB  (optax adamw behind a select: the step before "
          f"maxlm/optim/guarded.py)", flush=True)
  for scope in a.scope.split(","):
    baseline = None
    for remat in (a.remat or base.remat).split(","):
      for impl in (a.attention or base.attention_impl).split(","):
        for chunk in [0] + [int(c) for c in a.chunks.split(",") if c]:
          cfg = dataclasses.replace(base, loss_chunk=chunk, remat=remat, attention_impl=impl)
          m = SCOPES[scope](cfg, B, T)
          if baseline is None and remat == base.remat and impl == base.attention_impl:
            baseline = m
          if chunk == 0:  # first in the loop: the same configuration's dense loss
            dense = m
          row = dict(what="loss", scope=scope, preset=a.preset, rows=B, seq_len=T, remat=remat,
                     attention_impl=impl, dtype=base.compute_dtype, loss_chunk=chunk, **m,
                     ratio_vs_dense=m["temp"] / dense["temp"],
                     ratio_vs_baseline=m["temp"] / baseline["temp"] if baseline else None)
          out.append(row)
          vb = row["ratio_vs_baseline"]
          print(f"  {scope:4s} remat={remat:9s} attention={impl:6s} loss_chunk={chunk:5d}  temp "
                f"{m['temp'] / GIB:7.2f} GiB  vs same-config dense {row['ratio_vs_dense']:.3f}"
                f"  vs baseline {'-' if vb is None else f'{vb:.3f}'}"
                f"  (compile {m['compile_s']:.0f} s)", flush=True)
  return out


def _context_rows(a) -> list[dict]:
  """Long-context step on a context-parallel axis vs one device: the context-parallelism
  work (issue 15.2) fills this in once maxlm.sharding has a `context` axis."""
  print("context rows: not available yet (needs the context mesh axis, issue 15.2)")
  return []


ROWS = {"loss": _loss_rows, "context": _context_rows}


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--what", default="loss", help=f"comma-separated rows: {list(ROWS)}")
  ap.add_argument("--preset", default="1b", choices=list(pretrain.PRESETS))
  ap.add_argument("--seq_len", type=int, default=2048)
  ap.add_argument("--rows", type=int, default=8, help="batch rows per device")
  ap.add_argument("--chunks", default="512", help="loss_chunk values to compare with dense")
  ap.add_argument("--remat", default="", help="remat policies to compare (default: the preset's)")
  ap.add_argument("--attention", default="", help="attention impls to compare (default: the preset's)")
  ap.add_argument("--scope", default="step,grad", help="step: the whole train step; grad: the "
                  "loss's forward + backward alone (no optimizer update)")
  ap.add_argument("--optax_baseline", action="store_true", help="also compile the dense step "
                  "with optax's adamw behind a select (the step before the in-place AdamW)")
  ap.add_argument("--json", default="", help="also write the rows here")
  a = ap.parse_args(argv)
  rows = [r for w in a.what.split(",") for r in ROWS[w](a)]
  if a.json:
    with open(a.json, "w") as f:
      json.dump(rows, f, indent=1)
  return rows


if __name__ == "__main__":
  main()
