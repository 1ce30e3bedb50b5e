"""Writing a Hugging Face model directory all at once.

Export and vocabulary extension both produce a directory that transformers will
`from_pretrained`; a half-written one (a crash between the safetensors and the
tokenizer) would load with the wrong tokenizer or fail obscurely later. So the
files are written into a sibling temporary directory and renamed into place in
one step, and a non-empty target is refused rather than mixed into.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from typing import Iterator

# mkstemp/mkdtemp create 0600 / 0700; a model directory is meant to be shared
# (other users, a serving process), as transformers' own save_pretrained leaves it.
FILE_MODE = 0o644
DIR_MODE = 0o755


def refuse_non_empty(out_dir: str, hint: str) -> str:
  """The absolute out_dir, or FileExistsError if it exists and is not an empty directory."""
  out_dir = os.path.abspath(out_dir)
  if os.path.exists(out_dir) and (not os.path.isdir(out_dir) or os.listdir(out_dir)):
    raise FileExistsError(f"--out={out_dir} exists and is not empty; {hint}")
  return out_dir


@contextlib.contextmanager
def writing(out_dir: str) -> Iterator[str]:
  """Yields a temporary directory beside out_dir; on success it becomes out_dir.

  out_dir must be absolute and new or empty (see `refuse_non_empty`). On any
  error the temporary directory is removed and out_dir is left as it was.
  """
  parent = os.path.dirname(out_dir)
  os.makedirs(parent, exist_ok=True)
  tmp = tempfile.mkdtemp(prefix=os.path.basename(out_dir) + ".tmp-", dir=parent)
  try:
    yield tmp
    for name in os.listdir(tmp):
      os.chmod(os.path.join(tmp, name), FILE_MODE)
    os.chmod(tmp, DIR_MODE)
    if os.path.isdir(out_dir):
      os.rmdir(out_dir)  # empty: refuse_non_empty checked it
    os.rename(tmp, out_dir)
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise
