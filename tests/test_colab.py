"""The quickstart notebook runs top to bottom on CPU and trains (loss falls)."""
import os

import nbformat
import pytest
from nbclient import NotebookClient

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.slow
def test_quickstart_notebook_executes():
  nb = nbformat.read(os.path.join(ROOT, "colab", "quickstart.ipynb"), as_version=4)
  NotebookClient(nb, timeout=900, kernel_name="python3",
                 resources={"metadata": {"path": ROOT}}).execute()
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
