"""Entry point: `python -m maxlm.scaling {sweep,run,collect,fit} ...` (see maxlm/scaling/cli.py)."""
import sys

from maxlm.scaling.cli import main

sys.exit(main())
