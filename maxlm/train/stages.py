r"""Moved: stage chaining lives in `maxlm.train.lineage` (parent, manifest), the stage
report in `maxlm.eval.stage_report`, and the stage command in `maxlm.run.stages`.

Kept so `maxlm.train.stages.<name>` and

  python -m maxlm.train.stages --config=configs/long_context.py:tiny,parent=/tmp/pre \
      --workdir=/tmp/long

keep working. Names resolve lazily, so importing this module imports no jax
and nothing above maxlm.train. Not part of the library: nothing in maxlm imports it.
"""

import importlib

_MODULES = ("maxlm.run.stages", "maxlm.train.lineage", "maxlm.eval.stage_report")


def __getattr__(name):
  if name == "parent_tokenizer_path" or name == "is_hf_dir":
    return getattr(importlib.import_module("maxlm.checkpoint.rundir"), name)
  for m in _MODULES:
    mod = importlib.import_module(m)
    if hasattr(mod, name):
      return getattr(mod, name)
  raise AttributeError(f"module 'maxlm.train.stages' has no attribute {name!r}")


if __name__ == "__main__":
  from maxlm.run import cli, stages  # pylint: disable=g-import-not-at-top
  cli.run(stages.run_stage, "maxlm.train.stages")
