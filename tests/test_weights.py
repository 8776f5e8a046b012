"""VGG-16 weight import: every format against numpy references built from the same random numbers.

Fake files carry VGG-16's layer structure at 1/8 width (conv channels 8..64) and 16 fc units (4
after DeepLab's decimation), matching BackboneConfig(width=0.125, fc_features=32): the converter
keys on layer names and checks against the target tree's shapes, so real files need the full config.
"""
from __future__ import annotations

import sys

import h5py
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from safetensors.numpy import save_file

from wsss_jax import backbone, model, weights

CH = (8, 16, 32, 64, 64)
VGG16 = (2, 2, 3, 3, 3)
VGG19 = (2, 2, 4, 4, 4)
F = 4  # fc units in the target; the fake "VGG" files have 4 * F
CFG = backbone.BackboneConfig(num_classes=21, width=0.125, fc_features=32)
TORCHVISION_VGG16_CONVS = [0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28]
# torchvision's own constants, written out here independently of weights.PRESETS
TV_MEAN, TV_STD = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])
CAFFE_BGR_MEAN = np.array([103.939, 116.779, 123.68])


def fake_vgg(seed=0, depth=VGG16, fc=4 * F):
  """Random VGG weights in torch terms: convs OIHW, t6 [out, C, 7, 7], t7 [out, in]."""
  rng = np.random.default_rng(seed)
  f32 = lambda *s, sd=1.0: (sd * rng.standard_normal(s)).astype(np.float32)
  convs, cin = [], 3
  for b, (c, n) in enumerate(zip(CH, depth), 1):
    for j in range(1, n + 1):
      convs.append((f'conv{b}_{j}', f32(c, cin, 3, 3, sd=0.2), f32(c, sd=0.5)))
      cin = c
  return {'convs': convs, 't6': f32(fc, cin, 7, 7), 'b6': f32(fc), 't7': f32(fc, fc), 'b7': f32(fc),
          'fc8': (f32(10, fc), f32(10))}


def torch_indices(depth):
  """features.N of each conv in a torchvision VGG: conv, relu per layer, a pool after each block."""
  idx, out = 0, []
  for n in depth:
    for _ in range(n):
      out.append(idx)
      idx += 2
    idx += 1
  return out


def torch_state(fake, depth=VGG16):
  sd = {}
  for i, (_, w, b) in zip(torch_indices(depth), fake['convs']):
    sd[f'features.{i}.weight'], sd[f'features.{i}.bias'] = w, b
  sd['classifier.0.weight'] = fake['t6'].reshape(len(fake['t6']), -1)  # C-order: (C, H, W) flatten
  sd['classifier.0.bias'] = fake['b6']
  sd['classifier.3.weight'], sd['classifier.3.bias'] = fake['t7'], fake['b7']
  sd['classifier.6.weight'], sd['classifier.6.bias'] = fake['fc8']
  return sd


def keras_fc1(t6):
  """Keras Dense kernel on Flatten of an NHWC (7, 7, C) map: row (h * 7 + w) * C + c."""
  o, c = t6.shape[:2]
  k = np.zeros((49 * c, o), np.float32)
  oo, cc, hh, ww = np.indices(t6.shape)
  k[(hh * 7 + ww) * c + cc, oo] = t6
  return k


def keras_layers(fake):
  """(keras layer name, kernel, bias) with HWIO convs, as Keras stores them."""
  out = []
  for name, w, b in fake['convs']:
    blk, j = name[4:].split('_')
    out.append((f'block{blk}_conv{j}', np.einsum('oihw->hwio', w), b))
  out.append(('fc1', keras_fc1(fake['t6']), fake['b6']))
  out.append(('fc2', fake['t7'].T.copy(), fake['b7']))
  out.append(('predictions', fake['fc8'][0].T.copy(), fake['fc8'][1]))
  return out


