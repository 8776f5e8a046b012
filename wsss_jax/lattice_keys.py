"""Lattice keys of the permutohedral lattice (lattice.py): elevation, simplex embedding, and the
static mixed-radix encoding of keys as int32 words that lets the lattice be built with sorts and
binary searches instead of a hash table.

A key (the first d of a vertex's d+1 coordinates) is stored as its remainder r mod d+1 and the
quotients q_i = (k_i - r) / (d+1), packed into as few int32 words as the feature bounds allow
(`key_layout`, computed before tracing). Same elevation, rounding and barycentric weights as
Kraehenbuehl's dense CRF code.
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

INT32_MAX = np.iinfo(np.int32).max
# largest code value of one key word (INT32_MAX is the padding key); tests
# lower it to exercise the multi-word path
WORD_LIMIT = INT32_MAX - 1


def scale_factors(d: int) -> np.ndarray:
  inv_std_dev = math.sqrt(2.0 / 3.0) * (d + 1)
  return np.array([inv_std_dev / math.sqrt((i + 1) * (i + 2)) for i in range(d)],
          np.float32)


def elevation_matrix(d: int) -> np.ndarray:
  """(d+1, d) matrix E with elevated = E @ (features * scale)."""
  e = np.zeros((d + 1, d), np.float64)
  e[0, :] = 1.0
  for j in range(1, d + 1):
    e[j, j:] = 1.0
    e[j, j - 1] -= j
  return e


def key_layout(d: int, bounds) -> tuple[list[list[int]], np.ndarray, np.ndarray]:
  """Static mixed-radix layout of lattice keys from the feature bounds.

  A key (first d of its d+1 coordinates) has all coordinates congruent to its
  remainder r mod d+1, so it is stored as r and quotients q_i = (k_i - r) / (d+1).
  Returns the words (lists of quotient dims; word 0 also carries r), the
  per-dim quotient minimum, and the per-dim radix.
  """
  lo = np.array([b[0] for b in bounds], np.float64) * scale_factors(d)
  hi = np.array([b[1] for b in bounds], np.float64) * scale_factors(d)
  e = elevation_matrix(d)[:d]
  elo = np.where(e > 0, e * lo, e * hi).sum(1)
  ehi = np.where(e > 0, e * hi, e * lo).sum(1)
  # rounding (+-(d+1)/2), the sum correction (+-(d+1)) and the canonical
  # offset (+-d) move a key at most 3(d+1) from its elevated coordinate.
  margin = 3 * (d + 1)
  qmin = np.floor((elo - margin) / (d + 1)).astype(np.int64) - 1
  qmax = np.ceil((ehi + margin) / (d + 1)).astype(np.int64) + 1
  radix = qmax - qmin + 1
  words, cur, room = [], [], WORD_LIMIT // (d + 1)
  for i in range(d):
    if radix[i] > WORD_LIMIT:
      raise ValueError(
        f'lattice: feature {i} spans {radix[i]} lattice cells (bounds '
        f'{bounds[i]}); rescale the features (larger kernel widths)')
    if radix[i] > room:
      words.append(cur)
      cur, room = [], WORD_LIMIT
    cur.append(i)
    room //= int(radix[i])
  words.append(cur)
  return words, qmin, radix


def encode(keys, rem, d, layout):
  """Keys (..., d) int32 and remainders (...) -> tuple of int32 words and a
  validity mask (False for keys outside the static range: never in a lattice)."""
  return encode_quotients((keys - rem[..., None]) // (d + 1), rem, layout)


def encode_quotients(q, rem, layout):
  """As ``encode`` from the quotients q = (key - rem) / (d+1) (..., d)."""
  words, qmin, radix = layout
  q = q - jnp.asarray(qmin, jnp.int32)
  valid = jnp.all((q >= 0) & (q < jnp.asarray(radix, jnp.int32)), axis=-1)
  out = []
  for w, dims in enumerate(words):
    # mixed radix: code = (..(rem * R_a + q_a) * R_b + q_b ..), as one sum of
    # q_i * stride_i (a reduction: XLA computes it once instead of inside
    # every consumer, 55 -> 37 ms for the 321 px bilateral hash on CPU)
    strides = np.cumprod([1] + [int(radix[i]) for i in reversed(dims)])[::-1]
    code = jnp.sum(q[..., dims] * jnp.asarray(strides[1:], jnp.int32), axis=-1)
    if w == 0:
      code = code + rem * int(strides[0])
    out.append(jnp.where(valid, code, INT32_MAX))
  return tuple(out), valid


def embed(features, d):
  """Elevate scaled features, find each point's simplex: (quotients, rem, bary).

  Vertex r of a point's simplex is the key k = (d+1) q + r (all d+1 coordinates
  congruent to r); returning q spares the integer division of the keys."""
  n = features.shape[0]
  cf = features.astype(jnp.float32) * scale_factors(d)
  # elevated[j] = sum_{i>=j} cf_i - j cf_{j-1}, computed as Kraehenbuehl does
  suffix = jnp.cumsum(cf[:, ::-1], axis=1)[:, ::-1]
  j = jnp.arange(1, d + 1, dtype=jnp.float32)
  tail = jnp.concatenate([suffix[:, 1:], jnp.zeros((n, 1), jnp.float32)], 1)
  elevated = jnp.concatenate([suffix[:, :1], tail - j * cf], axis=1)
  down = 1.0 / (d + 1)
  # C round(): half away from zero
  rd = (jnp.sign(elevated * down) * jnp.floor(jnp.abs(elevated * down) + 0.5)).astype(jnp.int32)
  rem0 = rd * (d + 1)
  total = rd.sum(1)
  diff = elevated - rem0.astype(jnp.float32)
  # rank as the reference loop: for i<j, rank[i]++ if di<dj else rank[j]++
  di, dj = diff[:, :, None], diff[:, None, :]
  idx = jnp.arange(d + 1)
  upper = idx[:, None] < idx[None, :]
  rank = (jnp.sum(upper & (di < dj), axis=2)
      + jnp.sum(upper.T & (dj >= di), axis=2)).astype(jnp.int32)
  rank = rank + total[:, None]
  low, high = rank < 0, rank > d
  rank = jnp.where(low, rank + d + 1, jnp.where(high, rank - d - 1, rank))
  rd = jnp.where(low, rd + 1, jnp.where(high, rd - 1, rd))
  rem0 = rd * (d + 1)
  v = (elevated - rem0.astype(jnp.float32)) * down
  bary = jnp.zeros((n, d + 2), jnp.float32)
  rows = jnp.arange(n)[:, None]
  bary = bary.at[rows, d - rank].add(v).at[rows, d - rank + 1].add(-v)
  bary = bary.at[:, 0].add(1.0 + bary[:, d + 1])[:, :d + 1]
  # vertex r of the simplex: rem0 + canonical[r][rank], canonical[r][i] = r
  # where rank_i <= d - r, else r - (d+1); so its quotient is rd or rd - 1
  r = jnp.arange(d + 1, dtype=jnp.int32)[None, :, None]
  quot = (rd[:, None, :] - (rank[:, None, :] > d - r).astype(jnp.int32))[..., :d]  # (N, d+1, d)
  rem = jnp.broadcast_to(r[..., 0], quot.shape[:2])     # (N, d+1)
  return quot, rem, bary


def lex_less(a, b):
  """Lexicographic a < b over tuples of equally shaped int32 arrays."""
  less, equal = jnp.zeros(a[0].shape, bool), jnp.ones(a[0].shape, bool)
  for x, y in zip(a, b):
    less = less | (equal & (x < y))
    equal = equal & (x == y)
  return less


def search(sorted_words, query_words, missing):
  """Row of each query key in the sorted unique keys, or ``missing``."""
  size = sorted_words[0].shape[0]
  if len(sorted_words) == 1:
    lo = jnp.searchsorted(sorted_words[0], query_words[0]).astype(jnp.int32)
    at = sorted_words[0][jnp.minimum(lo, size - 1)]
    return jnp.where((lo < size) & (at == query_words[0]), lo, missing)
  lo = jnp.zeros(query_words[0].shape, jnp.int32)
  hi = jnp.full(query_words[0].shape, size, jnp.int32)

  def step(_, bounds):
    lo, hi = bounds
    mid = (lo + hi) // 2
    at = tuple(w[jnp.minimum(mid, size - 1)] for w in sorted_words)
    go_right = lex_less(at, query_words) & (lo < hi)
    return jnp.where(go_right, mid + 1, lo), jnp.where(go_right | (lo >= hi), hi, mid)

  lo, _ = jax.lax.fori_loop(0, max(1, size.bit_length()), step, (lo, hi))
  at = tuple(w[jnp.minimum(lo, size - 1)] for w in sorted_words)
  found = (lo < size) & jnp.all(jnp.stack([a == q for a, q in zip(at, query_words)]), 0)
  return jnp.where(found, lo, missing)


def decode(words, d, layout):
  wdims, qmin, radix = layout
  q = [None] * d
  rem = None
  for w, dims in zip(words, wdims):
    code = w
    for i in reversed(dims):
      q[i] = code % int(radix[i])
      code = code // int(radix[i])
    if rem is None:
      rem = code
  rem = jnp.where(words[0] == INT32_MAX, 0, rem)
  q = jnp.stack(q, -1) + jnp.asarray(qmin, jnp.int32)
  return q * (d + 1) + rem[:, None], rem
