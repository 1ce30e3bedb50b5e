"""How every `python -m maxlm.<x>` entry point ends: a bad flag, config or input file is one
line on stderr and a non-zero exit, not a page of chained tracebacks.

  from maxlm import cli
  if __name__ == "__main__":
    cli.run(main)             # instead of absl.app.run(main)

`--debug` (removed from argv before flags are parsed) or MAXLM_DEBUG=1 re-raises instead, so a
developer keeps the traceback. Exit status 2: the command line or config is wrong (nothing
ran); 1: the run failed on its input (a missing file, an unreadable record, a bad value).
"""
from __future__ import annotations

import os
import sys

# Errors that describe the user's input, each raised with a message that names it. Anything
# else is a bug and keeps its traceback.
_INPUT_ERRORS = (ValueError, OSError, KeyError)
_HINT = "(--debug or MAXLM_DEBUG=1 shows the traceback)"


class UsageError(ValueError):
  """A bad command line or config: printed as one line, exit status 2.

  Lives here, not in maxlm.train, so light entry points (the scaling fits) need no jax.
  """
  label = "error"


def one_line(e: BaseException) -> str:
  """The exception's message on one line (config_dict wraps a KeyError in an AttributeError)."""
  while e.args and isinstance(e.args[0], BaseException):
    e = e.args[0]
  msg = e.args[0] if len(e.args) == 1 and isinstance(e.args[0], str) else str(e)
  return " ".join(str(msg).split()) or type(e).__name__


def debug_requested(argv: list[str]) -> bool:
  """True if --debug is in argv (and removes it) or MAXLM_DEBUG is set to a non-empty, non-0 value."""
  found = "--debug" in argv
  while "--debug" in argv:
    argv.remove("--debug")
  return found or os.environ.get("MAXLM_DEBUG", "") not in ("", "0")


def _is_usage_error(e: BaseException) -> bool:
  return isinstance(e, UsageError)  # maxlm.train.validate.ConfigError is one


def fail(e: BaseException, code: int) -> None:
  kind = getattr(e, "label", "error") if code == 2 else f"error ({type(e).__name__})"
  print(f"{kind}: {one_line(e)}  {_HINT}", file=sys.stderr)
  sys.exit(code)


def run(main, argv: list[str] | None = None) -> None:
  """absl.app.run(main), with input errors reported in one line (see the module docstring)."""
  from absl import app  # pylint: disable=g-import-not-at-top
  argv = list(sys.argv if argv is None else argv)
  debug = debug_requested(argv)
  started = []

  def _main(args):
    started.append(True)
    # Libraries (absl, orbax, grain, Beam, jax) log at WARNING unless --verbosity is given;
    # maxlm's own INFO lines stay (maxlm/monitor/logs.py).
    from maxlm.monitor.logs import absl_verbosity, quiet_library_logs  # pylint: disable=g-import-not-at-top
    quiet_library_logs(absl_verbosity())
    return main(args)

  try:
    app.run(_main, argv=argv)
  except SystemExit:
    raise
  except Exception as e:  # pylint: disable=broad-except
    if debug:
      raise
    if not started:  # flags and the config file itself (e.g. a mistyped --config.x.y)
      if isinstance(e, AttributeError):  # config_dict's "no such field" from a locked config
        bad = [a.split("=")[0] for a in argv if a.startswith("--config.")]
        culprit = next((a for a in bad if a.split(".")[-1] in one_line(e)), ", ".join(bad))
        err = UsageError(f"{culprit}: no such config field; {one_line(e)}")
        err.label = "config error"
        fail(err, 2)
      fail(e, 2)
    if _is_usage_error(e):
      fail(e, 2)
    if isinstance(e, _INPUT_ERRORS):
      fail(e, 1)
    raise


def run_argparse(main, argv: list[str] | None = None) -> None:
  """The same for an argparse entry point: main(argv) -> exit status."""
  argv = list(sys.argv[1:] if argv is None else argv)
  debug = debug_requested(argv)
  try:
    code = main(argv)
  except SystemExit:
    raise
  except Exception as e:  # pylint: disable=broad-except
    if debug:
      raise
    if _is_usage_error(e):
      fail(e, 2)
    if isinstance(e, _INPUT_ERRORS):
      fail(e, 1)
    raise
  sys.exit(code or 0)