def write_h5(fake, path, variant):
  with h5py.File(path, 'w') as f:
    if variant == 'legacy':  # keras-applications' vgg16_weights_tf_dim_ordering_tf_kernels.h5
      names = ['input_1']
      for name, k, b in keras_layers(fake):
        g = f.create_group(name)
        g.attrs['weight_names'] = [f'{name}_W_1:0'.encode(), f'{name}_b_1:0'.encode()]
        g[f'{name}_W_1:0'], g[f'{name}_b_1:0'] = k, b
        names.append(name)
      f.create_group('input_1').attrs['weight_names'] = []
      f.create_group('block1_pool').attrs['weight_names'] = []
      f.attrs['layer_names'] = [n.encode() for n in names]
    elif variant == 'nested':  # model.save(): model_weights/<layer>/<layer>/kernel:0
      for name, k, b in keras_layers(fake):
        g = f.create_group(f'model_weights/{name}/{name}')
        g['kernel:0'], g['bias:0'] = k, b
      # optimizer slots with layer names must not be taken for weights
      slot = f.create_group('optimizer_weights/training/SGD/block1_conv1/kernel')
      slot['momentum:0'] = np.ones(3)
    else:  # Keras 1: <layer>/<layer>_W, <layer>_b
      for name, k, b in keras_layers(fake):
        f[f'{name}/{name}_W'], f[f'{name}/{name}_b'] = k, b


def write_npz(fake, path, preprocess, drop=()):
  arrays = {'preprocess': np.array(preprocess)}
  for name, w, b in fake['convs']:
    if name not in drop:
      arrays[f'{name}/w'], arrays[f'{name}/b'] = np.einsum('oihw->hwio', w), b
  arrays['fc6/w'], arrays['fc6/b'] = np.einsum('ochw->hwco', fake['t6']), fake['b6']
  arrays['fc7/w'], arrays['fc7/b'] = fake['t7'].T[None, None], fake['b7']
  np.savez(path, **arrays)


def write(fake, tmp_path, fmt, depth=VGG16):
  """A fake weight file in format fmt; returns its path and the preprocessing it implies."""
  if fmt == 'safetensors':
    path = tmp_path / 'vgg.safetensors'
    save_file(torch_state(fake, depth), str(path))
    return path, 'imagenet'
  if fmt.startswith('h5'):
    path = tmp_path / 'vgg.h5'
    write_h5(fake, path, fmt.split('-')[1])
    return path, 'caffe'
  pre = fmt.split('-')[1]
  path = tmp_path / 'vgg.npz'
  write_npz(fake, path, pre)
  return path, pre


FORMATS = ['safetensors', 'h5-legacy', 'h5-nested', 'h5-bare', 'npz-imagenet', 'npz-caffe']


def target(seed=1, cfg=CFG):
  return backbone.init_params(jax.random.key(seed), cfg)


# ---------------------------------------------------------------------------------------------
# References.

def source_input(img, pre):
  """The image as the source network's own preprocessing presents it."""
  x = img.astype(np.float64)
  if pre == 'caffe':
    return x[..., ::-1] - CAFFE_BGR_MEAN
  return (x / 255 - TV_MEAN) / TV_STD


def valid_conv(x, w_oihw, b):
  """float64 3x3 'valid' cross-correlation of (H, W, I) with an OIHW kernel."""
  h, w = x.shape[:2]
  return b + sum(x[i:h - 2 + i, j:w - 2 + j] @ w_oihw[:, :, i, j].T.astype(np.float64)
                 for i in range(3) for j in range(3))


def source_conv12(fake, img, pre):
  (_, w1, b1), (_, w2, b2) = fake['convs'][:2]
  return valid_conv(np.maximum(valid_conv(source_input(img, pre), w1, b1), 0), w2, b2)


def model_conv12(p, x):
  y = jax.nn.relu(backbone.conv(x, p['conv1_1']['w'], p['conv1_1']['b']))
  return np.asarray(backbone.conv(y, p['conv1_2']['w'], p['conv1_2']['b']))[0]


def assert_close_rel(got, want, rel=1e-4):
  err = np.abs(got - want).max()
  assert err <= rel * np.abs(want).max(), (err, np.abs(want).max())


# ---------------------------------------------------------------------------------------------
# (a) conv1_1 + relu + conv1_2 through model.preprocess equals the source network.

