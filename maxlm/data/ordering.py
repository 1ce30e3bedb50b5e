"""Curriculum ordering of a source's documents.

`order_by`:
  ''            no curriculum: the pipeline shuffles (the default)
  'length'      by document length in characters
  'similarity'  In-Context Pretraining (Shi et al. 2023, arXiv:2310.10638):
                documents chained so that each is followed by its most similar
                unvisited neighbour, so packing puts related texts side by side.
                Similarity is MinHash over word 3-gram shingles (Jaccard
                estimate), a cheap stand-in for the paper's embeddings.
  <meta field>  by a numeric metadata field (quality, difficulty, ...)
`order_desc` reverses the order (for similarity it is ignored).

The chain search is O(N^2) in the number of documents: fine for tens of
thousands of documents per source; beyond that, bucket with MinHash LSH first.
"""

from __future__ import annotations

import zlib

import numpy as np

_PRIME = (1 << 31) - 1  # a*x + b stays below 2**63 for 31-bit a, x
_NUM_PERM = 64


def order_documents(docs: list, order_by: str, desc: bool = False) -> list:
  if not order_by:
    return list(docs)
  if order_by == "similarity":
    return [docs[i] for i in similarity_chain([d.text for d in docs])]
  if order_by == "length":
    key = lambda d: len(d.text)
  else:
    missing = [d.key for d in docs if not isinstance(d.meta.get(order_by), (int, float))]
    if missing:
      raise ValueError(f"order_by={order_by!r}: {len(missing)} documents have no numeric "
                       f"'{order_by}' field, e.g. {missing[:3]}")
    key = lambda d: d.meta[order_by]
  # Python's sort is stable: ties keep file order, so the curriculum is exact.
  return sorted(docs, key=key, reverse=desc)


def minhash(texts: list[str], num_perm: int = _NUM_PERM, seed: int = 0) -> np.ndarray:
  """[N, num_perm] uint64 MinHash signatures of word 3-gram shingles."""
  rng = np.random.default_rng(seed)
  a = rng.integers(1, _PRIME, num_perm, dtype=np.uint64)
  b = rng.integers(0, _PRIME, num_perm, dtype=np.uint64)
  sigs = np.empty((len(texts), num_perm), np.uint64)
  for i, text in enumerate(texts):
    words = text.split()
    grams = {" ".join(words[j:j + 3]) for j in range(max(1, len(words) - 2))}
    x = np.fromiter((zlib.crc32(g.encode()) % _PRIME for g in grams), np.uint64, len(grams))
    sigs[i] = ((x[:, None] * a + b) % _PRIME).min(axis=0)  # [shingles, perm] -> [perm]
  return sigs


def similarity_chain(texts: list[str]) -> list[int]:
  """Greedy nearest-neighbour tour: start at document 0, always step to the
  most similar unvisited document (ties: lowest index)."""
  n = len(texts)
  if n <= 2:
    return list(range(n))
  sigs = minhash(texts)
  unvisited = np.ones(n, bool)
  order, cur = [0], 0
  unvisited[0] = False
  for _ in range(n - 1):
    sim = (sigs == sigs[cur]).mean(axis=1)
    sim[~unvisited] = -1.0
    cur = int(np.argmax(sim))
    unvisited[cur] = False
    order.append(cur)
  return order
