"""kind="seqio" (issue 13.8): a registered seqio Task's / Mixture's source text is
read as documents, and the core never imports seqio or TensorFlow.

The seqio tests need the optional extra (requirements-seqio.txt, TensorFlow
included); without it they are skipped with that reason, and the two tests
that need no seqio still run. .ci/run's seqio stage sets MAXLM_REQUIRE_SEQIO=1, where a
missing or broken extra fails instead of skipping.
"""
import os
import subprocess
import sys

import pytest

from maxlm.data import config as config_lib
from maxlm.data import readers
from maxlm.data import seqio_source  # noqa: F401  (imports no seqio itself: asserted below)
from maxlm.data import sources as sources_lib

TEXTS = [f"Document number {i} says something about topic {i % 3}." for i in range(12)]


def test_core_never_imports_seqio_or_tensorflow():
  code = ("import sys, maxlm.data, maxlm.data.sources, maxlm.data.prepare, maxlm.data.seqio_source;"
          "print(sorted(m for m in sys.modules if m.split('.')[0] in ('seqio', 'tensorflow')))")
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
  assert out.stdout.strip() == "[]"


def _source(task, domain="d", split="train", text_field="text"):
  s = config_lib.source(kind="seqio", domain=domain, text_field=text_field)
  s.task, s.module, s.split = task, "", split
  return s


def _src(**kw):
  import ml_collections
  c = ml_collections.ConfigDict()
  c.sources = ml_collections.ConfigDict({"s": _source(**kw)})
  return config_lib.iter_sources(c)[0]


def test_missing_extra_is_named(monkeypatch):
  monkeypatch.setitem(sys.modules, "seqio", None)  # as if not installed
  src = _src(task="t")
  with pytest.raises(ImportError, match="requirements-seqio.txt"):
    list(sources_lib.iter_documents(src, readers.ErrorLog()))


@pytest.fixture(scope="module")
def tasks():
  if os.environ.get("MAXLM_REQUIRE_SEQIO") == "1":
    import seqio  # pylint: disable=g-import-not-at-top  (an ImportError fails the stage)
  else:
    seqio = pytest.importorskip("seqio", reason="the seqio extra (requirements-seqio.txt) is not installed")
  import tensorflow as tf

  def fn(texts):
    def dataset_fn(split, shuffle_files, seed=None):
      del shuffle_files, seed
      return tf.data.Dataset.from_tensor_slices({"text": texts if split == "train" else texts[:2]})
    return dataset_fn

  for name, texts in (("maxlm_test_a", TEXTS[:8]), ("maxlm_test_b", TEXTS[8:])):
    seqio.TaskRegistry.remove(name)
    seqio.TaskRegistry.add(name, source=seqio.FunctionDataSource(fn(texts), splits=("train", "validation")),
                           output_features={}, preprocessors=[])
  seqio.MixtureRegistry.remove("maxlm_test_mix")
  seqio.MixtureRegistry.add("maxlm_test_mix", [("maxlm_test_a", 1.0), ("maxlm_test_b", 1.0)])
  return seqio


def _docs(**kw):
  src = _src(**kw)
  errors = readers.ErrorLog()
  return list(sources_lib.iter_documents(src, errors)), errors


def test_task_texts_are_the_documents(tasks):
  docs, errors = _docs(task="maxlm_test_a")
  assert [d.text for d in docs] == TEXTS[:8] and errors.total == 0
  assert docs[3].key == "s:maxlm_test_a:train:3#0"
  docs, _ = _docs(task="maxlm_test_a", split="validation")
  assert [d.text for d in docs] == TEXTS[:2]
  docs, _ = _docs(task="maxlm_test_mix")  # a Mixture: its tasks in order
  assert sorted(d.text for d in docs) == sorted(TEXTS)
  docs, errors = _docs(task="maxlm_test_a", text_field="body")
  assert not docs and errors.total == 8 and "missing_field" in errors.report()


def test_unregistered_task_is_named(tasks):
  with pytest.raises(ValueError, match="not registered.*module="):
    _docs(task="no_such_task")


def test_trains_and_prepares_like_any_source(tasks, tmp_path, tokenizer_path):
  import numpy as np
  from maxlm import data
  from maxlm.data import prepare as prepare_lib
  c = data.default_data_config()
  c.sources = {"a": _source("maxlm_test_a", "x"), "b": _source("maxlm_test_b", "y")}
  c.schedule = ()
  c.heldout_fraction = 0.2
  raw = data.make_train_iterator(c, tokenizer_path=tokenizer_path, seq_len=16, global_batch=2, seed=0)
  m = prepare_lib.prepare(c, tokenizer_path, str(tmp_path / "s"), docs_per_shard=3, progress=False)
  assert m["sources"]["a"]["train"]["docs"] + m["sources"]["a"]["heldout"]["docs"] == 8
  c.prepared_dir = str(tmp_path / "s")
  shards = data.make_train_iterator(c, tokenizer_path=tokenizer_path, seq_len=16, global_batch=2, seed=0)
  for _ in range(3):
    a, b = next(raw), next(shards)
    for k in a:
      np.testing.assert_array_equal(a[k], b[k], err_msg=k)