@pytest.mark.parametrize('fmt', FORMATS)
def test_first_layers_match_source_network_on_interior(fmt, tmp_path):
  fake = fake_vgg()
  path, pre = write(fake, tmp_path, fmt)
  p = weights.init_backbone(target(), path)
  img = np.random.default_rng(5).integers(0, 256, (14, 17, 3), dtype=np.uint8)
  got = model_conv12(p, model.preprocess(jnp.asarray(img[None])))
  assert_close_rel(got[2:-2, 2:-2], source_conv12(fake, img, pre))


@pytest.mark.parametrize('fmt', ['safetensors', 'h5-legacy'])
def test_first_layer_conversion_with_other_model_statistics(fmt, tmp_path):
  # Statistics far from both sources' make a wrong scale, bias fold or channel order visible.
  mean, std = np.array([90.0, 140.0, 60.0]), np.array([30.0, 75.0, 50.0])
  fake = fake_vgg(2)
  path, pre = write(fake, tmp_path, fmt)
  p = weights.init_backbone(target(), path, mean=mean, std=std)
  img = np.random.default_rng(6).integers(0, 256, (12, 12, 3), dtype=np.uint8)
  x = jnp.asarray(((img - mean) / std)[None], jnp.float32)
  got = model_conv12(p, x)
  want = source_conv12(fake, img, pre)
  assert_close_rel(got[2:-2, 2:-2], want)
  # Border caveat: the 1-pixel ring differs (zero padding means a different colour per source).
  y1 = np.asarray(backbone.conv(x, p['conv1_1']['w'], p['conv1_1']['b']))[0]
  ref1 = valid_conv(source_input(img, pre), fake['convs'][0][1], fake['convs'][0][2])
  assert_close_rel(y1[1:-1, 1:-1], ref1)
  padded_src = np.pad(source_input(img, pre), ((1, 1), (1, 1), (0, 0)))
  ref1_same = valid_conv(padded_src, fake['convs'][0][1], fake['convs'][0][2])
  assert np.abs(y1[0] - ref1_same[0]).max() > 1e-2 * np.abs(ref1).max()


@pytest.mark.parametrize('src', ['caffe', 'imagenet'])
def test_convert_first_layer_single_window(src):
  rng = np.random.default_rng(3)
  w, b = rng.standard_normal((3, 3, 3, 5)), rng.standard_normal(5)
  pix = rng.uniform(0, 255, (3, 3, 3))  # one RGB window
  mean, std = np.array([100.0, 110.0, 120.0]), np.array([40.0, 60.0, 80.0])
  want = b.copy()
  for h in range(3):
    for x in range(3):
      for cs in range(3):  # source channel cs reads RGB channel 2 - cs for BGR sources
        if src == 'caffe':
          v = pix[h, x, 2 - cs] - CAFFE_BGR_MEAN[cs]
        else:
          v = (pix[h, x, cs] / 255 - TV_MEAN[cs]) / TV_STD[cs]
        want += w[h, x, cs] * v
  w2, b2 = weights.convert_first_layer(w, b, src, mean, std)
  assert w2.dtype == np.float32 and b2.dtype == np.float32
  got = np.einsum('hwc,hwco->o', (pix - mean) / std, w2.astype(np.float64)) + b2
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * np.abs(want).max())
  # default statistics are the model's
  w3, b3 = weights.convert_first_layer(w, b, src)
  got = np.einsum('hwc,hwco->o', (pix - np.asarray(model.PIXEL_MEAN)) / np.asarray(model.PIXEL_STD),
                  w3.astype(np.float64)) + b3
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * np.abs(want).max())


# ---------------------------------------------------------------------------------------------
# (b) fc6/fc7 decimation, other convs, fc8 and the tree's structure.

