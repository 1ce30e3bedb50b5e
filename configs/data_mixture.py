r"""Data configs on their own, for the tokenizer and prepare commands.

  python -m maxlm.tokenizer train --config=configs/data_mixture.py:three_domains --out=/tmp/tok.model
  python -m maxlm.data.prepare --config=configs/data_mixture.py:three_domains \
      --tokenizer=/tmp/tok.model --out=/tmp/shards

Variants: two_domains (Shakespeare prose + stdlib code), three_domains (+ the
Python reference manual as 'docs'). Your own corpus: `jsonl=GLOB[;GLOB...]`
(one JSONL source, `.gz` / `.zst` too), with `text_field=F` and `domain=D`
options, e.g. `configs/data_mixture.py:jsonl=data/*.jsonl.zst,text_field=content`.
A stage config embeds the same dict as `config.data`.
"""

from maxlm.data.config import default_data_config, use_files


def get_config(arg: str = "two_domains"):
  opts = dict(part.split("=", 1) if "=" in part else (part, "") for part in (arg or "").split(",") if part)
  if "jsonl" in opts:
    return use_files(default_data_config("two_domains"), opts["jsonl"],
                     text_field=opts.get("text_field", "text"), domain=opts.get("domain", "web"))
  return default_data_config(arg or "two_domains")
