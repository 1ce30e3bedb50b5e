"""Exact dedup, MinHash estimates, LSH near dedup on planted near-duplicates, and
connected components inside Beam (against union-find)."""

import json
import os
import random

import apache_beam as beam
import numpy as np
import pytest
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.runners.portability.fn_api_runner import FnApiRunner

from maxlm.curate import dedup, minhash


def run_beam(make_outputs, tmp_path, name="out"):
  """Builds `make_outputs(p) -> {tag: pcoll}` in process, returns {tag: [records]}."""
  opts = PipelineOptions(["--direct_running_mode=in_memory"])
  with beam.Pipeline(runner=FnApiRunner(), options=opts) as p:
    outs = make_outputs(p)
    for tag, pc in outs.items():
      _ = (pc | f"json_{tag}" >> beam.Map(json.dumps)
           | f"write_{tag}" >> beam.io.WriteToText(str(tmp_path / f"{name}_{tag}"), num_shards=1,
                                                   shard_name_template=""))
  result = {}
  for tag in outs:
    with open(tmp_path / f"{name}_{tag}") as f:
      result[tag] = [json.loads(line) for line in f]
  return result


def _doc(i, text, score=None):
  meta = {} if score is None else {"quality_score": score}
  return {"id": i, "text": text, "source": "t", "meta": meta}


def test_exact_dedup_keeps_best_then_smallest_id(tmp_path):
  docs = [_doc("b", "same text"), _doc("a", "same text"), _doc("c", "same text"),
          _doc("x", "other", 0.1), _doc("y", "other", 0.9), _doc("z", "unique")]
  out = run_beam(lambda p: p | beam.Create(docs) | dedup.ExactDedup(), tmp_path)
  assert sorted(d["id"] for d in out["docs"]) == ["a", "y", "z"]
  assert sorted((r["id"], r["rule"], r["detail"]["kept"]) for r in out["rejects"]) == [
      ("b", "exact_duplicate", "a"), ("c", "exact_duplicate", "a"), ("x", "exact_duplicate", "y")]


# --- MinHash --------------------------------------------------------------

def _words(rng, n, vocab=100_000):
  return [f"t{rng.randrange(vocab)}" for _ in range(n)]


def _jaccard(a, b, n=5):
  sa, sb = minhash.shingle_set(a, n), minhash.shingle_set(b, n)
  return len(sa & sb) / len(sa | sb)


def test_minhash_estimate_matches_exact_jaccard():
  rng = random.Random(0)
  hasher = minhash.MinHasher(num_perm=256, seed=3)
  errors = []
  for _ in range(60):
    a = _words(rng, 300)
    b = list(a)
    start = rng.randrange(250)
    b[start:start + rng.randrange(1, 120)] = _words(rng, rng.randrange(1, 120))
    exact = _jaccard(" ".join(a), " ".join(b))
    est = minhash.estimate_jaccard(hasher.signature(" ".join(a)), hasher.signature(" ".join(b)))
    errors.append((est - exact) / max(np.sqrt(exact * (1 - exact) / 256), 1e-3))
  errors = np.array(errors)
  # Unbiased, with the binomial standard error: mean z near 0, |z| < 3.5 everywhere.
  assert abs(errors.mean()) < 0.5 and np.abs(errors).max() < 3.5


def test_shingle_hashes_match_shingle_sets():
  text = "a b c d e f g a b c d e"
  assert len(minhash.shingle_hashes(text, 5)) == len(minhash.shingle_set(text, 5)) == 7


def test_choose_bands_rows_and_probability():
  b, r = minhash.choose_bands_rows(0.8, 256, fp_weight=0.05, fn_weight=0.95)
  assert b * r <= 256
  assert minhash.candidate_probability(0.85, b, r) > 0.99  # banding then loses < 1% of true pairs
  assert minhash.candidate_probability(0.8, 1, 1) == pytest.approx(0.8)
  assert minhash.candidate_probability(0.5, 2, 1) == pytest.approx(0.75)


# --- Near dedup, end to end in Beam -------------------------------------------

def _pair_at(rng, target):
  """Two 300-word documents whose 5-shingle Jaccard is near `target`."""
  a = _words(rng, 300)
  # Replacing m contiguous words removes m + 4 of 296 shingles on each side.
  m = max(1, round(296 * (1 - target) / (1 + target)) - 4)
  b = list(a)
  start = rng.randrange(300 - m)
  b[start:start + m] = _words(rng, m)
  return " ".join(a), " ".join(b)


