"""Lateral dependencies of the attention QP: Eqs. (8)-(9) on the stride-8 grid (Sec. 4).

Every neuron of pool4..fc8 sits on the same stride-8 grid, so D is built once
per image. Neuron i's pixel area is the 8x8 cell centred on its receptive-field
centre z_i = (8 y, 8 x) px (the grid of `backbone.output_size`); r_i is the
joint HSV histogram of that cell in pixel *counts* (so sigma_r = 30 is on the
scale of the 64 pixels a cell holds: two cells of disjoint colours are ~90
apart, w ~ e^-9; identical cells give w from positions only). Bins: 8 hue x
3 saturation x 3 value = 72. The full receptive field of pool4 spans most of
the image, which would make every histogram alike, hence the cell.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from wsss_jax import backbone, qp

STRIDE = 8
HSV_BINS = (8, 3, 3)


def rgb_to_hsv(rgb: jax.Array) -> jax.Array:
  """uint8 or [0, 1] float RGB (..., 3) -> HSV in [0, 1] (colorsys's convention)."""
  x = rgb.astype(jnp.float32) / 255.0 if jnp.issubdtype(rgb.dtype, jnp.integer) else rgb
  r, g, b = x[..., 0], x[..., 1], x[..., 2]
  mx, mn = jnp.max(x, -1), jnp.min(x, -1)
  d = mx - mn
  safe = jnp.where(d > 0, d, 1.0)
  h = jnp.where(mx == r, (g - b) / safe,
                jnp.where(mx == g, 2.0 + (b - r) / safe, 4.0 + (r - g) / safe))
  h = jnp.where(d > 0, (h / 6.0) % 1.0, 0.0)
  s = jnp.where(mx > 0, d / jnp.where(mx > 0, mx, 1.0), 0.0)
  return jnp.stack([h, s, mx], -1)


def cell_histograms(images: jax.Array, bins: tuple[int, int, int] = HSV_BINS) -> jax.Array:
  """(B, H, W, 3) images -> (B, h, w, prod(bins)) HSV pixel counts per stride-8 cell."""
  hsv = rgb_to_hsv(images)
  # + 1e-4: for 8-bit RGB, h*8, s*3 and v*3 are either on a bin edge or >= 1/765 away from one,
  # so this puts float32 round-off on an edge into the bin exact arithmetic gives.
  idx = [jnp.clip((hsv[..., c] * n + 1e-4).astype(jnp.int32), 0, n - 1) for c, n in enumerate(bins)]
  flat = (idx[0] * bins[1] + idx[1]) * bins[2] + idx[2]
  onehot = jax.nn.one_hot(flat, bins[0] * bins[1] * bins[2], dtype=jnp.float32)
  _, H, W, k = onehot.shape
  gh, gw = backbone.output_size(H), backbone.output_size(W)
  half = STRIDE // 2
  # Cell i covers pixels [8 i - 4, 8 i + 4): pad (or crop) so the grid tiles exactly.
  pad_h, pad_w = STRIDE * gh - H - half, STRIDE * gw - W - half
  x = jnp.pad(onehot, ((0, 0), (half, max(pad_h, 0)), (half, max(pad_w, 0)), (0, 0)))
  x = x[:, :STRIDE * gh, :STRIDE * gw]
  return x.reshape(-1, gh, STRIDE, gw, STRIDE, k).sum((2, 4))


def cell_centres(grid: tuple[int, int]) -> jax.Array:
  """(h, w, 2) receptive-field centres z_i in pixels."""
  yy, xx = jnp.meshgrid(jnp.arange(grid[0]), jnp.arange(grid[1]), indexing='ij')
  return STRIDE * jnp.stack([yy, xx], -1).astype(jnp.float32)


def lateral_operator(images: jax.Array, radius: int, reading: str = 'diffusion', eps: float = 0.01,
                     sigma_z: float = 10.0, sigma_r: float = 30.0) -> qp.BilateralOperator:
  """Q = -D of the attention QP for each image, as a windowed operator for `qp`.

  reading='paper_eq9': Eq. (9) as printed, D = W_n - 1 1^T with W_n the
    row-normalised Eq. (8) affinity, symmetrised: Q = 1 1^T - sym(W_n) + eps I
    (copositive, indefinite; its MAP collapses onto few cells, see docs/DESIGN.md). eps = 0 is
    the literal form, which is unbounded below along e_i when cell i has no similar neighbour
    (its W_n row is e_i, so Q_ii = 0); any eps > 0 makes Q strictly copositive (a positive
    diagonal, nonnegative elsewhere), hence the QP bounded: the smallest correction.
  reading='diffusion': D = A - (1 + eps) I with A = D_w^{-1/2} W D_w^{-1/2} the
    symmetrically normalised affinity (eigenvalues <= 1): Q = (1 + eps) I - A is
    positive definite and the MAP is a bilateral diffusion of b.
  A radius covering the whole grid is the literal dense form.
  """
  hist = cell_histograms(images)
  grid = hist.shape[1:3]
  pos = jnp.broadcast_to(cell_centres(grid), hist.shape[:1] + grid + (2,))
  n = images.shape[0]
  if reading == 'paper_eq9':
    w = qp.bilateral_weights(pos, hist, grid, radius, sigma_z, sigma_r)
    return qp.BilateralOperator(w, -jnp.ones(n), jnp.full((n,), eps), jnp.ones(n), radius)
  if reading == 'diffusion':
    w = qp.bilateral_weights(pos, hist, grid, radius, sigma_z, sigma_r, row_normalize=False)
    a = qp.normalize_symmetric(w, radius)
    return qp.BilateralOperator(a, -jnp.ones(n), jnp.full((n,), 1.0 + eps), jnp.zeros(n), radius)
  raise ValueError(f"lateral reading must be 'paper_eq9' or 'diffusion', got {reading!r}")


def feedforward_term(activations: jax.Array) -> jax.Array:
  """alpha of Eq. (7): a / sum(a) over each image's layer (all positions and channels)."""
  a = jnp.maximum(activations, 0.0)
  axes = tuple(range(1, a.ndim))
  return a / jnp.maximum(jnp.sum(a, axis=axes, keepdims=True), 1e-12)
