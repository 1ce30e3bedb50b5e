"""Tokenize-once shards (issue 3): manifest, resume, hash check, equivalence."""
import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest

from maxlm import data
from maxlm.data import config as config_lib
from maxlm.data import pipeline
from maxlm.data import prepare as prepare_lib
from maxlm.data import prepare_stream
from maxlm.data import tokenizer as tokenizer_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def small_config():
  c = data.default_data_config()
  c.sources.shakespeare.max_docs = 25
  c.sources.stdlib.max_docs = 25
  c.tokenizer.train_chars = 150_000
  c.heldout_fraction = 0.1
  c.num_packing_bins = 4
  c.read_threads = 1
  return c


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
  root = tmp_path_factory.mktemp("prep")
  tok = data.build_tokenizer(small_config(), str(root))
  out = str(root / "shards")
  manifest = prepare_lib.prepare(small_config(), tok, out, docs_per_shard=8, progress=False)
  return tok, out, manifest


def test_manifest_counts_documents_and_tokens(prepared):
  tok, out, manifest = prepared
  sp = tokenizer_lib.load(tok)
  assert manifest["tokenizer_sha256"] == tokenizer_lib.tokenizer_hash(tok)
  assert manifest["dtype"] == "<u2"
  for plan in pipeline.plan_sources(small_config()):
    m = manifest["sources"][plan.name]
    assert m["train"]["docs"] == len(plan.train) and m["heldout"]["docs"] == len(plan.heldout)
    assert m["train"]["tokens"] == sum(len(sp.encode(t)) for t, _ in plan.train)
    assert len(m["train"]["shards"]) == -(-len(plan.train) // 8)
    for shard in m["train"]["shards"]:
      assert os.path.isfile(os.path.join(out, shard))
  assert manifest["train_tokens_per_domain"]["prose"] == manifest["sources"]["shakespeare"]["train"]["tokens"]
  assert json.load(open(os.path.join(out, "manifest.json")))["sources"] == manifest["sources"]


def _assert_same_batches(c, prepared_dir, tok, seed, n):
  """Training batches from raw text (config c) equal those from prepared_dir."""
  raw = data.make_train_iterator(c, tokenizer_path=tok, seq_len=64, global_batch=4, seed=seed)
  c = c.copy_and_resolve_references()
  c.prepared_dir = prepared_dir
  shards = data.make_train_iterator(c, tokenizer_path=tok, seq_len=64, global_batch=4, seed=seed)
  for _ in range(n):
    a, b = next(raw), next(shards)
    for k in a:
      np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def test_training_from_shards_equals_training_from_raw_text(prepared):
  tok, out, _ = prepared
  _assert_same_batches(small_config(), out, tok, 3, 5)
  c = small_config()
  c.prepared_dir = out
  ev_raw = data.make_eval_batches(small_config(), tokenizer_path=tok, seq_len=64, global_batch=4)
  ev_sh = data.make_eval_batches(c, tokenizer_path=tok, seq_len=64, global_batch=4)
  assert set(ev_raw) == set(ev_sh)
  for dom in ev_raw:
    for a, b in zip(ev_raw[dom], ev_sh[dom]):
      for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def test_shard_document_counts_are_the_records_written(prepared, tmp_path, monkeypatch):
  # Several encode batches per shard: the count must cover the whole shard,
  # not its last batch (a count short of the records hides documents from training).
  tok, _, _ = prepared
  monkeypatch.setattr(prepare_lib, "_ENCODE_BATCH", 3)
  out = str(tmp_path / "s")
  m = prepare_lib.prepare(small_config(), tok, out, docs_per_shard=8, progress=False)
  from array_record.python import array_record_data_source
  for plan in pipeline.plan_sources(small_config()):
    entry = m["sources"][plan.name]["train"]
    records = [array_record_data_source.ArrayRecordDataSource([os.path.join(out, s)]).__len__()
               for s in entry["shards"]]
    assert entry["shard_docs"] == records and entry["docs"] == len(plan.train), plan.name


def _jsonl_config(paths, **source):
  from maxlm.data import config as config_lib
  c = small_config()
  c.sources = {"web": config_lib.source(kind="jsonl", domain="web", paths=tuple(paths), **source)}
  c.schedule = ()
  return c


_BAR = re.compile(r"prepare: .*?([\d.]+[kMG]?)B/([\d.]+[kMG]?)B read \[(\d\d:\d\d)<(\d\d:\d\d|\?)"
                  r".*?(\d+) shards, ([\d,]+) docs, ([\d.,]+[MG]?) tokens\]")


def _bar_lines(err: str) -> list[tuple]:
  return _BAR.findall(err.replace("\r", "\n"))


def test_in_process_progress_shows_bytes_documents_tokens_and_eta(prepared, tmp_path, capsys):
  # Issue 18: MB read / total MB (a .gz file counts its compressed bytes), an
  # ETA, and documents / tokens / shards; the last line reaches the total and
  # counts what the manifest lists.
  import gzip
  from tqdm import tqdm
  tok = prepared[0]
  _jsonl_corpus(tmp_path / "a.jsonl", 600)
  _jsonl_corpus(tmp_path / "b.jsonl", 400, seed=1)
  with open(tmp_path / "b.jsonl", "rb") as f, gzip.open(tmp_path / "b.jsonl.gz", "wb") as g:
    g.write(f.read())
  (tmp_path / "b.jsonl").unlink()
  total = sum(os.path.getsize(tmp_path / f) for f in ("a.jsonl", "b.jsonl.gz"))
  c = _jsonl_config([str(tmp_path / "*.jsonl*")])
  capsys.readouterr()
  m = prepare_lib.prepare(c, tok, str(tmp_path / "s"), docs_per_shard=64, progress=True)
  lines = _bar_lines(capsys.readouterr().err)
  assert len(lines) >= 2, lines
  n_shards = sum(len(s[k]["shards"]) for s in m["sources"].values() for k in ("train", "heldout"))
  docs = sum(s[k]["docs"] for s in m["sources"].values() for k in ("train", "heldout"))
  tokens = sum(s[k]["tokens"] for s in m["sources"].values() for k in ("train", "heldout"))
  size = tqdm.format_sizeof(total)
  read, of, _, eta, shards, n_docs, n_tok = lines[-1]
  assert (read, of) == (size, size), lines[-1]
  assert eta != "?" and n_shards > 10 and int(shards) == n_shards, lines[-1]
  assert int(n_docs.replace(",", "")) == docs == 1000
  assert float(n_tok.rstrip("M").replace(",", "")) * (1e6 if n_tok.endswith("M") else 1) == (
      pytest.approx(tokens, rel=1e-3))
  assert all(of == size for _, of, *_ in lines)  # the total is known from the first line


def test_progress_of_the_installed_corpora_has_a_byte_total_and_eta(prepared, tmp_path, capsys):
  # The README's prepare reads the installed corpora, which name no `paths`: their kinds
  # declare the files they read, so the bar has a byte total and an ETA too.
  from tqdm import tqdm
  from maxlm.data import sources as sources_lib
  c = small_config()
  files = [f for s in config_lib.iter_sources(c) for f in sources_lib.source_files(s)]
  assert len(files) > 100 and all(os.path.isfile(f) for f in files)
  capsys.readouterr()
  m = prepare_lib.prepare(c, prepared[0], str(tmp_path / "s"), docs_per_shard=8, progress=True)
  n = sum(len(s[k]["shards"]) for s in m["sources"].values() for k in ("train", "heldout"))
  lines = _bar_lines(capsys.readouterr().err)
  size = tqdm.format_sizeof(sum(os.path.getsize(f) for f in files))
  read, of, _, eta, shards, n_docs, _ = lines[-1]
  assert (read, of) == (size, size) and eta != "?", lines[-1]
  assert (int(shards), n_docs) == (n, "50")


def test_source_files_of_the_installed_kinds_are_what_they_read():
  # Each installed kind's declared files are the files its documents come from.
  from maxlm.data import sources as sources_lib
  from maxlm.data.readers import ErrorLog
  c = data.default_data_config("three_domains")
  for s in config_lib.iter_sources(c):
    files = sources_lib.source_files(s)
    s = dict(s, max_docs=40)
    docs = sources_lib.load_documents(s, ErrorLog())
    named = {os.path.basename(d.meta["path"]) for d in docs}
    if s["kind"] == "python_docs":
      assert [os.path.basename(f) for f in files] == ["topics.py"]
    else:
      assert named <= {os.path.basename(f) for f in files}, s["kind"]


def _bad_jsonl_bytes() -> bytes:
  """Every kind of line read_jsonl treats specially."""
  good = [json.dumps({"text": f"doc {i} " + "word " * (i % 7), "id": i}) for i in range(40)]
  odd = [b"", b"   ", b"{not json", json.dumps({"text": ""}).encode(), json.dumps({"t": "x"}).encode(),
         b"null", b"[1, 2]", b'  {"text": "leading space"}', b'{"text": "crlf"}\r',
         b'{"text": "caf\xc3\xa9 ok"}', b'{"text": "bad \xff byte"}', b'\xef\xbb\xbf{"text": "bom"}',
         b'{"text": "extra"} 5', b'{"text": "a"}{"text": "b"}', b'{"text": 5}', b'{"text": " \\u3000 "}',
         b'"just a string"', b'{"text": "tab\\tline"}\t']
  out = []
  for i, g in enumerate(good):
    out.append(g.encode())
    if i < len(odd):
      out.append(odd[i])
  return b"\n".join(out) + b"\n" + b'{"text": "last line, no newline"}'


@pytest.mark.parametrize("kind", ["plain", "gzip", "truncated_gzip"])
@pytest.mark.parametrize("chunk", [7, 100, 1 << 22])
def test_jsonl_text_batches_equal_read_jsonl(tmp_path, kind, chunk):
  # prepare's JSONL fast path yields read_jsonl's documents, line numbers and
  # error log (kinds, lines, details), whatever the block boundaries.
  import gzip
  from maxlm.data import readers
  raw = _bad_jsonl_bytes()
  path = tmp_path / ("c.jsonl" if kind == "plain" else "c.jsonl.gz")
  data = raw if kind == "plain" else gzip.compress(raw)
  path.write_bytes(data[:len(data) * 2 // 3] if kind == "truncated_gzip" else data)
  want_log, got_log = readers.ErrorLog(), readers.ErrorLog()
  want = [(r.line, r.text) for r in readers.read_file(str(path), want_log, fmt="jsonl")]
  got = [x for lines, texts in readers.jsonl_text_batches(str(path), got_log, chunk=chunk)
         for x in zip(lines, texts)]
  assert got == want and len(want) >= (15 if kind == "truncated_gzip" else 45)
  assert dict(got_log.counts) == dict(want_log.counts) and want_log.total >= 8
  assert {k: list(v) for k, v in got_log.lines.items()} == {
      k: list(v) for k, v in want_log.lines.items()}
  assert dict(got_log.examples) == dict(want_log.examples)
  if kind == "truncated_gzip":
    assert any(k == "truncated_file" for _, k in want_log.counts)


@pytest.mark.parametrize("rules", [{}, dict(max_doc_chars=20, min_doc_chars=12, max_docs=37)])
def test_streamed_jsonl_documents_equal_iter_documents(tmp_path, rules):
  # The batches prepare streams are sources.iter_documents' documents (keys
  # without the source name, texts), under the piece / filter / limit rules.
  from maxlm.data import config as config_lib
  from maxlm.data import readers
  from maxlm.data import sources as sources_lib
  (tmp_path / "a.jsonl").write_bytes(_bad_jsonl_bytes())
  _jsonl_corpus(tmp_path / "b.jsonl", 30, words=8)
  src = dict(config_lib.source(kind="jsonl", domain="web", paths=(str(tmp_path / "*.jsonl"),),
                               **rules), name="web")
  want_log, got_log = readers.ErrorLog(), readers.ErrorLog()
  want = [(d.key.split(":", 1)[1], d.text) for d in sources_lib.iter_documents(src, want_log)]
  got = [x for keys, texts in prepare_stream.document_batches(src, got_log)
         for x in zip(keys, texts)]
  assert got == want and len(want) == (37 if rules else 76)
  assert dict(got_log.counts) == dict(want_log.counts)


def test_held_out_equals_unit_hash():
  from maxlm.data import doc_index
  rng = np.random.default_rng(0)
  keys = [f"raw/part-{rng.integers(1e6)}.jsonl:{rng.integers(1e9)}#0" for _ in range(5000)]
  for fraction in (0.0, 1e-3, 0.05, 0.5, 1.0):
    want = np.array([fraction > 0 and doc_index.unit_hash(k) < fraction for k in keys])
    assert (prepare_stream.held_out(keys, fraction) == want).all(), fraction


def test_beam_options_default_to_local_processes():
  from maxlm.data import beam as beam_lib
  from apache_beam.options.pipeline_options import DirectOptions, WorkerOptions
  options, runner = beam_lib.pipeline_options([], 3)
  direct = options.view_as(DirectOptions)
  assert type(runner).__name__ == "FnApiRunner"  # never Prism (downloads a binary, fails offline)
  assert (direct.direct_running_mode, direct.direct_num_workers) == ("multi_processing", 3)
  # The user's flags win over the defaults.
  options, _ = beam_lib.pipeline_options(["--direct_num_workers=5", "--direct_running_mode=in_memory",
                                          "--default_sdk_harness_log_level=DEBUG"], 3)
  direct = options.view_as(DirectOptions)
  assert (direct.direct_running_mode, direct.direct_num_workers) == ("in_memory", 5)
  assert options.view_as(WorkerOptions).default_sdk_harness_log_level == "DEBUG"
  options, _ = beam_lib.pipeline_options(["--direct_running_mode=in_memory"], 3)
  assert options.view_as(DirectOptions).direct_num_workers == 1  # in_memory: one process
  # A cluster runner gets the options untouched and picks its own runner.
  options, runner = beam_lib.pipeline_options(["--runner=FlinkRunner"], 3)
  assert runner is None and options.view_as(DirectOptions).direct_num_workers == 1  # Beam's default


def test_in_process_prepare_streams_without_indexing(prepared, tmp_path, monkeypatch):
  # Nothing per document is held for a source without an order: no DocIndex
  # (O(documents)) is built, and the shards equal those of the planned path.
  tok, ref, _ = prepared
  from maxlm.data import sources as sources_lib

  def no_index(*args, **kwargs):
    raise AssertionError("prepare indexed a source it can stream")

  monkeypatch.setattr(sources_lib, "build_index", no_index)
  sources_lib._cached.cache_clear()
  out = tmp_path / "s"
  m = prepare_lib.prepare(small_config(), tok, str(out), docs_per_shard=8, progress=False)
  want = json.load(open(os.path.join(ref, "manifest.json")))
  assert m["sources"] == want["sources"]
  for s in want["sources"].values():
    for split in ("train", "heldout"):
      for shard in s[split]["shards"]:
        assert (out / shard).read_bytes() == open(os.path.join(ref, shard), "rb").read(), shard
  assert json.load(open(out / "errors.json")) == json.load(open(os.path.join(ref, "errors.json")))


@pytest.mark.parametrize("change", ["order_by", "tiny_heldout"])
def test_planned_sources_in_process_equal_raw_training(prepared, tmp_path, change):
  # A curriculum order needs every document (the source is planned whole); a
  # held-out fraction no document falls in holds out the lowest hash (planned
  # too, after the streaming pass finds none): both equal training from raw text.
  tok = prepared[0]
  c = small_config()
  if change == "order_by":
    c.sources.stdlib.order_by = "length"
  else:
    c.heldout_fraction = 1e-9
  out = str(tmp_path / "s")
  m = prepare_lib.prepare(c, tok, out, docs_per_shard=8, progress=False)
  for plan in pipeline.plan_sources(c):
    entry = m["sources"][plan.name]
    assert (entry["train"]["docs"], entry["heldout"]["docs"]) == (len(plan.train), len(plan.heldout))
  assert not [f for d in ("stdlib", "shakespeare") for f in os.listdir(os.path.join(out, d))
              if ".tmp" in f]
  _assert_same_batches(c, out, tok, 1, 4)


def test_tokenizer_mismatch_stops_before_training(prepared, tmp_path):
  _, out, _ = prepared
  c = small_config()
  c.tokenizer.vocab_size = 640
  other = tokenizer_lib.train_from_config(c, str(tmp_path / "other.model"))
  c = small_config()
  c.prepared_dir = out
  with pytest.raises(ValueError, match="tokenizer mismatch"):
    data.make_train_iterator(c, tokenizer_path=other, seq_len=64, global_batch=4, seed=0)
  with pytest.raises(ValueError, match="another tokenizer"):
    prepare_lib.prepare(small_config(), other, out, progress=False)


def test_prepare_resumes_without_redoing_finished_shards(prepared, tmp_path):
  tok, _, _ = prepared
  out = str(tmp_path / "shards")
  prepare_lib.prepare(small_config(), tok, out, docs_per_shard=8, progress=False)
  shard = os.path.join(out, "stdlib", "train-00001")
  # Interrupted mid-shard: the record file may exist, its summary does not.
  os.remove(shard + ".json")
  before = {f: os.path.getmtime(os.path.join(out, "shakespeare", f))
            for f in os.listdir(os.path.join(out, "shakespeare"))}
  m = prepare_lib.prepare(small_config(), tok, out, docs_per_shard=8, progress=False)
  assert m["last_run"]["shards_written"] == 1
  assert os.path.isfile(shard + ".json")
  after = {f: os.path.getmtime(os.path.join(out, "shakespeare", f)) for f in before}
  assert before == after


def test_cli_on_beam_writes_the_same_shards(prepared, tmp_path):
  tok, ref, _ = prepared
  out = tmp_path / "cli"
  cmd = [sys.executable, "-m", "maxlm.data.prepare", "--config=configs/data_mixture.py",
         f"--tokenizer={tok}", f"--out={out}", "--workers=2", "--docs_per_shard=8",
         "--config.sources.shakespeare.max_docs=25", "--config.sources.stdlib.max_docs=25",
         "--config.heldout_fraction=0.1",
         "--direct_num_workers=2"]  # a Beam pipeline flag, passed through
  res = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=1800)
  assert res.returncode == 0, res.stderr[-3000:]
  got = json.load(open(out / "manifest.json"))
  want = json.load(open(os.path.join(ref, "manifest.json")))
  for name in ("shakespeare", "stdlib"):
    assert got["sources"][name] == want["sources"][name]
    for split in ("train", "heldout"):
      for shard in want["sources"][name][split]["shards"]:
        assert (out / shard).read_bytes() == open(os.path.join(ref, shard), "rb").read(), shard
  # The bar and the summary count the same shards.
  n = sum(len(s[k]["shards"]) for s in got["sources"].values() for k in ("train", "heldout"))
  assert f"{n} shards ({n} written now)" in res.stdout
  # The bar's last state counts what the summary lists (issue 18: 13 vs 10).
  bars = re.findall(r"prepare: .*?(\d+) shards, ", res.stderr)
  assert bars and bars[-1] == str(n), bars[-3:]
  # Beam's local workers are quiet too (they logged ~12 INFO lines each).
  assert "INFO:apache_beam" not in res.stderr, res.stderr[-2000:]
  assert "manifest:" in res.stdout


def _records(out, manifest):
  """{shard: [(doc id, tokens)]} of every shard in the manifest."""
  from maxlm.data import shards as shards_lib
  from array_record.python import array_record_module as arm
  got = {}
  for s in manifest["sources"].values():
    for split in ("train", "heldout"):
      for shard in s[split]["shards"]:
        r = arm.ArrayRecordReader(os.path.join(out, shard))
        got[shard] = [(i, t.tolist()) for i, t in (
            shards_lib.decode_record(x, manifest["dtype"]) for x in r.read_all())]
        r.close()
  return got


def test_beam_prepare_over_byte_ranges_equals_in_process(prepared, tmp_path):
  # Beam (DirectRunner's multi_processing, 2 workers) reads JSONL files as byte
  # ranges (here ~3 kB: a file is many ranges, lines cut across them) and a .gz
  # whole; the shards hold the same documents, ids and tokens as the
  # in-process prepare's, the manifest the same counts, errors.json the same log.
  import gzip
  tok = prepared[0]
  raw = tmp_path / "raw"
  raw.mkdir()
  _jsonl_corpus(raw / "a.jsonl", 150, words=20)
  with open(raw / "a.jsonl", "ab") as f:
    f.write(_bad_jsonl_bytes())
  _jsonl_corpus(raw / "b.jsonl", 90, seed=1, words=20)
  with open(raw / "b.jsonl", "rb") as f, gzip.open(raw / "c.jsonl.gz", "wb") as g:
    g.write(f.read())
  (raw / "b.jsonl").unlink()
  _jsonl_corpus(raw / "d.jsonl", 40, seed=2, words=20)
  (raw / "e.jsonl.gz").write_bytes(b'{"text": "named gzip, holds plain text"}\n')  # an error
  c = _jsonl_config([str(raw / "*.jsonl*")])
  c.heldout_fraction = 0.1
  # A curriculum source needs all its documents: planned by the driver, its ids among the others.
  from maxlm.data import config as config_lib
  c.sources.sorted = config_lib.source(kind="jsonl", domain="web", paths=(str(raw / "d.jsonl"),),
                                       order_by="length")
  c.sources.tail = config_lib.source(kind="jsonl", domain="web", paths=(str(raw / "a.jsonl"),))
  # None of f.jsonl's 3 documents hashes into the held-out 10%: planning holds out the
  # lowest hash instead, which needs the whole source (planned by the driver, as in-process).
  few = tmp_path / "few"
  few.mkdir()
  _jsonl_corpus(few / "f.jsonl", 3, words=20)
  c.sources.few = config_lib.source(kind="jsonl", domain="web", paths=(str(few / "*"),))
  ref, out = str(tmp_path / "ref"), str(tmp_path / "beam")
  want = prepare_lib.prepare(c, tok, ref, docs_per_shard=16, progress=False)
  got = prepare_lib.prepare(c, tok, out, docs_per_shard=16, progress=False, workers=2,
                            range_bytes=3000, beam_args=["--runner=DirectRunner",
                                                         "--direct_running_mode=multi_processing"])

  assert len(prepare_stream.make_ranges(dict(c.sources.web, name="web"), 3000)) >= 8
  assert got["sources"] == want["sources"]
  assert sorted(got["sources"]) == ["few", "sorted", "tail", "web"]
  assert (got["sources"]["few"]["train"]["docs"], got["sources"]["few"]["heldout"]["docs"]) == (2, 1)
  assert got["sources"]["web"]["heldout"]["docs"] > 10
  assert _records(out, got) == _records(ref, want)
  errors = json.load(open(os.path.join(out, "errors.json")))
  assert errors == json.load(open(os.path.join(ref, "errors.json")))
  assert "unreadable_file" in errors["web"]["report"] and "malformed_jsonl" in errors["web"]["report"]
  # Only the small per-range results stay beside the shards; a rerun writes nothing.
  left = os.listdir(os.path.join(out, "_ranges", "web"))
  assert left and not [f for f in left if f.endswith(".array_record")]
  again = prepare_lib.prepare(c, tok, out, docs_per_shard=16, progress=False, workers=2,
                              range_bytes=3000)
  assert again["last_run"]["shards_written"] == 0 and again["sources"] == want["sources"]


def _jsonl_corpus(path, n_docs, seed=0, words=60):
  """n_docs JSONL documents of pseudo-English (words from a fixed list)."""
  rng = np.random.default_rng(seed)
  vocab = ("the of and to in is was that for it with as his on be at by had not are but from "
           "or have an they which one you were her all she there would their we him been has "
           "when who will more no if out so said what up its about into than them can only").split()
  with open(path, "w") as f:
    for i in range(n_docs):
      text = " ".join(rng.choice(vocab, size=int(rng.integers(words // 2, 2 * words))))
      f.write(json.dumps({"text": text, "id": i}) + "\n")


@pytest.mark.slow
def test_training_from_shards_needs_no_raw_files(tmp_path, prepared):
  from conftest import tiny_test_config
  from maxlm.data import config as config_lib
  from maxlm.train.driver import train
  tok = prepared[0]
  raw = tmp_path / "raw"
  raw.mkdir()
  _jsonl_corpus(raw / "a.jsonl", 300)
  with open(raw / "a.jsonl", "a") as f:
    f.write("{not json\n")  # one bad line: its report must survive the raw files
  cfg = tiny_test_config(**{"data.tokenizer.path": tok, "train.steps": 3,
                            "ckpt.export_params": True})
  with cfg.unlocked():
    cfg.data.sources = {"web": config_lib.source(kind="jsonl", domain="web",
                                                  paths=(str(raw / "*.jsonl"),))}
    cfg.data.schedule = ()
  shards = str(tmp_path / "shards")
  prepare_lib.prepare(cfg.data, tok, shards, docs_per_shard=64, progress=False)
  for p in raw.iterdir():
    p.unlink()
  raw.rmdir()
  from maxlm.data import sources as sources_lib
  sources_lib._cached.cache_clear()  # this process read them during prepare
  with cfg.unlocked():
    cfg.data.prepared_dir = shards
  summary = train(cfg, str(tmp_path / "run"))
  assert summary["step"] == 3 and not summary["preempted"]
  assert (tmp_path / "run" / "done.json").exists()
  assert (tmp_path / "run" / "params").is_dir()
  errors = (tmp_path / "run" / "data_errors.txt").read_text()
  assert "1 bad inputs" in errors and "malformed_jsonl" in errors


def test_killed_prepare_rerun_gives_identical_shards_and_manifest(prepared, tmp_path):
  tok, ref, _ = prepared
  out = tmp_path / "shards"
  prepare_lib.prepare(small_config(), tok, str(out), docs_per_shard=8, progress=False)
  # Every state a kill can leave: a shard renamed without its summary, a
  # half-written temporary file, shards not started, and no manifest yet.
  (out / "stdlib" / "train-00001.json").unlink()
  with open(out / "stdlib" / "train-00001.array_record", "r+b") as f:
    f.truncate(100)
  (out / "shakespeare" / "train-00002.json").unlink()
  (out / "shakespeare" / "train-00002.array_record").rename(
      out / "shakespeare" / "train-00002.array_record.tmp123")
  for f in ("heldout-00000.json", "heldout-00000.array_record"):
    (out / "shakespeare" / f).unlink()
  (out / "manifest.json").unlink()
  m = prepare_lib.prepare(small_config(), tok, str(out), docs_per_shard=8, progress=False)
  assert m["last_run"]["shards_written"] == 3
  want = json.load(open(os.path.join(ref, "manifest.json")))
  got = json.load(open(out / "manifest.json"))
  for d in (want, got):
    d.pop("last_run")
    d.pop("tokenizer_path")
  assert got == want
  for s in want["sources"].values():
    for split in ("train", "heldout"):
      for shard in s[split]["shards"]:
        assert (out / shard).read_bytes() == open(os.path.join(ref, shard), "rb").read(), shard
  assert not [f for d in ("stdlib", "shakespeare") for f in os.listdir(out / d) if ".tmp" in f]


def test_shards_are_cut_by_a_token_target(prepared, tmp_path):
  tok, _, _ = prepared
  m = prepare_lib.prepare(small_config(), tok, str(tmp_path / "s"), shard_tokens=20_000,
                          progress=False)
  for name, s in m["sources"].items():
    toks = s["train"]["shard_tokens"]
    assert len(toks) >= 2 and sum(toks) == s["train"]["tokens"], name
    # Documents per shard come from a sample, so shards average to the target
    # (here 2-8 documents each: a single one varies with document lengths).
    assert 10_000 <= np.mean(toks[:-1]) <= 40_000, (name, toks)
  with open(tmp_path / "s" / "prepare_plan.json") as f:
    assert json.load(f)["docs_per_shard"] == {
        n: s["train"]["shard_docs"][0] for n, s in m["sources"].items()}