@pytest.mark.parametrize('fmt', ['safetensors', 'h5-legacy', 'npz-caffe'])
def test_fc_decimation_and_layer_copy(fmt, tmp_path):
  fake = fake_vgg(4)
  path, _ = write(fake, tmp_path, fmt)
  init = target()
  p = weights.init_backbone(init, path)
  t6, t7 = fake['t6'], fake['t7']
  w6, w7 = np.asarray(p['fc6']['w']), np.asarray(p['fc7']['w'])
  assert w6.shape == (3, 3, 64, F) and w7.shape == (1, 1, F, F)
  # hand-indexed: fc6 tap (row 1, col 2) is source tap (3, 6); unit 3 is source unit 12
  assert w6[1, 2, 5, 3] == t6[12, 5, 3, 6] and w6[0, 0, 0, 0] == t6[0, 0, 0, 0]
  assert w6[2, 1, 63, 1] == t6[4, 63, 6, 3] and w7[0, 0, 2, 3] == t7[12, 8]
  for i in range(3):
    for j in range(3):
      for k in range(F):
        np.testing.assert_array_equal(w6[i, j, :, k], t6[4 * k, :, 3 * i, 3 * j])
  for i in range(F):
    for k in range(F):
      assert w7[0, 0, i, k] == t7[4 * k, 4 * i]
  np.testing.assert_array_equal(p['fc6']['b'], fake['b6'][[0, 4, 8, 12]])
  np.testing.assert_array_equal(p['fc7']['b'], fake['b7'][[0, 4, 8, 12]])
  for name, w, b in fake['convs'][1:]:
    np.testing.assert_array_equal(p[name]['w'], np.einsum('oihw->hwio', w))
    np.testing.assert_array_equal(p[name]['b'], b)
  assert p['fc8'] is init['fc8']
  assert jax.tree.structure(p) == jax.tree.structure(init)
  for a, b in zip(jax.tree.leaves(p), jax.tree.leaves(init)):
    assert isinstance(a, jax.Array) and a.shape == b.shape and a.dtype == jnp.float32


def test_decimate_fc_picks_deeplab_entries():
  w6 = np.arange(7 * 7 * 2 * 8, dtype=np.float32).reshape(7, 7, 2, 8)
  d6, b6 = weights.decimate_fc('fc6', w6, np.arange(8.0))
  assert d6.shape == (3, 3, 2, 2) and list(b6) == [0, 4]
  assert d6[2, 1, 1, 1] == w6[6, 3, 1, 4] and d6[1, 0, 0, 0] == w6[3, 0, 0, 0]
  w7 = np.arange(64, dtype=np.float32).reshape(1, 1, 8, 8)
  d7, _ = weights.decimate_fc('fc7', w7, np.arange(8.0))
  assert d7.shape == (1, 1, 2, 2) and d7[0, 0, 1, 0] == w7[0, 0, 4, 0]


def test_torch_key_layout_helper_is_torchvision():
  assert torch_indices(VGG16) == TORCHVISION_VGG16_CONVS


# ---------------------------------------------------------------------------------------------
# (c) torch .pth

