"""The shell command blocks of README.md and docs/*.md, with their test directives.

Used by tests/test_readme.py (runs them) and .ci/run (runs the install and test commands
verbatim), so the commands a user copies are the commands CI runs.

Convention (documented in README "Tests"): every ```bash block is a command block. An HTML
comment on the line just above it, invisible in the rendered page, tells the test what to do:

  <!-- readme-test: key=value key="a value with spaces" ... -->

  skip="reason"       not run by the test (a GPU, a cluster, data not shipped); few, each saying why
  ci=NAME             .ci/run runs this block verbatim as step NAME (`install`, `test`)
  sub="OLD=>NEW"      literal substitution before running, e.g. tiny sizes (repeatable)
  expect=a,b          files (relative to the run directory) the block must leave behind
  timeout=SECONDS     per block (default 1800: a hang guard, not a speed check)

Every ``` fence needs a language (an unlabelled one is an error: a command the test would
miss); only bash/sh/shell blocks run, and a directive above any other block is an error.

The test runs blocks in order (README.md, then docs/*.md by name) in one temporary copy of the
repository, so later blocks use earlier outputs (`runs/tiny`). A block waits for every earlier
block that names one of the same outputs (relative paths that are not part of the repository,
keyed `runs/<name>`, `tmp/<name>` or their first component, e.g. `raw`); blocks that share
none run side by side, $README_TEST_JOBS (default 2) at a time. Inside a block, `&&`-chained
set-up steps (`python3 -m venv`, `. .venv/bin/activate`, `pip install`) are dropped: the test
runs in the environment those steps built (.ci/run ran them first). Absolute `/tmp/` paths in docs are
moved into the run directory.

  python3 tests/readme_commands.py ci install    # print the block CI runs as `install`
  python3 tests/readme_commands.py run [DIR]     # run every block as tests/test_readme.py does
"""
from __future__ import annotations

import dataclasses
import glob
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_DIRECTIVE = re.compile(r"<!--\s*readme-test:(.*?)-->\s*$")
_KEYS = {"skip", "ci", "sub", "expect", "timeout"}
_SETUP = re.compile(r"^(python3? -m venv\b|\. \S*activate$|source \S*activate$|pip install\b)")


@dataclasses.dataclass
class Block:
  path: str  # relative to the repository root
  line: int  # 1-based line of the opening fence
  command: str  # exactly as written (line continuations kept)
  skip: str | None = None
  ci: str | None = None
  subs: list = dataclasses.field(default_factory=list)
  expect: list = dataclasses.field(default_factory=list)
  timeout: int = 1800

  @property
  def where(self) -> str:
    return f"{self.path}:{self.line}"

  def missing(self, run_dir: str) -> list[str]:
    """The files the block promises (`expect=`) that are not in run_dir."""
    return [p for p in self.expect if not os.path.exists(os.path.join(run_dir, p))]

  def test_command(self, run_dir: str) -> str:
    """The command the test runs: substitutions applied, set-up steps dropped."""
    cmd = self.command
    for old, new in self.subs:
      if old not in cmd:  # a stale substitution would silently test the untiny command
        raise ValueError(f"{self.where}: sub {old!r} does not occur in the block")
      cmd = cmd.replace(old, new)
    cmd = re.sub(r"(?<![\w.])/tmp/", run_dir.rstrip("/") + "/tmp/", cmd)
    lines = []
    for line in cmd.replace("\\\n", " ").splitlines():
      steps = [s.strip() for s in line.split(" && ")]
      kept = [s for s in steps if not _SETUP.match(s)]
      if kept:
        lines.append(" && ".join(kept))
    return "\n".join(lines)


def _parse_directive(text: str, where: str) -> dict:
  out = {"subs": [], "expect": []}
  for item in shlex.split(text):
    key, sep, value = item.partition("=")
    if not sep or key not in _KEYS:
      raise ValueError(f"{where}: bad readme-test directive {item!r} (keys: {sorted(_KEYS)})")
    if key == "sub":
      old, arrow, new = value.partition("=>")
      if not arrow:
        raise ValueError(f"{where}: sub needs OLD=>NEW, got {value!r}")
      out["subs"].append((old, new))
    elif key == "expect":
      out["expect"] += [p for p in value.split(",") if p]
    elif key == "timeout":
      out["timeout"] = int(value)
    else:
      out[key] = value
  return out


