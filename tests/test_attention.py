"""Excitation backprop (Eqs. 5-6) against an independent float64 numpy implementation."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from wsss_jax import attention, backbone

EPS = 1e-12


def _np_conv(a, w, dil, p_out):
  """Eq. (6) through a 'same' conv: children of output (y, x, o) are the window cells."""
  k = w.shape[0]
  wp = np.maximum(w, 0)
  h, wd, _ = a.shape
  p_in = np.zeros_like(a)
  for y in range(h):
    for x in range(wd):
      for o in range(w.shape[3]):
        if p_out[y, x, o] == 0:
          continue
        kids = []
        for i in range(k):
          for j in range(k):
            yy, xx = y + (i - (k - 1) // 2) * dil, x + (j - (k - 1) // 2) * dil
            if 0 <= yy < h and 0 <= xx < wd:
              for c in range(a.shape[2]):
                kids.append((yy, xx, c, wp[i, j, c, o] * a[yy, xx, c]))
        total = sum(v for *_, v in kids)
        for yy, xx, c, v in kids:
          p_in[yy, xx, c] += p_out[y, x, o] * v / (total + EPS)
  return p_in


def _np_pool(a, stride, p_out, kind):
  h, wd, ch = a.shape
  p_in = np.zeros_like(a)
  for y in range(p_out.shape[0]):
    for x in range(p_out.shape[1]):
      for c in range(ch):
        cells = [(y * stride + i - 1, x * stride + j - 1) for i in range(3) for j in range(3)]
        cells = [(yy, xx) for yy, xx in cells if 0 <= yy < h and 0 <= xx < wd]
        if kind == 'max':  # all mass to the winning child
          yy, xx = max(cells, key=lambda t: a[t[0], t[1], c])
          p_in[yy, xx, c] += p_out[y, x, c]
        else:  # average: children weigh 1/9 each, in proportion to their activation
          total = sum(a[yy, xx, c] / 9 for yy, xx in cells)
          for yy, xx in cells:
            p_in[yy, xx, c] += p_out[y, x, c] * (a[yy, xx, c] / 9) / (total + EPS)
  return p_in


def _np_eb(params, acts, layers, top, stop_at):
  names = [l.name for l in layers]
  p = top
  for k in range(len(layers) - 1, names.index(stop_at), -1):
    layer, a = layers[k], np.asarray(acts[names[k - 1]], np.float64)
    if layer.kind == 'conv':
      p = _np_conv(a, np.asarray(params[layer.name]['w'], np.float64), layer.dilation, p)
    elif layer.kind == 'maxpool':
      p = _np_pool(a, layer.stride, p, 'max')
    elif layer.kind == 'avgpool':
      p = _np_pool(a, layer.stride, p, 'avg')
  return p


@pytest.fixture(scope='module')
def tiny():
  cfg = backbone.BackboneConfig(num_classes=3, width=1 / 32, depth=(1, 1, 1, 1, 1), fc6_dilation=2)
  params = backbone.init_params(jax.random.key(0), cfg)
  x = jax.random.uniform(jax.random.key(1), (2, 17, 17, 3))
  _, acts = backbone.apply(params, x, cfg=cfg, train=False, return_activations=True)
  return cfg, params, acts


@pytest.mark.parametrize('stop_at', ['pool4', 'pool1'])
def test_eb_matches_numpy_and_conserves_mass(tiny, stop_at):
  cfg, params, acts = tiny
  scores = acts['fc8']
  fcl_w = jnp.asarray(np.random.default_rng(0).uniform(-0.5, 1.0, scores.shape[1:]), jnp.float32)
  classes = jnp.array([0, 2])
  top = attention.class_signal(scores, fcl_w, classes)
  maps = attention.excitation_backprop(params, acts, cfg, top, stop_at=stop_at)
  got = maps[stop_at]
  assert got.shape == (2, 2) + acts[stop_at].shape[1:]
  f = np.asarray(scores, np.float64)
  wp = np.maximum(np.asarray(fcl_w, np.float64), 0)
  layers = backbone.layer_specs(cfg)
  for b in range(2):
    for ci, y in enumerate([0, 2]):
      # Top (the FCL walked first): children of class unit y are relu(f_i(y)), weights w+_iy.
      v = wp[..., y] * np.maximum(f[b, ..., y], 0)
      top_np = np.zeros(f.shape[1:])
      top_np[..., y] = v / v.sum() if v.sum() > 0 else 1.0 / v.size
      np.testing.assert_allclose(top[b, ci], top_np, rtol=1e-5, atol=1e-7)
      acts_b = {k: a[b] for k, a in acts.items()}
      ref = _np_eb(params, acts_b, layers, top_np, stop_at)
      np.testing.assert_allclose(got[b, ci], ref, rtol=2e-4, atol=1e-6)
      # Zero biases (init): every parent with mass has a child with w+ a > 0, so mass is conserved.
      for name, m in maps.items():
        assert float(jnp.sum(m[b, ci])) == pytest.approx(1.0, abs=1e-4), name


def test_unknown_stop_layer(tiny):
  cfg, params, acts = tiny
  top = attention.class_signal(acts['fc8'], None, jnp.array([1]))
  with pytest.raises(ValueError, match='stop_at'):
    attention.excitation_backprop(params, acts, cfg, top, stop_at='pool9')
