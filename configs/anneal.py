r"""Annealing: the learning rate from the parent's current value down to zero,
while the data mixture moves to the high-quality sources.

  python -m maxlm.train.stages --config=configs/anneal.py:tiny,parent=/tmp/maxlm_tiny \
      --workdir=/tmp/maxlm_anneal

(`python -m maxlm.train` runs the same stage; `maxlm.train.stages` also writes
domain_losses.json: per-domain held-out loss of the parent and of the result.)

Llama 3 annealed on a high-quality mix over its last 40M tokens with the LR
going linearly to 0 (Dubey et al. 2024, section 3.1.3); MiniCPM's WSD decay
(Hu et al. 2024) is the same idea. `arg`: a pretrain size (tiny | 10m | ...),
`runlocal`, `parent=<workdir>`, `shape=linear|1-sqrt|cosine` (decay shape),
`steps=<n>`, `instruct=<glob>` (instruction / QA records mixed into the anneal
mix, loss on responses only: see below), `instruct_weight=<token share>` (default
0.1). The parent's optimizer moments are carried (carry='full'), its
rate is read from its config (init.lr_from_parent='final'). A Hugging Face
parent (Llama / Mistral / Qwen2 directory) gives the model shape and tokenizer;
it has no optimizer state, so only its params are carried and the decay starts
from optim.peak_lr.

Instruction data in the anneal mix (mid-training mixes carry instruction and QA data, e.g.
OLMo 2's Dolmino mix: FLAN, math QA), e.g. from an HF parent with a chat template:

  python -m maxlm.train.stages \
      --config=configs/anneal.py:tiny,parent=HF_DIR,instruct=/data/sft/*.jsonl,instruct_weight=0.1 \
      --workdir=/tmp/maxlm_anneal

Each JSONL line is {"messages": [{"role": ..., "content": ...}, ...]} (rendered with the
parent tokenizer's chat template; a maxlm parent's own tokenizer has none) or
{"prompt": ..., "response": ...} (no template needed);
the loss falls on the assistant / response tokens only (maxlm/data/instruct.py). The source
`instruct` (domain 'instruct') is off at the start, like the high-quality source, and ramps
to its share with the rest of the anneal mix.
"""

from maxlm import config_files
from maxlm.data import config as data_config
from maxlm.checkpoint.rundir import is_hf_dir, parent_tokenizer_path


def get_config(arg: str = "tiny"):
  pretrain = config_files.pretrain(__file__)
  opts = pretrain.parse(arg)
  local = pretrain.is_local(opts)
  c = pretrain.get_config(arg)

  c.init.from_checkpoint = opts.get("parent", "")
  c.init.carry = "full"  # keep Adam's moments: no fresh-optimizer transient at a high LR
  c.init.lr_from_parent = "final"  # start where the parent's schedule stopped
  if c.init.from_checkpoint:
    c.data.tokenizer.path = parent_tokenizer_path(c.init.from_checkpoint)
  if c.init.from_checkpoint and is_hf_dir(c.init.from_checkpoint):
    # An HF parent: its shape and family (maxlm.interop.hf); no optimizer or schedule
    # to carry, so params only, decaying from optim.peak_lr (set it to the parent's rate).
    from maxlm.interop.hf import stage_model_fields  # pylint: disable=g-import-not-at-top
    for k, v in stage_model_fields(c.init.from_checkpoint).items():
      c.model[k] = v
    c.init.carry, c.init.lr_from_parent = "params", ""

  # WSD's decay phase on its own: no warmup, no stable part, decay over the whole stage.
  c.optim.schedule.name = "wsd"
  c.optim.schedule.warmup_steps = 0
  c.optim.schedule.decay_fraction = 1.0
  c.optim.schedule.min_lr_ratio = 0.0  # to zero
  c.optim.schedule.decay_shape = opts.get("shape", "linear")  # linear (Llama 3) | 1-sqrt (WSD)
  c.train.steps = int(opts.get("steps", 40 if local else 10_000))  # ~10% of the pretraining steps
  c.train.eval_every = 0

  # High-quality source: the Python reference manual ('docs'), curated prose
  # about code. The mix ramps from the parent's to the anneal mix over the
  # first quarter of the stage (a data.schedule stage, resumable exactly).
  if "pydocs" not in c.data.sources:  # the two-domain data config lacks it
    c.data.sources.pydocs = c.data.sources.shakespeare.copy_and_resolve_references()
    c.data.sources.pydocs.kind = "python_docs"
    c.data.sources.pydocs.domain = "docs"
    c.data.sources.pydocs.weight = 0.0  # absent at the start, like in the parent
    c.data.sources.pydocs.max_doc_chars = 8_000
  weights = dict(pydocs=0.6, shakespeare=0.2, stdlib=0.2)
  if opts.get("instruct"):
    share = float(opts.get("instruct_weight", 0.1))
    c.data.sources.instruct = data_config.source(kind="instruct", domain="instruct", weight=0.0,
                                                 paths=(opts["instruct"],))
    weights = {k: round(v * (1 - share), 6) for k, v in weights.items()}
    weights["instruct"] = share
  c.data.schedule = (dict(start=max(1, c.train.steps // 4), transition="linear",
                          weights=weights),)
  return c
