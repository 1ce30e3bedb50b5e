r"""`lm_eval` with the maxlm model registered: same flags as the lm_eval command.

  python -m maxlm.eval.harness --model maxlm --model_args pretrained=/tmp/evalrun \
      --tasks tests/lm_eval_tasks/tiny_mc.yaml --include_path tests/lm_eval_tasks

Two things are added to lm-eval's CLI: progress lines on stderr
(`--model_args ...,progress=False` quiets them) and jax's persistent
compilation cache, on by default in ~/.cache/maxlm/jax_compile
(`--compilation_cache=DIR|off`; maxlm/eval/compile_cache.py says why).
"""

import sys

from maxlm.eval import compile_cache
from maxlm.eval import lm_eval_model  # noqa: F401  (registers "maxlm")


def main() -> None:
  from lm_eval.__main__ import cli_evaluate  # pylint: disable=g-import-not-at-top
  compile_cache.from_argv(sys.argv)  # removes our flag: lm-eval's argparse would refuse it
  lm_eval_model.PROGRESS_DEFAULT = True  # a person is watching; model_args progress=False quiets
  cli_evaluate()


if __name__ == "__main__":
  main()
