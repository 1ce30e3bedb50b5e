"""Library log levels at the command line.

absl, orbax, grain, Apache Beam and jax log at INFO by default: every save,
every Beam stage, every compile. An entry point calls
`quiet_library_logs(verbosity)` once: with verbosity None (the flag not
given) libraries log warnings and errors only, and maxlm's own INFO lines
stay; `--verbosity=0` brings the libraries' INFO back, 1 or more DEBUG.
absl apps already have `--verbosity` (absl's own flag): pass
`absl_verbosity()`; argparse entry points add `add_verbosity_flag(parser)`.
"""

from __future__ import annotations

import logging

LIBRARIES = ("absl", "orbax", "grain", "apache_beam", "jax", "tensorstore", "etils",
             "urllib3", "datasets", "transformers", "fsspec", "filelock")


def quiet_library_logs(verbosity: int | None = None) -> None:
  """WARNING for libraries unless `verbosity` is given (0 = INFO, >= 1 = DEBUG); maxlm at INFO."""
  level = logging.WARNING if verbosity is None else (
      logging.INFO if verbosity <= 0 else logging.DEBUG)
  for name in LIBRARIES:
    logging.getLogger(name).setLevel(level)
  try:
    from absl import logging as absl_logging  # pylint: disable=g-import-not-at-top
  except ImportError:
    pass
  else:
    absl_logging.set_verbosity(absl_logging.WARNING if verbosity is None else
                               absl_logging.INFO if verbosity <= 0 else absl_logging.DEBUG)
  logging.getLogger("maxlm").setLevel(logging.DEBUG if (verbosity or 0) >= 1 else logging.INFO)


def absl_verbosity() -> int | None:
  """absl's --verbosity when given on the command line, else None (call inside app.run)."""
  from absl import flags  # pylint: disable=g-import-not-at-top
  flag = flags.FLAGS["verbosity"]
  return int(flag.value) if flag.present else None


def add_verbosity_flag(parser) -> None:
  """--verbosity for an argparse entry point (same meaning as absl's)."""
  parser.add_argument("--verbosity", "-v", type=int, default=None,
                      help="library log level: unset = warnings only, 0 = INFO, 1 = DEBUG")
