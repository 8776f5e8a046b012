"""Permutohedral-lattice Gaussian filtering in pure JAX (message passing of Sec. 5).

The mean-field update of the fully connected CRF (Eqs. 10-12) needs, for every
label map v, the Gaussian filter ``out_i = sum_j exp(-|f_i - f_j|^2 / 2) v_j`` over
all pixel pairs in a joint (position, colour) feature space. Evaluated directly it
is O(N^2); the permutohedral lattice of Adams et al. (2010) approximates it in
O(N d^2): splat every pixel onto the d+1 vertices of its enclosing simplex, blur
the lattice along its d+1 axes with a [1/2, 1, 1/2] kernel, slice back.

This follows the lattice of Kraehenbuehl's dense CRF code (the one pydensecrf and
CRF-RNN use): same elevation, rounding, barycentric weights, blur and alpha, so
filtered maps agree with it to float32 rounding. What differs is the data
structure: the hash table is replaced by static-shape array operations so that
the build jit-compiles and vmaps. Every lattice key is encoded as a few int32
words (mixed radix over key ranges known before tracing from the feature
bounds), keys are sorted and deduplicated, and blur neighbours are found by a
vectorised binary search in the sorted keys. The lattice for an image is built
once and reused for every label and every mean-field iteration.

``grid_filter`` is the spatial-only kernel (no colour term): its features are
the pixel grid itself, so it runs on a regular coarse grid with strided slices
instead of a lattice. ``exact_filter`` is the O(N^2) reference for small images.
"""
from __future__ import annotations

import math
from typing import NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

_INT32_MAX = np.iinfo(np.int32).max
# largest code value of one key word (INT32_MAX is the padding key); tests
# lower it to exercise the multi-word path
_WORD_LIMIT = _INT32_MAX - 1


class Lattice(NamedTuple):
  """A built lattice for one image (leading batch axes allowed under vmap).

  offsets: (N, d+1) int32 lattice row of each pixel's simplex vertices;
   ``capacity`` is the all-zero sentinel row (vertices dropped or absent).
  weights: (N, d+1) float32 barycentric weights.
  blur: (d+1, 2, capacity+1) int32 rows of the two neighbours of every lattice
   point along each lattice axis (sentinel where a neighbour does not exist).
  size: () int32 number of distinct lattice points M (may exceed capacity,
   in which case points past capacity were dropped: see ``build``).
  """
  offsets: jax.Array
  weights: jax.Array
  blur: jax.Array
  size: jax.Array


def _scale_factors(d: int) -> np.ndarray:
  inv_std_dev = math.sqrt(2.0 / 3.0) * (d + 1)
  return np.array([inv_std_dev / math.sqrt((i + 1) * (i + 2)) for i in range(d)],
          np.float32)


def _elevation_matrix(d: int) -> np.ndarray:
  """(d+1, d) matrix E with elevated = E @ (features * scale)."""
  e = np.zeros((d + 1, d), np.float64)
  e[0, :] = 1.0
  for j in range(1, d + 1):
    e[j, j:] = 1.0
    e[j, j - 1] -= j
  return e


