"""Every command block of README.md and docs/*.md runs as written and leaves what it promises.

The blocks and their `<!-- readme-test: ... -->` markers are read by tests/readme_commands.py
(the same parser .ci/run uses for the install and test commands). The slow test copies the
repository into a temporary directory, as a fresh clone, and runs every block there (tiny
sizes where a marker substitutes them), later blocks reading earlier blocks' outputs, two at a
time where they share no output; each must exit 0 and leave its `expect=` files. A command
that drifts from the code (a renamed flag, a missing file, a placeholder) fails it.

  python tests/readme_commands.py run [DIR]     # the same run outside pytest, block by block
"""
import os
import re
import time

import pytest

import readme_commands as rc


def _write(path, text):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, "w", encoding="utf-8") as f:
    f.write(text)


def test_markers_are_well_formed_and_skips_few():
  blocks = rc.all_blocks()
  assert [b.ci for b in blocks if b.ci] == ["install", "test"]
  skipped = [b for b in blocks if b.skip]
  # Few and honest: each skip says why, and nothing else may hide behind one.
  assert len(skipped) <= 5, [b.where for b in skipped]
  for b in skipped:
    assert len(b.skip) >= 15, f"{b.where}: skip reason too short: {b.skip!r}"
  for b in blocks:
    if b.skip:
      continue
    cmd = b.test_command("/run")  # raises on a substitution that no longer applies
    # A placeholder (`<task>`, `<dir>`) is shell redirection at best: never a runnable command.
    assert not re.search(r"<[A-Za-z_][\w -]*>", cmd), f"{b.where}: placeholder in {cmd!r}"
    for p in b.expect:
      assert not os.path.isabs(p), f"{b.where}: expect paths are relative to the run directory"


def test_unlabelled_fence_and_stale_substitution_are_errors(tmp_path):
  _write(str(tmp_path / "README.md"), "```\npython -m maxlm.train\n```\n")
  with pytest.raises(ValueError, match=r"README.md:1: code fence without a language"):
    rc.all_blocks(str(tmp_path))
  _write(str(tmp_path / "README.md"), '<!-- readme-test: sub="steps=200=>steps=2" -->\n'
         "```bash\npython -m maxlm.train --config.train.steps=100\n```\n")
  (block,) = rc.all_blocks(str(tmp_path))
  with pytest.raises(ValueError, match=r"README.md:2: sub 'steps=200' does not occur"):
    block.test_command(str(tmp_path))
  _write(str(tmp_path / "README.md"), '<!-- readme-test: skip="x" -->\n```python\nimport maxlm\n```\n')
  with pytest.raises(ValueError, match="directive above a 'python' block"):
    rc.all_blocks(str(tmp_path))


def test_runner_fails_a_drifting_document(tmp_path):
  """The runner itself: exit status, promised files, dependencies, set-up steps, /tmp paths."""
  repo = tmp_path / "repo"
  _write(str(repo / "README.md"), """
<!-- readme-test: expect=runs/a/out.txt -->
```bash
python3 -m venv .venv && . .venv/bin/activate && pip install -e . && mkdir -p runs/a && echo hi > runs/a/out.txt
```
<!-- readme-test: expect=runs/b/never.txt -->
```bash
mkdir -p runs/b && touch runs/b/other.txt
```
```bash
cat runs/a/out.txt > runs/c.txt && exit 3
```
```bash
cat runs/c.txt
```
<!-- readme-test: sub="steps=200=>steps=2" expect=tmp/x/steps.txt -->
```bash
mkdir -p /tmp/x && echo steps=200 > /tmp/x/steps.txt
```
""")
  _write(str(repo / "docs" / "guide.md"), '<!-- readme-test: skip="needs a cluster of its own" -->\n'
         "```bash\nexit 1\n```\n")
  run_dir = rc.copy_repo(str(tmp_path / "run"), str(repo))
  blocks = rc.all_blocks(run_dir)
  # Blocks naming the same output wait for each other; the others may run side by side.
  assert rc.schedule(blocks, run_dir) == {0: set(), 1: set(), 2: {0}, 3: {2}, 4: set(), 5: set()}
  results = rc.run_all(blocks, run_dir, log=lambda _: None)
  states = [(r.rc, r.missing) for r in results]
  assert states == [(0, []), (0, ["runs/b/never.txt"]), (3, []), (-1, []), (0, []), (None, [])]
  assert [r.ok for r in results] == [True, False, False, False, True, True]
  assert "not run: it needs README.md:10" in results[3].output
  assert not os.path.exists(os.path.join(run_dir, ".venv"))  # set-up steps were dropped
  with open(os.path.join(run_dir, "tmp", "x", "steps.txt")) as f:
    assert f.read() == "steps=2\n"  # substituted, and /tmp/ moved into the run directory


@pytest.mark.slow
def test_every_readme_and_docs_command_runs(tmp_path):
  run_dir = rc.copy_repo(str(tmp_path / "clone"))
  t0 = time.monotonic()
  results = rc.run_all(rc.all_blocks(run_dir), run_dir)
  print(f"README and docs commands: {time.monotonic() - t0:.0f} s wall")
  bad = [r for r in results if not r.ok]
  assert not bad, "\n\n".join(f"=== {r.describe()}\n{r.output[-3000:]}" for r in bad)


def test_a_block_past_its_timeout_is_stopped_with_its_children(tmp_path):
  repo = tmp_path / "repo"
  _write(str(repo / "README.md"), "<!-- readme-test: timeout=2 -->\n```bash\n"
         "sleep 60 & echo $! > child.pid; wait\n```\n")
  run_dir = rc.copy_repo(str(tmp_path / "run"), str(repo))
  t0 = time.monotonic()
  (result,) = rc.run_all(rc.all_blocks(run_dir), run_dir, log=lambda _: None)
  assert result.rc == 124 and "timed out after 2 s" in result.output
  assert time.monotonic() - t0 < 30
  with open(os.path.join(run_dir, "child.pid")) as f:
    child = int(f.read())
  for _ in range(50):  # the killed sleep is reaped by init shortly after
    try:
      os.kill(child, 0)
    except ProcessLookupError:
      break
    time.sleep(0.1)
  else:
    raise AssertionError(f"the block's child {child} outlived the timeout")
