r"""Compiled memory of the long-context train step: unsharded vs a context-parallel mesh.

  python bench/context_memory.py                          # 1b, 32k per sequence, 4-way context
  python bench/context_memory.py --preset=10m --seq_len=4096 --context=4   # seconds
  python bench/context_memory.py --ring_blocks=pallas,xla   # the ring's per-block compute, both
  python bench/context_memory.py --table=vocab,embed   # the vocabulary table's sharding, both

XLA's compiled memory analysis of the jitted train step on abstract shapes
(nothing is allocated, so it runs on CPU for any size): per-device temporary
bytes (activations, residuals, workspace) and argument bytes (state + batch).
The model is the long-context stage's (configs/long_context.py: remat='full',
bfloat16, RoPE scaling), one sequence of --seq_len tokens per step. Unsharded:
one device, the stage's attention (Pallas flash kernel, interpreted on CPU).
Sharded: a mesh of --context devices on the `context` axis, ring attention
(maxlm/model/context_parallel.py). Target (issue 15): sharded temp <= 1/3 of
unsharded at 32k on a 4-way axis. --ring_blocks: one sharded row per per-block
compute of the ring: 'pallas' (the stage's attention_impl, the kernel per chunk
pair) and/or 'xla' (attention_impl='xla' on the sharded mesh: the XLA path).
--table: how the sharded rows split the vocabulary table over `context`
(configs/long_context.py's context_rules): 'vocab' (the stage's: by vocabulary,
so its gradient stays on its shard) and/or 'embed' (by the model dim, as every
other weight: gathered whole for the lookup and head, gradient all-reduced).
"""

import argparse
import dataclasses
import functools
import importlib.util
import os
import sys

os.environ.setdefault("JAX_PLATFORMS", "cpu")
_flag = "--xla_force_host_platform_device_count=8"
if _flag not in os.environ.get("XLA_FLAGS", ""):
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + _flag).strip()
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from maxlm.model import ModelConfig  # noqa: E402
from maxlm.optim import make_optimizer  # noqa: E402
from maxlm.sharding import batch_sharding, make_mesh  # noqa: E402
from maxlm.train.state import abstract_state, state_shardings  # noqa: E402
from maxlm.train.step import train_step  # noqa: E402


def _long_context_module():
  path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs",
                      "long_context.py")
  spec = importlib.util.spec_from_file_location("maxlm_configs_long_context", path)
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return mod


def _long_context_config(preset: str, seq_len: int):
  return _long_context_module().get_config(f"{preset},lengths={seq_len}")


def step_memory(cfg: ModelConfig, seq_len: int, context: int, rules) -> dict:
  """Per-device compiled memory (bytes) of one train step on a `context`-device mesh."""
  devices = jax.devices()[:context]
  mesh = make_mesh(data=1, fsdp=1, tensor=1, context=context, devices=devices)
  tx, sched = make_optimizer(peak_lr=1e-4, total_steps=1000,
                             schedule=dict(name="constant", warmup_steps=0))
  sh = state_shardings(cfg, tx, mesh, rules)
  state = abstract_state(cfg, tx, 0, sh)
  bsh = batch_sharding(mesh, rules)
  B, T = 1, seq_len
  spec = lambda dt: jax.ShapeDtypeStruct((B, T), dt, sharding=bsh)
  batch = dict(inputs=spec(jnp.int32), targets=spec(jnp.int32), segment_ids=spec(jnp.int32),
               positions=spec(jnp.int32), loss_mask=spec(jnp.float32), domain_ids=spec(jnp.int32))
  step = jax.jit(functools.partial(train_step, model_config=cfg, tx=tx, schedule=sched,
                                   microbatches=1, num_domains=1, rules=rules),
                 in_shardings=(sh, bsh), out_shardings=(sh, None), donate_argnums=0)
  with jax.set_mesh(mesh):
    compiled = step.lower(state, batch).compile()
  m = compiled.memory_analysis()
  return dict(temp=m.temp_size_in_bytes, arguments=m.argument_size_in_bytes,
              outputs=m.output_size_in_bytes)


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--preset", default="1b")
  p.add_argument("--seq_len", type=int, default=32768)
  p.add_argument("--context", type=int, default=4)
  p.add_argument("--ring_blocks", default="pallas",
                 help="comma list of xla|pallas: the sharded rows' per-block compute")
  p.add_argument("--table", default="vocab",
                 help="comma list of vocab|embed: the sharded rows' vocabulary-table split")
  a = p.parse_args(argv)
  lc = _long_context_module()
  config = lc.get_config(f"{a.preset},lengths={a.seq_len}")
  cfg = ModelConfig.from_any(config.model)
  pretrain_rules = lc.config_files.pretrain(lc.__file__).RULES
  rules = tuple(map(tuple, config.mesh.rules))
  print(f"{a.preset} T={a.seq_len} remat={cfg.remat} attention={cfg.attention_impl}"
        f" dtype={cfg.compute_dtype}")
  gib = lambda x: x / 2**30
  runs = [("unsharded", 1, cfg, rules)]
  for table in a.table.split(","):
    if table not in ("vocab", "embed"):
      raise SystemExit(f"--table: {table!r} is not vocab or embed")
    for block in a.ring_blocks.split(","):
      if block not in ("xla", "pallas"):
        raise SystemExit(f"--ring_blocks: {block!r} is not xla or pallas")
      runs.append((f"context={a.context} {block} blocks, table by {table}", a.context,
                   dataclasses.replace(cfg, attention_impl=block),
                   lc.context_rules(pretrain_rules, table)))
  rows = {}
  for label, C, run_cfg, run_rules in runs:
    rows[label] = m = step_memory(run_cfg, a.seq_len, C, run_rules)
    print(f"  {label:40s} temp {gib(m['temp']):8.2f} GiB   arguments {gib(m['arguments']):7.2f}"
          f" GiB   per device", flush=True)
  for label, m in rows.items():
    if label != "unsharded":
      ratio = m["temp"] / rows["unsharded"]["temp"]
      print(f"  temp ratio {label} / unsharded = {ratio:.3f}  (target <= 0.333)")
  return rows


if __name__ == "__main__":
  main()
