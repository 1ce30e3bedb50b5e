"""The Python 3.12 / jax 0.11 CI subset (.ci/py312_tests.txt) covers every module, no torch.

Imports the subset's test modules in a fresh interpreter, plus the modules their tests import
inside functions, and lists the maxlm modules that loads: a module nothing in the subset
loads would only ever be checked on the 3.11 stack.
"""
import ast
import glob
import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Modules the subset reaches only at run time (or not at all), each with the reason.
EXEMPT = {
    "maxlm.run.stages": "stage-chain entry; its e2e tests (test_stages_chain) run on 3.11 only, to keep this stack's time down",
    "maxlm.train.stages": "re-export of maxlm.run.stages (the public name), see above",
    "maxlm.eval.stage_report": "imported by maxlm.run.stages after a stage (test_stages_chain, 3.11)",
    "maxlm.interop.tokenizer_json": "its reference is transformers' tokenizer (torch-marked tests)",
    "maxlm.interop.export": "its reference is transformers' AutoModel/AutoTokenizer (torch-marked tests)",
    "maxlm.interop.vocab": "its reference is transformers' AutoModel/AutoTokenizer (torch-marked tests)",
    "maxlm.curate.__main__": "entry point; test_curate_scores runs it as a subprocess",
    "maxlm.curate.train_classifier": "run through `python -m maxlm.curate train-classifier` there",
    "maxlm.scaling.__main__": "entry point; test_cli_errors runs it as a subprocess",
    "maxlm.scaling.plots": "imported by the fit command's --plot-dir (test_scaling_fit)",
    "maxlm.train.__main__": "entry point; test_config_validation runs it as a subprocess",
    "maxlm.eval.harness": "a wrapper around lm_eval's own CLI (its model: test_eval_lm_eval)",
    "maxlm.tokenizer": "entry point around maxlm.data.tokenizer (test_data_pipeline)",
    "maxlm.data.benchmark": "a benchmark script, not a library module",
    "maxlm.data.reports": "loaded on first use of maxlm.data.write_reports (a lazy package); test_train_e2e's run writes the reports",
}


def _subset_files():
  lines = [l.strip() for l in open(os.path.join(ROOT, ".ci", "py312_tests.txt"))]
  return sorted({l.split("::")[0] for l in lines if l and not l.startswith("#")})


def _imported_names(path):
  """Every module an import statement names, in the file's body or inside its functions."""
  tree = ast.parse(open(path).read())
  names = [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
  for n in ast.walk(tree):
    if isinstance(n, ast.ImportFrom) and n.module and not n.level:
      names.append(n.module)
      names += [f"{n.module}.{a.name}" for a in n.names]  # `from maxlm.eval import harness`
  return names


def _imports_torch(path):
  return any(n.split(".")[0] in ("torch", "transformers") for n in _imported_names(path))


def test_subset_files_exist_and_need_no_torch():
  for f in _subset_files():
    assert os.path.isfile(os.path.join(ROOT, f)), f"{f} listed in .ci/py312_tests.txt is gone"
    assert not _imports_torch(os.path.join(ROOT, f)), f"{f} imports torch: mark it, do not list it"


def test_every_torch_test_file_is_marked():
  for f in glob.glob(os.path.join(ROOT, "tests", "test_*.py")):
    if _imports_torch(f):
      assert "pytestmark = pytest.mark.torch" in open(f).read(), f"{f}: add pytestmark = pytest.mark.torch"


def test_subset_imports_every_maxlm_module():
  lazy = sorted({n for f in _subset_files() for n in _imported_names(os.path.join(ROOT, f))
                 if n.split(".")[0] in ("maxlm", "kernels")})
  code = f"""
import importlib, json, os, pkgutil, sys
sys.path[:0] = [{ROOT!r}, {os.path.join(ROOT, "tests")!r}]
for f in {_subset_files()!r}:
  importlib.import_module(os.path.basename(f)[:-3])
for name in {lazy!r}:
  try:
    importlib.import_module(name)
  except ImportError:  # `from maxlm.x import some_function` names a function, not a module
    pass
import maxlm
mods = [m.name for m in pkgutil.walk_packages(maxlm.__path__, "maxlm.")]
print(json.dumps(dict(missing=[m for m in mods if m not in sys.modules], kernels="kernels" in sys.modules)))
"""
  r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=1800,
                     env=dict(os.environ, JAX_PLATFORMS="cpu"))
  assert r.returncode == 0, r.stderr[-2000:]
  out = json.loads(r.stdout.strip().splitlines()[-1])
  assert out["kernels"]
  missing = sorted(set(out["missing"]) - set(EXEMPT))
  assert missing == [], f"add a test file covering {missing} to .ci/py312_tests.txt"
