"""MinHash signatures and LSH banding (Broder 1997; Leskovec, Rajaraman & Ullman, MMDS ch. 3).

A document is the set of its word n-gram shingles (lowercased \\w+ tokens; Lee et
al. 2022 and FineWeb use 5-grams). For a random permutation h, P[min h(A) = min
h(B)] = J(A, B), the Jaccard similarity, so the fraction of equal entries of two
signatures estimates J with standard error sqrt(J (1 - J) / num_perm).

Hashing, vectorised in numpy:
- each token is hashed once (crc32), and an n-gram's 64-bit hash is a polynomial
  in its token hashes mod 2^64, computed for all n-grams at once;
- the permutations are multiply-shift hashes (Dietzfelbinger et al. 1997),
  h(x) = ((a x + b) mod 2^64) >> 32 with odd random a, which needs no modulo by a
  prime and runs as one uint64 multiply-add per shingle and permutation.

LSH banding cuts the signature into b bands of r rows; two documents become a
candidate pair when any band matches, with probability 1 - (1 - s^r)^b at
similarity s. `choose_bands_rows` picks (b, r) for a threshold by minimising the
area of false positives below it plus false negatives above it, the criterion
datasketch's MinHashLSH uses (here written from the formula, not copied).
"""

from __future__ import annotations

import re
import zlib

import numpy as np

_TOKEN_RE = re.compile(r"\w+")
_MULT = np.uint64(0x100000001B3)  # FNV-64 prime: mixes token hashes into n-gram hashes


class _TokenHashes(dict):
  """token -> crc32 of its UTF-8, computed once per distinct token (words are Zipfian:
  a worker's few hundred thousand distinct tokens cover nearly every occurrence), so
  `map(cache.__getitem__, tokens)` runs at dict speed instead of encode + crc32 each.
  Keys are bytes (ASCII path) or str (Unicode path); both hash the same UTF-8."""

  def __missing__(self, token):
    if len(self) > 1_000_000:  # bound the memory of a long-running worker
      self.clear()
    h = self[token] = zlib.crc32(token if isinstance(token, bytes) else token.encode("utf-8"))
    return h


_TOKEN_HASHES = _TokenHashes()
# ASCII bytes that are not \w ([A-Za-z0-9_]) -> space: for ASCII text, splitting the
# translated bytes on whitespace gives exactly re.findall(r"\w+"), ~2.5x faster.
_ASCII_NON_WORD = bytes(c if c < 128 and (chr(c).isalnum() or c == 95) else 32 for c in range(256))


def _tokens(text: str) -> list:
  r"""Lowercased \w+ tokens: bytes for ASCII text (the fast path), str otherwise."""
  low = text.lower()
  if low.isascii():
    return low.encode("ascii").translate(_ASCII_NON_WORD).split()
  return _TOKEN_RE.findall(low)


def _ngram_hashes(text: str, ngram: int) -> np.ndarray:
  """uint64 hash of every word n-gram, in order, repeats included."""
  tokens = _tokens(text)
  if not tokens:
    return np.zeros(1, np.uint64)
  tok = np.fromiter(map(_TOKEN_HASHES.__getitem__, tokens), np.uint64, len(tokens))
  n = min(ngram, len(tokens))
  num = len(tokens) - n + 1
  h = np.zeros(num, np.uint64)
  with np.errstate(over="ignore"):  # wrapping arithmetic mod 2^64 is the point
    for k in range(n):
      h = h * _MULT + tok[k:k + num] + np.uint64(k + 1)
  return h


def shingle_hashes(text: str, ngram: int = 5) -> np.ndarray:
  """Distinct uint64 hashes of the document's word n-grams (the whole text if shorter)."""
  return np.unique(_ngram_hashes(text, ngram))


def shingle_set(text: str, ngram: int = 5) -> set:
  """The shingle set itself, for exact Jaccard in tests and benchmarks."""
  tokens = _TOKEN_RE.findall(text.lower())
  n = min(ngram, len(tokens)) or 1
  return {tuple(tokens[i:i + n]) for i in range(max(len(tokens) - n + 1, 1))}


