"""The install is what the README says: the HTML extractor works, and the locks cover the venv.

A new venv's pip (23.2.1) ignores the `lxml[html_clean]` extra, so trafilatura imported
without lxml_html_clean and every HTML/WARC record became `unreadable_file` while the rest
of the suite passed. These tests make that gap fail loudly.
"""
import importlib.util
import os
import re
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

ARTICLE = """<html><head><title>Menu | Site</title></head><body>
<nav><a href="/">Home</a> <a href="/about">About</a> <a href="/login">Log in</a></nav>
<article><h1>The tide mill at Woodbridge</h1>
<p>The tide mill stores sea water behind a dam at high tide and releases it through a wheel
as the tide falls, grinding grain for several hours on each ebb.</p>
<p>Records of a mill on this site go back to 1170; the present building dates from 1793 and
worked commercially until 1957, when its shaft broke.</p></article>
<footer>Copyright 2026. Cookie settings. Privacy policy.</footer></body></html>"""


def test_trafilatura_extracts_the_main_text_of_html():
  from maxlm.data.readers import extract_html  # the function curation and training call
  text = extract_html(ARTICLE)
  assert "stores sea water behind a dam" in text
  assert "present building dates from 1793" in text
  for boilerplate in ("Log in", "Cookie settings", "Privacy policy"):
    assert boilerplate not in text


def test_lxml_html_clean_is_installed_directly():
  # Named in requirements-curate.txt because the lxml extra is not honoured by every pip.
  assert importlib.util.find_spec("lxml_html_clean") is not None
  import lxml.html.clean  # noqa: F401  (raises ImportError when the package is missing)


def _pins(path):
  return {re.sub(r"[-_.]+", "-", l.split("==")[0]).lower(): l.split("==")[1].strip()
          for l in open(path) if l.strip() and not l.startswith("#")}


def test_every_direct_requirement_is_pinned_by_both_locks():
  """requirements*.txt pins must agree with the locks (a drift would install two versions)."""
  locks = {"constraints.txt": _pins(os.path.join(ROOT, "constraints.txt")),
           "constraints-py312.txt": _pins(os.path.join(ROOT, "constraints-py312.txt"))}
  for req in ("requirements.txt", "requirements-curate.txt", "requirements-eval.txt",
              "requirements-test.txt", "requirements-reference.txt", "requirements-data.txt"):
    for line in open(os.path.join(ROOT, req)):
      line = line.split("#")[0].strip()
      if not line:
        continue
      name, op, version = re.match(r"([A-Za-z0-9._-]+)\s*(==|>=)?\s*([^,\s]*)", line).groups()
      key = re.sub(r"[-_.]+", "-", name).lower()
      for lock, pins in locks.items():
        if req == "requirements-reference.txt" and lock == "constraints-py312.txt":
          continue  # no torch on the 3.12 stack (see .ci/run)
        assert key in pins, f"{req}: {name} is not pinned in {lock}"
        if op == "==":
          assert pins[key] == version, f"{req}: {name}=={version} but {lock} pins {pins[key]}"



def test_the_seqio_lock_agrees_with_the_main_lock():
  """constraints-seqio.txt (the seqio stage's environment) pins requirements-seqio.txt as written
  and every package it shares with constraints.txt at the same version, except protobuf (seqio
  needs >= 7.36; requirements-seqio.txt says why), so the seqio tests run the code CI checks."""
  seqio = _pins(os.path.join(ROOT, "constraints-seqio.txt"))
  main = _pins(os.path.join(ROOT, "constraints.txt"))
  differ = {k for k in seqio.keys() & main.keys() if seqio[k] != main[k]}
  assert differ == {"protobuf"}, sorted(differ)
  for req in ("requirements.txt", "requirements-test.txt", "requirements-seqio.txt"):
    for line in open(os.path.join(ROOT, req)):
      line = line.split("#")[0].strip()
      if not line:
        continue
      name, op, version = re.match(r"([A-Za-z0-9._-]+)\s*(==|>=)?\s*([^,\s]*)", line).groups()
      key = re.sub(r"[-_.]+", "-", name).lower()
      assert key in seqio, f"{req}: {name} is not pinned in constraints-seqio.txt"
      if op == "==":
        assert seqio[key] == version, f"{req}: {name}=={version} but constraints-seqio.txt pins {seqio[key]}"

