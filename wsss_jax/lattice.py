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

How many lattice points an image has (M) is known only at run time, but array
shapes are static: a lattice keeps the worst case N(d+1) rows (or a smaller
``capacity``), and ``connect`` and ``filter`` dispatch (``lax.switch``) to
code compiled for the smallest of a few static row counts (4096, 8192, ...,
capacity) that holds M, so their cost follows what the image needs (11-14k
rows for a 321 px photo with pydensecrf's kernels, vs 618k) wherever the call
sits: directly, under an outer ``jit`` or ``grad``, in a ``lax.map`` (one
image at a time) or a ``vmap`` (the batch's largest M). Row 0 is an all-zero
sentinel (vertices dropped past the capacity, missing blur neighbours).

``grid_filter`` (``wsss_jax.gridfilter``) is the spatial-only kernel (no colour
term): its features are the pixel grid itself, so it runs on a regular coarse
grid with strided slices instead of a lattice. ``exact_filter`` is the O(N^2)
reference for small images.
"""
from __future__ import annotations

from typing import NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from wsss_jax import lattice_keys
from wsss_jax.gridfilter import grid_filter  # noqa: F401  (public here)

_PAD = lattice_keys.INT32_MAX  # key of empty rows: sorts last



class Lattice(NamedTuple):
  """A built lattice for one image (leading batch axes allowed under vmap).

  offsets: (N, d+1) int32 lattice row (1..M) of each pixel's simplex vertices;
   row 0 is the all-zero sentinel (vertices dropped past the capacity).
  weights: (N, d+1) float32 barycentric weights.
  blur: (d+1, 2, capacity+1) int32 rows of the two neighbours of every lattice
   row along each lattice axis (0 where a neighbour does not exist, and for
   rows past M).
  size: () int32 number of distinct lattice points M (may exceed capacity,
   in which case points past capacity were dropped: see ``build``).
  """
  offsets: jax.Array
  weights: jax.Array
  blur: jax.Array
  size: jax.Array


class Hashed(NamedTuple):
  """First half of a build: every pixel's simplex vertices as rows of the
  sorted distinct lattice keys (``hash``), before the capacity is chosen."""
  offsets: jax.Array    # (N, d+1) int32 row in [0, size)
  weights: jax.Array    # (N, d+1) float32 barycentric weights
  keys: tuple           # int32 words (N(d+1),): sorted distinct keys, padded
  size: jax.Array       # () int32 number of distinct keys M


def hash_points(features: jax.Array, bounds: Sequence[tuple[float, float]],
                row: int | None = None) -> Hashed:
  """Embeds (N, d) features in the lattice and numbers the distinct simplex
  vertices in key order (one sort of the N(d+1) vertex keys). ``row`` (static,
  optional): the points are an image's pixels in row-major order with ``row``
  per image row, which lets more repeated vertices skip the sort."""
  n, d = features.shape
  if len(bounds) != d:
    raise ValueError(f'lattice: {len(bounds)} bounds for {d} feature dims')
  layout = lattice_keys.key_layout(d, bounds)
  lo = np.array([b[0] for b in bounds], np.float32)
  hi = np.array([b[1] for b in bounds], np.float32)
  quot, rem, bary = lattice_keys.embed(jnp.clip(features, lo, hi), d)
  words, _ = lattice_keys.encode_quotients(quot, rem, layout)
  flat = tuple(w.reshape(-1) for w in words)
  count = flat[0].shape[0]
  # A vertex equal to the same vertex of the previous point (the left
  # neighbour, for pixels in row-major order: 50-70% of them on photos) is
  # sorted as padding: sorting fewer distinct values is up to 1.7x faster.
  # Sorting the keys alone and searching them back is ~4x faster on CPU than
  # sorting them with a permutation payload.
  # The vertex of the point one image row up (``row``) is as often equal; a key's
  # first point in this order is never marked, so every key still gets sorted.
  def same_as(k):
    eq = jnp.all(jnp.stack([w[k:] == w[:-k] for w in words]), 0)   # (N-k, d+1)
    return jnp.concatenate([jnp.zeros((k, d + 1), bool), eq])
  repeat = same_as(1) if row is None or row >= n else same_as(1) | same_as(row)
  repeat = repeat.reshape(-1)
  sorted_words = tuple(jax.lax.sort(tuple(jnp.where(repeat, _PAD, w) for w in flat),
                                    num_keys=len(flat)))
  changed = jnp.zeros(count, bool).at[0].set(True)
  for w in sorted_words:
    changed = changed.at[1:].set(changed[1:] | (w[1:] != w[:-1]))
  seg = jnp.cumsum(changed.astype(jnp.int32)) - 1
  uniq = tuple(jnp.full(count, _PAD, jnp.int32).at[seg].set(w)
        for w in sorted_words)
  offsets = lattice_keys.search(uniq, flat, count).reshape(n, d + 1)
  padded = (sorted_words[0][-1] == _PAD).astype(jnp.int32)  # repeats sort last
  return Hashed(offsets, bary, uniq, seg[-1] + 1 - padded)


def _buckets(capacity: int) -> tuple[int, ...]:
  """The static row counts ``connect`` and ``filter`` are compiled for: 4096 doubling, up to
  and including ``capacity`` (one extra row per count: the sentinel)."""
  out, c = [], 4096
  while c < capacity:
    out.append(c)
    c *= 2
  return tuple(out) + (capacity,)


def _bucket(size, buckets):
  """Index of the smallest bucket holding ``size`` rows (the last one if none does)."""
  return jnp.sum(jnp.asarray(buckets[:-1], jnp.int32) < size).astype(jnp.int32)


def _switch(index, branches, *operands):
  """``lax.switch(index, branches, *operands)``, batched by running every element with the
  batch's largest index (exact here: a bucket past M changes only the cost) instead of every
  branch, which is what ``vmap`` makes of a switch with a batched index."""
  @jax.custom_batching.custom_vmap
  def run(index, *operands):
    return jax.lax.switch(index, branches, *operands)

  @run.def_vmap
  def _rule(axis_size, in_batched, index, *operands):
    del axis_size
    top = jnp.max(index) if in_batched[0] else index
    axes = tuple(jax.tree.map(lambda b: 0 if b else None, ib) for ib in in_batched[1:])
    if not any(jax.tree.leaves(in_batched[1:])):
      out = jax.lax.switch(top, branches, *operands)
      return out, jax.tree.map(lambda _: False, out)
    mapped = [lambda *ops, f=f: jax.vmap(f, in_axes=axes)(*ops) for f in branches]
    out = jax.lax.switch(top, mapped, *operands)
    return out, jax.tree.map(lambda _: True, out)

  return run(index, *operands)


def connect(hashed: Hashed, bounds: Sequence[tuple[float, float]],
            capacity: int | None = None) -> Lattice:
  """Second half of a build: keeps at most ``capacity`` lattice rows (static; default the
  worst case N(d+1)) and finds every row's blur neighbours by binary search in the sorted
  keys, at a cost that follows the M rows the lattice has (see the module docstring)."""
  n, dp1 = hashed.offsets.shape
  d = dp1 - 1
  layout = lattice_keys.key_layout(d, bounds)
  capacity = n * dp1 if capacity is None else int(capacity)
  keys = tuple(w if capacity <= w.shape[0] else
               jnp.concatenate([w, jnp.full(capacity - w.shape[0], _PAD, jnp.int32)])
               for w in hashed.keys)
  offsets = jnp.where(hashed.offsets < capacity, hashed.offsets + 1, 0)

  def neighbours(rows, *keys):
    uniq = tuple(w[:rows] for w in keys)
    ukeys, urem = lattice_keys.decode(uniq, d, layout)
    nbrs = []
    for j in range(dp1):
      step = -jnp.ones(d, jnp.int32)
      if j < d:
        step = step.at[j].set(d)
      pair = []
      for sign in (1, -1):
        qwords, valid = lattice_keys.encode(ukeys + sign * step, jnp.mod(urem - sign, dp1), d,
                                            layout)
        hit = lattice_keys.search(uniq, qwords, -1)
        live = valid & (uniq[0] != _PAD) & (hit >= 0)
        pair.append(jnp.where(live, hit + 1, 0))
      nbrs.append(jnp.stack(pair))
    # row 0 (the sentinel) first; rows past `rows` have no neighbours
    return jnp.pad(jnp.stack(nbrs), ((0, 0), (0, 0), (1, capacity - rows)))

  buckets = _buckets(capacity)
  branches = [lambda *k, c=c: neighbours(c, *k) for c in buckets]
  blur = _switch(_bucket(hashed.size, buckets), branches, *keys)
  return Lattice(offsets, hashed.weights, blur, hashed.size)


def build(features: jax.Array, bounds: Sequence[tuple[float, float]],
          capacity: int | None = None, row: int | None = None) -> Lattice:
  """Builds the lattice of one image's features (N, d), already divided by the
  kernel widths (the kernel is exp(-|f_i - f_j|^2 / 2)).

  bounds: static (lo, hi) per feature dimension covering every value (e.g.
   (0, (W-1)/sxy) for x, (0, 255/srgb) for a colour channel); they fix the key
   encoding before tracing. Values outside them are clipped.
  capacity: static cap on the lattice rows; defaults to the worst case N(d+1).
   The filter costs what the M rows the image needs cost either way; points
   past a smaller capacity are dropped (their mass is lost).
  row: optional, the points are pixels in row-major order, ``row`` per image row
   (see ``hash_points``).
  """
  return connect(hash_points(features, bounds, row), bounds, capacity)


def _filter_rows(rows, reverse, offsets, weights, blur, values):
  """alpha S^T B S v on the first ``rows`` + 1 lattice rows (static): splat S, blur B along the
  d+1 axes in turn (in reverse order for the transpose), slice S^T. Splat and slice loop over
  the d+1 simplex vertices so that each scatter or gather fuses with its weighting (3x faster
  on CPU than one (N, d+1, K) intermediate)."""
  dp1 = offsets.shape[1]
  blur = blur[:, :, :rows + 1]
  alpha = 1.0 / (1.0 + 2.0 ** (-(dp1 - 1)))
  # every index is a row in [0, rows]: no bounds handling in the scatters and gathers
  fast = dict(mode='promise_in_bounds')
  grid = jnp.zeros((rows + 1, values.shape[-1]), jnp.float32)
  for r in range(dp1):
    grid = grid.at[offsets[:, r]].add(weights[:, r, None] * values, **fast)
  grid = grid.at[0].set(0.0)
  for j in (reversed(range(dp1)) if reverse else range(dp1)):
    # (the sentinel row stays 0 through the blur; writing it after every step makes XLA
    # materialise each blurred grid rather than fuse successive steps, whose gathers of
    # gathers recompute 2^k earlier rows per row, or the last step into each slice gather)
    grid = (grid + 0.5 * (grid.at[blur[j, 0]].get(**fast) + grid.at[blur[j, 1]].get(**fast))
            ).at[0].set(0.0)
  out = 0.0
  for r in range(dp1):
    out = out + (alpha * weights[:, r, None]) * grid.at[offsets[:, r]].get(**fast)
  return out


def _dispatch(lattice, values, reverse):
  capacity = lattice.blur.shape[-1] - 1
  buckets = _buckets(capacity)
  branches = [lambda *a, c=c: _filter_rows(c, reverse, *a) for c in buckets]
  return _switch(_bucket(lattice.size, buckets), branches, lattice.offsets, lattice.weights,
                 lattice.blur, values.astype(jnp.float32))


@jax.custom_vjp
def filter(lattice: Lattice, values: jax.Array) -> jax.Array:  # noqa: A001
  """Approximate ``sum_j exp(-|f_i - f_j|^2 / 2) v_j`` for values (N, K).

  Costs what the lattice's M rows need (see the module docstring). Differentiable in
  ``values``: the filter is linear, and its transpose is the same filter with the blur axes in
  reverse order (the vector-Jacobian product used here); the lattice (built from the
  features) gets no gradient.
  """
  return _dispatch(lattice, values, False)


def _filter_fwd(lattice, values):
  return _dispatch(lattice, values, False), lattice


def _filter_bwd(lattice, ct):
  zero = lambda a: (np.zeros(a.shape, jax.dtypes.float0) if jnp.issubdtype(a.dtype, jnp.integer)
                    else jnp.zeros_like(a))
  return jax.tree.map(zero, lattice), _dispatch(lattice, ct, True)


filter.defvjp(_filter_fwd, _filter_bwd)


def exact_filter(features: jax.Array, values: jax.Array) -> jax.Array:
  """Exact O(N^2) Gaussian filter ``sum_j exp(-|f_i - f_j|^2 / 2) v_j``
  (self term included, as in the lattice). Reference for small images."""
  f = features.astype(jnp.float32)
  sq = jnp.sum(f * f, -1)
  dist = sq[:, None] + sq[None, :] - 2.0 * f @ f.T
  return jnp.exp(-0.5 * jnp.maximum(dist, 0.0)) @ values.astype(jnp.float32)
