"""Entry point: `python -m maxlm.scaling {sweep,run,collect,fit} ...` (see maxlm/scaling/cli.py)."""
import sys

from maxlm import cli
from maxlm.scaling.cli import main

cli.run_argparse(main)
