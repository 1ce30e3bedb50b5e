"""The shell command blocks of README.md and docs/*.md, with their test directives.

Used by tests/test_readme.py (runs them) and .ci/run (runs the install and test commands
verbatim), so the commands a user copies are the commands CI runs.

Convention (documented in README "Tests"): every ```bash block is a command block. An HTML
comment on the line just above it, invisible in the rendered page, tells the test what to do:

  <!-- readme-test: key=value key="a value with spaces" ... -->

  skip="reason"       not run by the test (a GPU, a cluster, a placeholder such as <task>)
  ci=NAME             .ci/run runs this block verbatim as step NAME (`install`, `test`)
  sub="OLD=>NEW"      literal substitution before running, e.g. tiny sizes (repeatable)
  expect=a,b          files (relative to the run directory) the block must leave behind
  timeout=SECONDS     per block (default 600)

The test runs blocks in order (README.md, then docs/*.md by name) in one temporary directory,
so later blocks use earlier outputs (`runs/tiny`). Inside a block, `&&`-chained set-up steps
(`python3 -m venv`, `. .venv/bin/activate`, `pip install`) are dropped: the test runs in the
environment those steps built (.ci/run ran them first). Absolute `/tmp/` paths in docs are
moved into the run directory.

  python3 tests/readme_commands.py ci install    # print the block CI runs as `install`
"""
from __future__ import annotations

import dataclasses
import glob
import os
import re
import shlex
import sys

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
  timeout: int = 600

  @property
  def where(self) -> str:
    return f"{self.path}:{self.line}"

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


def blocks_of(path: str) -> list[Block]:
  rel = os.path.relpath(path, ROOT)
  lines = open(path, encoding="utf-8").read().splitlines()
  out, i = [], 0
  while i < len(lines):
    fence = lines[i].strip()
    if fence.startswith("```"):
      end = next((j for j in range(i + 1, len(lines)) if lines[j].strip().startswith("```")), None)
      if end is None:
        raise ValueError(f"{rel}:{i + 1}: unclosed code fence")
      if fence in ("```bash", "```sh", "```shell"):
        above = lines[i - 1] if i else ""
        m = _DIRECTIVE.match(above.strip())
        extra = _parse_directive(m.group(1), f"{rel}:{i}") if m else {}
        out.append(Block(rel, i + 1, "\n".join(lines[i + 1:end]), **extra))
      i = end + 1
    else:
      i += 1
  return out


def all_blocks() -> list[Block]:
  files = [os.path.join(ROOT, "README.md")] + sorted(glob.glob(os.path.join(ROOT, "docs", "*.md")))
  return [b for f in files for b in blocks_of(f)]


def ci_block(name: str) -> Block:
  found = [b for b in all_blocks() if b.ci == name]
  if len(found) != 1:
    raise SystemExit(f"README: expected one block marked ci={name}, found {len(found)}")
  return found[0]


if __name__ == "__main__":
  if len(sys.argv) != 3 or sys.argv[1] != "ci":
    raise SystemExit(__doc__)
  print(ci_block(sys.argv[2]).command)
