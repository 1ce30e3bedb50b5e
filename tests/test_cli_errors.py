"""Entry points name bad columns and empty inputs in one line (issue 17 item 8)."""
import csv
import os
import subprocess
import sys

import pytest

from maxlm import cli
from maxlm.scaling import cli as scaling_cli

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COLUMNS = ["n_non_embedding", "tokens", "eval_loss", "budget"]


def _csv(path, rows, columns=COLUMNS):
  with open(path, "w", newline="") as f:
    w = csv.writer(f)
    w.writerow(columns)
    w.writerows(rows)
  return str(path)


def _points(k):
  # Any finite, positive values: these tests stop before a fit would run.
  return [[1e4 * (i + 1), 2e5 * (i + 1), 4.0 - 0.1 * i, 1e11] for i in range(k)]


def test_missing_loss_column_lists_the_csv_columns(tmp_path):
  """The default --loss-col (final_loss) absent: it used to fit 0 points and exit 0."""
  path = _csv(tmp_path / "r.csv", _points(8))
  with pytest.raises(cli.UsageError) as e:
    scaling_cli.main(["fit", path])
  assert str(e.value) == (f"{path}: no column 'final_loss'; the CSV has n_non_embedding, tokens,"
                          " eval_loss, budget (choose with --n-col/--d-col/--c-col/--loss-col/...)")


def test_missing_n_column_is_named_not_a_keyerror(tmp_path):
  path = _csv(tmp_path / "r.csv", _points(8), ["params", "tokens", "eval_loss", "budget"])
  with pytest.raises(cli.UsageError, match="no column 'n_non_embedding'; the CSV has params,"):
    scaling_cli.main(["fit", path, "--loss-col=eval_loss"])


@pytest.mark.parametrize("method,n_params", [("approach3", 5), ("kaplan", 2), ("approach2", 3)])
def test_fewer_points_than_parameters(tmp_path, method, n_params):
  path = _csv(tmp_path / "r.csv", _points(n_params - 1) + [[1e4, 1e5, "", 1e11]])  # + unfinished
  with pytest.raises(cli.UsageError, match=f"{n_params - 1} run\\(s\\) with a loss, but {method}"
                                           f" has {n_params} parameters"):
    scaling_cli.main(["fit", path, "--loss-col=eval_loss", f"--method={method}"])


def test_a_non_number_names_file_line_and_column(tmp_path):
  rows = _points(6)
  rows[3][1] = "12k"
  path = _csv(tmp_path / "r.csv", rows)
  with pytest.raises(cli.UsageError, match=f"^{path}:5: column 'tokens' is '12k', not a number$"):
    scaling_cli.main(["fit", path, "--loss-col=eval_loss"])


def test_the_command_prints_one_line_and_exits_2(tmp_path):
  path = _csv(tmp_path / "r.csv", _points(8))
  r = subprocess.run([sys.executable, "-m", "maxlm.scaling", "fit", path], cwd=ROOT,
                     capture_output=True, text=True, timeout=1800)
  assert r.returncode == 2 and r.stdout == ""
  lines = r.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith(f"error: {path}: no column 'final_loss'")
  r = subprocess.run([sys.executable, "-m", "maxlm.scaling", "fit", path, "--debug"], cwd=ROOT,
                     capture_output=True, text=True, timeout=1800)
  assert r.returncode == 1 and "Traceback" in r.stderr


def test_one_line_unwraps_config_dict_errors():
  wrapped = AttributeError(KeyError("'stpes'\nDid you mean \"steps\" instead of \"stpes\"?"))
  assert cli.one_line(wrapped) == "'stpes' Did you mean \"steps\" instead of \"stpes\"?"
  assert cli.one_line(ValueError("a\n  b")) == "a b"
