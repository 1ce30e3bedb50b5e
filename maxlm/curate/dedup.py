"""Exact and near-duplicate removal as Beam PTransforms.

Exact dedup groups documents by a hash of their normalised text and keeps one per
group. Near dedup follows Lee et al. 2022 ("Deduplicating Training Data Makes
Language Models Better") and FineWeb: MinHash signatures over word 5-grams, LSH
banding to find candidate pairs, a check of each candidate's estimated Jaccard
against the threshold (banding alone has a soft S-curve: with 128 permutations it
cannot both catch 95% of pairs at s = 0.85 and pass fewer than 5% at 0.75), and
the surviving pairs joined into clusters by connected components.

Connected components run inside Beam as alternating large-star / small-star
rounds (Kiveris et al. 2014, "Connected Components in MapReduce and Beyond"):
each round is one GroupByKey over edges, no worker ever holds more than one
node's neighbourhood, and O(log^2 n) rounds suffice. The rounds are unrolled
(`cc_rounds`); a final check fails the run loudly if the graph is not yet a set
of stars rather than emitting wrong clusters.

Which copy is kept, in both dedups: the highest `quality_score` in meta, then
the smallest id (`stages.rank_key`) -- the same document whatever the number of
workers, because nodes are compared by that key and the star centre of a
converged component is its minimum.
"""

from __future__ import annotations

import hashlib

import apache_beam as beam

from maxlm.curate import minhash
from maxlm.curate.stages import make_reject, rank_key


# ---------------------------------------------------------------------------
# Exact dedup
# ---------------------------------------------------------------------------

def text_hash(text: str) -> str:
  return hashlib.sha1(text.encode("utf-8")).hexdigest()


def _keep_first(key_docs, score_field):
  _, docs = key_docs
  docs = sorted(docs, key=lambda d: rank_key(d, score_field))
  yield docs[0]
  for d in docs[1:]:
    yield beam.pvalue.TaggedOutput(
        "rejects", make_reject(d, "exact_dedup", "exact_duplicate", {"kept": docs[0]["id"]}))


class ExactDedup(beam.PTransform):
  def __init__(self, *, score_field="quality_score", enabled=True):
    super().__init__(label="exact_dedup")
    self._score_field = score_field

  def expand(self, docs):
    out = (docs
           | "by_hash" >> beam.Map(lambda d: (text_hash(d["text"]), d))
           | "group" >> beam.GroupByKey()
           | "keep" >> beam.FlatMap(_keep_first, self._score_field).with_outputs("rejects", main="docs"))
    return {"docs": out.docs, "rejects": out.rejects}


# ---------------------------------------------------------------------------
# Line-level boilerplate (lines repeated across many documents)
# ---------------------------------------------------------------------------

def _line_key(line: str) -> str:
  # Lines are compared after stripping and case folding: "Share this page" and
  # "share this page " are the same navigation link.
  return hashlib.sha1(line.strip().casefold().encode("utf-8")).hexdigest()[:16]


def _doc_lines(doc, min_line_chars):
  """(line key, doc id) once per distinct line of a document."""
  keys = {_line_key(line) for line in doc["text"].split("\n") if len(line.strip()) >= min_line_chars}
  for key in sorted(keys):
    yield key, doc["id"]


def _boilerplate_hits(key_groups, min_docs):
  """For a line repeated in >= min_docs documents: (doc id, line key) for each of them."""
  key, doc_ids = key_groups
  doc_ids = list(doc_ids)
  if len(doc_ids) >= min_docs:
    for doc_id in doc_ids:
      yield doc_id, key


def _strip_boilerplate(id_groups, min_line_chars):
  _, grouped = id_groups
  bad = set(grouped["line"])
  for doc in grouped["doc"]:
    if not bad:
      yield doc
      continue
    kept, dropped = [], 0
    for line in doc["text"].split("\n"):
      if len(line.strip()) >= min_line_chars and _line_key(line) in bad:
        dropped += 1
      else:
        kept.append(line)
    text = "\n".join(kept).strip()
    if not text:
      yield beam.pvalue.TaggedOutput(
          "rejects", make_reject(doc, "boilerplate", "boilerplate_only", {"lines": dropped}))
    else:
      yield dict(doc, text=text, meta=dict(doc["meta"], boilerplate_lines=dropped))


