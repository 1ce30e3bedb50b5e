"""kind="seqio": the raw text of a registered seqio Task or Mixture (issue 13.8).

  from maxlm.data import config as data_config
  c.data.sources.c4 = data_config.source(kind="seqio", domain="web", weight=1.0)
  c.data.sources.c4.task = "my_c4_task"   # a registered Task or Mixture
  c.data.sources.c4.module = "my_tasks"   # imported first: it registers the task ('' = none)
  c.data.sources.c4.split = "train"       # default "train"

Needs the optional extra in an environment of its own (requirements-seqio.txt
says how and why: seqio pulls in TensorFlow and needs protobuf >= 7.36 at
import, which apache-beam 2.77 refuses); the core never imports seqio or
TensorFlow: maxlm.data.sources registers the kind and imports this module only
when such a source is read.

What is read: the Task's *source* examples (`task.source.get_dataset(split)`,
before the Task's preprocessors and its own vocabulary), field `text_field`,
so maxlm tokenizes the text with the run's tokenizer like any other source and
the held-out split, doc ids, mixing and prepare work unchanged. A Mixture is
read task by task in its sub-task order (its rates are seqio's sampling, not
maxlm's: give each task its own maxlm source to weight them). `module` is
imported first: seqio Tasks are registered by importing the module that
defines them. Documents are keyed "<task>:<split>:<n>" (n = position in the
task's source), so the held-out split is stable across runs.

Bad input: an example without a string / bytes `text_field` is counted as
missing_field with its position, like a JSONL line without the field.
"""

from __future__ import annotations

import importlib
from typing import Iterator


def _tasks(name: str):
  try:
    import seqio  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise ImportError("data.sources kind='seqio' needs the seqio extra: pip install -c "
                      "constraints.txt -r requirements-seqio.txt") from e
  try:
    obj = seqio.get_mixture_or_task(name)
  except ValueError as e:
    raise ValueError(f"seqio task or mixture {name!r} is not registered ({e}); set the "
                     "source's module= to the module that registers it") from e
  return list(obj.tasks) if hasattr(obj, "tasks") and not hasattr(obj, "source") else [obj]


def read(src: dict, errors) -> Iterator[tuple[str, int, str]]:
  """(rel, position, text) of every example of the source's task(s) and split."""
  # This module never imports maxlm.data.config (config -> sources -> here would be a cycle).
  if not src.get("task"):
    raise ValueError(f"data.sources.{src['name']}.task is empty: name a registered seqio "
                     "Task or Mixture")
  if src.get("module"):
    importlib.import_module(src["module"])
  split, field = src.get("split") or "train", src.get("text_field") or "text"
  for task in _tasks(src["task"]):
    rel = f"{task.name}:{split}"
    ds = task.source.get_dataset(split=split, shuffle=False)
    for n, ex in enumerate(ds.as_numpy_iterator()):
      value = ex.get(field) if isinstance(ex, dict) else None
      if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
      if not isinstance(value, str):
        errors.add(rel, "missing_field", n, f"no string field {field!r}")
        continue
      yield rel, n, value
