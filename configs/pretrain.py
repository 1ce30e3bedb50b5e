r"""Pretraining a Llama-family decoder.

  python -m maxlm.train --config=configs/pretrain.py:tiny --workdir=/tmp/maxlm_tiny

`arg` picks a size preset and options, comma-separated:
  tiny | 10m | 125m | 350m | 1b | llama3_8b     model shape (see PRESETS)
  runlocal                                      CPU-sized batch, steps and seq_len
  shakespeare_char                              nanoGPT's shakespeare_char CPU recipe
                                                (run by bench/shakespeare_char.py)
  jsonl=GLOB[;GLOB]                             your JSONL corpus (.gz/.zst too) in place of
                                                the built-in one (text_field=F, domain=D)
Examples:  "125m"   "size=125m,runlocal"   "1b"   "shakespeare_char".
Any field can be overridden on the command line, e.g.
  --config.train.steps=500 --config.optim.peak_lr=1e-3 --config.mesh.fsdp=-1
and a mistyped name fails (the config is locked).
"""

import ml_collections

from maxlm.data.config import default_data_config, use_files

# name: (vocab V, d_model D, layers L, heads N, kv heads K, head_dim H, mlp F, rope theta, tied)
# Shapes of real models: 125m/350m are GPT-3 small/medium widths with SwiGLU
# (F = 8/3 D rounded to 256); 1b is Llama 3.2 1B; llama3_8b is Llama 3 8B.
PRESETS = {
    "tiny": (512, 64, 2, 4, 2, 16, 192, 10_000.0, False),
    "10m": (8192, 256, 8, 4, 4, 64, 768, 10_000.0, False),
    "125m": (32_000, 768, 12, 12, 12, 64, 2048, 10_000.0, False),
    "350m": (32_000, 1024, 24, 16, 16, 64, 2816, 10_000.0, False),
    "1b": (128_256, 2048, 16, 32, 8, 64, 8192, 500_000.0, True),
    "llama3_8b": (128_256, 4096, 32, 32, 8, 128, 14_336, 500_000.0, False),
}

# Logical axis -> mesh axes. Weights: 'embed' is split by fsdp (ZeRO-3),
# heads / kv / mlp / vocab by tensor (Megatron). Activations: batch over
# data and fsdp, the sequence over context (a no-op at mesh.context=1); the
# model dim of activations stays whole.
RULES = (
    ("batch", ("data", "fsdp")),
    ("length", "context"),
    ("act_embed", None),
    ("embed", "fsdp"),
    ("vocab", "tensor"),
    ("heads", "tensor"),
    ("kv", "tensor"),
    ("head_dim", None),
    ("mlp", "tensor"),
    ("layers", None),
)


def parse(arg: str) -> dict:
  """'size=125m,runlocal,parent=/x' -> {'size': '125m', 'runlocal': True, 'parent': '/x'}.

  The stage configs parse their `arg` with this too (their own options ride along).
  """
  opts = {"size": "tiny", "runlocal": False}
  for part in filter(None, (arg or "").split(",")):
    if "=" in part:
      k, v = part.split("=", 1)
      opts[k] = v
    elif part in PRESETS:
      opts["size"] = part
    else:
      opts[part] = True
  if opts["size"] not in PRESETS:
    raise ValueError(f"configs/pretrain.py: unknown size {opts['size']!r}; one of {list(PRESETS)}")
  return opts


_parse = parse  # the name stage configs used before


def is_local(opts: dict) -> bool:
  """CPU-sized (short sequences, small batches, few steps): `runlocal`, or the tiny model."""
  return bool(opts["runlocal"]) or opts["size"] == "tiny"


def model_config(size: str) -> ml_collections.ConfigDict:
  V, D, L, N, K, H, F, theta, tied = PRESETS[size]
  return ml_collections.ConfigDict(dict(
      vocab_size=V,  # padded: a multiple of 128 (MXU tiles and any tensor axis up to 128)
      d_model=D, n_layers=L, n_heads=N, n_kv_heads=K, head_dim=H, d_ff=F,
      rope_theta=theta,  # Llama 2 used 1e4, Llama 3 5e5
      rope_scaling=ml_collections.FieldReference(None, field_type=dict),  # HF-style dict for long context
      norm_eps=1e-5,
      tie_embeddings=tied,
      compute_dtype="float32",  # "bfloat16" on accelerators (set by the non-runlocal variants)
      param_dtype="float32",  # master weights stay float32
      remat="none",  # none | full | save_dots: trade FLOPs for activation memory
      attention_impl="xla",  # xla | pallas | splash | cudnn
      scan_layers=True,  # one compiled block; compile time independent of L
      init_std=0.02,
      # Large vocabularies: the LM head and cross entropy run 256 tokens at a time, so the
      # [B, T, V] float32 logits never exist (maxlm/model/loss.py; 7.8 GiB for the 1b
      # preset at 8 x 2048). Small vocabularies keep dense logits (0), which are faster there.
      loss_chunk=256 if V >= 32768 else 0,
  ))


