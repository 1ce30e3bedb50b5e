r"""Trains a model from a stage config.

  python -m maxlm.train --config=configs/pretrain.py:tiny --workdir=/tmp/maxlm_tiny

Override any field: --config.train.steps=500 --config.mesh.fsdp=-1 ...
Run it again with the same workdir to resume from the newest checkpoint.
The logic lives in maxlm.train.driver so notebooks can call it directly.
"""

import logging

from absl import app, flags
from absl import logging as absl_logging
from ml_collections import config_flags

from maxlm import cli
from maxlm.train.driver import train

_CONFIG = config_flags.DEFINE_config_file("config", None, "Stage config file[:arg].",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory: checkpoints, metrics, plots.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  del argv
  # orbax and grain log every save at INFO through absl; keep maxlm's own lines.
  absl_logging.set_verbosity(absl_logging.WARNING)
  logging.getLogger("maxlm").setLevel(logging.INFO)
  train(_CONFIG.value, _WORKDIR.value)


if __name__ == "__main__":
  cli.run(main)
