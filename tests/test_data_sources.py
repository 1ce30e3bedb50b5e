"""Sources, bad input, curriculum ordering (issue 3)."""
import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from maxlm import data
from maxlm.data import config as config_lib
from maxlm.data import ordering
from maxlm.data import pipeline
from maxlm.data import sources as sources_lib


def _src(kind, paths, **kw):
  s = config_lib.source(kind=kind, domain="web", paths=paths, **kw).to_dict()
  s["name"] = "t"
  return s


def test_jsonl_keeps_metadata(tmp_path):
  p = tmp_path / "a.jsonl"
  p.write_text(json.dumps({"text": "hello", "quality": 0.5, "url": "u"}) + "\n")
  (doc,) = sources_lib.load_documents(_src("jsonl", [str(p)]))
  assert doc.text == "hello" and doc.meta["quality"] == 0.5 and doc.meta["url"] == "u"
  assert doc.meta["line"] == 1


def test_every_bad_input_is_counted_with_file_and_line(tmp_path):
  p = tmp_path / "bad.jsonl"
  p.write_bytes(b'{"text": "good one"}\n'
                b'{"text": "broken\n'  # line 2: malformed JSON
                b'{"body": "no text field"}\n'  # line 3: missing field
                b'{"text": ""}\n'  # line 4: empty document
                b'{"text": "caf\xe9 latin-1"}\n')  # line 5: invalid UTF-8
  corrupt = tmp_path / "c.parquet"
  corrupt.write_bytes(b"PAR1 this is not parquet")
  errors = sources_lib.ErrorLog()
  docs = sources_lib.load_documents(_src("jsonl", [str(p)]), errors)
  docs += sources_lib.load_documents(_src("parquet", [str(corrupt)]), errors)
  assert [d.text for d in docs] == ["good one", "caf\ufffd latin-1"]
  kinds = {k: n for (path, k), n in errors.counts.items()}
  assert kinds == {"malformed_jsonl": 1, "missing_field": 1, "empty_document": 1,
                   "invalid_utf8": 1, "unreadable_file": 1}
  report = errors.report()
  assert f"{p}:2: malformed_jsonl" in report and f"{p}:3: missing_field" in report
  assert f"{p}:4: empty_document" in report and f"{p}:5: invalid_utf8" in report
  assert str(corrupt) in report


def test_error_budget_stops_the_run_with_its_message(tmp_path):
  p = tmp_path / "bad.jsonl"
  p.write_text("\n".join(["{not json"] * 5 + ['{"text": "ok"}']))
  with pytest.raises(sources_lib.DataErrorBudgetExceeded, match=r"budget 3.*bad.jsonl:4"):
    sources_lib.load_documents(_src("jsonl", [str(p)]), sources_lib.ErrorLog(budget=3))
  # The pipeline applies data.error_budget over all sources.
  c = data.default_data_config()
  c.sources = {"t": _src("jsonl", [str(p)])}
  c.error_budget = 2
  with pytest.raises(data.DataErrorBudgetExceeded, match="error_budget"):
    pipeline.plan_sources(c)
  c.error_budget = 10
  assert "malformed_jsonl" in data.error_report(c)


def test_missing_files_fail_loudly(tmp_path):
  with pytest.raises(FileNotFoundError, match="match no files"):
    sources_lib.load_documents(_src("text_files", [str(tmp_path / "*.txt")]))


def test_parquet_and_text_files(tmp_path):
  pq.write_table(pa.table({"content": ["a b c", "d e"], "score": [2, 1]}), tmp_path / "x.parquet")
  docs = sources_lib.load_documents(_src("parquet", [str(tmp_path / "*.parquet")],
                                         text_field="content"))
  assert [d.text for d in docs] == ["a b c", "d e"] and docs[1].meta["score"] == 1
  (tmp_path / "t").mkdir()
  (tmp_path / "t" / "one.txt").write_text("x" * 50 + "\n\n" + "y" * 50)
  docs = sources_lib.load_documents(_src("text_files", [str(tmp_path / "t" / "*.txt")],
                                         max_doc_chars=60))
  assert [d.text for d in docs] == ["x" * 50 + "\n\n", "y" * 50]
  assert docs[0].key == "t:one.txt#0"