def get_config(arg: str = "tiny") -> ml_collections.ConfigDict:
  opts = parse(arg)
  size, local = opts["size"], is_local(opts)
  c = ml_collections.ConfigDict()

  c.model = model_config(size)
  if not local:
    c.model.compute_dtype = "bfloat16"
    c.model.remat = "save_dots" if size in ("1b", "llama3_8b") else "none"

  # Mesh: sizes multiply to the device count; -1 = "the rest".
  c.mesh = ml_collections.ConfigDict()
  c.mesh.data = -1
  c.mesh.fsdp = 1
  c.mesh.tensor = 1
  c.mesh.context = 1  # sequence shards (ring attention); needs data.seq_len % (2*context) == 0
  c.mesh.rules = RULES

  # Three real-text domains the install brings: Shakespeare (prose), the Python
  # stdlib (code), the Python reference manual (docs). Over the last 20% of
  # the steps the mix anneals toward the prose source ("annealing on
  # high-quality data"); the schedule is a function of the step, so resume
  # is exact. Runs that change train.steps should move `start` with it.
  c.data = default_data_config("three_domains")
  c.data.seq_len = 128 if local else 2048  # T: tokens per packed row
  if not local:
    c.data.tokenizer.vocab_size = c.model.vocab_size

  c.optim = ml_collections.ConfigDict()
  c.optim.peak_lr = 3e-3 if local else 3e-4  # small models tolerate (and need) a higher LR
  c.optim.b1 = 0.9
  c.optim.b2 = 0.95  # 0.95 rather than 0.999: steadier at LLM batch sizes
  c.optim.eps = 1e-8
  c.optim.weight_decay = 0.1  # decoupled (AdamW); norms and biases excluded
  c.optim.clip_norm = 1.0  # global-norm clipping
  c.optim.schedule = ml_collections.ConfigDict()
  c.optim.schedule.name = "cosine"  # cosine | wsd | constant
  c.optim.schedule.warmup_steps = 20 if local else 2000
  c.optim.schedule.min_lr_ratio = 0.1  # floor of the decay, as a fraction of peak_lr
  c.optim.schedule.decay_fraction = 0.2  # wsd: share of steps spent decaying
  c.optim.schedule.decay_shape = "1-sqrt"  # wsd decay: linear | cosine | 1-sqrt
  c.optim.schedule.init_lr = 0.0  # where warmup starts

  c.train = ml_collections.ConfigDict()
  c.train.steps = 200 if local else 100_000
  c.train.global_batch = 16 if local else 256  # rows per optimizer step, all hosts
  c.data.schedule = (dict(start=int(0.8 * c.train.steps), unit="step", transition="switch",
                          weights=dict(shakespeare=0.7, stdlib=0.15, pydocs=0.15)),)
  if "jsonl" in opts:  # your own corpus in place of the built-in one (and its schedule)
    use_files(c.data, opts["jsonl"], text_field=opts.get("text_field", "text"),
              domain=opts.get("domain", "web"))
  c.train.microbatches = 1  # gradient accumulation: global_batch split into this many
  c.train.seed = 0
  c.train.log_every = 10  # steps between metric lines
  c.train.eval_every = 100  # steps between held-out evaluations (0 = only at the end)
  # PaLM's z-loss weight: adds z_loss * log(Z)^2 per token, keeping the softmax
  # normaliser near 1 (0 = off; 1e-4 in PaLM). A training objective, so it lives
  # here (model.z_loss is read as a deprecated alias).
  c.train.z_loss = 0.0

  # Stage chaining (maxlm/train/stages.py): where this run starts from.
  c.init = ml_collections.ConfigDict()
  c.init.from_checkpoint = ""  # '' = from scratch; a maxlm workdir, <workdir>/checkpoints/<n>, or an HF dir
  c.init.carry = "params"  # params: fresh optimizer and schedule | full: optimizer moments too
  c.init.lr_from_parent = ""  # '' = optim.peak_lr | final: the parent's last LR | peak: its peak LR
  c.init.lr_scale = 1.0  # multiplies the parent's LR (continued pretraining re-warms to a fraction)

  c.ckpt = ml_collections.ConfigDict()
  c.ckpt.every = 50 if local else 1000  # steps between saves
  c.ckpt.keep = 3  # newest checkpoints kept
  c.ckpt.async_save = True  # write in the background while training goes on
  c.ckpt.export_params = True  # params-only export at the end (for later stages / eval)
  # Resuming with a config that changes the run (model, data, optim, seed...) is refused
  # unless named here, comma-separated dotted prefixes: "optim.peak_lr,train.seed".
  c.ckpt.allow_changes = ""

  c.monitor = ml_collections.ConfigDict()
  c.monitor.tensorboard = True
  c.monitor.plot = True  # loss-curve PNG in the workdir at the end
  c.monitor.progress = "auto"  # auto (tqdm on a tty) | bar | lines
  # Loss-spike detection and rollback (maxlm/monitor/spikes.py, maxlm/train/rollback.py):
  # a step whose loss leaves median +- k * 1.4826 * MAD of the last `window`
  # steps (or whose grad norm jumps) restores the newest checkpoint followed by
  # `good_after` clean steps and skips the data up to `margin_steps` past the spike.
  c.monitor.spikes = ml_collections.ConfigDict(dict(
      enabled=True,
      method="mad",  # mad (median/MAD, robust) | ema
      window=100,  # steps of history in the band
      warmup=50,  # steps before it arms: the early loss falls too fast for a band
      # Band half-widths in robust sigmas (0 = off). The grad norm is off by default:
      # at small batch it jumps several-fold on clean data, and rollback is for bad data.
      k_high=6.0, k_low=6.0, k_grad=0.0,
      min_sigma=1e-3,  # a flat curve must not fire on rounding noise
      ema_decay=0.98,
      action="rollback",  # log | rollback | stop
      good_after=50,  # clean steps after a checkpoint before it is trusted
      margin_steps=10,  # batches skipped past the spike
      max_rollbacks=3,  # then stop: the data is probably not the cause
  ))

  if opts.get("shakespeare_char"):
    shakespeare_char(c, opts.get("path", SHAKESPEARE_PATH))

  # Multi-host: jax.distributed.initialize() with these (empty = auto-detect
  # on Cloud TPU / SLURM / Open MPI).
  c.distributed = ml_collections.ConfigDict()
  c.distributed.initialize = False
  c.distributed.coordinator_address = ""
  c.distributed.num_processes = -1
  c.distributed.process_id = -1

  # In-training probes (maxlm/eval/probes.py): a probe JSONL ('' = off), scored
  # every `probe_every` steps (0 = only at the end) into metrics.jsonl as probe/*.
  c.eval = ml_collections.ConfigDict(dict(probes="", probe_every=0))
  # Downstream evals during training (maxlm/eval/harness_hook.py): lm-eval task
  # names or local task dirs / YAML files, run on the live params every `every`
  # steps into metrics.jsonl as harness/<task>/<metric> (and harness.png).
  c.eval.harness = ml_collections.ConfigDict(dict(
      tasks=(),  # () = off
      every=0,  # steps between runs (0 = never during training)
      limit=0,  # documents per task (0 = all); keep small: it runs inside training
      num_fewshot=-1,  # -1 = the task's default
      batch_size=8,  # requests per scoring batch
  ))
  return c


