r"""`lm_eval` with the maxlm model registered: same flags as the lm_eval command.

  python -m maxlm.eval.harness --model maxlm --model_args pretrained=/tmp/evalrun \
      --tasks tests/lm_eval_tasks/tiny_mc.yaml --include_path tests/lm_eval_tasks
"""

from maxlm.eval import lm_eval_model  # noqa: F401  (registers "maxlm")


def main() -> None:
  from lm_eval.__main__ import cli_evaluate  # pylint: disable=g-import-not-at-top
  lm_eval_model.PROGRESS_DEFAULT = True  # a person is watching; model_args progress=False quiets
  cli_evaluate()


if __name__ == "__main__":
  main()