def test_heldout_split_is_stable_and_disjoint():
  docs = [sources_lib.Document(f"s:{i}", "t") for i in range(500)]
  train, held = sources_lib.split_heldout(docs, 0.1)
  assert 30 < len(held) < 70 and not {d.key for d in train} & {d.key for d in held}
  # Adding documents never moves an old one across the split.
  train2, held2 = sources_lib.split_heldout(docs + [sources_lib.Document("s:new", "t")], 0.1)
  assert {d.key for d in held} <= {d.key for d in held2}


def test_curriculum_by_metadata_score(tmp_path):
  p = tmp_path / "c.jsonl"
  rng = np.random.default_rng(0)
  scores = rng.permutation(40)
  p.write_text("\n".join(json.dumps({"text": f"document number {s} " * 5, "difficulty": int(s)})
                         for s in scores))
  docs = sources_lib.load_documents(_src("jsonl", [str(p)]))
  asc = ordering.order_documents(docs, "difficulty")
  assert [d.meta["difficulty"] for d in asc] == sorted(scores)
  desc = ordering.order_documents(docs, "difficulty", desc=True)
  assert [d.meta["difficulty"] for d in desc] == sorted(scores, reverse=True)
  with pytest.raises(ValueError, match="no numeric 'quality'"):
    ordering.order_documents(docs, "quality")


def test_curriculum_order_reaches_the_batches(tmp_path):
  p = tmp_path / "c.jsonl"
  p.write_text("\n".join(json.dumps({"text": "word " * (5 + i), "d": -i}) for i in range(30)))
  c = data.default_data_config()
  c.sources = {"t": dict(_src("jsonl", [str(p)]), order_by="d")}
  c.heldout_fraction = 0.0
  base = data.default_data_config()
  base.sources.shakespeare.max_docs = base.sources.stdlib.max_docs = 10
  base.tokenizer.train_chars = 100_000
  tok = data.build_tokenizer(base, str(tmp_path))
  def first_appearances(packing_kind):
    c.packing = packing_kind
    it = data.make_train_iterator(c, tokenizer_path=tok, seq_len=64, global_batch=2, seed=0,
                                  keep_doc_ids=True)
    seen = []
    for _ in range(20):
      for d in next(it)["doc_ids"].ravel().tolist():
        if d >= 0 and d not in seen:
          seen.append(d)
    return seen

  # d = -i ascending: the longest documents (largest i) first. concat_split
  # keeps the order exactly; first_fit only up to a packed batch (its bins).
  assert first_appearances("concat_split")[:20] == list(range(29, 9, -1))
  seen = first_appearances("first_fit")[:20]
  assert np.mean(seen[:10]) > np.mean(seen[10:]) + 5


def test_similarity_chain_puts_related_documents_side_by_side():
  rng = np.random.default_rng(0)
  topics = [["ship", "sail", "sea", "wave", "storm", "mast", "port", "crew"],
            ["def", "return", "class", "self", "import", "lambda", "yield", "pass"],
            ["king", "crown", "throne", "court", "lord", "queen", "realm", "duke"]]
  texts, labels = [], []
  for k in range(30):
    t = k % 3
    texts.append(" ".join(rng.choice(topics[t], 60)))
    labels.append(t)
  order = ordering.similarity_chain(texts)
  assert sorted(order) == list(range(30))
  same = sum(labels[a] == labels[b] for a, b in zip(order, order[1:]))
  assert same >= 26  # 29 neighbours, at most 2 topic changes plus slack