def blocks_of(path: str, root: str = ROOT) -> list[Block]:
  rel = os.path.relpath(path, root)
  lines = open(path, encoding="utf-8").read().splitlines()
  out, i = [], 0
  while i < len(lines):
    fence = lines[i].strip()
    if fence.startswith("```"):
      end = next((j for j in range(i + 1, len(lines)) if lines[j].strip().startswith("```")), None)
      if end is None:
        raise ValueError(f"{rel}:{i + 1}: unclosed code fence")
      above = lines[i - 1].strip() if i else ""
      m = _DIRECTIVE.match(above)
      if fence == "```":  # unlabelled: is it a command the test would miss, or output?
        raise ValueError(f"{rel}:{i + 1}: code fence without a language (```bash for commands "
                         "the test runs, ```text for output)")
      if fence in ("```bash", "```sh", "```shell"):
        extra = _parse_directive(m.group(1), f"{rel}:{i}") if m else {}
        out.append(Block(rel, i + 1, "\n".join(lines[i + 1:end]), **extra))
      elif m:  # a directive above a block the test never runs would be silently ignored
        raise ValueError(f"{rel}:{i}: readme-test directive above a {fence[3:]!r} block "
                         "(only bash blocks are run)")
      i = end + 1
    else:
      i += 1
  return out


def all_blocks(root: str = ROOT) -> list[Block]:
  files = [os.path.join(root, "README.md")] + sorted(glob.glob(os.path.join(root, "docs", "*.md")))
  return [b for f in files for b in blocks_of(f, root)]


def copy_repo(dst: str, root: str = ROOT) -> str:
  """A fresh-clone-like copy of the repository in dst: tracked and untracked-but-not-ignored
  files (no .venv, no runs/ left by an earlier tiny run, no caches)."""
  try:
    files = subprocess.run(["git", "ls-files", "-z", "-co", "--exclude-standard"], cwd=root,
                           check=True, capture_output=True).stdout.decode().split("\0")
  except (OSError, subprocess.CalledProcessError):  # not a git checkout (an unpacked archive)
    skip = shutil.ignore_patterns(".git", ".venv*", "runs", "workdirs", "__pycache__", "*.egg-info")
    shutil.copytree(root, dst, ignore=skip, dirs_exist_ok=True)
    return dst
  for rel in filter(None, files):
    src = os.path.join(root, rel)
    if os.path.isfile(src):  # a deleted-but-tracked file is listed too
      os.makedirs(os.path.dirname(os.path.join(dst, rel)), exist_ok=True)
      shutil.copy2(src, os.path.join(dst, rel))
  return dst


def test_env(run_dir: str) -> dict:
  """The environment of a user's shell on a CPU machine, inside the venv this Python runs in."""
  env = dict(os.environ)
  # The test suite fakes 8 CPU devices (tests/conftest.py); a user's machine has one.
  flags = env.get("XLA_FLAGS", "").replace("--xla_force_host_platform_device_count=8", "").strip()
  env["XLA_FLAGS"] = flags
  env.update(JAX_PLATFORMS="cpu", PYTHONPATH=run_dir, PYTHONUNBUFFERED="1",
             # no network here: fail fast instead of waiting on the Hugging Face hub
             HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")
  env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "")
  return env


@dataclasses.dataclass
class Result:
  block: Block
  rc: int | None  # None: skipped
  seconds: float = 0.0
  output: str = ""
  missing: list = dataclasses.field(default_factory=list)

  @property
  def ok(self) -> bool:
    return self.rc is None or (self.rc == 0 and not self.missing)

  def describe(self) -> str:
    b = self.block
    if self.rc is None:
      return f"{b.where}: skipped ({b.skip})"
    if self.rc == -1:
      return f"{b.where}: {self.output}"
    state = "ok" if self.ok else (f"exit {self.rc}" if self.rc else f"missing {self.missing}")
    return f"{b.where}: {state} in {self.seconds:.0f} s"


def run_block(block: Block, run_dir: str, env: dict | None = None) -> Result:
  """Runs one block's test command with bash -e in run_dir; checks exit status and `expect`."""
  if block.skip:
    return Result(block, None)
  cmd = block.test_command(run_dir)
  t0 = time.monotonic()
  # Its own process group, so that a timeout or an interrupted test ends the block's python
  # processes too, not only the bash that started them.
  p = subprocess.Popen(["bash", "-euo", "pipefail", "-c", cmd], cwd=run_dir,
                       env=env or test_env(run_dir), stdout=subprocess.PIPE,
                       stderr=subprocess.STDOUT, start_new_session=True)
  try:
    out, _ = p.communicate(timeout=block.timeout)
    rc, out = p.returncode, out.decode(errors="replace")
  except subprocess.TimeoutExpired:
    os.killpg(p.pid, signal.SIGKILL)
    out, _ = p.communicate()
    rc, out = 124, out.decode(errors="replace") + f"\n[timed out after {block.timeout} s]"
  except BaseException:
    os.killpg(p.pid, signal.SIGKILL)
    p.wait()
    raise
  return Result(block, rc, time.monotonic() - t0, f"$ {cmd}\n{out}", block.missing(run_dir) if rc == 0 else [])


