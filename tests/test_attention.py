"""Excitation backprop (Eqs. 5-6) against an independent float64 numpy implementation."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from wsss_jax import attention, backbone

# The settings these tests are written against: background walked like any class, the printed
# seed and b of Eqs. (5)-(7), a tight QP. Passed explicitly: attention_maps' defaults are the
# default config's.
SETTINGS = dict(eps=0.01, qp_tol=1e-4, qp_iters=300, max_classes=None, background='walk',
                feedforward_weight=1.0, top_signal='scores')


def _maps(*args, **kwargs):
  return attention.attention_maps(*args, **{**SETTINGS, **kwargs})


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


def _tiny_inputs(size=33, seed=0):
  cfg = backbone.BackboneConfig(num_classes=4, width=1 / 32, depth=(1, 1, 1, 1, 1), fc6_dilation=2)
  params = backbone.init_params(jax.random.key(seed), cfg)
  rng = np.random.default_rng(seed)
  img = np.zeros((2, size, size, 3), np.uint8)
  img[:, :, : size // 2] = [200, 50, 40]
  img[:, :, size // 2:] = [40, 80, 210]
  img = np.clip(img + rng.normal(0, 20, img.shape), 0, 255).astype(np.uint8)
  x = jnp.asarray(img, jnp.float32) / 255.0
  _, acts = backbone.apply(params, x, cfg=cfg, train=False, return_activations=True)
  fcl_w = jnp.asarray(rng.uniform(0, 1, acts['fc8'].shape[1:]), jnp.float32)
  mask = jnp.array([[1, 1, 0, 1], [1, 0, 1, 0]])
  return cfg, params, acts, jnp.asarray(img), fcl_w, mask


def test_attention_without_neighbours_is_plain_eb():
  cfg, params, acts, img, fcl_w, mask = _tiny_inputs()
  p_a = _maps(params, acts, cfg, img, fcl_w, mask, neighbors=False)
  top = attention.class_signal(acts['fc8'], fcl_w, jnp.arange(4))
  # (B, K, h, w)
  eb = np.asarray(attention.excitation_backprop(params, acts, cfg, top)['pool4']).sum(-1)
  up = np.asarray(jax.image.resize(jnp.asarray(np.moveaxis(eb, 1, -1)), (2, 33, 33, 4), 'bilinear'))
  up = np.maximum(up, 0) * np.asarray(mask)[:, None, None, :]
  np.testing.assert_allclose(p_a, up / up.sum(-1, keepdims=True), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize('lateral', ['diffusion', 'paper_eq9'])
def test_attention_maps_are_distributions_and_qps_meet_tolerance(lateral):
  cfg, params, acts, img, fcl_w, mask = _tiny_inputs()
  tol = 1e-4
  p_a, sols = _maps(params, acts, cfg, img, fcl_w, mask, lateral=lateral, radius=2,
                                       qp_tol=tol, qp_iters=5000, return_layers=True)
  p_a = np.asarray(p_a)
  assert p_a.shape == (2, 33, 33, 4) and np.all(np.isfinite(p_a))
  np.testing.assert_allclose(p_a.sum(-1), 1.0, rtol=1e-5)
  assert np.all(p_a[~np.asarray(mask, bool)[:, None, None, :].repeat(33, 1).repeat(33, 2)] == 0)
  # One QP below every conv / pooling layer from fc8 down to conv5_1, keyed by the map it produces.
  assert set(sols) == {'drop7', 'drop6', 'pool5a', 'pool5', 'relu5_1', 'pool4'}
  for name, (op, q, sol) in sols.items():
    # Residual recomputed here from the dense matrix, not taken from the solver.
    Q = np.asarray(op.dense(), np.float64)  # (B, 1, n, n)
    x, qq = np.asarray(sol.x, np.float64), np.asarray(q, np.float64)
    g = np.einsum('bcij,bkj->bki', Q, x) + qq
    res = np.max(np.abs(x - np.maximum(0, x - g)), -1) / np.max(np.abs(qq), -1)
    assert np.all(res <= 1.5 * tol), (name, res.max())
  # The lateral term changes the map (otherwise the QP would be a no-op).
  eb = np.asarray(_maps(params, acts, cfg, img, fcl_w, mask, neighbors=False))
  assert np.max(np.abs(eb - p_a)) > 1e-3


def test_attention_shapes_full_size():
  cfg = backbone.BackboneConfig(num_classes=21, width=1 / 16)
  params = jax.eval_shape(lambda k: backbone.init_params(k, cfg), jax.random.key(0))
  img = jax.ShapeDtypeStruct((1, 321, 321, 3), jnp.uint8)

  def run(params, img):
    _, acts = backbone.apply(params, img.astype(jnp.float32), cfg=cfg, train=False,
                             return_activations=True)
    return _maps(params, acts, cfg, img, None, jnp.ones((1, 21)), radius=3)

  out = jax.eval_shape(run, params, img)
  assert out.shape == (1, 321, 321, 21)


def test_attention_picture(tmp_path):
  from PIL import Image

  from wsss_jax import visualize
  cfg, params, acts, img, fcl_w, mask = _tiny_inputs()
  eb = np.asarray(_maps(params, acts, cfg, img, fcl_w, mask, neighbors=False))[0]
  full = np.asarray(_maps(params, acts, cfg, img, fcl_w, mask, radius=2))[0]
  path = str(tmp_path / 'att.png')
  visualize.save_attention_grid(path, np.asarray(img[0]), eb[..., [0, 1, 3]], full[..., [0, 1, 3]],
                                ['bg', 'a', 'c'], scale=1)
  pic = np.asarray(Image.open(path))
  assert pic.shape == (3 * 33, 3 * 33, 3)
  np.testing.assert_array_equal(pic[:33, :33], np.asarray(img[0]))  # first tile is the input image
  assert pic[:, 33:].max() > 0  # heat maps are drawn


def test_exclusive_scores_match_numpy():
  """Each selected foreground class keeps max(f_c - max(0, best other selected fg f), 0); a class
  alone keeps relu(f_c); background and unselected classes are untouched."""
  rng = np.random.default_rng(5)
  f = rng.normal(size=(3, 4, 5, 5)).astype(np.float32)
  mask = np.array([[1, 1, 0, 1, 1], [1, 0, 1, 0, 0], [1, 0, 0, 0, 0]], np.float32)
  got = np.asarray(attention.exclusive_scores(jnp.asarray(f), jnp.asarray(mask)))
  ref = f.astype(np.float64).copy()
  for b in range(3):
    sel = [c for c in range(1, 5) if mask[b, c]]
    for y in range(4):
      for x in range(5):
        for c in sel:
          others = [f[b, y, x, o] for o in sel if o != c]
          ref[b, y, x, c] = max(f[b, y, x, c] - max([0.0] + others), 0.0)
  np.testing.assert_allclose(got, ref, rtol=1e-6, atol=1e-7)
  assert np.any(got[0, ..., 1] != np.maximum(f[0, ..., 1], 0))  # the competition does act


def test_exclusive_top_signal_seeds_the_walk():
  cfg, params, acts, img, fcl_w, mask = _tiny_inputs()
  p_a = _maps(params, acts, cfg, img, fcl_w, mask, neighbors=False,
                                 top_signal='exclusive')
  seed = attention.exclusive_scores(acts['fc8'], mask)
  eb = np.asarray(attention.excitation_backprop(
      params, acts, cfg, attention.class_signal(seed, fcl_w, jnp.arange(4)))['pool4']).sum(-1)
  up = np.asarray(jax.image.resize(jnp.asarray(np.moveaxis(eb, 1, -1)), (2, 33, 33, 4), 'bilinear'))
  up = np.maximum(up, 0) * np.asarray(mask)[:, None, None, :]
  np.testing.assert_allclose(p_a, up / up.sum(-1, keepdims=True), rtol=1e-5, atol=1e-6)
  plain = _maps(params, acts, cfg, img, fcl_w, mask, neighbors=False)
  assert np.max(np.abs(np.asarray(plain) - np.asarray(p_a))) > 1e-3
  with pytest.raises(ValueError, match='top_signal'):
    _maps(params, acts, cfg, img, fcl_w, mask, top_signal='max')


def test_feedforward_weight_scales_alpha_in_b():
  """b = gamma + w alpha (Eqs. 5, 7): at the first QP (below fc8, before any QP changed gamma)
  q(w) - q(0) = -w alpha with alpha_i = sum_ch relu(a_i) / sum relu(a) (numpy)."""
  cfg, params, acts, img, fcl_w, mask = _tiny_inputs()
  q = {}
  for w in (0.0, 0.5, 1.0):
    _, sols = _maps(params, acts, cfg, img, fcl_w, mask, radius=2,
                                       return_layers=True, feedforward_weight=w)
    q[w] = np.asarray(sols['drop7'][1], np.float64)  # (B, T, n)
  a = np.maximum(np.asarray(acts['drop7'], np.float64), 0)
  alpha = (a.sum(-1) / a.sum((1, 2, 3))[:, None, None]).reshape(2, 1, -1)
  for w in (0.5, 1.0):
    np.testing.assert_allclose(q[w] - q[0.0], -w * np.broadcast_to(alpha, q[w].shape), atol=1e-6)


@pytest.mark.parametrize('max_classes', [None, 3])
def test_complement_background_matches_numpy(max_classes):
  """background='complement': each foreground EB map scaled to peak 1, background 1 - max fg,
  normalised per pixel; the background is not walked, and 3 slots (2 tags + background) suffice."""
  cfg, params, acts, img, fcl_w, mask = _tiny_inputs()
  p_a = _maps(params, acts, cfg, img, fcl_w, mask, neighbors=False,
                                 background='complement', max_classes=max_classes)
  top = attention.class_signal(acts['fc8'], fcl_w, jnp.arange(4))
  eb = np.asarray(attention.excitation_backprop(params, acts, cfg, top)['pool4'],
                  np.float64).sum(-1)
  up = np.asarray(jax.image.resize(jnp.asarray(np.moveaxis(eb, 1, -1)), (2, 33, 33, 4), 'bilinear'),
                  np.float64)
  m = np.asarray(mask, np.float64)[:, None, None, :]
  fg = np.maximum(up[..., 1:], 0) * m[..., 1:]
  fg = fg / np.maximum(fg.max((1, 2), keepdims=True), 1e-12)
  bg = np.clip(1 - fg.max(-1, keepdims=True), 0, 1) * m[..., :1]
  ref = np.concatenate([bg, fg], -1)
  np.testing.assert_allclose(p_a, ref / ref.sum(-1, keepdims=True), rtol=1e-4, atol=1e-6)
  with pytest.raises(ValueError, match='no class to walk'):
    _maps(params, acts, cfg, img, fcl_w, mask, neighbors=False,
                             background='complement', max_classes=1)