@pytest.mark.parametrize("field,value,message", [
    ("packing", "best_fit", "data.packing"),
    ("long_doc_policy", "drop", "data.long_doc_policy"),
    ("heldout_fraction", 1.0, "data.heldout_fraction"),
    ("reuse_decay", 0.0, "data.reuse_decay"),
    ("schedule", (dict(start=5, weights=dict(nope=1.0)),), "unknown sources"),
    ("sources.stdlib.kind", "html", "data.sources.stdlib.kind"),
    ("sources.stdlib.max_epochs", -1, "data.sources.stdlib.max_epochs"),
])
def test_config_errors_name_the_field(field, value, message):
  c = data.default_data_config()
  node, *_, leaf = [c] + field.split(".")
  for part in field.split(".")[:-1]:
    node = node[part]
  node[leaf] = value
  with pytest.raises(ValueError, match=message):
    config_lib.validate(c)


def test_array_record_source_and_min_doc_chars(tmp_path):
  from array_record.python import array_record_module as arm
  w = arm.ArrayRecordWriter(str(tmp_path / "d.array_record"), "group_size:1")
  for rec in [b"short", json.dumps({"text": "a much longer document", "q": 3}).encode(),
              b"plain text that is long enough", b"\xff\xfe broken utf-8 but long"]:
    w.write(rec)
  w.close()
  src = _src("array_record", [str(tmp_path / "*.array_record")], min_doc_chars=10)
  errors = sources_lib.ErrorLog()
  docs = sources_lib.load_documents(src, errors)
  assert [d.text for d in docs] == ["a much longer document", "plain text that is long enough",
                                    "\ufffd\ufffd broken utf-8 but long"]
  assert docs[0].meta["q"] == 3
  assert sum(n for (_, k), n in errors.counts.items() if k == "invalid_utf8") == 1


def test_overlapping_sources_hold_out_the_same_documents():
  all_code = config_lib.source(kind="python_stdlib", domain="code", max_docs=200).to_dict()
  long_code = config_lib.source(kind="python_stdlib", domain="code", max_docs=200,
                                min_doc_chars=5000).to_dict()
  held = {}
  for name, s in (("all", all_code), ("long", long_code)):
    docs = sources_lib.load_documents(dict(s, name=name))
    train, h = sources_lib.split_heldout(docs, 0.1)
    held[name] = ({d.key.split(":", 1)[1] for d in h}, {d.key.split(":", 1)[1] for d in train})
  # No document is trained on by one source and held out by the other.
  assert not held["all"][0] & held["long"][1] and not held["long"][0] & held["all"][1]


@pytest.mark.parametrize("suffix", [".jsonl.gz", ".jsonl.zst"])
def test_compressed_jsonl_reads_like_plain(tmp_path, suffix):
  """maxlm.curate writes .jsonl.zst; the data pipeline reads it (and .gz) directly."""
  import gzip
  import json as json_lib
  import zstandard
  from maxlm.data import sources as sources_lib
  from maxlm.data.config import source
  lines = "".join(json_lib.dumps({"text": f"document {i}", "id": i}) + "\n" for i in range(5))
  plain, packed = tmp_path / "a.jsonl", tmp_path / f"b{suffix}"
  plain.write_text(lines)
  data = lines.encode()
  packed.write_bytes(gzip.compress(data) if suffix.endswith(".gz")
                     else zstandard.ZstdCompressor().compress(data))
  read = lambda p: [(d.text, d.meta["id"]) for d in sources_lib.load_documents(
      dict(name="s", **source(kind="jsonl", domain="web", paths=(str(p),)).to_dict()))]
  assert read(packed) == read(plain) == [(f"document {i}", i) for i in range(5)]


# ---------------------------------------------------------------------------
# Bad input, complete (issue 17.7) and streaming (issue 13.6)
# ---------------------------------------------------------------------------

def _lines_jsonl(n, start=0):
  return "".join(json.dumps({"text": f"document {i} " + "word " * (i % 7)}) + "\n"
                 for i in range(start, start + n)).encode()