# The char-rnn text; outside the repository (tests never read it).
SHAKESPEARE_PATH = "../shared/data/tinyshakespeare/input.txt"


def shakespeare_char(c: ml_collections.ConfigDict, path: str) -> None:
  """nanoGPT's shakespeare_char CPU recipe, with a Llama block in place of GPT-2's.

  nanoGPT: 4 layers, 4 heads, n_embd 128, block 64, batch 12, 2000 iters, lr 1e-3
  cosine to 1e-4, warmup 100, beta2 0.99, wd 0.1, clip 1.0, dropout 0, tied
  embeddings; characters as tokens (the 65 of the text), 90/10 contiguous split.
  The driver's data pipeline has no character tokenizer, so bench/shakespeare_char.py
  trains this config with its own char codec and nanoGPT-style random windows.
  """
  c.model.update(dict(
      vocab_size=128,  # the 65 characters, padded; unused ids are never targets
      d_model=128, n_layers=4, n_heads=4, n_kv_heads=4, head_dim=32,
      d_ff=344,  # SwiGLU at GPT-2's 4*D MLP parameter count: 2/3 * 4 * 128, rounded to 8
      tie_embeddings=True,  # as nanoGPT (wte shared with lm_head)
      dropout=0.0))  # the CPU recipe; the GPU recipe uses 0.2
  c.data.sources = ml_collections.ConfigDict(dict(tinyshakespeare=dict(
      kind="text_files", domain="prose", weight=1.0, paths=(path,))))
  c.data.seq_len = 64  # nanoGPT block_size
  c.data.val_fraction = 0.1  # the last 10% of the text, contiguous (nanoGPT's prepare.py)
  c.optim.peak_lr = 1e-3
  c.optim.b2 = 0.99  # nanoGPT: small batches want a longer second-moment memory
  c.optim.weight_decay = 0.1
  c.optim.clip_norm = 1.0
  c.optim.schedule.name = "cosine"
  c.optim.schedule.warmup_steps = 100
  c.optim.schedule.min_lr_ratio = 0.1  # 1e-4
  c.train.steps = 2000
  c.train.global_batch = 12
  c.train.eval_every = 250
  c.data.schedule = ()
