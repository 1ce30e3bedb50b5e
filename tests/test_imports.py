"""The import graph of maxlm: no cycles and no upward imports.

Edges are read from the source (every `import` / `from ... import`, at module
level or inside a function), so a lazy import that hides a cycle is caught
too. The three compatibility modules kept in maxlm/train for old callers
(`driver`, `stages`, `__main__`) are entry points above the library and are
named here explicitly.
"""
import ast
import glob
import json
import os
import subprocess
import sys
import textwrap

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Old public names kept working by forwarding to maxlm.run; nothing in maxlm imports them.
COMPAT_ENTRY_POINTS = {"maxlm.train.driver", "maxlm.train.stages", "maxlm.train.__main__"}
# Cycles a change in flight is removing: each edge here must still exist (delete it when the
# change lands). Empty: the last one (data.prepare <-> data.pipeline) went with data/shards.py.
PENDING_CYCLE_EDGES: set = set()


def _module_name(path: str) -> str:
  rel = os.path.relpath(path, ROOT)[:-3].replace(os.sep, ".")
  return rel[:-len(".__init__")] if rel.endswith(".__init__") else rel


def _modules() -> dict[str, str]:
  out = {}
  for base in ("maxlm", "kernels"):
    for d, _, files in os.walk(os.path.join(ROOT, base)):
      for f in files:
        if f.endswith(".py"):
          out[_module_name(os.path.join(d, f))] = os.path.join(d, f)
  return out


def _lazy_edges(pkg: str, tree, mods) -> set[str]:
  """Submodules a lazy package `__init__` (PEP 562) names in its `_WHERE = {name: submodule}`.

  They are imported with importlib on first use, which the AST walk cannot see:
  without these edges a cycle through a lazy package would go unnoticed.
  """
  out = set()
  for node in tree.body:
    if (isinstance(node, ast.Assign) and any(getattr(t, "id", "") == "_WHERE" for t in node.targets)
        and isinstance(node.value, ast.Dict)):
      for v in node.value.values:
        if isinstance(v, ast.Constant) and f"{pkg}.{v.value}" in mods:
          out.add(f"{pkg}.{v.value}")
  return out


def _graph() -> dict[str, set[str]]:
  """module -> the maxlm / kernels modules it imports (a `from pkg import sub` names sub)."""
  mods = _modules()
  graph = {}
  for name, path in mods.items():
    with open(path, encoding="utf-8") as f:
      tree = ast.parse(f.read(), path)
    pkg = name if path.endswith("__init__.py") else name.rpartition(".")[0]
    edges = set()
    for node in ast.walk(tree):
      if isinstance(node, ast.Import):
        targets = [a.name for a in node.names]
      elif isinstance(node, ast.ImportFrom):
        base = node.module or ""
        if node.level:  # relative import
          base = ".".join(pkg.split(".")[:len(pkg.split(".")) - node.level + 1] + ([base] if base
                                                                                     else []))
        targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in mods else base for a in node.names]
      else:
        continue
      for t in targets:
        while t and t not in mods:  # `import maxlm.model.config as x` -> the module itself
          t = t.rpartition(".")[0]
        if t and t != name:
          edges.add(t)
    edges |= _lazy_edges(name, tree, mods) if path.endswith("__init__.py") else set()
    graph[name] = edges
  return graph


def _cycle(graph, nodes):
  """One cycle among `nodes` (a list of modules), or None."""
  state, stack = {}, []

  def visit(n):
    state[n] = "open"
    stack.append(n)
    for m in sorted(graph.get(n, ())):
      if m not in nodes:
        continue
      if state.get(m) == "open":
        return stack[stack.index(m):] + [m]
      if m not in state:
        found = visit(m)
        if found:
          return found
    stack.pop()
    state[n] = "done"
    return None

  for n in sorted(nodes):
    if n not in state:
      found = visit(n)
      if found:
        return found
  return None


def test_the_graph_is_read_from_the_source():
  g = _graph()
  # Known edges, so an empty graph cannot pass the tests below.
  assert "maxlm.train.step" in g["maxlm.run.pretrain"]
  assert "maxlm.model" in g["maxlm.train.losses"]
  assert "maxlm.run.pretrain" in g["maxlm.train.driver"]
  # Lazy packages keep their edges (read from `_WHERE`).
  assert "maxlm.checkpoint.manager" in g["maxlm.checkpoint"]
  assert "maxlm.data.pipeline" in g["maxlm.data"]