class Boilerplate(beam.PTransform):
  """Drops lines that occur in at least `min_docs` documents: {"docs", "rejects"}.

  Navigation, cookie banners and footers repeat verbatim across the pages of a
  site; counting each distinct line once per document (after exact dedup, so
  copies of one page do not count) finds them. Distributed: one GroupByKey per
  line key counts documents, a CoGroupByKey brings the hits back to their
  documents -- no worker holds the corpus's line table. A document left empty
  is removed (rule "boilerplate_only"); others record meta.boilerplate_lines.
  """

  def __init__(self, *, min_docs=10, min_line_chars=1, enabled=True):
    super().__init__(label="boilerplate")
    if min_docs < 2:
      raise ValueError(f"boilerplate.min_docs={min_docs} must be >= 2")
    self._min_docs, self._min_line_chars = min_docs, min_line_chars

  def expand(self, docs):
    hits = (docs
            | "lines" >> beam.FlatMap(_doc_lines, self._min_line_chars)
            | "group_lines" >> beam.GroupByKey()
            | "hits" >> beam.FlatMap(_boilerplate_hits, self._min_docs))
    out = ({"doc": docs | "by_id" >> beam.Map(lambda d: (d["id"], d)), "line": hits}
           | "join" >> beam.CoGroupByKey()
           | "strip" >> beam.FlatMap(_strip_boilerplate, self._min_line_chars).with_outputs(
               "rejects", main="docs"))
    return {"docs": out.docs, "rejects": out.rejects}


# ---------------------------------------------------------------------------
# Connected components (large-star / small-star)
# ---------------------------------------------------------------------------

def _both_ways(edge):
  u, v = edge
  return [(u, v), (v, u)]


def _large_star(node_nbrs):
  """Connect every strictly larger neighbour of u to the minimum of u's closed neighbourhood."""
  u, nbrs = node_nbrs
  nbrs = set(nbrs)
  m = min(min(nbrs), u)
  for v in nbrs:
    if v > u:
      yield (v, m)


def _small_star(node_nbrs):
  """Connect u and its smaller neighbours to the minimum among them."""
  u, nbrs = node_nbrs
  smaller = {v for v in nbrs if v < u}
  smaller.add(u)
  m = min(smaller)
  for v in smaller:
    if v != m:
      yield (v, m)


def _star_violations(node_roles):
  """A converged graph is a set of stars: each leaf has one centre and is no centre itself."""
  node, roles = node_roles
  centres = {c for role, c in roles if role == "leaf"}
  is_centre = any(role == "centre" for role, _ in roles)
  if len(centres) > 1 or (centres and is_centre):
    yield node


def _fail_if_any(count, rounds):
  if count:
    raise RuntimeError(f"connected components did not converge in {rounds} rounds "
                       f"({count} nodes not in a star); raise near_dedup.cc_rounds")
  return count


class ConnectedComponents(beam.PTransform):
  """Undirected edges (u, v) -> (node, component minimum) for every non-minimum node."""

  def __init__(self, rounds: int = 8):
    super().__init__()
    self._rounds = rounds

  def expand(self, edges):
    for i in range(self._rounds):
      edges = (edges
               | f"large_both_{i}" >> beam.FlatMap(_both_ways)
               | f"large_group_{i}" >> beam.GroupByKey()
               | f"large_star_{i}" >> beam.FlatMap(_large_star)
               | f"small_both_{i}" >> beam.FlatMap(_both_ways)
               | f"small_group_{i}" >> beam.GroupByKey()
               | f"small_star_{i}" >> beam.FlatMap(_small_star))
    edges = edges | "distinct" >> beam.Distinct()
    _ = (edges
         | "roles" >> beam.FlatMap(lambda e: [(e[0], ("leaf", e[1])), (e[1], ("centre", None))])
         | "group_roles" >> beam.GroupByKey()
         | "violations" >> beam.FlatMap(_star_violations)
         | "count_violations" >> beam.combiners.Count.Globally()
         | "check" >> beam.Map(_fail_if_any, self._rounds))
    return edges


