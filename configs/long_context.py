r"""Long-context extension: RoPE scaling and a progressive length schedule.

  python -m maxlm.train.stages --config=configs/long_context.py:tiny,parent=/tmp/maxlm_tiny \
      --workdir=/tmp/maxlm_long
  python -m maxlm.eval.needle --checkpoint=/tmp/maxlm_long/len_512 --lengths=128,256,512

Each entry of `length_schedule` is a sub-stage in its own sub-workdir
(<workdir>/len_<seq_len>) started from the previous one (maxlm.train.stages.
run_stages): sequence length grows, global_batch = train.tokens_per_step /
seq_len keeps the tokens per step constant (Llama 3.1 grew 8K -> 128K in six
steps, Qwen2 4K -> 32K). The data mix upweights long documents: a second
view of the prose with min_doc_chars set is ramped in by data.schedule.

`arg`: a pretrain size, `runlocal`, `parent=<workdir, or an HF Llama / Mistral
/ Qwen2 directory>`, `orig=<the parent's seq_len>`,
`rope=yarn|llama3|linear|dynamic|theta` (theta = default RoPE with a larger
base, "ABF", Xiong et al. 2023), `lengths=256/512` (slash-separated),
`steps=<per sub-stage>`, `context=<n>` (mesh.context: the sequence is split
over n devices with ring attention; default 4 off runlocal, 1 on it).

Context parallelism (maxlm/model/context_parallel.py): at 32K the activations
of one row dominate the step; a 4-way context axis splits them (and, with the
rules of `context_rules`, the weights, gradients and optimizer state ZeRO-style
over the same devices, the vocabulary table by vocab), so the compiled step's
temporary memory falls to 0.31 of one device's at 32K (5.69 of 18.20 GiB for
`1b`, the Pallas kernel running per ring block; issue 15's target is 1/3:
BENCHMARKS.md, bench/context_memory.py). Needs a device count divisible by
`context`; set context=1 on fewer devices.

Memory: `1b` at 32K uses remat='full' and the Pallas attention kernel; what
fits on one 80 GB GPU is to be measured and written in BENCHMARKS.md (not yet
measured: no GPU was lent to the session that wrote this).
"""

from maxlm import config_files
from maxlm.checkpoint.rundir import is_hf_dir, parent_tokenizer_path


def rope_scaling(kind: str, factor: float, original: int, theta: float):
  """(rope_theta, rope_scaling) for a context `factor` times `original` (HF's definitions)."""
  target = int(original * factor)
  if kind == "theta":
    return theta * factor ** 2, None  # a crude ABF rule: base grows with the square of the factor
  if kind == "linear":
    return theta, dict(rope_type="linear", factor=factor)
  if kind == "dynamic":
    return theta, dict(rope_type="dynamic", factor=factor, max_position_embeddings=original)
  if kind == "yarn":
    return theta, dict(rope_type="yarn", factor=factor, original_max_position_embeddings=original,
                       max_position_embeddings=target)
  if kind == "llama3":
    return theta, dict(rope_type="llama3", factor=factor, low_freq_factor=1.0,
                       high_freq_factor=4.0, original_max_position_embeddings=original)
  raise ValueError(f"configs/long_context.py: rope={kind!r}; one of theta, linear, dynamic, yarn,"
                   " llama3")


