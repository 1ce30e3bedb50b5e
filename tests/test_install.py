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
  from maxlm.curate.read import extract_html  # the function curation calls
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


def test_this_venv_matches_its_lock():
  lock = "constraints-py312.txt" if sys.version_info >= (3, 12) else "constraints.txt"
  r = subprocess.run([sys.executable, os.path.join(ROOT, ".ci", "lock.py"), "check",
                      os.path.join(ROOT, lock)], capture_output=True, text=True)
  assert r.returncode == 0, r.stderr