def test_this_venv_matches_its_lock():
  lock = "constraints-py312.txt" if sys.version_info >= (3, 12) else "constraints.txt"
  r = subprocess.run([sys.executable, os.path.join(ROOT, ".ci", "lock.py"), "check",
                      os.path.join(ROOT, lock)], capture_output=True, text=True)
  assert r.returncode == 0, r.stderr


# Where an extra's packages may be imported at module level (elsewhere only inside functions,
# so that the core installs and imports without the extra).
_EXTRA_SCOPES = {"requirements-curate.txt": ("maxlm/curate/", "maxlm/data/beam.py"),
                 "requirements-eval.txt": ("maxlm/eval/",),
                 "requirements-seqio.txt": ("maxlm/data/seqio_source.py",),
                 "requirements-data.txt": ()}  # the built-in corpora, read lazily
# Imported by the seqio source only, which needs an environment of its own
# (requirements-seqio.txt says why): not installed on the 3.11 / 3.12 stacks (.ci/run's
# seqio stage has them).
_NOT_INSTALLED = {"seqio": "seqio", "tensorflow": "tensorflow", "tensorflow_datasets":
                  "tensorflow-datasets"}


def _third_party_imports():
  """{(file, top-level module, at module level?)} for every import in the shipped packages."""
  import ast
  out = set()
  for root in ("maxlm", "kernels", "configs"):
    for dirpath, _, files in os.walk(os.path.join(ROOT, root)):
      for f in files:
        if not f.endswith(".py"):
          continue
        path = os.path.join(dirpath, f)
        tree = ast.parse(open(path, encoding="utf-8").read())
        top_level = {id(n) for n in tree.body}
        for node in ast.walk(tree):
          if isinstance(node, ast.Import):
            mods = [a.name for a in node.names]
          elif isinstance(node, ast.ImportFrom) and node.level == 0:
            mods = [node.module]
          else:
            continue
          for m in mods:
            top = m.split(".")[0]
            if top not in sys.stdlib_module_names and top not in (
                "maxlm", "kernels", "configs", "__future__"):
              out.add((os.path.relpath(path, ROOT), top, id(node) in top_level))
  return out


def _names(path):
  """Canonical names of the packages a requirements file lists (any version specifier)."""
  return {re.sub(r"[-_.]+", "-", re.match(r"[A-Za-z0-9._-]+", l.strip()).group()).lower()
          for l in open(path) if l.strip() and not l.startswith("#")}


def test_every_import_of_the_package_is_a_declared_requirement():
  """A package maxlm imports is named by requirements.txt or an extra, not just pulled in by
  some other package (tokenizers arrived only through transformers, a test-only package, so
  a tokenizer.json could not be loaded on an install without the test extras)."""
  import importlib.metadata
  dists = importlib.metadata.packages_distributions()
  canon = lambda n: re.sub(r"[-_.]+", "-", n).lower()
  core = _names(os.path.join(ROOT, "requirements.txt"))
  extras = {req: _names(os.path.join(ROOT, req)) for req in _EXTRA_SCOPES}
  problems = []
  for path, module, module_level in sorted(_third_party_imports()):
    names = {canon(d) for d in dists.get(module, [])} or {_NOT_INSTALLED.get(module, module)}
    if names & core:
      continue
    homes = [req for req, pins in extras.items() if names & pins]
    if not homes:
      problems.append(f"{path}: imports {module} ({', '.join(sorted(names))}), which no"
                      " requirements file names")
    elif module_level and not any(path.startswith(p) for req in homes
                                  for p in _EXTRA_SCOPES[req]):
      problems.append(f"{path}: imports {module} at module level, but it comes with"
                      f" {homes[0]} only (import it where it is used)")
  assert not problems, "\n".join(problems)