def context_rules(rules, table: str = "vocab"):
  """The pretrain `rules` for a context-parallel mesh (issue 15).

  The sequence is over `context` devices; the weights' 'embed' dim over fsdp x
  context, so the context devices also share the params, grads and moments
  (ZeRO-3), as MaxText and torchtitan (FSDP over dp_shard x cp) do.

  table='vocab' (the stage's): the vocabulary table (and a tied head's logits)
  is split by 'vocab' over tensor x context instead, its 'embed' over fsdp only.
  Flax assigns mesh axes in rule order, each mesh axis once per array, so the
  'vocab' rule comes first: it takes `context` from 'embed' on the table and
  from 'length' on the loss's logits chunks. The lookup is then a masked local
  gather + all-reduce of the [T, D] activations, the head a Megatron
  vocab-parallel one, and the table's gradient is formed on its own shard: no
  whole f32 copy of the 128K x D table is gathered or all-reduced (the largest
  terms of the step at 32K before, BENCHMARKS.md). table='embed': the table
  split like every weight, by 'embed' over fsdp x context (the earlier rules,
  kept for bench/context_memory.py's comparison row).
  """
  if table not in ("vocab", "embed"):
    raise ValueError(f"configs/long_context.py: table={table!r}; one of vocab, embed")
  rules = tuple((name, tuple(axes) if isinstance(axes, list) else axes) for name, axes in rules)
  out = tuple((name, ("fsdp", "context")) if name == "embed" else (name, axes)
              for name, axes in rules if table == "embed" or name != "vocab")
  if table == "embed":
    return out
  vocab = [axes for name, axes in rules if name == "vocab"]
  vocab_axes = vocab[0] if vocab else None
  vocab_axes = (() if vocab_axes is None else
                (vocab_axes,) if isinstance(vocab_axes, str) else tuple(vocab_axes))
  # 'embed' = fsdp last: the fallback for the table, whose 'context' 'vocab' took.
  return (("vocab", vocab_axes + ("context",)),) + out + (("embed", "fsdp"),)


def get_config(arg: str = "tiny"):
  pretrain = config_files.pretrain(__file__)
  opts = pretrain.parse(arg)
  local = pretrain.is_local(opts)
  c = pretrain.get_config(arg)
  parent = opts.get("parent", "")
  original = int(opts.get("orig", c.data.seq_len))
  default_lengths = "256/512" if local else "8192/16384/32768"
  lengths = [int(x) for x in opts.get("lengths", default_lengths).split("/")]
  steps = int(opts.get("steps", 20 if local else 2000))

  c.init.from_checkpoint = parent
  c.init.carry = "params"
  c.init.lr_from_parent = "peak"  # constant at a fraction of the parent's peak
  c.init.lr_scale = 0.3
  if parent:
    c.data.tokenizer.path = parent_tokenizer_path(parent)
  if parent and is_hf_dir(parent):
    # An HF parent: its shape, RoPE base and family (maxlm.interop.hf), before the
    # scaling below is computed from its theta; no schedule to read: optim.peak_lr scaled.
    from maxlm.interop.hf import stage_model_fields  # pylint: disable=g-import-not-at-top
    for k, v in stage_model_fields(parent).items():
      c.model[k] = v
    c.init.lr_from_parent = ""
    c.optim.peak_lr = c.optim.peak_lr * c.init.lr_scale

  theta, scaling = rope_scaling(opts.get("rope", "yarn"), lengths[-1] / original, original,
                                c.model.rope_theta)
  c.model.rope_theta = theta
  c.model.rope_scaling = scaling
  c.mesh.context = int(opts.get("context", 1 if local else 4))
  c.mesh.rules = context_rules(c.mesh.rules)
  if not local:
    c.model.remat = "full"  # activations of a 32K row do not fit otherwise
    c.model.attention_impl = "pallas"  # no [T, S] score matrix in memory

  c.optim.schedule.name = "constant"
  c.optim.schedule.warmup_steps = 2 if local else 200
  # Tokens per optimizer step, kept constant across sub-stages.
  c.train.tokens_per_step = c.train.global_batch * c.data.seq_len
  c.length_schedule = tuple(dict(seq_len=n, steps=steps) for n in lengths)
  c.data.seq_len = lengths[0]
  c.train.global_batch = c.train.tokens_per_step // lengths[0]
  c.train.steps = steps
  c.train.eval_every = 0

  # Long documents upweighted: prose documents of >= 4 rows' worth of
  # characters (~4 chars per token) ramp to half the mix.
  c.data.sources.long_prose = c.data.sources.shakespeare.copy_and_resolve_references()
  c.data.sources.long_prose.max_doc_chars = 0  # whole plays: the long documents
  c.data.sources.long_prose.min_doc_chars = 4 * 4 * lengths[0]
  c.data.sources.long_prose.weight = 0.0
  c.data.schedule = (dict(start=max(1, steps // 2), transition="linear",
                          weights=dict(long_prose=0.5, shakespeare=0.2, stdlib=0.3)),)
  return c