_PATH = re.compile(r"(?<![\w./-])([A-Za-z_][\w.-]*)/([\w.*-]+)")


def path_keys(block: Block, run_dir: str, repo_entries: set[str]) -> set[str]:
  """The outputs a block shares with others: the relative paths in its command that are not
  part of the repository (`runs/tiny`, `raw`, the moved `tmp/pre`), keyed by their first
  component (two for `runs/` and `tmp/`, which hold many independent outputs)."""
  cmd = block.test_command(run_dir).replace(run_dir.rstrip("/") + "/", "")
  cmd = re.sub(r"(^|\s)#.*", "", cmd, flags=re.M)  # comments name no outputs ("chars/token")
  keys = set()
  for first, second in _PATH.findall(cmd):
    if first not in repo_entries:
      keys.add(f"{first}/{second.split('*')[0]}" if first in ("runs", "tmp") else first)
  return keys


def schedule(blocks: list[Block], run_dir: str) -> dict[int, set[int]]:
  """For each block, the earlier blocks it must wait for: every earlier block that names one
  of the same outputs (see path_keys). Blocks with disjoint outputs may run side by side."""
  entries = set(os.listdir(run_dir))
  keys = [path_keys(b, run_dir, entries) if not b.skip else set() for b in blocks]
  return {i: {j for j in range(i) if keys[i] & keys[j]} for i in range(len(blocks))}


def run_all(blocks: list[Block], run_dir: str, log=print, jobs: int | None = None) -> list[Result]:
  """Runs the blocks in one run_dir (later blocks read earlier outputs): each starts once the
  earlier blocks it shares an output with have finished, at most `jobs` at a time (default
  $README_TEST_JOBS or 2), in document order otherwise. A block whose prerequisite failed is
  reported as not run; the others go on, so one report lists every broken command."""
  import concurrent.futures as cf  # pylint: disable=g-import-not-at-top
  jobs = jobs or int(os.environ.get("README_TEST_JOBS", "2"))
  env = test_env(run_dir)
  deps = schedule(blocks, run_dir)
  results: dict[int, Result] = {}
  pending = list(range(len(blocks)))
  with cf.ThreadPoolExecutor(jobs) as pool:
    running: dict[cf.Future, int] = {}
    while pending or running:
      for i in list(pending):
        if len(running) >= jobs:
          break
        if not deps[i] <= results.keys():
          continue
        pending.remove(i)
        failed = [blocks[j].where for j in sorted(deps[i]) if not results[j].ok]
        if failed:
          results[i] = Result(blocks[i], -1, output=f"not run: it needs {', '.join(failed)}")
          log(f"{blocks[i].where}: not run (needs {', '.join(failed)})")
          continue
        running[pool.submit(run_block, blocks[i], run_dir, env)] = i
      if not running:
        continue
      done, _ = cf.wait(running, return_when=cf.FIRST_COMPLETED)
      for f in done:
        i = running.pop(f)
        results[i] = f.result()
        log(results[i].describe())
  return [results[i] for i in range(len(blocks))]


def ci_block(name: str) -> Block:
  # README.md only: the ci blocks live there, and a style slip in docs/ (an unlabelled fence)
  # should fail tests/test_readme.py with its message, not stop .ci/run before it installs.
  found = [b for b in blocks_of(os.path.join(ROOT, "README.md")) if b.ci == name]
  if len(found) != 1:
    raise SystemExit(f"README: expected one block marked ci={name}, found {len(found)}")
  return found[0]


if __name__ == "__main__":
  if len(sys.argv) == 3 and sys.argv[1] == "ci":
    print(ci_block(sys.argv[2]).command)
  elif len(sys.argv) in (2, 3) and sys.argv[1] == "run":  # what tests/test_readme.py does
    import tempfile
    run_dir = copy_repo(sys.argv[2] if len(sys.argv) == 3 else tempfile.mkdtemp(prefix="readme_"))
    print(f"running in {run_dir}")
    bad = [r for r in run_all(all_blocks(), run_dir) if not r.ok]
    for r in bad:
      print(f"\n=== {r.describe()}\n{r.output[-4000:]}")
    sys.exit(1 if bad else 0)
  else:
    raise SystemExit(__doc__)
