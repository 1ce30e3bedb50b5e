"""Curate raw text into training shards with Apache Beam (logic in maxlm.curate.pipeline).

  python -m maxlm.curate --config=configs/curate.py:default --input='raw/*.jsonl.gz' \
      --output=curated/ [--overwrite] [--runner=DataflowRunner --project=... --region=... --temp_location=gs://...]
  python -m maxlm.curate train-classifier --positive=GLOB --negative=GLOB --output=quality.npz
  python -m maxlm.curate sample --out=raw      # a small raw corpus to try it on (maxlm.curate.sample)

Flags the curate command does not know are Beam pipeline options. The
train-classifier subcommand is maxlm.curate.train_classifier (its docstring
lists its flags).
"""

import logging
import sys

from absl import flags
from ml_collections import config_flags


def _curate(argv):
  from maxlm.curate import pipeline
  config = config_flags.DEFINE_config_file("config", None, "configs/curate.py:<variant>", lock_config=True)
  inputs = flags.DEFINE_string("input", None, "comma-separated globs of input files")
  output = flags.DEFINE_string("output", None, "output directory (empty, or holding this same run)")
  overwrite = flags.DEFINE_bool("overwrite", False, "replace another curation run's outputs in --output")
  progress = flags.DEFINE_bool("progress", True, "progress lines on stderr: records read / total, "
                               "rate, ETA (local runner)")
  beam_args = flags.FLAGS(argv, known_only=True)[1:]
  if not inputs.value or not output.value or config.value is None:
    sys.exit("usage: python -m maxlm.curate --config=configs/curate.py:<variant> --input=GLOB --output=DIR")
  logging.basicConfig(level=logging.INFO)
  # Beam logs every stage at INFO: keep maxlm's lines and the summary (--verbosity=0: all).
  from maxlm.monitor.logs import absl_verbosity, quiet_library_logs
  quiet_library_logs(absl_verbosity())
  try:
    summary = pipeline.run(config.value, inputs.value.split(","), output.value, beam_args,
                           overwrite=overwrite.value, progress=progress.value)
  except FileExistsError as e:
    sys.exit(str(e))
  for s in summary["stages"]:
    print(f"{s['stage']:>18}: {s['docs_in']:>9} -> {s['docs_out']:>9}  {s['removed']}")


def main(argv):
  if len(argv) > 1 and argv[1] == "sample":
    from maxlm.curate import sample  # argparse, no absl flags: nothing to clash with
    sample.main(argv[2:])
  elif len(argv) > 1 and argv[1] == "train-classifier":
    # Imported here: its flags (--output, ...) must not be defined for the curate command.
    from maxlm.curate import train_classifier
    from maxlm import cli
    cli.run(train_classifier.main, argv=[argv[0]] + argv[2:])
  else:
    _curate(argv)


if __name__ == "__main__":
  main(sys.argv)
