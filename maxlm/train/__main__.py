r"""Trains a model from a stage config.

  python -m maxlm.train --config=configs/pretrain.py:tiny --workdir=/tmp/maxlm_tiny

Override any field: --config.train.steps=500 --config.mesh.fsdp=-1 ...
Run it again with the same workdir to resume from the newest checkpoint.
The logic lives in maxlm.run.pretrain (the composition root) so notebooks can
call it directly; this entry point sits above the library like maxlm.run.
"""

from maxlm.run import cli
from maxlm.run.pretrain import train

if __name__ == "__main__":
  cli.run(train, "maxlm.train")
