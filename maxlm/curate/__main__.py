"""Curate raw text into training shards with Apache Beam (logic in maxlm.curate.pipeline).

  python -m maxlm.curate --config=configs/curate.py:default --input='raw/*.jsonl.gz' \
      --output=curated/ [--overwrite] [--runner=DataflowRunner --project=... --region=... --temp_location=gs://...]
  python -m maxlm.curate ... --shards_out=shards/ --tokenizer=tok.model   # + tokenize-once shards
                                                                          # (maxlm.curate.to_shards)
  python -m maxlm.curate train-classifier --positive=GLOB --negative=GLOB --output=quality.npz
  python -m maxlm.curate sample --out=raw      # a small raw corpus to try it on (maxlm.curate.sample)

Flags the curate command does not know are Beam pipeline options. The
train-classifier subcommand is maxlm.curate.train_classifier (its docstring
lists its flags).
"""

import logging
import os
import sys

from absl import flags
from ml_collections import config_flags


def _curate(argv):
  from maxlm.curate import pipeline
  config = config_flags.DEFINE_config_file("config", None, "configs/curate.py:<variant>", lock_config=True)
  inputs = flags.DEFINE_string("input", None, "comma-separated globs of input files")
  output = flags.DEFINE_string("output", None, "output directory (empty, or holding this same run)")
  overwrite = flags.DEFINE_bool("overwrite", False, "replace another curation run's outputs in --output")
  shards_out = flags.DEFINE_string("shards_out", None, "also write tokenize-once shards here, in the "
                                   "same pipeline (a data.prepared_dir; needs --tokenizer)")
  tokenizer = flags.DEFINE_string("tokenizer", None, "SentencePiece .model for --shards_out")
  shard_tokens = flags.DEFINE_integer("shard_tokens", 16_000_000, "target tokens per shard")
  heldout = flags.DEFINE_float("heldout_fraction", None, "held-out share of the shards "
                               "(default: maxlm.data's)")
  progress = flags.DEFINE_bool("progress", True, "progress lines on stderr: records read / total, "
                               "rate, ETA (local runner)")
  beam_args = flags.FLAGS(argv, known_only=True)[1:]
  if not inputs.value or not output.value or config.value is None:
    sys.exit("usage: python -m maxlm.curate --config=configs/curate.py:<variant> --input=GLOB --output=DIR")
  if bool(shards_out.value) != bool(tokenizer.value):
    sys.exit("--shards_out and --tokenizer go together (the shards are tokenized with it)")
  shards = None
  if shards_out.value:
    shards = dict(out=shards_out.value, tokenizer=tokenizer.value, shard_tokens=shard_tokens.value)
    if heldout.value is not None:
      shards["heldout_fraction"] = heldout.value
  logging.basicConfig(level=logging.INFO)
  # Beam logs every stage at INFO: keep maxlm's lines and the summary (--verbosity=0: all).
  from maxlm.monitor.logs import absl_verbosity, quiet_library_logs
  quiet_library_logs(absl_verbosity())
  try:
    summary = pipeline.run(config.value, inputs.value.split(","), output.value, beam_args,
                           overwrite=overwrite.value, progress=progress.value,
                           shards=shards)
  except FileExistsError as e:
    sys.exit(str(e))
  if shards:
    print(f"shards: {os.path.join(shards_out.value, 'manifest.json')} (data.prepared_dir="
          f"{shards_out.value})")
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