def test_near_dedup_recall_and_false_positives(tmp_path):
  rng = random.Random(1)
  threshold = 0.8
  pairs = []
  for k in range(240):
    target = rng.uniform(0.85, 0.97) if k % 2 == 0 else rng.uniform(0.55, 0.75)
    a, b = _pair_at(rng, target)
    pairs.append((f"p{k:03d}a", f"p{k:03d}b", _jaccard(a, b), a, b))
  docs = [_doc(ia, a) for ia, _, _, a, _ in pairs] + [_doc(ib, b) for _, ib, _, _, b in pairs]
  docs += [_doc(f"solo{i}", " ".join(_words(rng, 300))) for i in range(100)]
  out = run_beam(lambda p: p | beam.Create(docs) | dedup.NearDedup(threshold=threshold), tmp_path)
  removed = {r["id"]: r["detail"]["kept"] for r in out["rejects"]}
  high = [(ia, ib) for ia, ib, j, _, _ in pairs if j >= threshold + 0.05]
  low = [(ia, ib) for ia, ib, j, _, _ in pairs if j <= threshold - 0.05]
  assert len(high) > 80 and len(low) > 80
  recall = np.mean([removed.get(ib) == ia for ia, ib in high])  # a < b: a is kept
  fpr = np.mean([ia in removed or ib in removed for ia, ib in low])
  assert recall >= 0.95, recall
  assert fpr <= 0.05, fpr
  assert not any(i.startswith("solo") for i in removed)
  assert len(out["docs"]) + len(out["rejects"]) == len(docs)


def test_near_dedup_clusters_are_transitive(tmp_path):
  rng = random.Random(2)
  base = _words(rng, 400)
  a, b, c = (" ".join(base[s:s + 300]) for s in (0, 20, 40))  # shifted windows
  assert _jaccard(a, b) > 0.85 and _jaccard(b, c) > 0.85 and _jaccard(a, c) < 0.8
  docs = [_doc("c", c), _doc("b", b), _doc("a", a, score=0.0), _doc("other", " ".join(_words(rng, 300)))]
  out = run_beam(lambda p: p | beam.Create(docs) | dedup.NearDedup(threshold=0.8), tmp_path)
  assert sorted(d["id"] for d in out["docs"]) == ["a", "other"]
  assert {r["id"]: r["detail"]["kept"] for r in out["rejects"]} == {"b": "a", "c": "a"}
  assert out["cluster_sizes"] == [3]


def _union_find_roots(edges):
  parent = {}
  def find(x):
    parent.setdefault(x, x)
    while parent[x] != x:
      parent[x] = parent[parent[x]]
      x = parent[x]
    return x
  for u, v in edges:
    ru, rv = find(u), find(v)
    if ru != rv:
      parent[max(ru, rv)] = min(ru, rv)
  return {x: find(x) for x in list(parent) if find(x) != x}


def test_connected_components_match_union_find(tmp_path):
  rng = random.Random(3)
  labels = rng.sample(range(10_000), 300)
  path = [(labels[i], labels[i + 1]) for i in range(99)]            # a long path, shuffled labels
  rand = [(rng.choice(labels[100:]), rng.choice(labels[100:])) for _ in range(150)]
  edges = [e for e in path + rand if e[0] != e[1]]
  out = run_beam(lambda p: {"leaves": p | beam.Create(edges) | dedup.ConnectedComponents(rounds=8)},
                 tmp_path)
  assert dict(map(tuple, out["leaves"])) == _union_find_roots(edges)


def test_connected_components_fail_loudly_when_rounds_too_few(tmp_path):
  labels = random.Random(4).sample(range(10_000), 200)
  edges = [(labels[i], labels[i + 1]) for i in range(199)]
  with pytest.raises(Exception, match="did not converge"):
    run_beam(lambda p: {"leaves": p | beam.Create(edges) | dedup.ConnectedComponents(rounds=1)}, tmp_path)


def test_union_find_components_match_rounds_and_reference(tmp_path):
  rng = random.Random(5)
  labels = rng.sample(range(10_000), 300)
  path = [(labels[i], labels[i + 1]) for i in range(99)]
  rand = [(rng.choice(labels[100:]), rng.choice(labels[100:])) for _ in range(150)]
  edges = [e for e in path + rand if e[0] != e[1]]
  batches = [edges[i:i + 37] for i in range(0, len(edges), 37)]  # edges arrive in batches
  out = run_beam(lambda p: {
      "uf": p | "uf_in" >> beam.Create(batches) | dedup.UnionFindComponents()
              | beam.Map(lambda roots: sorted(roots.items())),
      "rounds": p | "r_in" >> beam.Create(edges) | dedup.ConnectedComponents(rounds=8)}, tmp_path)
  (uf,) = out["uf"]
  assert dict(map(tuple, uf)) == dict(map(tuple, out["rounds"])) == _union_find_roots(edges)