def test_torch_pth_round_trip(tmp_path):
  torch = pytest.importorskip('torch')
  fake = fake_vgg(7)
  sd = {k: torch.from_numpy(v) for k, v in torch_state(fake).items()}
  torch.save(sd, tmp_path / 'vgg16.pth')
  torch.save({'state_dict': {'module.' + k: v for k, v in sd.items()}}, tmp_path / 'ckpt.pt')
  path_st, _ = write(fake, tmp_path, 'safetensors')
  ref = weights.init_backbone(target(), path_st)
  for path in (tmp_path / 'vgg16.pth', tmp_path / 'ckpt.pt'):
    src, pre = weights.load_vgg16(path)
    assert pre.name == 'imagenet'
    p = weights.init_backbone(target(), path)
    for a, b in zip(jax.tree.leaves(p), jax.tree.leaves(ref)):
      np.testing.assert_array_equal(a, b)
  data = (tmp_path / 'vgg16.pth').read_bytes()
  (tmp_path / 'cut.pth').write_bytes(data[:len(data) // 2])
  with pytest.raises(weights.WeightsError, match='cut.pth.*truncated'):
    weights.load_vgg16(tmp_path / 'cut.pth')


class _StubTensor:
  """What _load_torch uses of a torch tensor: .detach().float().numpy()."""

  def __init__(self, a):
    self.a = a

  def detach(self):
    return self

  def float(self):
    return _StubTensor(self.a.astype(np.float32))

  def numpy(self):
    return self.a


def test_pth_path_with_a_stub_torch(tmp_path, monkeypatch):
  """The .pth route (state_dict / 'module.' unwrapping, key mapping) without torch installed (a
  user's `pip install -e .[test]`): torch.load is replaced by a stub returning the state dict;
  the real round trip above runs where torch is installed (CI installs it)."""
  import types
  fake = fake_vgg(7)
  state = {'state_dict': {'module.' + k: _StubTensor(v.astype(np.float64))
                          for k, v in torch_state(fake).items()}}
  stub = types.ModuleType('torch')
  stub.load = lambda path, map_location=None, weights_only=None: state
  monkeypatch.setitem(sys.modules, 'torch', stub)
  (tmp_path / 'ckpt.pth').write_bytes(b'read by the stub')
  path_st, _ = write(fake, tmp_path, 'safetensors')
  ref = weights.init_backbone(target(), path_st)
  src, pre = weights.load_vgg16(tmp_path / 'ckpt.pth')
  assert pre.name == 'imagenet'
  p = weights.init_backbone(target(), tmp_path / 'ckpt.pth')
  for a, b in zip(jax.tree.leaves(p), jax.tree.leaves(ref)):
    np.testing.assert_array_equal(a, b)


def test_pth_without_torch_says_how_to_convert(tmp_path, monkeypatch):
  monkeypatch.setitem(sys.modules, 'torch', None)  # `import torch` now raises ImportError
  (tmp_path / 'vgg16.pth').write_bytes(b'not read')
  with pytest.raises(weights.WeightsError) as e:
    weights.load_vgg16(tmp_path / 'vgg16.pth')
  msg = str(e.value)
  assert 'vgg16.pth' in msg and 'PyTorch' in msg and '.safetensors' in msg and 'npz' in msg


# ---------------------------------------------------------------------------------------------
# (d) every format loads, with its preprocessing; save_npz round trip.

@pytest.mark.parametrize('fmt', FORMATS)
def test_load_vgg16_formats(fmt, tmp_path):
  fake = fake_vgg(8)
  path, pre = write(fake, tmp_path, fmt)
  src, got = weights.load_vgg16(path)
  assert got.name == pre and got.bgr == (pre == 'caffe')
  names = [n for n, _, _ in fake['convs']] + ['fc6', 'fc7']
  assert sorted(src) == sorted(names)
  assert src['fc6']['w'].shape == (7, 7, 64, 4 * F)
  assert src['fc7']['w'].shape == (1, 1, 4 * F, 4 * F)
  # full-size fc6 in HWIO: [h, w, c, o] == t6[o, c, h, w]
  np.testing.assert_array_equal(src['fc6']['w'][4, 1, 7, 9], fake['t6'][9, 7, 4, 1])
  np.testing.assert_array_equal(src['conv2_1']['w'][0, 2, 5, 3], fake['convs'][2][1][3, 5, 0, 2])
  assert all(a.dtype == np.float32 for layer in src.values() for a in layer.values())


def test_save_npz_round_trip_is_identity(tmp_path):
  fake = fake_vgg(9)
  path, _ = write(fake, tmp_path, 'h5-legacy')
  p = weights.init_backbone(target(1), path)
  weights.save_npz(p, tmp_path / 'ours', 'imagenet', mean=model.PIXEL_MEAN, std=model.PIXEL_STD)
  assert (tmp_path / 'ours').is_file()  # written where asked, no '.npz' appended
  (tmp_path / 'ours').rename(tmp_path / 'ours.npz')
  other = target(2)
  q = weights.init_backbone(other, tmp_path / 'ours.npz')  # fc6/fc7 already decimated
  for name in p:
    if name != 'fc8':
      np.testing.assert_allclose(q[name]['w'], p[name]['w'], rtol=1e-6, atol=1e-7)
      np.testing.assert_allclose(q[name]['b'], p[name]['b'], rtol=1e-6, atol=1e-6)
  assert q['fc8'] is other['fc8']
  with np.load(tmp_path / 'ours.npz') as z:
    assert str(z['preprocess']) == 'imagenet' and 'conv5_3/w' in z.files
    np.testing.assert_allclose(z['std'], [58.4, 57.1, 57.4], rtol=1e-6)


# ---------------------------------------------------------------------------------------------
# (e) errors.

def test_width_mismatch_names_first_layer_and_shapes(tmp_path):
  path, _ = write(fake_vgg(), tmp_path, 'safetensors')
  with pytest.raises(weights.WeightsError) as e:
    weights.init_backbone(target(cfg=backbone.BackboneConfig(width=0.25, fc_features=16)), path)
  msg = str(e.value)
  assert 'vgg.safetensors' in msg and 'conv1_1' in msg
  assert '(3, 3, 3, 8)' in msg and '(3, 3, 3, 16)' in msg and 'conv1_2' not in msg
  # The paper's full-size config against this small file: same layer, full VGG shape.
  full = jax.eval_shape(lambda k: backbone.init_params(k, backbone.BackboneConfig(num_classes=21)),
                        jax.random.key(0))
  with pytest.raises(weights.WeightsError, match=r'conv1_1 .*\(3, 3, 3, 64\)'):
    weights.init_backbone(full, path)
  assert issubclass(weights.WeightsError, ValueError)


@pytest.mark.parametrize('fmt', ['safetensors', 'h5-legacy'])
def test_vgg19_file_names_first_extra_layer(fmt, tmp_path):
  path, _ = write(fake_vgg(depth=VGG19), tmp_path, fmt, depth=VGG19)
  with pytest.raises(weights.WeightsError, match=r'vgg\.(safetensors|h5).*conv3_4') as e:
    weights.init_backbone(target(), path)
  assert 'VGG-19' in str(e.value) and 'conv4' not in str(e.value)


def test_missing_layer_and_fc_width(tmp_path):
  fake = fake_vgg()
  write_npz(fake, tmp_path / 'cut.npz', 'caffe', drop=('conv4_2',))
  with pytest.raises(weights.WeightsError, match=r'cut\.npz.*conv4_2 is missing.*\(3, 3, 64, 64\)'):
    weights.init_backbone(target(), tmp_path / 'cut.npz')
  path, _ = write(fake, tmp_path, 'h5-legacy')  # 16 fc units; this config needs 4 * 8 = 32
  cfg = backbone.BackboneConfig(width=0.125, fc_features=64)
  with pytest.raises(weights.WeightsError, match=r'fc6 has w \(7, 7, 64, 16\).*\(3, 3, 64, 8\)'):
    weights.init_backbone(target(cfg=cfg), path)


@pytest.mark.parametrize('fmt', ['safetensors', 'h5-legacy', 'npz-caffe'])
def test_truncated_file_names_the_file(fmt, tmp_path):
  path, _ = write(fake_vgg(), tmp_path, fmt)
  data = path.read_bytes()
  cut = path.with_name('half' + path.suffix)
  cut.write_bytes(data[:len(data) // 2])
  with pytest.raises(weights.WeightsError, match='half.*truncated or corrupt'):
    weights.init_backbone(target(), cut)


def test_unknown_extension_and_bad_npz(tmp_path):
  (tmp_path / 'vgg16.bin').write_bytes(b'')
  with pytest.raises(weights.WeightsError) as e:
    weights.load_vgg16(tmp_path / 'vgg16.bin')
  msg = str(e.value)
  assert 'vgg16.bin' in msg and all(x in msg for x in ('.pth', '.safetensors', '.h5', '.npz'))
  np.savez(tmp_path / 'nopre.npz', **{'conv1_1/w': np.zeros((3, 3, 3, 8))})
  with pytest.raises(weights.WeightsError, match="nopre.npz.*'preprocess'"):
    weights.load_vgg16(tmp_path / 'nopre.npz')
  with pytest.raises(weights.WeightsError, match='no such file'):
    weights.load_vgg16(tmp_path / 'absent.h5')


def test_batchnorm_vgg_is_refused(tmp_path):
  sd = torch_state(fake_vgg())
  sd['features.1.running_mean'] = np.zeros(8, np.float32)
  save_file(sd, str(tmp_path / 'bn.safetensors'))
  with pytest.raises(weights.WeightsError, match='bn.safetensors.*vgg16_bn'):
    weights.load_vgg16(tmp_path / 'bn.safetensors')