# ---------------------------------------------------------------------------
# Near dedup
# ---------------------------------------------------------------------------

class _SignatureFn(beam.DoFn):
  def __init__(self, num_perm, seed, ngram, bands, rows, score_field):
    self._args = (num_perm, seed, ngram)
    self._bands, self._rows, self._score_field = bands, rows, score_field

  def setup(self):
    self._hasher = minhash.MinHasher(*self._args)

  def process(self, doc):
    sig = self._hasher.signature(doc["text"])
    node = rank_key(doc, self._score_field)
    for key in minhash.band_keys(sig, self._bands, self._rows):
      yield key, (node, sig)


def _bucket_edges(key_members, threshold, verify, max_verify):
  """Edges from one LSH bucket: each member to the first earlier member it really resembles."""
  _, members = key_members
  if len(members) < 2:
    return
  members = sorted(members, key=lambda m: m[0])
  for j in range(1, len(members)):
    node, sig = members[j]
    if not verify:
      yield (node, members[0][0])
      continue
    for other, other_sig in members[:min(j, max_verify)]:
      if minhash.estimate_jaccard(sig, other_sig) >= threshold:
        yield (node, other)
        break


def _split_near_dups(id_groups):
  _, grouped = id_groups
  roots = list(grouped["root"])
  for doc in grouped["doc"]:
    if roots:
      yield beam.pvalue.TaggedOutput(
          "rejects", make_reject(doc, "near_dedup", "near_duplicate", {"kept": roots[0]}))
    else:
      yield doc


class NearDedup(beam.PTransform):
  """MinHash-LSH near dedup: {"docs", "rejects", "cluster_sizes"} (sizes of clusters >= 2)."""

  def __init__(self, *, ngram=5, num_perm=256, threshold=0.8, bands=0, rows=0, fn_weight=0.95,
               verify=True, max_verify=32, seed=1, cc_rounds=8, score_field="quality_score",
               enabled=True):
    super().__init__(label="near_dedup")
    if not bands or not rows:
      bands, rows = minhash.choose_bands_rows(threshold, num_perm, 1.0 - fn_weight, fn_weight)
    if bands * rows > num_perm:
      raise ValueError(f"bands x rows = {bands * rows} exceeds num_perm = {num_perm}")
    self.bands, self.rows, self.threshold = bands, rows, threshold
    self._sig_args = (num_perm, seed, ngram, bands, rows, score_field)
    self._edge_args = (threshold, verify, max_verify)
    self._cc_rounds = cc_rounds

  def expand(self, docs):
    edges = (docs
             | "signatures" >> beam.ParDo(_SignatureFn(*self._sig_args))
             | "buckets" >> beam.GroupByKey()
             | "candidates" >> beam.FlatMap(_bucket_edges, *self._edge_args))
    leaves = edges | "components" >> ConnectedComponents(self._cc_rounds)
    # leaf node -> (leaf id, id of its cluster's kept document)
    leaf_ids = leaves | "leaf_ids" >> beam.Map(lambda e: (e[0][1], e[1][1]))
    out = ({"doc": docs | "by_id" >> beam.Map(lambda d: (d["id"], d)), "root": leaf_ids}
           | "join" >> beam.CoGroupByKey()
           | "split" >> beam.FlatMap(_split_near_dups).with_outputs("rejects", main="docs"))
    sizes = (leaf_ids
             | "roots" >> beam.Map(lambda e: e[1])
             | "count_leaves" >> beam.combiners.Count.PerElement()
             | "size" >> beam.Map(lambda kv: kv[1] + 1))
    return {"docs": out.docs, "rejects": out.rejects, "cluster_sizes": sizes}
