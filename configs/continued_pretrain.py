r"""Continued pretraining: adapt a base model to a domain without forgetting.

  python -m maxlm.train.stages --config=configs/continued_pretrain.py:tiny,parent=/tmp/maxlm_tiny \
      --workdir=/tmp/maxlm_cpt

`parent` is a maxlm workdir or a Hugging Face Llama / Mistral / Qwen2 directory
(then the model shape, its sliding window or q/k/v biases, and its tokenizer
-- tokenizer.json or tokenizer.model, with the special ids its
tokenizer_config.json gives -- come from it). The stage logs the parent's
held-out loss at step 0, before any update.

Vocabulary extension (new domain words or chat tokens; new rows start at the
mean of the old ones, old tokens' logits unchanged): extend the parent first,
then train from the extended directory, and export the run as usual:

  python -m maxlm.interop.vocab --parent=HF_DIR --tokens=new_tokens.txt --out=EXT_DIR
  python -m maxlm.train.stages --config=configs/continued_pretrain.py:tiny,parent=EXT_DIR \
      --workdir=/tmp/maxlm_cpt
  python -m maxlm.interop.export --workdir=/tmp/maxlm_cpt --out=/tmp/maxlm_cpt_hf The recipe of Gupta et al. 2023 and
Ibrahim et al. 2024 ("Simple and Scalable Strategies to Continually Pre-train
LLMs"): params only (fresh optimizer), re-warm to a fraction of the original
peak learning rate and decay again, and replay a little general data
(90% domain / 10% replay) against forgetting. `python -m maxlm.train.stages`
then writes domain_losses.json and forgetting.png: general-domain and domain
held-out loss over the run, side by side.

`arg`: a pretrain size, `runlocal`, `parent=<dir>`, `domain=code|prose`
(which of the two tiny domains is "the domain"; the other is replayed),
`replay=<fraction>`, `lr_scale=<fraction of the parent's peak>`.
"""

from maxlm import config_files
from maxlm.checkpoint.rundir import is_hf_dir, parent_tokenizer_path


def get_config(arg: str = "tiny"):
  pretrain = config_files.pretrain(__file__)
  opts = pretrain.parse(arg)
  local = pretrain.is_local(opts)
  c = pretrain.get_config(arg)
  parent = opts.get("parent", "")

  c.init.from_checkpoint = parent
  c.init.carry = "params"  # a fresh optimizer: the new data's gradient statistics differ
  c.init.lr_from_parent = "peak"
  c.init.lr_scale = float(opts.get("lr_scale", 0.5))  # re-warm to half the original peak
  if parent and is_hf_dir(parent):
    from maxlm.interop.hf import stage_model_fields  # pylint: disable=g-import-not-at-top
    for k, v in stage_model_fields(parent).items():  # shape, RoPE, window, biases
      c.model[k] = v
    c.init.lr_from_parent = ""  # an HF dir has no schedule to read: optim.peak_lr applies
    c.optim.peak_lr = c.optim.peak_lr * c.init.lr_scale
    c.data.tokenizer.path = parent_tokenizer_path(parent)
  elif parent:
    c.data.tokenizer.path = parent_tokenizer_path(parent)

  # Re-warm then cosine decay over this stage.
  c.optim.schedule.name = "cosine"
  c.optim.schedule.warmup_steps = 5 if local else 1000
  c.train.steps = int(opts.get("steps", 60 if local else 20_000))
  c.train.eval_every = 10 if local else 1000  # the forgetting curve's resolution

  # 90/10 domain / replay.
  replay = float(opts.get("replay", 0.1))
  domain_source = {"code": "stdlib", "prose": "shakespeare"}[opts.get("domain", "code")]
  others = [n for n in c.data.sources if n != domain_source]
  for name in c.data.sources:  # the replay share split evenly over the general sources
    c.data.sources[name].weight = 1.0 - replay if name == domain_source else replay / len(others)
  c.data.schedule = ()  # a fixed mix: no pretraining anneal schedule inherited
  return c