def test_zst_that_is_not_zstd_is_counted_naming_the_file(tmp_path):
  import gzip
  fake = tmp_path / "fake.jsonl.zst"
  fake.write_bytes(_lines_jsonl(5))  # plain JSONL under a .zst name
  mislabelled = tmp_path / "gz.jsonl.zst"
  mislabelled.write_bytes(gzip.compress(_lines_jsonl(3)))  # gzip under a .zst name
  errors = sources_lib.ErrorLog()
  docs = sources_lib.load_documents(_src("jsonl", [str(tmp_path / "*.zst")]), errors)
  # The gzip one is read by its magic bytes (and counted); the other is refused by name.
  assert [d.text.split()[1] for d in docs] == ["0", "1", "2"]
  assert errors.counts == {(str(fake), "unreadable_file"): 1,
                           (str(mislabelled), "compression_mismatch"): 1}
  assert f"{fake}: unreadable_file named zstd but is not zstd data" in errors.report()
  # Training start-up reports it as bad input, not as a ZstdError traceback.
  c = data.default_data_config()
  c.sources = {"t": _src("jsonl", [str(fake), str(mislabelled)])}
  c.error_budget = 10
  assert len(pipeline.plan_sources(c)[0].train) + len(pipeline.plan_sources(c)[0].heldout) == 3
  assert str(fake) in data.error_report(c)


