r"""Data configs on their own, for the tokenizer and prepare commands.

  python -m maxlm.tokenizer train --config=configs/data_mixture.py:three_domains --out=/tmp/tok.model
  python -m maxlm.data.prepare --config=configs/data_mixture.py:three_domains \
      --tokenizer=/tmp/tok.model --out=/tmp/shards

Variants: two_domains (Shakespeare prose + stdlib code), three_domains (+ the
Python reference manual as 'docs'). A stage config embeds the same dict as
`config.data`.
"""

from maxlm.data.config import default_data_config


def get_config(arg: str = "two_domains"):
  return default_data_config(arg or "two_domains")