def _key_layout(d: int, bounds) -> tuple[list[list[int]], np.ndarray, np.ndarray]:
  """Static mixed-radix layout of lattice keys from the feature bounds.

  A key (first d of its d+1 coordinates) has all coordinates congruent to its
  remainder r mod d+1, so it is stored as r and quotients q_i = (k_i - r) / (d+1).
  Returns the words (lists of quotient dims; word 0 also carries r), the
  per-dim quotient minimum, and the per-dim radix.
  """
  lo = np.array([b[0] for b in bounds], np.float64) * _scale_factors(d)
  hi = np.array([b[1] for b in bounds], np.float64) * _scale_factors(d)
  e = _elevation_matrix(d)[:d]
  elo = np.where(e > 0, e * lo, e * hi).sum(1)
  ehi = np.where(e > 0, e * hi, e * lo).sum(1)
  # rounding (+-(d+1)/2), the sum correction (+-(d+1)) and the canonical
  # offset (+-d) move a key at most 3(d+1) from its elevated coordinate.
  margin = 3 * (d + 1)
  qmin = np.floor((elo - margin) / (d + 1)).astype(np.int64) - 1
  qmax = np.ceil((ehi + margin) / (d + 1)).astype(np.int64) + 1
  radix = qmax - qmin + 1
  words, cur, room = [], [], _WORD_LIMIT // (d + 1)
  for i in range(d):
    if radix[i] > _WORD_LIMIT:
      raise ValueError(
        f"lattice: feature {i} spans {radix[i]} lattice cells (bounds "
        f"{bounds[i]}); rescale the features (larger kernel widths)")
    if radix[i] > room:
      words.append(cur)
      cur, room = [], _WORD_LIMIT
    cur.append(i)
    room //= int(radix[i])
  words.append(cur)
  return words, qmin, radix


