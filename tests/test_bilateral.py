"""Eqs. (7)-(9) on the stride-8 grid against direct numpy / colorsys evaluations."""
import colorsys
from fractions import Fraction

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from wsss_jax import bilateral

BINS = (8, 3, 3)


def _exact_hsv(rgb):
  """colorsys's HSV formulas in exact rational arithmetic (colorsys itself rounds:
  134/201 * 3 < 2)."""
  r, g, b = (Fraction(int(c), 255) for c in rgb)
  mx, mn = max(r, g, b), min(r, g, b)
  if mx == mn:
    return Fraction(0), Fraction(0), mx
  s = (mx - mn) / mx
  rc, gc, bc = ((mx - c) / (mx - mn) for c in (r, g, b))
  h = bc - gc if r == mx else (2 + rc - bc if g == mx else 4 + gc - rc)
  return (h / 6) % 1, s, mx


def _score_grid(n):
  """The stride-8 score grid's side for an n-pixel side: three Caffe 3x3 / stride 2 / pad 1
  pools, each floor(n / 2) + 1 (test_backbone.py checks Caffe's formula)."""
  for _ in range(3):
    n = n // 2 + 1
  return n


def _np_hist(img):
  """Counts of joint HSV bins per 8x8 cell centred on 8 * (y, x), cells clipped at the border."""
  h, w, _ = img.shape
  gh, gw = _score_grid(h), _score_grid(w)
  out = np.zeros((gh, gw, np.prod(BINS)))
  for y in range(h):
    for x in range(w):
      hh, ss, vv = _exact_hsv(img[y, x])
      b = [min(int(v * n), n - 1) for v, n in zip((hh, ss, vv), BINS)]
      cy, cx = (y + 4) // 8, (x + 4) // 8  # cell whose [8c - 4, 8c + 4) holds the pixel
      if cy < gh and cx < gw:
        out[cy, cx, (b[0] * BINS[1] + b[1]) * BINS[2] + b[2]] += 1
  return out


def _np_q(img, radius, sz=10.0, sr=30.0):
  hist = _np_hist(img)
  gh, gw, _ = hist.shape
  cy, cx = np.divmod(np.arange(gh * gw), gw)
  z = 8.0 * np.stack([cy, cx], -1)
  r = hist.reshape(gh * gw, -1)
  w = np.exp(-((z[:, None] - z[None]) ** 2).sum(-1) / sz ** 2) * np.exp(
      -((r[:, None] - r[None]) ** 2).sum(-1) / sr ** 2)
  w *= (np.abs(cy[:, None] - cy[None]) <= radius) & (np.abs(cx[:, None] - cx[None]) <= radius)
  d = w / w.sum(1, keepdims=True) - 1.0  # Eq. (9)
  return -(d + d.T) / 2  # the symmetric part of -D, what the QP's quadratic form sees


def _image(rng, size):
  """Two colour regions with noise: histograms differ across the boundary."""
  img = np.zeros((size, size, 3))
  img[:, : size // 2] = [200, 40, 40]
  img[:, size // 2:] = [40, 60, 200]
  return np.clip(img + rng.normal(0, 25, img.shape), 0, 255).astype(np.uint8)


def test_exact_reference_agrees_with_colorsys():
  for p in np.random.default_rng(3).integers(0, 256, (300, 3)):
    np.testing.assert_allclose([float(v) for v in _exact_hsv(p)], colorsys.rgb_to_hsv(*(p / 255.0)),
                               atol=1e-12)


def test_hsv_matches_colorsys():
  rgb = np.random.default_rng(0).integers(0, 256, (500, 3)).astype(np.uint8)
  # grey and pure hues
  rgb[:5] = [[0, 0, 0], [255, 255, 255], [10, 10, 10], [255, 0, 0], [0, 255, 255]]
  got = np.asarray(bilateral.rgb_to_hsv(jnp.asarray(rgb)))
  ref = np.array([colorsys.rgb_to_hsv(*(p / 255.0)) for p in rgb])
  np.testing.assert_allclose(got, ref, atol=1e-5)


@pytest.mark.parametrize('size', [40, 33])
def test_cell_histograms_match_numpy(size):
  img = _image(np.random.default_rng(size), size)
  got = np.asarray(bilateral.cell_histograms(jnp.asarray(img[None])))[0]
  np.testing.assert_array_equal(got, _np_hist(img))


@pytest.mark.parametrize('radius', [1, 4])  # 4 covers the whole 5x5 grid: the literal dense Eq. (9)
def test_lateral_operator_matches_eq8_eq9(radius):
  img = _image(np.random.default_rng(1), 40)
  op = bilateral.lateral_operator(jnp.asarray(img[None]), radius, reading='paper_eq9', eps=0.0)
  np.testing.assert_allclose(np.asarray(op.dense())[0], _np_q(img, radius), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize('radius', [1, 4])
def test_diffusion_reading_matches_numpy_and_is_convex(radius):
  img = _image(np.random.default_rng(2), 40)
  hist = _np_hist(img)
  gh, gw, _ = hist.shape
  cy, cx = np.divmod(np.arange(gh * gw), gw)
  z = 8.0 * np.stack([cy, cx], -1)
  r = hist.reshape(gh * gw, -1)
  w = np.exp(-((z[:, None] - z[None]) ** 2).sum(-1) / 100.0
             - ((r[:, None] - r[None]) ** 2).sum(-1) / 900.0)
  w *= (np.abs(cy[:, None] - cy[None]) <= radius) & (np.abs(cx[:, None] - cx[None]) <= radius)
  d = w.sum(1)
  a = w / np.sqrt(d[:, None] * d[None])
  q_ref = 1.01 * np.eye(gh * gw) - a
  op = bilateral.lateral_operator(jnp.asarray(img[None]), radius, reading='diffusion', eps=0.01)
  np.testing.assert_allclose(np.asarray(op.dense())[0], q_ref, rtol=1e-5, atol=1e-6)
  assert np.min(np.linalg.eigvalsh(q_ref)) > 0  # -D positive definite: a convex QP
  with pytest.raises(ValueError, match='reading'):
    bilateral.lateral_operator(jnp.asarray(img[None]), radius, reading='other')


def test_feedforward_term_sums_to_one():
  a = jax.random.normal(jax.random.key(0), (3, 5, 5, 4))
  alpha = bilateral.feedforward_term(a)
  np.testing.assert_allclose(np.sum(alpha, (1, 2, 3)), 1.0, rtol=1e-5)
  assert float(jnp.min(alpha)) >= 0.0