@pytest.mark.parametrize("suffix", [".jsonl.gz", ".jsonl.zst"])
def test_truncated_archive_keeps_its_readable_part(tmp_path, suffix):
  import gzip
  import zstandard
  raw = _lines_jsonl(2000)
  if suffix.endswith(".gz"):
    packed = gzip.compress(raw)
  else:  # frames of 4 KiB, as a streaming writer flushes them: the cut loses only its frame
    cctx = zstandard.ZstdCompressor()
    packed = b"".join(cctx.compress(raw[i:i + 4096]) for i in range(0, len(raw), 4096))
  p = tmp_path / f"cut{suffix}"
  p.write_bytes(packed[:len(packed) // 2])
  errors = sources_lib.ErrorLog()
  docs = sources_lib.load_documents(_src("jsonl", [str(p)]), errors)
  n = len(docs)
  assert 2000 * 0.3 < n < 2000 * 0.7  # about half, not nothing
  # Exactly what was readable, in order, and the cut is one error at the next line.
  assert [d.text for d in docs] == [json.loads(l)["text"] for l in raw.decode().splitlines()[:n]]
  assert errors.counts == {(str(p), "truncated_file"): 1}
  assert list(errors.lines[(str(p), "truncated_file")]) == [n + 1]
  offset = sum(len(l) for l in raw.splitlines(keepends=True)[:n])
  assert f"uncompressed byte {offset}" in errors.report()


def test_every_bad_line_is_listed_grouped_by_kind_and_file(tmp_path):
  a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
  bad_a = [2, 3, 4, 9, 11]
  a.write_text("\n".join("{broken" if i in bad_a else json.dumps({"text": f"t{i}"})
                         for i in range(1, 13)) + "\n")
  b.write_text("\n".join(['{"x": 1}'] * 3 + ['{"text": "ok"}', "{broken"]) + "\n")
  c = data.default_data_config()
  c.sources = {"t": _src("jsonl", [str(tmp_path / "*.jsonl")])}
  c.error_budget = -1
  report = data.error_report(c)
  lines = report.splitlines()
  # Kinds are headings with their totals; under each, one line per file with every line number.
  assert "malformed_jsonl: 6" in lines and "missing_field: 3" in lines
  assert any(l.strip() == f"5  {a} lines 2-4, 9, 11" for l in lines)
  assert any(l.strip() == f"1  {b} lines 5" for l in lines)
  assert any(l.strip() == f"3  {b} lines 1-3" for l in lines)
  assert lines.index("malformed_jsonl: 6") < lines.index("missing_field: 3")


def test_lazy_index_reads_the_same_documents_as_the_list(tmp_path):
  """The index (training) and load_documents (list) agree: keys, texts, order, pieces."""
  import gzip
  (tmp_path / "a.jsonl").write_bytes(_lines_jsonl(30))
  (tmp_path / "b.jsonl.gz").write_bytes(gzip.compress(_lines_jsonl(20, start=30)))
  pq.write_table(pa.table({"text": ["p " * 40, "q " * 3]}), tmp_path / "c.parquet")
  for kind, pattern, kw in (("jsonl", "*.jsonl*", dict(max_doc_chars=25)),
                            ("parquet", "*.parquet", dict(max_doc_chars=30)),
                            ("shakespeare", None, dict(max_doc_chars=5000, max_docs=40))):
    src = _src(kind, [str(tmp_path / pattern)] if pattern else [], **kw)
    listed = sources_lib.load_documents(src)
    index = sources_lib.build_index(src)
    assert len(index) == len(listed) > 0
    assert [index.key(i) for i in range(len(index))] == [d.key for d in listed]
    got = [index.text(i) for i in np.random.default_rng(0).permutation(len(index))]
    want = [listed[i].text for i in np.random.default_rng(0).permutation(len(index))]
    assert got == want
    seq, _ = sources_lib.cached_documents(src)
    train, held = sources_lib.split_heldout(seq, 0.2)
    ltrain, lheld = sources_lib.split_heldout(listed, 0.2)
    assert [d.key for d in train] == [d.key for d in ltrain]
    assert [d.key for d in held] == [d.key for d in lheld]


_MEMORY_PROBE = r"""
import json, resource, sys
from maxlm import data
from maxlm.data import config as config_lib
corpus, tok = sys.argv[1], sys.argv[2]
c = data.default_data_config()
c.sources = {"web": config_lib.source(kind="jsonl", domain="web", paths=(corpus,), max_doc_chars=4000)}
c.heldout_fraction = 0.01
it = data.make_train_iterator(c, tokenizer_path=tok, seq_len=256, global_batch=4, seed=0)
for _ in range(20):
  next(it)
# VmHWM, not ru_maxrss: Linux carries ru_maxrss across execve, so it would report the
# pytest worker's own peak (this process's parent) whenever that is the larger.
hwm = [l for l in open("/proc/self/status") if l.startswith("VmHWM:")]
kb = int(hwm[0].split()[1]) if hwm else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"peak_rss_kb": kb}))
"""


@pytest.mark.slow
def test_raw_training_memory_does_not_grow_with_the_corpus(tmp_path):
  """Raw JSONL of 8 MB and 40 MB: training start-up and 20 batches in subprocesses; the
  peak RSS grows by far less than the corpus (the old list of texts: +136 MB for +32 MB)."""
  import os
  import subprocess
  import sys
  base = data.default_data_config()
  base.sources.shakespeare.max_docs = base.sources.stdlib.max_docs = 20
  base.tokenizer.train_chars = 100_000
  tok = data.build_tokenizer(base, str(tmp_path))
  rng = np.random.default_rng(0)
  vocab = np.array(["the", "data", "stream", "index", "memory", "corpus", "token", "model",
                    "reads", "every", "line", "once"])
  sizes, rss = {}, {}
  for name, mb in (("small", 8), ("big", 40)):
    path = tmp_path / f"{name}.jsonl"
    with open(path, "w") as f:
      while f.tell() < mb * 1e6:
        words = vocab[rng.integers(0, len(vocab), (1000, 180))]
        f.write("".join(json.dumps({"text": " ".join(w), "id": int(i)}) + "\n"
                        for i, w in enumerate(words)))
    sizes[name] = os.path.getsize(path)
    out = subprocess.run([sys.executable, "-c", _MEMORY_PROBE, str(path), tok], check=True,
                         capture_output=True, text=True, env=dict(os.environ, JAX_PLATFORMS="cpu"))
    rss[name] = json.loads(out.stdout.strip().splitlines()[-1])["peak_rss_kb"] * 1024
  grew, corpus_grew = rss["big"] - rss["small"], sizes["big"] - sizes["small"]
  print("peak RSS", rss, "corpus bytes", sizes)
  assert grew < 0.25 * corpus_grew, (rss, sizes)
