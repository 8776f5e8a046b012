"""Linear operators for `wsss_jax.qp`: Q given as a dense array or as a windowed bilateral
affinity on a grid plus a rank-one or diagonal term (Eqs. 8-9), applied in O(n * window)
without forming Q.

An operator is any pytree with `matvec(x)` ((..., n) -> (..., n)) and `norm_bound()` (an upper
bound on ||Q||_2, scalar or per batch element); `diagonal()` and `row_dot(i, x)` make it usable
by projected Gauss-Seidel, `rank_one_split()` lets FISTA absorb a rank-one part in its metric.
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

TINY = 1e-30


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class DenseOperator:
  """Q given as a dense symmetric (..., n, n) array."""
  matrix: jax.Array

  def matvec(self, x: jax.Array) -> jax.Array:
    return jnp.einsum('...ij,...j->...i', self.matrix, x)

  def diagonal(self) -> jax.Array:
    return jnp.diagonal(self.matrix, axis1=-2, axis2=-1)

  def row_dot(self, i: jax.Array, x: jax.Array) -> jax.Array:
    """(Q x)_i for a traced coordinate index i."""
    return jnp.einsum('...j,...j->...', jnp.take(self.matrix, i, axis=-2), x)

  def norm_bound(self) -> jax.Array:
    gersh = jnp.max(jnp.sum(jnp.abs(self.matrix), -1), -1)
    return jnp.minimum(gersh, 1.05 * power_iteration(self.matvec, self.matrix.shape[:-1],
                                                     dtype=self.matrix.dtype))

  def rank_one_split(self) -> tuple[jax.Array, jax.Array]:
    """(c, alpha): Q = c 1 1^T + R with c >= 0 and alpha >= ||R||_2, for the solver's metric.

    c is the mean entry of Q (the least-squares fit of c 1 1^T), kept only where it halves the
    Gershgorin bound (Eq. 9's 1 1^T - sym(W_n): ||Q|| ~ n, ||R|| ~ 1), else 0; alpha = min of
    R's Gershgorin bound and 1.05 x a 30-step power iteration on R.
    """
    m = self.matrix
    n = m.shape[-1]
    fit = jnp.maximum(jnp.sum(m, (-2, -1)) / (n * n), 0.0)
    gersh = lambda c: jnp.max(jnp.sum(jnp.abs(m - c[..., None, None]), -1), -1)
    c = jnp.where(gersh(fit) < 0.5 * gersh(jnp.zeros_like(fit)), fit, 0.0)
    rest_mv = lambda x: self.matvec(x) - c[..., None] * jnp.sum(x, -1, keepdims=True)
    power = power_iteration(rest_mv, m.shape[:-1], dtype=m.dtype)
    return c, jnp.minimum(gersh(c), 1.05 * power)

  def indefinite(self) -> jax.Array:
    """True where a 2x2 principal submatrix shows Q indefinite: Q_ij^2 > Q_ii Q_jj for some
    i != j, or Q_ii < 0 (with a 0.1% margin against rounding)."""
    d = self.diagonal()
    n = d.shape[-1]
    minor = self.matrix ** 2 > 1.001 * d[..., :, None] * d[..., None, :]
    return jnp.any(minor & ~jnp.eye(n, dtype=bool), (-2, -1)) | jnp.any(d < 0, -1)


def power_iteration(matvec, shape, iters: int = 30, dtype=None) -> jax.Array:
  """Estimate of ||Q||_2 per batch element from `iters` power steps on a fixed start vector."""
  v = jnp.ones(shape, dtype) + 0.1 * jnp.cos(jnp.arange(shape[-1])).astype(dtype or jnp.float32)
  v = v / jnp.linalg.norm(v, axis=-1, keepdims=True)

  def body(_, v):
    w = matvec(v)
    return w / jnp.maximum(jnp.linalg.norm(w, axis=-1, keepdims=True), TINY)

  v = jax.lax.fori_loop(0, iters, body, v)
  return jnp.linalg.norm(matvec(v), axis=-1)


def _offsets(radius: int) -> list[tuple[int, int]]:
  """Window offsets in raster order; offset k and K-1-k are opposite."""
  return [(dy, dx) for dy in range(-radius, radius + 1) for dx in range(-radius, radius + 1)]


def _shifted(a: jax.Array, dy: int, dx: int, radius: int) -> jax.Array:
  """b[..., y, x] = a[..., y + dy, x + dx], zero outside the grid (a is (..., h, w))."""
  h, w = a.shape[-2:]
  pad = [(0, 0)] * (a.ndim - 2) + [(radius, radius), (radius, radius)]
  return jnp.pad(a, pad)[..., radius + dy:radius + dy + h, radius + dx:radius + dx + w]


def _window(x: jax.Array, i: jax.Array, grid, radius: int):
  """(row, col) of coordinate i of an (h, w) grid and x's (2r+1)^2 window around it (zeros past
  the border), flattened offset-major: what a Gauss-Seidel step reads of x."""
  h, w = grid
  k = 2 * radius + 1
  iy, ix = i // w, i % w
  xg = x.reshape(x.shape[:-1] + (h, w))
  xp = jnp.pad(xg, [(0, 0)] * (xg.ndim - 2) + [(radius, radius), (radius, radius)])
  lead = xp.ndim - 2
  win = jax.lax.dynamic_slice(xp, (0,) * lead + (iy, ix), xp.shape[:lead] + (k, k))
  return iy, ix, win.reshape(win.shape[:-2] + (k * k,))


def symmetrize(weights: jax.Array, radius: int) -> jax.Array:
  """Per-offset weights of (W + W^T) / 2: S[i, o] = (W[i, o] + W[i + o, -o]) / 2."""
  k = weights.shape[-1]
  cols = [0.5 * (weights[..., j] + _shifted(weights[..., k - 1 - j], dy, dx, radius))
          for j, (dy, dx) in enumerate(_offsets(radius))]
  return jnp.stack(cols, -1)


def normalize_symmetric(weights: jax.Array, radius: int) -> jax.Array:
  """Per-offset weights of D^{-1/2} W D^{-1/2} for a symmetric W, d_i = sum_o W[i, o]."""
  d = jnp.sum(weights, -1)
  inv = jnp.where(d > 0, 1.0 / jnp.sqrt(jnp.where(d > 0, d, 1.0)), 0.0)
  cols = [weights[..., k] * inv * _shifted(inv, dy, dx, radius)
          for k, (dy, dx) in enumerate(_offsets(radius))]
  return jnp.stack(cols, -1)


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class BilateralOperator:
  """Q x = scale * (S x) + diag * x + rank_one * sum(x) * 1 on an h x w grid, in O(n (2r+1)^2).

  S is a symmetric affinity restricted to a (2r+1)^2 window, stored per
  offset: `weights` (..., h, w, (2r+1)^2) with (S x)_i = sum_o S[i, o] x[i + o]
  and S[i, o] = S[i + o, -o] (use `symmetrize` on a non-symmetric W, as
  `bilateral_weights` does). Eq. (9)'s Q = -D = 1 1^T - sym(W_n) is scale=-1,
  rank_one=1, diag=0; a convex variant is scale=-1, diag > ||S||_2.
  scale, diag and rank_one are scalars or per batch element.
  """
  weights: jax.Array
  scale: jax.Array
  diag: jax.Array
  rank_one: jax.Array
  radius: int = dataclasses.field(metadata=dict(static=True))

  def _apply_s(self, x: jax.Array) -> jax.Array:
    h, w = self.weights.shape[-3:-1]
    r = self.radius
    xg = x.reshape(x.shape[:-1] + (h, w))
    xp = jnp.pad(xg, [(0, 0)] * (xg.ndim - 2) + [(r, r), (r, r)])  # pad once, slice per offset
    out = sum(self.weights[..., k] * xp[..., r + dy:r + dy + h, r + dx:r + dx + w]
              for k, (dy, dx) in enumerate(_offsets(r)))
    return out.reshape(x.shape)

  def matvec(self, x: jax.Array) -> jax.Array:
    return (jnp.asarray(self.scale)[..., None] * self._apply_s(x)
            + jnp.asarray(self.diag)[..., None] * x
            + jnp.asarray(self.rank_one)[..., None] * jnp.sum(x, -1, keepdims=True))

  def diagonal(self) -> jax.Array:
    h, w = self.weights.shape[-3:-1]
    centre = (len(_offsets(self.radius)) - 1) // 2
    s_ii = self.weights[..., centre].reshape(self.weights.shape[:-3] + (h * w,))
    return (jnp.asarray(self.scale)[..., None] * s_ii + jnp.asarray(self.diag)[..., None]
            + jnp.asarray(self.rank_one)[..., None])

  def row_dot(self, i: jax.Array, x: jax.Array) -> jax.Array:
    """(Q x)_i for a traced coordinate index i, reading only i's window (plus sum(x))."""
    iy, ix, win = _window(x, i, self.weights.shape[-3:-1], self.radius)
    wrow = jax.lax.dynamic_index_in_dim(jax.lax.dynamic_index_in_dim(self.weights, iy, -3, False),
                                        ix, -2, False)
    sx = jnp.sum(wrow * win, -1)
    xi = jnp.take(x, i, axis=-1)
    return (jnp.asarray(self.scale) * sx + jnp.asarray(self.diag) * xi
            + jnp.asarray(self.rank_one) * jnp.sum(x, -1))

  def stencil(self) -> StencilOperator:
    """The same Q with scale and diag folded into offset-major weights: what the solver
    iterates with (2x faster matvecs on CPU than strided per-offset weights)."""
    h, w = self.weights.shape[-3:-1]
    centre = (len(_offsets(self.radius)) - 1) // 2
    scale, diag = jnp.asarray(self.scale), jnp.asarray(self.diag)
    wts = jnp.moveaxis(self.weights, -1, 0) * scale[..., None, None]
    wts = wts.at[centre].add(jnp.broadcast_to(diag[..., None, None], wts.shape[1:]))
    return StencilOperator(wts, jnp.asarray(self.rank_one), self.radius)

  def indefinite(self) -> jax.Array:
    """True where a 2x2 principal submatrix shows Q indefinite (with a 0.1% margin against
    rounding): Q_ii < 0, or Q_ij^2 > Q_ii Q_jj for a pair in one window (Q_ij = scale S_ij +
    rank_one) or for the cell of least Q_ii and the least of the cells outside its window
    (Q_ij = rank_one)."""
    r = self.radius
    h, w = self.weights.shape[-3:-1]
    offsets = _offsets(r)
    d = self.diagonal()
    dg = d.reshape(d.shape[:-1] + (h, w))
    dp = jnp.pad(dg, [(0, 0)] * (dg.ndim - 2) + [(r, r), (r, r)])
    d_nb = jnp.stack([dp[..., r + dy:r + dy + h, r + dx:r + dx + w] for dy, dx in offsets], -1)
    yy, xx = np.mgrid[:h, :w]
    valid = np.stack([(0 <= yy + dy) & (yy + dy < h) & (0 <= xx + dx) & (xx + dx < w)
                      & ((dy, dx) != (0, 0)) for dy, dx in offsets], -1)
    c = jnp.asarray(self.rank_one)
    qij = jnp.asarray(self.scale)[..., None, None, None] * self.weights + c[..., None, None, None]
    pair = (qij ** 2 > 1.001 * dg[..., None] * d_nb) & valid
    hit = jnp.any(pair, (-3, -2, -1)) | jnp.any(d < 0, -1)
    i = jnp.argmin(d, -1)
    far = ((jnp.abs(yy - (i // w)[..., None, None]) > r)
           | (jnp.abs(xx - (i % w)[..., None, None]) > r))
    d_far = jnp.min(jnp.where(far, dg, jnp.inf), (-2, -1))
    return hit | (c ** 2 > 1.001 * jnp.min(d, -1) * d_far)

  def _batch_shape(self) -> tuple[int, ...]:
    return jnp.broadcast_shapes(self.weights.shape[:-3], jnp.shape(self.scale),
                                jnp.shape(self.diag), jnp.shape(self.rank_one))

  def _gershgorin(self, rank_one: jax.Array) -> jax.Array:
    """|scale| max_i sum_o |S[i, o]| + |diag| + n |rank_one|: bounds the norm of the operator
    with `rank_one` in place of its own rank-one coefficient."""
    h, w = self.weights.shape[-3:-1]
    row = jnp.max(jnp.sum(jnp.abs(self.weights), -1), (-2, -1))
    return jnp.abs(self.scale) * row + jnp.abs(self.diag) + h * w * jnp.abs(rank_one)

  def norm_bound(self) -> jax.Array:
    """Gershgorin bound >= ||Q||_2."""
    return self._gershgorin(jnp.asarray(self.rank_one))

  def rank_one_split(self) -> tuple[jax.Array, jax.Array]:
    """(c, alpha): Q = c 1 1^T + R with c >= 0 and alpha >= ||R||_2, for the solver's metric.

    alpha = min(Gershgorin bound of R, 1.1 x a 30-step power iteration on R). The power
    iteration runs on the operator's own batch shape (one image's affinity serves all
    classes), so it costs a fraction of one solver iteration per class.
    """
    c = jnp.maximum(jnp.asarray(self.rank_one), 0.0)
    h, w = self.weights.shape[-3:-1]
    batch = self._batch_shape()
    cb = jnp.broadcast_to(c, batch)[..., None]
    stencil = self.stencil()
    rest_mv = lambda x: stencil.matvec(x) - cb * jnp.sum(x, -1, keepdims=True)
    power = power_iteration(rest_mv, batch + (h * w,), dtype=self.weights.dtype)
    return c, jnp.minimum(self._gershgorin(jnp.asarray(self.rank_one) - c), 1.1 * power)

  def dense(self) -> jax.Array:
    """The (..., n, n) matrix (tests and small problems only)."""
    n = self.weights.shape[-3] * self.weights.shape[-2]
    batch = self._batch_shape()
    return jax.vmap(lambda e: self.matvec(jnp.broadcast_to(e, batch + (n,))),
                    out_axes=-1)(jnp.eye(n))


def bilateral_weights(positions: jax.Array, features: jax.Array, grid: tuple[int, int], radius: int,
                      sigma_z: float, sigma_r: float, row_normalize: bool = True) -> jax.Array:
  """Windowed Eq. (8) weights per offset, (..., h, w, (2r+1)^2), ready for `BilateralOperator`.

  w = exp(-|z - z'|^2 / sigma_z^2) exp(-|r - r'|^2 / sigma_r^2) for `positions`
  (..., h, w, 2) and `features` (..., h, w, f); offsets leaving the grid get 0.
  With `row_normalize` rows are divided by their sums (Eq. 9's w / sum w) and
  the result is symmetrised, (W_n + W_n^T) / 2: the part a quadratic form sees.
  """
  h, w = grid
  pad = [(0, 0)] * (positions.ndim - 3) + [(radius, radius), (radius, radius), (0, 0)]
  zp, rp = jnp.pad(positions, pad), jnp.pad(features, pad)
  valid = jnp.pad(jnp.ones(positions.shape[:-1] + (1,), positions.dtype), pad)
  ws = []
  for dy, dx in _offsets(radius):
    sl = (Ellipsis, slice(radius + dy, radius + dy + h), slice(radius + dx, radius + dx + w),
          slice(None))
    dz = jnp.sum((positions - zp[sl]) ** 2, -1)
    dr = jnp.sum((features - rp[sl]) ** 2, -1)
    ws.append(jnp.exp(-dz / sigma_z ** 2 - dr / sigma_r ** 2) * valid[sl][..., 0])
  wts = jnp.stack(ws, -1)
  if row_normalize:
    wts = symmetrize(wts / jnp.sum(wts, -1, keepdims=True), radius)
  return wts


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class StencilOperator:
  """Q x = sum_o W_o * x[. + o] + rank_one * sum(x) * 1 on an h x w grid: a windowed operator
  with offset-major weights (K^2, ..., h, w), K = 2r + 1 (`BilateralOperator.stencil`)."""
  weights: jax.Array
  rank_one: jax.Array
  radius: int = dataclasses.field(metadata=dict(static=True))

  def _grid(self) -> tuple[int, int]:
    return self.weights.shape[-2:]

  def matvec(self, x: jax.Array) -> jax.Array:
    h, w = self._grid()
    r = self.radius
    xg = x.reshape(x.shape[:-1] + (h, w))
    xp = jnp.pad(xg, [(0, 0)] * (xg.ndim - 2) + [(r, r), (r, r)])  # pad once, slice per offset
    out = sum(self.weights[k] * xp[..., r + dy:r + dy + h, r + dx:r + dx + w]
              for k, (dy, dx) in enumerate(_offsets(r)))
    return out.reshape(x.shape) + self.rank_one[..., None] * jnp.sum(x, -1, keepdims=True)

  def diagonal(self) -> jax.Array:
    h, w = self._grid()
    centre = (self.weights.shape[0] - 1) // 2
    return (self.weights[centre].reshape(self.weights.shape[1:-2] + (h * w,))
            + self.rank_one[..., None])

  def row_dot(self, i: jax.Array, x: jax.Array) -> jax.Array:
    """(Q x)_i for a traced coordinate index i, reading only i's window (plus sum(x))."""
    iy, ix, win = _window(x, i, self._grid(), self.radius)
    wrow = jax.lax.dynamic_index_in_dim(jax.lax.dynamic_index_in_dim(self.weights, iy, -2, False),
                                        ix, -1, False)
    sx = jnp.sum(jnp.moveaxis(wrow, 0, -1) * win, -1)
    return sx + self.rank_one * jnp.sum(x, -1)

  def norm_bound(self) -> jax.Array:
    """Gershgorin bound >= ||Q||_2."""
    h, w = self._grid()
    row = jnp.max(jnp.sum(jnp.abs(self.weights), 0), (-2, -1))
    return row + h * w * jnp.abs(self.rank_one)
