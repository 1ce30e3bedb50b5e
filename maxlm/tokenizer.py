r"""Trains a SentencePiece tokenizer on the configured sources and reports it.

  python -m maxlm.tokenizer train --config=configs/pretrain.py:tiny --out=/tmp/tok.model
  python -m maxlm.tokenizer train --config=configs/data_mixture.py:three_domains \
      --out=/tmp/tok.model --config.tokenizer.vocab_size=2048
  python -m maxlm.tokenizer report --config=configs/data_mixture.py:three_domains \
      --model=/tmp/tok.model

--config is a stage config (its `data` sub-config is used) or a data config.
`train` prints the per-domain compression table (characters and bytes per
token on held-out text) after training; `report` prints it for any model.
The logic lives in maxlm.data.tokenizer.
"""

import os

from absl import app, flags
from ml_collections import config_flags

from maxlm.data import tokenizer as tokenizer_lib

_CONFIG = config_flags.DEFINE_config_file("config", None, "Stage or data config file[:arg].",
                                          lock_config=True)
_OUT = flags.DEFINE_string("out", None, "train: where to write the .model (a .json goes beside it).")
_FORCE = flags.DEFINE_bool("force", False, "train: overwrite an existing model.")
_MODEL = flags.DEFINE_string("model", None, "report: the .model to report on.")
flags.mark_flags_as_required(["config"])


def main(argv):
  if len(argv) != 2 or argv[1] not in ("train", "report"):
    raise app.UsageError("usage: python -m maxlm.tokenizer {train|report} --config=...")
  cfg = _CONFIG.value
  data_config = cfg.data if "data" in cfg else cfg
  if argv[1] == "train":
    if not _OUT.value:
      raise app.UsageError("train needs --out=PATH.model")
    if os.path.exists(_OUT.value) and not _FORCE.value:
      raise app.UsageError(f"{_OUT.value} exists; pass --force to retrain")
    path = tokenizer_lib.train_from_config(data_config, _OUT.value)
    print(f"wrote {path} (vocab {tokenizer_lib.load(path).vocab_size}, "
          f"sha256 {tokenizer_lib.tokenizer_hash(path)[:16]})")
  else:
    if not _MODEL.value:
      raise app.UsageError("report needs --model=PATH.model")
    path = _MODEL.value
  print(tokenizer_lib.format_compression(tokenizer_lib.compression_report(data_config, path)))


if __name__ == "__main__":
  from maxlm import cli  # pylint: disable=g-import-not-at-top
  cli.run(main)  # one-line input errors, quiet library logs