def test_union_find_refuses_more_nodes_than_bound(tmp_path):
  edges = [[(i, i + 1) for i in range(50)]]
  with pytest.raises(Exception, match="cc_max_nodes=10.*cc='rounds'"):
    run_beam(lambda p: {"uf": p | beam.Create(edges) | dedup.UnionFindComponents(max_nodes=10)}, tmp_path)


def test_near_dedup_union_find_equals_rounds_on_planted_corpus(tmp_path):
  """The union-find path (one worker, side-input drop) gives the previous connected
  components result (distributed rounds, join by id): same kept set, same kept copy per
  removed document, same cluster sizes -- on planted groups of 1-4 near copies, chains
  included, with scores deciding the kept copy."""
  rng = random.Random(6)
  docs = []
  for g in range(40):
    base = _words(rng, 320)
    for k in range(rng.randrange(1, 5)):
      words = list(base)
      words[rng.randrange(len(words))] = "changed"
      # Shifted windows make chains (a~b, b~c, a less like c) in some groups.
      start = 8 * k if g % 3 == 0 else 0
      docs.append(_doc(f"g{g:02d}-{k}", " ".join(words[start:start + 300]), rng.choice([None, 0.2, 0.7])))
  docs += [_doc(f"solo{i}", " ".join(_words(rng, 300))) for i in range(30)]
  rng.shuffle(docs)

  def both(p):
    src = p | beam.Create(docs)
    uf = src | "uf" >> dedup.NearDedup(threshold=0.8, cc="union_find")
    rounds = src | "rounds" >> dedup.NearDedup(threshold=0.8, cc="rounds", cc_rounds=8)
    return {f"{k}_{tag}": out[tag] for k, out in (("uf", uf), ("rounds", rounds))
            for tag in ("docs", "rejects", "cluster_sizes")}

  out = run_beam(both, tmp_path)
  kept = lambda tag: sorted(d["id"] for d in out[f"{tag}_docs"])  # noqa: E731
  removed = lambda tag: {r["id"]: r["detail"]["kept"] for r in out[f"{tag}_rejects"]}  # noqa: E731
  assert kept("uf") == kept("rounds")
  assert removed("uf") == removed("rounds")
  assert sorted(out["uf_cluster_sizes"]) == sorted(out["rounds_cluster_sizes"])
  assert len(removed("uf")) > 40 and not any(i.startswith("solo") for i in removed("uf"))
  # Independent check against exact shingle Jaccard: pairs well above the threshold share
  # a cluster (same kept document), and no document is removed without a near copy.
  by_id = {d["id"]: d["text"] for d in docs}
  root = lambda i: removed("uf").get(i, i)  # noqa: E731
  ids = sorted(by_id)
  near = [(a, b) for n, a in enumerate(ids) for b in ids[n + 1:]
          if a.split("-")[0] == b.split("-")[0] and not a.startswith("solo")
          and _jaccard(by_id[a], by_id[b]) >= 0.85]
  assert len(near) > 40 and all(root(a) == root(b) for a, b in near)
  for i in removed("uf"):
    assert max(_jaccard(by_id[i], by_id[j]) for j in ids if j != i) >= 0.75, i


def test_boilerplate_lines_removed_when_in_enough_documents(tmp_path):
  nav, footer = "Home | About | Contact", "Copyright 2024 Example Corp. All rights reserved."
  docs = []
  for i in range(6):
    body = f"Article {i} talks about topic number {i} at length.\nIt has a second line {i}."
    # nav in all 6 documents, footer in 4 (case and spacing vary), a shared quote in 2.
    lines = [nav, body] + ([footer.upper() + "  "] if i < 4 else []) + (["To be or not to be."] if i < 2 else [])
    docs.append(_doc(f"d{i}", "\n".join(lines)))
  docs.append(_doc("only_nav", nav + "\n\n" + footer))
  out = run_beam(lambda p: dedup.Boilerplate(min_docs=4).expand(p | beam.Create(docs)), tmp_path)
  kept = {d["id"]: d for d in out["docs"]}
  assert [r["id"] for r in out["rejects"]] == ["only_nav"]
  assert out["rejects"][0]["rule"] == "boilerplate_only"
  for i in range(6):
    text = kept[f"d{i}"]["text"]
    assert nav not in text and "COPYRIGHT" not in text and f"Article {i}" in text
    assert ("To be or not to be." in text) == (i < 2)  # in 2 < 4 documents: kept
    assert kept[f"d{i}"]["meta"]["boilerplate_lines"] == (2 if i < 4 else 1)
  with pytest.raises(ValueError, match="min_docs"):
    dedup.Boilerplate(min_docs=1)
