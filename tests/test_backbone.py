"""DeepLab-LargeFOV topology, shapes and layer semantics against independent references."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from wsss_jax import backbone


def test_full_size_output_stride_and_param_count():
  cfg = backbone.BackboneConfig(num_classes=21)
  params = jax.eval_shape(lambda k: backbone.init_params(k, cfg), jax.random.key(0))
  out = jax.eval_shape(lambda p, x: backbone.apply(p, x, cfg=cfg, train=False), params,
                       jax.ShapeDtypeStruct((2, 321, 321, 3), jnp.float32))
  assert out.shape == (2, 41, 41, 21)
  # VGG-16 conv1-conv5 have 14,714,688 parameters; fc6 3x3x512x1024, fc7 1024x1024, fc8 1024x21
  # (+ biases).
  n = sum(int(np.prod(a.shape)) for a in jax.tree.leaves(params))
  assert n == 14_714_688 + (9 * 512 * 1024 + 1024) + (1024 * 1024 + 1024) + (1024 * 21 + 21)


def test_layer_list_is_deeplab_largefov():
  layers = backbone.layer_specs(backbone.BackboneConfig())
  convs = [(l.name, l.features, l.kernel, l.dilation) for l in layers if l.kind == 'conv']
  assert [c[0] for c in convs] == ['conv1_1', 'conv1_2', 'conv2_1', 'conv2_2', 'conv3_1', 'conv3_2',
                                   'conv3_3', 'conv4_1', 'conv4_2', 'conv4_3', 'conv5_1', 'conv5_2',
                                   'conv5_3', 'fc6', 'fc7', 'fc8']
  assert all(c[3] == 2 for c in convs if c[0].startswith('conv5'))
  assert (('fc6', 1024, 3, 12) in convs and ('fc7', 1024, 1, 1) in convs
          and ('fc8', 21, 1, 1) in convs)
  pools = {l.name: (l.kind, l.stride) for l in layers if 'pool' in l.kind}
  assert pools == {'pool1': ('maxpool', 2), 'pool2': ('maxpool', 2), 'pool3': ('maxpool', 2),
                   'pool4': ('maxpool', 1), 'pool5': ('maxpool', 1), 'pool5a': ('avgpool', 1)}
  assert [l.name for l in layers if l.kind == 'dropout'] == ['drop6', 'drop7']


def test_tiny_variant_65px_forward_and_activations():
  cfg = backbone.BackboneConfig(num_classes=6, width=0.0625, depth=(1, 1, 1, 1, 1), fc6_dilation=2)
  params = backbone.init_params(jax.random.key(1), cfg)
  x = jax.random.normal(jax.random.key(2), (2, 65, 65, 3))
  out, acts = backbone.apply(params, x, cfg=cfg, train=False, return_activations=True)
  assert out.shape == (2, 9, 9, 6) and backbone.output_size(65) == 9
  assert acts['pool1'].shape[1:3] == (33, 33) and acts['pool3'].shape[1:3] == (9, 9)
  assert acts['pool4'].shape == (2, 9, 9, 32)
  np.testing.assert_array_equal(acts['fc8'], out)
  # Dropout: train mode without rng is refused; with rng it changes fc7's output, eval mode is
  # deterministic.
  with pytest.raises(ValueError, match='rng'):
    backbone.apply(params, x, cfg=cfg, train=True)
  tr = backbone.apply(params, x, cfg=cfg, train=True, rng=jax.random.key(3))
  assert not np.allclose(tr, out)


def _np_conv(x, w, b, dil):
  """Direct float64 'same' dilated convolution, NHWC / HWIO."""
  k = w.shape[0]
  pad = dil * (k - 1) // 2
  xp = np.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
  n, h, wd, _ = x.shape
  out = np.zeros((n, h, wd, w.shape[3]))
  for i in range(k):
    for j in range(k):
      out += np.einsum('nhwc,co->nhwo', xp[:, i * dil:i * dil + h, j * dil:j * dil + wd], w[i, j])
  return out + b


def _caffe_pooled_size(size, stride, kernel=3, pad=1):
  """caffe/src/caffe/layers/pooling_layer.cpp, Reshape: ceil mode, then the last window may not
  start in the padding."""
  out = int(math.ceil((size + 2 * pad - kernel) / stride)) + 1
  if pad and (out - 1) * stride >= size + pad:
    out -= 1
  return out


def _np_pool(x, stride, op):
  """Caffe 3x3 pooling with padding 1 (pooling_layer.cpp, Forward_cpu): MAX over the window
  clipped to the input; AVE divides by the window's cells inside [-pad, size + pad)."""
  n, h, w, c = x.shape
  oh, ow = _caffe_pooled_size(h, stride), _caffe_pooled_size(w, stride)
  out = np.zeros((n, oh, ow, c))
  for i in range(oh):
    for j in range(ow):
      hs, ws = i * stride - 1, j * stride - 1
      he, we = min(hs + 3, h + 1), min(ws + 3, w + 1)
      size = (he - hs) * (we - ws)
      win = x[:, max(hs, 0):min(he, h), max(ws, 0):min(we, w)]
      out[:, i, j] = win.max((1, 2)) if op == 'max' else win.sum((1, 2)) / size
  return out