class MinHasher:
  """num_perm multiply-shift permutations from `seed`; same seed, same signatures everywhere."""

  def __init__(self, num_perm: int = 128, seed: int = 1, ngram: int = 5):
    rng = np.random.default_rng(seed)
    self.a_p = rng.integers(1, 2**63, num_perm, dtype=np.uint64) * np.uint64(2) + np.uint64(1)
    self.b_p = rng.integers(0, 2**63, num_perm, dtype=np.uint64)
    self.num_perm, self.ngram = num_perm, ngram

  def signature(self, text: str) -> np.ndarray:
    """uint32 [num_perm]: per permutation, the minimum over the document's shingles."""
    return self.signatures([text])[0]

  def signatures(self, texts, block: int = 2048) -> np.ndarray:
    """uint32 [len(texts), num_perm] signatures of a batch of documents.

    Per document one [shingles, perm] multiply-add into a reused buffer and a min
    over the shingles; the shift to the top 32 bits happens once on the minima
    (it is monotone). Repeated shingles need no np.unique: a repeat cannot change
    a minimum. Same values as hashing each distinct shingle on its own.
    """
    sig_np = np.empty((len(texts), self.num_perm), np.uint64)
    buf = np.empty((block, self.num_perm), np.uint64)  # blocks bound memory at block x num_perm x 8 bytes
    with np.errstate(over="ignore"):
      for i, text in enumerate(texts):
        h_s = _ngram_hashes(text, self.ngram)
        for start in range(0, len(h_s), block):
          v_sp = buf[:min(block, len(h_s) - start)]
          np.multiply(h_s[start:start + block, None], self.a_p[None, :], out=v_sp)
          v_sp += self.b_p[None, :]
          if start == 0:
            v_sp.min(axis=0, out=sig_np[i])
          else:
            np.minimum(sig_np[i], v_sp.min(axis=0), out=sig_np[i])
    sig_np >>= np.uint64(32)
    return sig_np.astype(np.uint32)


def estimate_jaccard(sig_a: np.ndarray, sig_b: np.ndarray) -> float:
  return float(np.mean(sig_a == sig_b))


def candidate_probability(s, bands: int, rows: int):
  """P[some band of r rows matches] at Jaccard s: 1 - (1 - s^r)^b."""
  return 1.0 - (1.0 - np.asarray(s, np.float64) ** rows) ** bands


def choose_bands_rows(threshold: float, num_perm: int, fp_weight: float = 0.5,
                      fn_weight: float = 0.5) -> tuple[int, int]:
  """(b, r) with b r <= num_perm minimising fp_weight * FP area + fn_weight * FN area."""
  lo = np.linspace(0.0, threshold, 201)
  hi = np.linspace(threshold, 1.0, 201)
  best, best_err = (1, num_perm), float("inf")
  for rows in range(1, num_perm + 1):
    for bands in range(1, num_perm // rows + 1):
      fp = np.trapezoid(candidate_probability(lo, bands, rows), lo)
      fn = np.trapezoid(1.0 - candidate_probability(hi, bands, rows), hi)
      err = fp_weight * fp + fn_weight * fn
      if err < best_err - 1e-12:
        best, best_err = (bands, rows), err
  return best


def band_hashes(sig_np: np.ndarray, bands: int, rows: int) -> np.ndarray:
  """uint64 [n, bands]: a hash of (band index, the band's rows) per document and band.

  Equal bands give equal hashes; unequal ones collide with probability ~2^-64 (and a
  collision only adds a candidate pair, which verification then rejects).
  """
  key_nb = np.empty((len(sig_np), bands), np.uint64)
  with np.errstate(over="ignore"):
    for i in range(bands):
      h = np.full(len(sig_np), i + 1, np.uint64)
      for c in range(i * rows, (i + 1) * rows):
        h = h * _MULT + sig_np[:, c].astype(np.uint64)
      key_nb[:, i] = h
  return key_nb


def band_keys(sig: np.ndarray, bands: int, rows: int) -> list[bytes]:
  """One key per band: the band index and the band's rows as bytes."""
  return [bytes([i]) + sig[i * rows:(i + 1) * rows].tobytes() for i in range(bands)]
