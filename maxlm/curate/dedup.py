"""Exact and near-duplicate removal as Beam PTransforms.

Exact dedup groups documents by a hash of their normalised text and keeps one per
group. Near dedup follows Lee et al. 2022 ("Deduplicating Training Data Makes
Language Models Better") and FineWeb: MinHash signatures over word 5-grams, LSH
banding to find candidate pairs, a check of each candidate's estimated Jaccard
against the threshold (banding alone has a soft S-curve: with 128 permutations it
cannot both catch 95% of pairs at s = 0.85 and pass fewer than 5% at 0.75), and
the surviving pairs joined into clusters by connected components.

Connected components, two ways (near_dedup.cc):
- "union_find" (default): the verified edges -- O(near duplicates), not O(corpus)
  -- are joined by a union-find CombineFn (each worker folds its own edges, one
  merge joins the forests), bounded by `cc_max_nodes`; the removed ids then reach
  the document batches as a side input, so documents never cross a shuffle in
  near dedup. Above the bound the run stops and names the other way.
- "rounds": alternating large-star / small-star rounds inside Beam (Kiveris et
  al. 2014, "Connected Components in MapReduce and Beyond"): each round is one
  GroupByKey over edges, no worker ever holds more than one node's neighbourhood,
  and O(log^2 n) rounds suffice. The rounds are unrolled (`cc_rounds`); a final
  check fails the run loudly if the graph is not yet a set of stars rather than
  emitting wrong clusters. For corpora whose duplicates do not fit one worker.
Both give the same clusters and the same kept document (tests/test_curate_dedup.py).

Which copy is kept, in both dedups: the highest `quality_score` in meta, then
the smallest id (`stages.rank_key`) -- the same document whatever the number of
workers, because nodes are compared by that key and the star centre of a
converged component is its minimum.
"""

from __future__ import annotations

import collections
import hashlib
import zlib

import apache_beam as beam
import numpy as np

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
# Partitioned batches: the unit every shuffle below moves
# ---------------------------------------------------------------------------
# Beam's runners pay per element (encode, decode, a call per stage), so a per-
# document or per-edge element costs more than the work on it (30 s of 37 s on
# an 11k-document corpus went to moving 285k band keys and the edges of 16 CC
# steps). The shuffles below therefore move batches: a key is a partition
# number, a value a list (or arrays) of what that partition owns. The number
# of partitions grows with the data (a side-input count / the target size per
# partition), so no worker ever holds more than one partition -- the same
# bound as one element per key, at a fraction of the per-element cost.

_LSH_ENTRIES_PER_PART = 1_000_000  # (band hash, node) pairs per bucket partition
_SIGS_PER_PART = 100_000  # signatures per verify partition (num_perm x 4 bytes each)
_EDGES_PER_PART = 1_000_000  # directed edges per connected-components partition