@pytest.mark.parametrize('dil', [1, 2, 3])
def test_dilated_conv_matches_numpy(dil):
  rng = np.random.default_rng(0)
  x, w, b = rng.normal(size=(2, 7, 6, 3)), rng.normal(size=(3, 3, 3, 4)), rng.normal(size=4)
  got = backbone.conv(jnp.asarray(x, jnp.float32), jnp.asarray(w, jnp.float32),
                      jnp.asarray(b, jnp.float32), dil)
  np.testing.assert_allclose(got, _np_conv(x, w, b, dil), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize('stride, shape', [(1, (1, 7, 5, 2)), (2, (1, 7, 5, 2)), (2, (1, 8, 6, 2)),
                                           (2, (2, 10, 7, 3))])
def test_pools_match_caffe_semantics(stride, shape):
  x = np.random.default_rng(1).normal(size=shape)
  np.testing.assert_allclose(backbone.max_pool(jnp.asarray(x), 3, stride),
                             _np_pool(x, stride, 'max'), rtol=1e-6)
  np.testing.assert_allclose(backbone.avg_pool(jnp.asarray(x), 3, stride),
                             _np_pool(x, stride, 'avg'), rtol=1e-5)


@pytest.mark.parametrize('stride, shape', [(1, (2, 6, 5, 3)), (2, (2, 7, 8, 3)), (2, (1, 9, 9, 2)),
                                           (2, (1, 8, 10, 2))])
def test_max_pool_gradient_goes_to_the_first_maximum(stride, shape):
  """The hand-written VJP (XLA's CPU select_and_scatter is slow) against a float64 loop: each
  output's cotangent goes to the first maximal cell of its window in scan order, ties included."""
  rng = np.random.default_rng(2)
  x = np.maximum(np.round(rng.normal(size=shape)), 0)  # many ties (zeros and equal integers)
  y, vjp = jax.vjp(lambda z: backbone.max_pool(z, 3, stride), jnp.asarray(x, jnp.float32))
  g = rng.normal(size=y.shape)
  got = np.asarray(vjp(jnp.asarray(g, jnp.float32))[0])
  ref = np.zeros(shape)
  h, w = shape[1:3]
  for n in range(shape[0]):
    for i in range(y.shape[1]):
      for j in range(y.shape[2]):
        for c in range(shape[3]):
          cells = [(i * stride + a - 1, j * stride + b - 1) for a in range(3) for b in range(3)]
          cells = [(u, v) for u, v in cells if 0 <= u < h and 0 <= v < w]
          u, v = max(cells, key=lambda t: x[n, t[0], t[1], c])  # first maximum
          ref[n, u, v, c] += g[n, i, j, c]
  np.testing.assert_allclose(y, _np_pool(x, stride, 'max'))
  np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-6)


def test_one_by_one_conv_matches_numpy():
  rng = np.random.default_rng(3)
  x, w, b = rng.normal(size=(2, 4, 5, 6)), rng.normal(size=(1, 1, 6, 3)), rng.normal(size=3)
  got = backbone.conv(jnp.asarray(x, jnp.float32), jnp.asarray(w, jnp.float32),
                      jnp.asarray(b, jnp.float32))
  np.testing.assert_allclose(got, _np_conv(x, w, b, 1), rtol=1e-4, atol=1e-4)


def test_output_sizes_follow_caffe_for_every_input_from_64_to_520():
  """Every pooling layer's output, and so the score map, has Caffe's size on odd and even inputs
  (DeepLab's 321 -> 41 and 513 -> 65; 512 -> 65 too, not 64). Convolutions keep sizes: checked
  through the whole network on some sizes."""
  cfg = backbone.BackboneConfig(num_classes=3, width=0.0625, depth=(1, 1, 1, 1, 1), fc6_dilation=1)
  pools = [l for l in backbone.layer_specs(cfg) if l.kind in ('maxpool', 'avgpool')]

  def pooled(x):
    out = []
    for layer in pools:
      pool = backbone.max_pool if layer.kind == 'maxpool' else backbone.avg_pool
      x = pool(x, layer.kernel, layer.stride)
      out.append(x)
    return out

  for side in range(64, 521):
    shapes = jax.eval_shape(pooled, jax.ShapeDtypeStruct((1, side, side + 1, 1), jnp.float32))
    h, w = side, side + 1
    for layer, shape in zip(pools, shapes):
      h, w = _caffe_pooled_size(h, layer.stride), _caffe_pooled_size(w, layer.stride)
      assert shape.shape[1:3] == (h, w), (side, layer.name)
    assert backbone.output_size(side) == h, side
  params = backbone.init_params(jax.random.key(0), cfg)
  for side in (64, 65, 320, 321, 512, 513, 520):
    out = jax.eval_shape(lambda x: backbone.apply(params, x, cfg=cfg, train=False),
                         jax.ShapeDtypeStruct((1, side, side, 3), jnp.float32))
    assert out.shape[1:3] == (backbone.output_size(side),) * 2
  assert [backbone.output_size(s) for s in (321, 353, 512, 513)] == [41, 45, 65, 65]
