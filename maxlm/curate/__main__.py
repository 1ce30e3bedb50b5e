"""Curate raw text into training shards with Apache Beam (logic in maxlm.curate.pipeline).

  python -m maxlm.curate --config=configs/curate.py:default --input='raw/*.jsonl.gz' \
      --output=curated/ [--runner=DataflowRunner --project=... --region=... --temp_location=gs://...]

Flags this command does not know are Beam pipeline options.
"""

import logging
import sys

from absl import flags
from ml_collections import config_flags

from maxlm.curate import pipeline

_CONFIG = config_flags.DEFINE_config_file("config", None, "configs/curate.py:<variant>", lock_config=True)
_INPUT = flags.DEFINE_string("input", None, "comma-separated globs of input files")
_OUTPUT = flags.DEFINE_string("output", None, "output directory")


def main(argv):
  beam_args = flags.FLAGS(argv, known_only=True)[1:]
  if not _INPUT.value or not _OUTPUT.value or _CONFIG.value is None:
    sys.exit("usage: python -m maxlm.curate --config=configs/curate.py:<variant> --input=GLOB --output=DIR")
  logging.basicConfig(level=logging.INFO)
  summary = pipeline.run(_CONFIG.value, _INPUT.value.split(","), _OUTPUT.value, beam_args)
  for s in summary["stages"]:
    print(f"{s['stage']:>18}: {s['docs_in']:>9} -> {s['docs_out']:>9}  {s['removed']}")


if __name__ == "__main__":
  main(sys.argv)