def test_no_import_cycles_between_modules():
  g = _graph()
  for a, b in PENDING_CYCLE_EDGES:
    assert b in g[a], f"{a} no longer imports {b}: remove it from PENDING_CYCLE_EDGES"
    g[a] = g[a] - {b}
  assert _cycle(g, set(g)) is None, " -> ".join(_cycle(g, set(g)))


def _package(mod: str) -> str:
  parts = mod.split(".")
  return ".".join(parts[:2]) if parts[0] == "maxlm" and len(parts) > 1 else parts[0]


def test_no_cycles_between_packages():
  g = _graph()
  pkg_graph = {}
  for mod, edges in g.items():
    if mod in COMPAT_ENTRY_POINTS:
      continue
    pkg_graph.setdefault(_package(mod), set()).update(
        _package(e) for e in edges if _package(e) != _package(mod))
  assert _cycle(pkg_graph, set(pkg_graph)) is None, " -> ".join(_cycle(pkg_graph, set(pkg_graph)))


@pytest.mark.parametrize("lower, forbidden", [
    ("maxlm.train", ("maxlm.eval", "maxlm.distill", "maxlm.interop", "maxlm.run")),
    ("maxlm.data", ("maxlm.model", "maxlm.train", "maxlm.run")),
    ("maxlm.model", ("maxlm.data", "maxlm.train", "maxlm.eval", "maxlm.curate", "maxlm.run")),
    ("maxlm.checkpoint", ("maxlm.train", "maxlm.eval", "maxlm.run")),
    ("kernels", ("maxlm",)),
])
def test_no_upward_imports(lower, forbidden):
  bad = sorted(f"{m} imports {e}" for m, edges in _graph().items()
               if (m == lower or m.startswith(lower + ".")) and m not in COMPAT_ENTRY_POINTS
               for e in edges if any(e == f or e.startswith(f + ".") for f in forbidden))
  assert not bad, bad


# Loads each stage config as `python -m maxlm.train` would, one after another in one
# fresh interpreter, and names the first whose loading brought in a heavy library.
# (A module a later config shares with an earlier one was already checked with it.)
_LOAD_CONFIGS = textwrap.dedent("""
    import importlib, json, sys
    heavy = ("jax", "flax", "optax", "orbax", "grain")
    for name, arg in json.loads(sys.argv[1]):
      c = importlib.import_module("configs." + name).get_config(*([arg] if arg else []))
      loaded = [m for m in heavy if m in sys.modules]
      if loaded:
        call = f"get_config({arg!r})" if arg else "get_config()"
        sys.exit(f"configs/{name}.py:{call} imported {loaded}")
      if name in ("anneal", "long_context", "continued_pretrain") and "parent=" in arg:
        print(name, c.data.tokenizer.path)
""")


def _config_names() -> list[str]:
  return sorted(os.path.basename(p)[:-3] for p in glob.glob(os.path.join(ROOT, "configs", "*.py"))
                if not p.endswith("__init__.py"))


def test_loading_a_config_imports_no_jax(tmp_path):
  """Stage configs are data: loading one (defaults, or naming a parent run) imports no jax."""
  names = _config_names()
  assert {"pretrain", "anneal", "long_context", "continued_pretrain", "distill"} <= set(names)
  # A parent maxlm run whose config names its tokenizer: the stages must take it from there.
  parent = tmp_path / "parent"
  (parent / "checkpoints").mkdir(parents=True)
  (parent / "config.json").write_text(json.dumps({"data": {"tokenizer": {"path": "/tok/p.model"}},
                                                  "model": {}}))
  jobs = [(n, "") for n in names]
  jobs += [(n, f"tiny,parent={parent}") for n in ("anneal", "long_context", "continued_pretrain")]
  jobs += [("distill", f"tiny,teacher={parent}")]
  env = dict(os.environ, PYTHONPATH=ROOT)
  out = subprocess.run([sys.executable, "-c", _LOAD_CONFIGS, json.dumps(jobs)], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=120)
  assert out.returncode == 0, out.stderr[-2000:]
  assert sorted(out.stdout.split()) == sorted(
      ["anneal", "/tok/p.model", "long_context", "/tok/p.model", "continued_pretrain",
       "/tok/p.model"]), out.stdout
