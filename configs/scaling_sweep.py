"""Scaling-law sweeps: isoFLOP profiles or (N, D) grids of pretraining runs.

Write the points and the launch manifest (one command per point), train them
here one at a time, collect, fit:

  python -m maxlm.scaling sweep --config=configs/scaling_sweep.py:tiny --root=/tmp/sweep --run
  python -m maxlm.scaling collect /tmp/sweep --out=/tmp/sweep/results.csv
  python -m maxlm.scaling fit /tmp/sweep/results.csv --method=all --plot-dir=/tmp/sweep/plots

Variants (arg): "tiny" (CPU miniature, minutes in all), "small" (isoFLOP
1e17..1e19 on accelerators), "grid" (an N x D grid for Approach 3).
Override any field with --set, e.g. --set train.lr_rule=deepseek.
"""

import ml_collections


def get_config(arg="tiny"):
  c = ml_collections.ConfigDict()
  c.kind = "isoflop"  # "isoflop": budgets x sizes, D from C; "grid": n_values x tokens
  c.root = "/tmp/maxlm_scaling"  # sweep directory; each point's workdir is <root>/<name>
  c.prefix = ""  # prepended to every point name
  # "exact": C = D * maxlm.model.flops_per_token (6N + LM head + attention, PaLM app. B);
  # "6nd": C = 6 N_nonemb D (Kaplan). Exact is what the accelerator spends.
  c.flops = "exact"

  # isoFLOP sweep: for each budget (FLOPs), n_per_budget sizes log-spaced over a
  # factor n_span around sqrt(C / (6 * tokens_per_param)), Chinchilla's optimum
  # at ~20 tokens per parameter, so each profile brackets its minimum.
  c.budgets = [1e17, 3e17, 1e18, 3e18, 1e19]
  c.n_per_budget = 7
  c.n_span = 16.0
  c.tokens_per_param = 20.0
  # grid sweep: target non-embedding sizes and absolute token counts.
  c.n_values = [1e6, 3e6, 1e7]
  c.tokens = [1e7, 3e7, 1e8]

  # Shape from N (maxlm/scaling/sweep.py docstring): d_model ~ (aspect N / 12)^(1/3)
  # rounded to head_dim, layers chosen to hit N.
  c.shape = ml_collections.ConfigDict()
  c.shape.vocab_size = 32768  # must equal the pretrain variant's (padded) vocab: N counts it
  c.shape.aspect = 64.0  # d_model / n_layers; Kaplan's loss is flat from ~20 to ~200
  c.shape.head_dim = 64  # d_model is a multiple of it (n_heads = d_model / head_dim)
  c.shape.mlp_ratio = 8 / 3  # SwiGLU F = 8/3 D keeps the MLP at 8 D^2 like a 4D GeLU MLP
  c.shape.ff_multiple = 128  # d_ff rounded up to this (MXU tile)
  c.shape.kv_group = 1  # n_heads / n_kv_heads; 1 = MHA as in Chinchilla's models

  c.train = ml_collections.ConfigDict()
  c.train.seq_len = 1024  # tokens per sequence
  c.train.global_batch = 64  # sequences per step, when batch_rule = "fixed"
  c.train.peak_lr = 3e-3  # when lr_rule = "fixed"
  c.train.lr_rule = "fixed"  # "fixed" | "kaplan" (Kaplan 2020 eq. D.1, from N) | "deepseek" (DeepSeek LLM eq. 1, from C)
  c.train.batch_rule = "fixed"  # "fixed" | "deepseek" (0.292 C^0.3271 tokens, to a power of two sequences)

  c.launch = ml_collections.ConfigDict()
  c.launch.pretrain = "configs/pretrain.py"  # stage config each point overrides
  c.launch.variant = "base"  # its get_config arg
  # {pretrain} {variant} {workdir} {overrides} are filled per point; a leading
  # `python` becomes the running interpreter when `run` executes it here.
  c.launch.command = "python -m maxlm.train --config={pretrain}:{variant} --workdir={workdir} {overrides}"
  c.launch.extra_overrides = []  # appended to every command, e.g. ["--config.eval.every=100"]

  if arg == "tiny":
    # CPU miniature (docs/scaling.md "The CPU miniature"): 3 budgets x 3-4 shapes,
    # each budget with an interior minimum; 8-14 minutes on 2 shared cores (load 4-13).
    # Why it is calibrated this way: at this scale the LM head (6 V d FLOPs per
    # token, V = 512) and attention (12 L d T) cost as much as the blocks, and
    # every model is data-starved, so a smaller model's extra tokens win unless
    # the smallest shape is small enough to be capacity-bound. A first sweep
    # (budgets 1e11..1e12, sizes from 13k non-embedding params, 20 tokens per
    # param, LR 3e-3) had no minimum at 1e11 or 3e11; measured here, the
    # optimum sits at ~3-7k non-embedding params for 5e10..3e11 FLOPs, i.e.
    # hundreds of tokens per non-embedding parameter (embeddings are most of
    # these models). Hence: centre at 800 tokens per param, a factor 32 of
    # sizes down to d_model = 8; aspect 16, head_dim 8, ff_multiple 8 so the
    # shape rule has distinct shapes there (coarser rounding merges them); LR
    # 1e-2 (3e-3 left 250-step runs ~0.17 nats behind); batch 32 (half the
    # steps of 16: step overhead, not FLOPs, bounds these models on CPU).
    # Budgets: at 3e10 the d_model-8 model still wins; 1e12 would cost ~10M
    # tokens per budget at d_model 16, more than the whole sweep's time.
    c.root = "/tmp/maxlm_scaling_tiny"
    c.budgets = [5e10, 1e11, 3e11]
    c.n_per_budget = 5  # targets; 4 distinct shapes survive rounding at each budget
    c.n_span = 32.0  # sizes from centre/5.7 to centre*5.7
    c.tokens_per_param = 800.0
    c.shape.vocab_size = 512  # configs/pretrain.py:tiny's vocabulary
    c.shape.aspect = 16.0
    c.shape.head_dim = 8
    c.shape.ff_multiple = 8
    c.train.seq_len = 128
    c.train.global_batch = 32
    c.train.peak_lr = 1e-2
    c.launch.variant = "tiny"
    # Short runs: no mid-run checkpoints, TensorBoard, loss plot or params export;
    # one eval at the end on 8 held-out batches per domain (16k tokens each), so the
    # fit can use the held-out loss (`eval_loss`), not one noisy training batch.
    c.launch.extra_overrides = ["--config.ckpt.every=1000000", "--config.monitor.tensorboard=False",
                                "--config.train.eval_every=0", "--config.ckpt.export_params=False",
                                "--config.monitor.plot=False", "--config.data.eval_batches=8"]
  elif arg == "small":
    pass  # the defaults above
  elif arg == "grid":
    c.kind = "grid"
  else:
    raise ValueError(f"unknown scaling_sweep variant {arg!r}: tiny, small or grid")
  return c