def _encode(keys, rem, d, layout):
  """Keys (..., d) int32 and remainders (...) -> tuple of int32 words and a
  validity mask (False for keys outside the static range: never in a lattice)."""
  return _encode_quotients((keys - rem[..., None]) // (d + 1), rem, layout)


def _encode_quotients(q, rem, layout):
  """As ``_encode`` from the quotients q = (key - rem) / (d+1) (..., d)."""
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
    out.append(jnp.where(valid, code, _INT32_MAX))
  return tuple(out), valid


def _embed(features, d):
  """Elevate scaled features, find each point's simplex: (quotients, rem, bary).

  Vertex r of a point's simplex is the key k = (d+1) q + r (all d+1 coordinates
  congruent to r); returning q spares the integer division of the keys."""
  n = features.shape[0]
  cf = features.astype(jnp.float32) * _scale_factors(d)
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


def _lex_less(a, b):
  """Lexicographic a < b over tuples of equally shaped int32 arrays."""
  less, equal = jnp.zeros(a[0].shape, bool), jnp.ones(a[0].shape, bool)
  for x, y in zip(a, b):
    less = less | (equal & (x < y))
    equal = equal & (x == y)
  return less


def _search(sorted_words, query_words, capacity):
  """Row of each query key in the sorted unique keys, or ``capacity``."""
  size = sorted_words[0].shape[0]
  if len(sorted_words) == 1:
    lo = jnp.searchsorted(sorted_words[0], query_words[0]).astype(jnp.int32)
    at = sorted_words[0][jnp.minimum(lo, size - 1)]
    return jnp.where((lo < size) & (at == query_words[0]), lo, capacity)
  lo = jnp.zeros(query_words[0].shape, jnp.int32)
  hi = jnp.full(query_words[0].shape, size, jnp.int32)

  def step(_, bounds):
    lo, hi = bounds
    mid = (lo + hi) // 2
    at = tuple(w[jnp.minimum(mid, size - 1)] for w in sorted_words)
    go_right = _lex_less(at, query_words) & (lo < hi)
    return jnp.where(go_right, mid + 1, lo), jnp.where(go_right | (lo >= hi), hi, mid)

  lo, _ = jax.lax.fori_loop(0, max(1, size.bit_length()), step, (lo, hi))
  at = tuple(w[jnp.minimum(lo, size - 1)] for w in sorted_words)
  found = (lo < size) & jnp.all(jnp.stack([a == q for a, q in zip(at, query_words)]), 0)
  return jnp.where(found, lo, capacity)


class Hashed(NamedTuple):
  """First half of a build: every pixel's simplex vertices as rows of the
  sorted distinct lattice keys (``hash``), before the capacity is chosen."""
  offsets: jax.Array    # (N, d+1) int32 row in [0, size)
  weights: jax.Array    # (N, d+1) float32 barycentric weights
  keys: tuple           # int32 words (N(d+1),): sorted distinct keys, padded
  size: jax.Array       # () int32 number of distinct keys M


def hash_points(features: jax.Array, bounds: Sequence[tuple[float, float]]) -> Hashed:
  """Embeds (N, d) features in the lattice and numbers the distinct simplex
  vertices in key order (one sort of the N(d+1) vertex keys)."""
  n, d = features.shape
  if len(bounds) != d:
    raise ValueError(f"lattice: {len(bounds)} bounds for {d} feature dims")
  layout = _key_layout(d, bounds)
  lo = np.array([b[0] for b in bounds], np.float32)
  hi = np.array([b[1] for b in bounds], np.float32)
  quot, rem, bary = _embed(jnp.clip(features, lo, hi), d)
  words, _ = _encode_quotients(quot, rem, layout)
  flat = tuple(w.reshape(-1) for w in words)
  count = flat[0].shape[0]
  # A vertex equal to the same vertex of the previous point (the left
  # neighbour, for pixels in row-major order: 50-70% of them on photos) is
  # sorted as padding: sorting fewer distinct values is up to 1.7x faster.
  # Sorting the keys alone and searching them back is ~4x faster on CPU than
  # sorting them with a permutation payload.
  repeat = jnp.all(jnp.stack([w[1:] == w[:-1] for w in words]), 0)   # (N-1, d+1)
  repeat = jnp.concatenate([jnp.zeros((1, d + 1), bool), repeat]).reshape(-1)
  sorted_words = tuple(jax.lax.sort(tuple(jnp.where(repeat, _INT32_MAX, w) for w in flat),
                                    num_keys=len(flat)))
  changed = jnp.zeros(count, bool).at[0].set(True)
  for w in sorted_words:
    changed = changed.at[1:].set(changed[1:] | (w[1:] != w[:-1]))
  seg = jnp.cumsum(changed.astype(jnp.int32)) - 1
  uniq = tuple(jnp.full(count, _INT32_MAX, jnp.int32).at[seg].set(w)
        for w in sorted_words)
  offsets = _search(uniq, flat, count).reshape(n, d + 1)
  padded = (sorted_words[0][-1] == _INT32_MAX).astype(jnp.int32)  # repeats sort last
  return Hashed(offsets, bary, uniq, seg[-1] + 1 - padded)


def connect(hashed: Hashed, bounds: Sequence[tuple[float, float]],
      capacity: int | None = None) -> Lattice:
  """Second half of a build: keeps ``capacity`` lattice rows (static) and finds
  every row's blur neighbours by binary search in the sorted keys."""
  n, dp1 = hashed.offsets.shape
  d = dp1 - 1
  layout = _key_layout(d, bounds)
  capacity = n * dp1 if capacity is None else int(capacity)
  uniq = tuple(w[:capacity] if capacity <= w.shape[0] else
        jnp.concatenate([w, jnp.full(capacity - w.shape[0], _INT32_MAX, jnp.int32)])
        for w in hashed.keys)
  offsets = jnp.where(hashed.offsets < capacity, hashed.offsets, capacity)
  ukeys, urem = _decode(uniq, d, layout)
  nbrs = []
  for j in range(dp1):
    step = -jnp.ones(d, jnp.int32)
    if j < d:
      step = step.at[j].set(d)
    pair = []
    for sign in (1, -1):
      qwords, valid = _encode(ukeys + sign * step, jnp.mod(urem - sign, dp1), d, layout)
      hit = _search(uniq, qwords, capacity)
      live = valid & (uniq[0] != _INT32_MAX)
      pair.append(jnp.concatenate([jnp.where(live, hit, capacity),
                    jnp.array([capacity], jnp.int32)]))
    nbrs.append(jnp.stack(pair))
  return Lattice(offsets, hashed.weights, jnp.stack(nbrs), hashed.size)


def build(features: jax.Array, bounds: Sequence[tuple[float, float]],
     capacity: int | None = None) -> Lattice:
  """Builds the lattice of one image's features (N, d), already divided by the
  kernel widths (the kernel is exp(-|f_i - f_j|^2 / 2)).

  bounds: static (lo, hi) per feature dimension covering every value (e.g.
   (0, (W-1)/sxy) for x, (0, 255/srgb) for a colour channel); they fix the key
   encoding before tracing. Values outside them are clipped.
  capacity: static number of lattice rows; defaults to the worst case N(d+1).
   A smaller capacity (``hash_points(...).size`` tells what an image needs)
   makes filtering proportionally cheaper; lattice points past it are
   dropped (their mass is lost).
  """
  return connect(hash_points(features, bounds), bounds, capacity)


def _decode(words, d, layout):
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
  rem = jnp.where(words[0] == _INT32_MAX, 0, rem)
  q = jnp.stack(q, -1) + jnp.asarray(qmin, jnp.int32)
  return q * (d + 1) + rem[:, None], rem


def filter(lattice: Lattice, values: jax.Array) -> jax.Array:  # noqa: A001
  """Approximate ``sum_j exp(-|f_i - f_j|^2 / 2) v_j`` for values (N, K).

  Splat and slice loop over the d+1 simplex vertices so that each gather or
  scatter fuses with its weighting (3x faster on CPU than one (N, d+1, K)
  intermediate)."""
  dp1 = lattice.offsets.shape[1]
  capacity = lattice.blur.shape[-1] - 1
  values = values.astype(jnp.float32)
  grid = jnp.zeros((capacity + 1, values.shape[-1]), jnp.float32)
  for r in range(dp1):
    grid = grid.at[lattice.offsets[:, r]].add(lattice.weights[:, r, None] * values)
  grid = grid.at[capacity].set(0.0)
  for j in range(dp1):
    grid = grid + 0.5 * (grid[lattice.blur[j, 0]] + grid[lattice.blur[j, 1]])
  # (the sentinel row stays 0 through the blur; writing it again makes XLA
  # materialise the blurred grid rather than redo the last blur step inside
  # each of the d+1 slice gathers: mean-field step 17 -> 15 ms at 321 px on CPU)
  grid = grid.at[capacity].set(0.0)
  alpha = 1.0 / (1.0 + 2.0 ** (-(dp1 - 1)))
  out = 0.0
  for r in range(dp1):
    out = out + lattice.weights[:, r, None] * grid[lattice.offsets[:, r]]
  return alpha * out


# ------------------------------------------------ spatial-only kernel, pixel grid

def _grid_layout(sxy: float) -> tuple[int, np.ndarray]:
  """Coarse-grid stride s (pixels) and blur taps for a spatial Gaussian of width sxy.

  Tent splat and tent slice at stride s each add variance (s^2 - 1)/6 px^2
  (a discrete tent of half-width s, averaged over a pixel's position between
  two nodes); the coarse blur supplies the rest, so the composite kernel has
  the Gaussian's variance sxy^2 on average (per position it varies by -17% ..
  +13%, as the lattice's kernel varies with a point's place in its simplex:
  tests/test_crf.py). s = floor(sxy) keeps the coarse blur positive and short;
  s = 1 (sxy < 2) is the exact Gaussian truncated at 4 sxy. The taps are
  scaled so the kernel's mass equals the exact sum over the integer grid,
  sum_d exp(-d^2 / 2 sxy^2), per axis.
  """
  s = max(1, int(math.floor(sxy)))
  var = (sxy * sxy - (s * s - 1) / 3.0) / (s * s)      # in coarse cells^2
  r = max(1, int(math.ceil(4.0 * math.sqrt(var))))
  k = np.arange(-r, r + 1, dtype=np.float64)
  taps = np.exp(-0.5 * k * k / var)
  d = np.arange(-int(math.ceil(8 * sxy)), int(math.ceil(8 * sxy)) + 1, dtype=np.float64)
  mass = np.exp(-0.5 * d * d / (sxy * sxy)).sum()
  return s, (taps * (mass / s) / taps.sum()).astype(np.float32)


def _grid_splat(x, axis, s):
  """Tent splat along ``axis``: pixel s*a + b gives (1 - b/s) to node a and b/s
  to node a + 1 (strided slices, no scatter)."""
  if s == 1:
    return x
  n = x.shape[axis]
  a = -(-n // s)
  pad = [(0, 0)] * x.ndim
  pad[axis] = (0, a * s - n)
  x = jnp.pad(x, pad)
  x = x.reshape(x.shape[:axis] + (a, s) + x.shape[axis + 1:])
  phase = [jax.lax.index_in_dim(x, b, axis + 1, keepdims=False) for b in range(s)]
  low = sum((1.0 - b / s) * p for b, p in enumerate(phase))
  high = sum((b / s) * p for b, p in enumerate(phase) if b)
  lo_pad, hi_pad = [(0, 0)] * (x.ndim - 1), [(0, 0)] * (x.ndim - 1)
  lo_pad[axis], hi_pad[axis] = (0, 1), (1, 0)
  return jnp.pad(low, lo_pad) + jnp.pad(high, hi_pad)


def _grid_slice(c, axis, s, n):
  """Transpose of ``_grid_splat``: linear interpolation between nodes."""
  if s == 1:
    return c
  a = c.shape[axis] - 1
  lo = jax.lax.slice_in_dim(c, 0, a, axis=axis)
  hi = jax.lax.slice_in_dim(c, 1, a + 1, axis=axis)
  y = jnp.stack([(1.0 - b / s) * lo + (b / s) * hi for b in range(s)], axis + 1)
  y = y.reshape(y.shape[:axis] + (a * s,) + y.shape[axis + 2:])
  return jax.lax.slice_in_dim(y, 0, n, axis=axis)


def _grid_blur(c, axis, taps):
  r = len(taps) // 2
  n = c.shape[axis]
  pad = [(0, 0)] * c.ndim
  pad[axis] = (r, r)
  p = jnp.pad(c, pad)
  return sum(float(t) * jax.lax.slice_in_dim(p, i, i + n, axis=axis)
             for i, t in enumerate(taps))


def grid_filter(values: jax.Array, sxy: float) -> jax.Array:
  """Approximate ``sum_j exp(-|p_i - p_j|^2 / 2 sxy^2) v_j`` over pixel
  positions p for values (H, W, K): the spatial-only kernel of the dense CRF.

  Separable tent splat onto a grid of stride floor(sxy), Gaussian blur there,
  tent slice back: strided slices and sums only, so it fuses into a few passes
  over the image (no scatter or gather, unlike a lattice). Zero outside the
  image, as the exact sum. sxy < 2 is the exact Gaussian (truncated at 4 sxy).
  """
  if sxy <= 0:
    raise ValueError(f"grid_filter: sxy must be positive, got {sxy}")
  h, w = values.shape[:2]
  s, taps = _grid_layout(float(sxy))
  c = _grid_splat(_grid_splat(values.astype(jnp.float32), 0, s), 1, s)
  c = _grid_blur(_grid_blur(c, 0, taps), 1, taps)
  return _grid_slice(_grid_slice(c, 0, s, h), 1, s, w)


def exact_filter(features: jax.Array, values: jax.Array) -> jax.Array:
  """Exact O(N^2) Gaussian filter ``sum_j exp(-|f_i - f_j|^2 / 2) v_j``
  (self term included, as in the lattice). Reference for small images."""
  f = features.astype(jnp.float32)
  sq = jnp.sum(f * f, -1)
  dist = sq[:, None] + sq[None, :] - 2.0 * f @ f.T
  return jnp.exp(-0.5 * jnp.maximum(dist, 0.0)) @ values.astype(jnp.float32)