def _parts(n: int, per_part: int) -> int:
  return max(1, -(-int(n) // per_part))


def _part_of(node, parts: int) -> int:
  """A stable partition of a node (same on every worker: crc32 of its repr)."""
  return zlib.crc32(repr(node).encode("utf-8")) % parts if parts > 1 else 0


def _by_part(items, parts: int):
  """[(node, value)] -> [(partition, [(node, value), ...])]."""
  out = collections.defaultdict(list)
  for item in items:
    out[_part_of(item[0], parts)].append(item)
  return list(out.items())


# ---------------------------------------------------------------------------
# Connected components (large-star / small-star)
# ---------------------------------------------------------------------------

def _both_ways_parts(edges, parts):
  return _by_part([e for u, v in edges for e in ((u, v), (v, u))], parts)


def _neighbourhoods(part_edges):
  _, batches = part_edges
  nbrs = collections.defaultdict(set)
  for batch in batches:
    for u, v in batch:
      nbrs[u].add(v)
  return nbrs


def _large_star(part_edges):
  """Connect every strictly larger neighbour of u to the minimum of u's closed neighbourhood."""
  out = []
  for u, nbrs in _neighbourhoods(part_edges).items():
    m = min(min(nbrs), u)
    out.extend((v, m) for v in nbrs if v > u)
  yield out


def _small_star(part_edges):
  """Connect u and its smaller neighbours to the minimum among them."""
  out = []
  for u, nbrs in _neighbourhoods(part_edges).items():
    smaller = {v for v in nbrs if v < u}
    smaller.add(u)
    m = min(smaller)
    out.extend((v, m) for v in smaller if v != m)
  yield out


def _role_parts(edges, parts):
  return _by_part([x for u, c in edges for x in ((u, ("leaf", c)), (c, ("centre", None)))], parts)


def _star_violations(part_roles):
  """A converged graph is a set of stars: each leaf has one centre and is no centre itself."""
  _, batches = part_roles
  centres, is_centre = collections.defaultdict(set), set()
  for batch in batches:
    for node, (role, c) in batch:
      if role == "leaf":
        centres[node].add(c)
      else:
        is_centre.add(node)
  yield sum(len(cs) > 1 or node in is_centre for node, cs in centres.items())


def _distinct_leaves(part_edges):
  _, batches = part_edges
  seen = set()
  for batch in batches:
    for e in batch:
      if e not in seen:
        seen.add(e)
        yield e


def _fail_if_any(count, rounds):
  if count:
    raise RuntimeError(f"connected components did not converge in {rounds} rounds "
                       f"({count} nodes not in a star); raise near_dedup.cc_rounds")
  return count


class ConnectedComponents(beam.PTransform):
  """Undirected edges (u, v) -> (node, component minimum) for every non-minimum node.

  Kiveris et al.'s rounds, each step one GroupByKey of partitioned edge batches.
  """

  def __init__(self, rounds: int = 8):
    super().__init__()
    self._rounds = rounds

  def expand(self, edges):
    parts = beam.pvalue.AsSingleton(
        edges | "count_edges" >> beam.combiners.Count.Globally()
        | "cc_parts" >> beam.Map(lambda n: _parts(2 * n, _EDGES_PER_PART)))
    batches = edges | "batch_edges" >> beam.BatchElements(min_batch_size=256, max_batch_size=8192)
    for i in range(self._rounds):
      batches = (batches
                 | f"large_both_{i}" >> beam.FlatMap(_both_ways_parts, parts)
                 | f"large_group_{i}" >> beam.GroupByKey()
                 | f"large_star_{i}" >> beam.FlatMap(_large_star)
                 | f"small_both_{i}" >> beam.FlatMap(_both_ways_parts, parts)
                 | f"small_group_{i}" >> beam.GroupByKey()
                 | f"small_star_{i}" >> beam.FlatMap(_small_star))
    leaves = (batches
              | "leaf_parts" >> beam.FlatMap(lambda b, n: _by_part(b, n), parts)
              | "group_leaves" >> beam.GroupByKey()
              | "distinct" >> beam.FlatMap(_distinct_leaves))
    _ = (batches
         | "roles" >> beam.FlatMap(_role_parts, parts)
         | "group_roles" >> beam.GroupByKey()
         | "violations" >> beam.FlatMap(_star_violations)
         | "count_violations" >> beam.CombineGlobally(sum)
         | "check" >> beam.Map(_fail_if_any, self._rounds))
    return leaves


# ---------------------------------------------------------------------------
# Connected components (union-find on one worker)
# ---------------------------------------------------------------------------
# The verified edges are O(near duplicates), not O(corpus): on most corpora they
# fit one worker, where union-find joins them in one pass instead of 16 shuffles
# of every edge (each round's GroupByKey costs a Beam stage, whatever its size).
# The union-find is a CombineFn: each worker folds its own edges first (combiner
# lifting), the final merge joins the per-worker forests. Its memory is bounded
# by `max_nodes`: above it the run stops and says to use the rounds above.

def _uf_find(parent: dict, x):
  root = x
  while parent.get(root, root) != root:
    root = parent[root]
  while x != root:  # path compression: later finds are one step
    parent[x], x = root, parent[x]
  return root


def _uf_union(parent: dict, u, v):
  ru, rv = _uf_find(parent, u), _uf_find(parent, v)
  if ru != rv:
    # The smaller root wins: a component's root is its minimum node whatever the
    # order edges arrive in (so the result is deterministic across runners).
    lo, hi = (ru, rv) if ru < rv else (rv, ru)
    parent[hi] = lo
    parent.setdefault(lo, lo)


class _UnionFindFn(beam.CombineFn):
  """Batches of edges -> {node: component minimum} for every non-minimum node."""

  def __init__(self, max_nodes: int):
    self._max_nodes = max_nodes

  def create_accumulator(self):
    return {}

  def _check(self, parent):
    if len(parent) > self._max_nodes:
      raise RuntimeError(
          f"near dedup: more than near_dedup.cc_max_nodes={self._max_nodes} documents have near "
          "duplicates, too many for one worker's union-find; set near_dedup.cc='rounds' "
          "(distributed connected components) or raise cc_max_nodes")

  def add_input(self, parent, edges):
    for u, v in edges:
      _uf_union(parent, u, v)
    self._check(parent)
    return parent

  def merge_accumulators(self, accumulators):
    accumulators = iter(accumulators)
    parent = next(accumulators)
    for other in accumulators:
      for x, p in other.items():
        if x != p:
          _uf_union(parent, x, p)
      self._check(parent)
    return parent

  def compact(self, parent):
    # Every node points at its root before the accumulator is shuffled.
    return {x: _uf_find(parent, x) for x in list(parent)}

  def extract_output(self, parent):
    roots = self.compact(parent)
    return {x: r for x, r in roots.items() if x != r}


class UnionFindComponents(beam.PTransform):
  """Batches (lists) of undirected edges -> one element: {node: component minimum} for
  every non-minimum node (the same pairs ConnectedComponents emits one by one)."""

  def __init__(self, max_nodes: int = 4_000_000):
    super().__init__()
    self._max_nodes = max_nodes

  def expand(self, edge_batches):
    return edge_batches | "union_find" >> beam.CombineGlobally(_UnionFindFn(self._max_nodes))


# ---------------------------------------------------------------------------
# Near dedup
# ---------------------------------------------------------------------------

class _SignatureBatchFn(beam.DoFn):
  """A batch of documents -> (nodes, signatures [n, P] uint32, band hashes [n, bands] uint64)."""

  def __init__(self, num_perm, seed, ngram, bands, rows, score_field):
    self._args = (num_perm, seed, ngram)
    self._bands, self._rows, self._score_field = bands, rows, score_field

  def setup(self):
    self._hasher = minhash.MinHasher(*self._args)

  def process(self, docs):
    sig_np = self._hasher.signatures([d["text"] for d in docs])
    key_nb = minhash.band_hashes(sig_np, self._bands, self._rows)
    yield [rank_key(d, self._score_field) for d in docs], sig_np, key_nb


def _lsh_parts(batch, n_docs, bands):
  """(partition, (band hashes, owner index into nodes, nodes)) of a signature batch,
  partitioned by band hash. Each node goes once per partition with an index array per
  entry, not once per band (25 tuples to encode per document)."""
  nodes, _, key_nb = batch
  parts = _parts(n_docs * bands, _LSH_ENTRIES_PER_PART)
  keys = key_nb.ravel()
  owner = np.repeat(np.arange(len(nodes)), bands)
  part = keys % np.uint64(parts)
  for g in np.unique(part):
    sel = np.flatnonzero(part == g)
    used, local = np.unique(owner[sel], return_inverse=True)
    yield int(g), (keys[sel], local, [nodes[i] for i in used])


def _sig_parts(batch, n_docs):
  """(partition, (nodes, signatures)) of a signature batch; partitioned by node."""
  nodes, sig_np, _ = batch
  parts = _parts(n_docs, _SIGS_PER_PART)
  by = collections.defaultdict(list)
  for i, node in enumerate(nodes):
    by[_part_of(node, parts)].append(i)
  for g, idx in by.items():
    yield g, ("sig", ([nodes[i] for i in idx], sig_np[idx]))


def _bucket_pairs(part_entries, max_verify, n_docs):
  """Candidate pairs (later, earlier) from the buckets of one partition, partitioned by `later`.

  Members of a bucket are ordered by rank (best first); each member is paired with
  the first `max_verify` members before it.
  """
  _, entries = part_entries
  entries = list(entries)
  keys = np.concatenate([k for k, _, _ in entries]) if entries else np.zeros(0, np.uint64)
  if len(keys) < 2:
    return
  uniq = sorted({n for _, _, ns in entries for n in ns})
  rank_of = {n: i for i, n in enumerate(uniq)}
  rank = np.concatenate([np.fromiter(map(rank_of.__getitem__, ns), np.int64, len(ns))[local]
                         for _, local, ns in entries])
  order = np.lexsort((rank, keys))  # by band hash, then rank
  keys, rank = keys[order], rank[order]
  starts = np.flatnonzero(np.r_[True, keys[1:] != keys[:-1]])
  ends = np.r_[starts[1:], len(keys)]
  pairs = set()
  for s, e in zip(starts[ends - starts > 1], ends[ends - starts > 1]):
    members = rank[s:e].tolist()
    for j in range(1, len(members)):
      pairs.update((members[j], members[k]) for k in range(min(j, max_verify)))
  parts = _parts(n_docs, _SIGS_PER_PART)
  for g, batch in _by_part([(uniq[a], uniq[b]) for a, b in sorted(pairs)], parts):
    yield g, ("pair", batch)


def _untag(part_values) -> dict:
  """A partition's tagged values ("sig" | "pair" | "half", value) -> {tag: [values]}: the
  joins below are a Flatten and a GroupByKey of tagged values (a CoGroupByKey without
  its 5 transforms per join)."""
  out = collections.defaultdict(list)
  for tag, value in part_values[1]:
    out[tag].append(value)
  return out


def _sig_table(batches) -> dict:
  return {node: sig for nodes, sig_np in batches for node, sig in zip(nodes, sig_np)}


def _attach_later(part_grouped, n_docs):
  """Join 1: each pair gets its later member's signature, then moves to its earlier member's partition.

  Yields (partition, (pairs [(earlier, later)], later signatures [n, P])): one array per
  partition, not one pickled signature row per pair.
  """
  grouped = _untag(part_grouped)
  sigs = _sig_table(grouped["sig"])
  parts = _parts(n_docs, _SIGS_PER_PART)
  by = collections.defaultdict(list)
  for batch in grouped["pair"]:
    for a, b in batch:
      by[_part_of(b, parts)].append((b, a))
  for g, pairs in by.items():
    yield g, ("half", (pairs, np.stack([sigs[a] for _, a in pairs])))


def _verify(part_grouped, threshold, verify):
  """Join 2: keep a pair when its signatures' estimated Jaccard reaches the threshold.

  Yields the kept pairs (later, earlier) of a partition as one list (a batch of edges)."""
  grouped = _untag(part_grouped)
  sigs = _sig_table(grouped["sig"])
  edges = []
  for pairs, sig_a_kp in grouped["half"]:
    if verify:
      sig_b_kp = np.stack([sigs[b] for b, _ in pairs])
      # The fraction of equal rows is minhash.estimate_jaccard, for all pairs at once.
      keep = (sig_a_kp == sig_b_kp).mean(axis=1) >= threshold
      edges.extend((a, b) for (b, a), k in zip(pairs, keep.tolist()) if k)
    else:
      edges.extend((a, b) for b, a in pairs)
  if edges:
    yield edges


def _split_near_dups(id_groups):
  _, grouped = id_groups
  roots = list(grouped["root"])
  for doc in grouped["doc"]:
    if roots:
      yield beam.pvalue.TaggedOutput(
          "rejects", make_reject(doc, "near_dedup", "near_duplicate", {"kept": roots[0]}))
    else:
      yield doc


def _removed_ids(roots: dict) -> dict:
  """{leaf node: root node} -> {leaf id: kept id} (nodes are rank keys (score, id))."""
  return {leaf[1]: root[1] for leaf, root in roots.items()}


def _drop_near_dups(docs, kept_of):
  """Union-find path, a batch of documents: `kept_of` (a side input, O(near duplicates))
  maps each removed id to the id kept in its cluster. Batches, because the documents wait
  for that side input: the runner stores them, and a dozen lists cost it less than 10k
  single documents. The rejects leave as one list per batch too ("reject_batches")."""
  rejects = []
  for doc in docs:
    kept = kept_of.get(doc["id"])
    if kept is None:
      yield doc
    else:
      rejects.append(make_reject(doc, "near_dedup", "near_duplicate", {"kept": kept}))
  if rejects:
    yield beam.pvalue.TaggedOutput("rejects", rejects)


def _cluster_sizes(kept_of: dict):
  return sorted(n + 1 for n in collections.Counter(kept_of.values()).values())


class NearDedup(beam.PTransform):
  """MinHash-LSH near dedup: {"docs", "rejects", "cluster_sizes"} (sizes of clusters >= 2);
  with cc="union_find" also "reject_batches" (the rejects as lists).

  Signatures are computed a batch of documents at a time (BatchElements); band
  hashes are bucketed per partition in numpy; candidate pairs are verified by two
  partitioned joins with the signatures (each signature moves once per join,
  not once per band). Clusters: cc="union_find" (default) joins the verified
  edges on one worker and drops the removed documents through a side input
  (both O(near duplicates), bounded by cc_max_nodes), so the documents never
  move through a shuffle; cc="rounds" runs distributed large-star / small-star
  rounds and joins the result back by id, for corpora whose duplicates do not
  fit one worker.
  """

  def __init__(self, *, ngram=5, num_perm=256, threshold=0.8, bands=0, rows=0, fn_weight=0.95,
               verify=True, max_verify=32, seed=1, cc="union_find", cc_max_nodes=4_000_000,
               cc_rounds=8, score_field="quality_score", enabled=True):
    super().__init__(label="near_dedup")
    if not bands or not rows:
      bands, rows = minhash.choose_bands_rows(threshold, num_perm, 1.0 - fn_weight, fn_weight)
    if bands * rows > num_perm:
      raise ValueError(f"bands x rows = {bands * rows} exceeds num_perm = {num_perm}")
    if cc not in ("union_find", "rounds"):
      raise ValueError(f"near_dedup.cc={cc!r}: must be 'union_find' or 'rounds'")
    self.bands, self.rows, self.threshold = bands, rows, threshold
    self._sig_args = (num_perm, seed, ngram, bands, rows, score_field)
    self._verify, self._max_verify = verify, max_verify
    self._cc, self._cc_max_nodes, self._cc_rounds = cc, cc_max_nodes, cc_rounds

  def expand(self, docs):
    # Fixed-size batches: every stage below pays per batch, and 1024 signatures are 1 MB.
    batches = docs | "batch" >> beam.BatchElements(min_batch_size=1024, max_batch_size=1024)
    sigs = batches | "signatures" >> beam.ParDo(_SignatureBatchFn(*self._sig_args))
    # The document count (which sizes the partitions) is summed over signature
    # batches: one element per batch, not per document.
    n_docs = beam.pvalue.AsSingleton(
        sigs
        | "batch_sizes" >> beam.Map(lambda b: (None, len(b[0])))
        | "group_sizes" >> beam.GroupByKey()
        | "count_docs" >> beam.Map(lambda kv: sum(kv[1])), default_value=0)
    sig_parts = sigs | "sig_parts" >> beam.FlatMap(_sig_parts, n_docs)
    pairs = (sigs
             | "lsh_parts" >> beam.FlatMap(_lsh_parts, n_docs, self.bands)
             | "buckets" >> beam.GroupByKey()
             | "candidates" >> beam.FlatMap(_bucket_pairs, self._max_verify, n_docs))
    halves = ((sig_parts, pairs)
              | "flatten_later" >> beam.Flatten()
              | "join_later" >> beam.GroupByKey()
              | "attach_later" >> beam.FlatMap(_attach_later, n_docs))
    edge_batches = ((sig_parts, halves)
                    | "flatten_earlier" >> beam.Flatten()
                    | "join_earlier" >> beam.GroupByKey()
                    | "verify" >> beam.FlatMap(_verify, self.threshold, self._verify))
    if self._cc == "union_find":
      kept_of = (edge_batches
                 | "components" >> UnionFindComponents(self._cc_max_nodes)
                 | "removed_ids" >> beam.Map(_removed_ids))
      out = batches | "split" >> beam.FlatMap(_drop_near_dups, beam.pvalue.AsSingleton(kept_of)).with_outputs(
          "rejects", main="docs")
      sizes = kept_of | "sizes" >> beam.FlatMap(_cluster_sizes)
      # "reject_batches": lists of rejects, for a consumer that takes them whole (the
      # pipeline's Flatten of every stage's rejects stores each element it gets).
      return {"docs": out.docs, "rejects": out.rejects | "unbatch_rejects" >> beam.FlatMap(lambda b: b),
              "reject_batches": out.rejects, "cluster_sizes": sizes}
    edges = edge_batches | "edges" >> beam.FlatMap(lambda batch: batch)
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
