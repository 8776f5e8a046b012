"""The dense CRF's spatial-only Gaussian kernel on the pixel grid (Sec. 5).

Its features are the pixel positions themselves, so instead of a permutohedral lattice
(``wsss_jax.lattice``) it runs on a regular coarse grid: a separable tent splat, a Gaussian blur
there and a tent slice, all strided slices and sums that XLA fuses into a few passes over the
image (no scatter or gather).
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np


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
    raise ValueError(f'grid_filter: sxy must be positive, got {sxy}')
  h, w = values.shape[:2]
  s, taps = _grid_layout(float(sxy))
  c = _grid_splat(_grid_splat(values.astype(jnp.float32), 0, s), 1, s)
  c = _grid_blur(_grid_blur(c, 0, taps), 1, taps)
  return _grid_slice(_grid_slice(c, 0, s, h), 1, s, w)
