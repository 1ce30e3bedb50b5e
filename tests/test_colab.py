"""The quickstart notebook: installs maxlm from the one place its first cell names, then runs
top to bottom on CPU and trains (loss falls)."""
import os
import subprocess
import sys

import nbformat
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOK = os.path.join(ROOT, "colab", "quickstart.ipynb")


def _code_cells():
  nb = nbformat.read(NOTEBOOK, as_version=4)
  return nb, [c for c in nb.cells if c.cell_type == "code"]


def _run_install_cell(monkeypatch, tmp_path, maxlm_source, have_lock):
  """Executes the install cell with maxlm 'not installed' and pip recorded instead of run."""
  import importlib.util
  _, cells = _code_cells()
  src = cells[0].source
  assert [l for l in src.splitlines() if l.startswith("MAXLM = ")] == ['MAXLM = ".."'], \
      "one variable says where maxlm comes from"
  calls = []
  monkeypatch.setattr(subprocess, "run", lambda cmd, check: calls.append(cmd))
  real_find_spec = importlib.util.find_spec
  monkeypatch.setattr(importlib.util, "find_spec",
                      lambda name, *a: None if name == "maxlm" else real_find_spec(name, *a))
  if have_lock:
    for lock in ("constraints.txt", "constraints-py312.txt"):
      (tmp_path / lock).write_text("")
  exec(compile(src.replace('MAXLM = ".."', f"MAXLM = {maxlm_source!r}"), "cell", "exec"), {})
  return calls


def test_install_cell_installs_from_the_variable(monkeypatch, tmp_path):
  lock = "constraints-py312.txt" if sys.version_info >= (3, 12) else "constraints.txt"
  calls = _run_install_cell(monkeypatch, tmp_path, str(tmp_path), have_lock=True)
  pip = [sys.executable, "-m", "pip", "install", "-q", "-c", str(tmp_path / lock)]
  data_pin = [l for l in open(os.path.join(ROOT, "requirements-data.txt")) if l[:1].isalpha()]
  assert calls == [pip + [str(tmp_path)], pip + ["--no-deps", data_pin[0].strip()]]
  url = "git+https://example.org/maxlm.git"  # a URL has no lock beside it: no -c
  calls = _run_install_cell(monkeypatch, tmp_path / "nowhere", url, have_lock=False)
  assert calls[0] == [sys.executable, "-m", "pip", "install", "-q", url]
  assert "<" not in "".join(c.source for c in _code_cells()[1])  # no placeholder to fill in


def test_notebook_text_matches_the_tiny_run():
  nb, _ = _code_cells()
  intro = nb.cells[0].source
  assert "three domains" in intro and "two domains" not in intro
  for domain in ("Shakespeare", "standard library", "reference manual"):
    assert domain in intro


@pytest.mark.slow
def test_quickstart_notebook_executes(monkeypatch):
  from nbclient import NotebookClient
  nb, _ = _code_cells()
  # The kernel finds maxlm as a README venv would (CI's venv has it installed; a dev venv
  # relies on the path), so the install cell installs nothing into the test's venv.
  monkeypatch.setenv("PYTHONPATH", ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
  NotebookClient(nb, timeout=900, kernel_name="python3",
                 resources={"metadata": {"path": os.path.dirname(NOTEBOOK)}}).execute()
  out = "".join(o.get("text", "") for o in nb.cells[1].outputs)
  assert out.startswith("maxlm ") and os.path.samefile(out.split()[1], os.path.join(ROOT, "maxlm"))
  outputs = nb.cells[2].outputs
  summary_text = "".join(o.get("data", {}).get("text/plain", "") for o in outputs)
  assert "'final_loss'" in summary_text
  # The plot cell produced an image.
  assert any("image/png" in o.get("data", {}) for o in nb.cells[3].outputs)
  # The loss fell: compare the first and last logged losses printed by the driver.
  lines = [l for o in outputs if o.get("name") == "stdout" for l in o["text"].splitlines()
           if l.startswith("step")]
  first, last = float(lines[0].split()[3]), float(lines[-1].split()[3])
  assert last < first - 0.3, lines
