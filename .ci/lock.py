"""Keeps a lock (constraints) file honest against the venv it describes.

  python .ci/lock.py check constraints.txt    # exit 1 naming every installed package the lock
                                              # does not pin, or pins at another version
  python .ci/lock.py write constraints.txt    # rewrite the pins from this venv (keeps the
                                              # file's leading comment block)

`pip install -c` pins only what it installs, so a dependency added upstream would slip in
unpinned without this check; CI runs it right after the README's install command.
"""
import importlib.metadata
import re
import sys

# Installed by `python -m venv` itself (not by the README's command) or the package under test.
_IGNORED = {"pip", "setuptools", "wheel", "maxlm"}


def _canon(name: str) -> str:
  return re.sub(r"[-_.]+", "-", name).lower()


def installed() -> dict[str, tuple[str, str]]:
  """canonical name -> (name as published, version) for every distribution in this venv."""
  out = {}
  for d in importlib.metadata.distributions():
    name = d.metadata["Name"]
    if name and _canon(name) not in _IGNORED:
      out[_canon(name)] = (name, d.version)
  return out


def read_lock(path: str) -> tuple[list[str], dict[str, str]]:
  """(leading comment lines, canonical name -> pinned version); exits naming a bad line."""
  header, pins = [], {}
  with open(path) as f:
    for n, line in enumerate(f, 1):
      line = line.strip()
      if line.startswith("#") and not pins:
        header.append(line)
      elif line and not line.startswith("#"):
        m = re.fullmatch(r"([A-Za-z0-9][A-Za-z0-9._-]*)==(\S+)", line)
        if not m:
          sys.exit(f"{path}:{n}: not a `name==version` pin: {line!r}")
        pins[_canon(m.group(1))] = m.group(2)
  return header, pins


def main(argv: list[str]) -> int:
  if len(argv) != 3 or argv[1] not in ("check", "write"):
    sys.exit(__doc__)
  path = argv[2]
  header, pins = read_lock(path)
  have = installed()
  if argv[1] == "write":
    body = sorted(f"{name}=={version}" for name, version in have.values())
    with open(path, "w") as f:
      f.write("\n".join(header + sorted(body, key=str.lower)) + "\n")
    print(f"{path}: {len(body)} pins written")
    return 0
  problems = [f"{name}=={version} is installed but {path} "
              + (f"pins {pins[key]}" if key in pins else "does not pin it")
              for key, (name, version) in sorted(have.items()) if pins.get(key) != version]
  for p in problems:
    print(p, file=sys.stderr)
  if problems:
    print(f"{path}: {len(problems)} package(s) differ; regenerate it with "
          f"`python .ci/lock.py write {path}` and review the diff", file=sys.stderr)
    return 1
  print(f"{path}: all {len(have)} installed packages pinned")
  return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv))
