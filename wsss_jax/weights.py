"""ImageNet VGG-16 initialisation of the DeepLab-LargeFOV backbone.

Reads VGG-16 weights from the formats users have and converts them into the
parameter tree of `backbone.init_params`:

* torchvision's ``vgg16`` state dict, as ``.pth``/``.pt`` (needs torch) or the
  same tensor names in ``.safetensors`` (no torch): ``features.N.{weight,bias}``
  (OIHW), ``classifier.{0,3}`` (fc6 flattened in (C, H, W) order). Input: RGB
  in 0..1 normalised by mean (0.485, 0.456, 0.406) / std (0.229, 0.224, 0.225).
* Keras ``vgg16_weights_tf_dim_ordering_tf_kernels.h5`` (h5py): groups
  ``block1_conv1``..``block5_conv3``, ``fc1``, ``fc2`` (HWIO; fc1 flattened in
  (H, W, C) order). Input: Caffe preprocessing, BGR 0..255 minus the mean
  (103.939, 116.779, 123.68), no std.
* ``.npz`` in our own layout (`save_npz`): ``conv1_1/w`` (HWIO), ``conv1_1/b``,
  ..., ``fc6/w``, ``fc7/w``, plus a ``preprocess`` entry, 'imagenet' or 'caffe'.
  Weights converted from a Caffe model (e.g. DeepLab's ``init.caffemodel``)
  go this way with preprocess='caffe' (BGR input, mean only).

Two conversions make the weights fit the model (`init_backbone`):

* conv1_1 is rewritten for `model.preprocess` (RGB, (x - mean) / std on the
  0..255 scale): input channels reordered, scaled by our std over the source's,
  and the mean difference folded into the bias (`convert_first_layer`). This is
  exact wherever conv1_1's 3x3 window lies inside the image; on the 1-pixel
  border the zero padding stands for our mean colour instead of the source's.
* fc6/fc7 are decimated as DeepLab-LargeFOV initialises them from VGG-16
  (`decimate_fc`): fc6's 7x7 taps at rows/cols 0, 3, 6 and every 4th of its
  output units (7x7x512x4096 -> 3x3x512x1024), fc7 every 4th input and output
  unit (4096x4096 -> 1024x1024). fc8 keeps its random initialisation.

Loaders are pure numpy (float32); jax arrays appear only in `init_backbone`.
"""
from __future__ import annotations

import dataclasses
import os
import re
from typing import Any, Mapping

import numpy as np

from wsss_jax import constants

NpParams = dict[str, dict[str, np.ndarray]]

FORMATS = {'.pth': 'torch', '.pt': 'torch', '.safetensors': 'safetensors', '.h5': 'keras',
           '.hdf5': 'keras', '.npz': 'npz'}
FC_UNIT_STEP = 4  # DeepLab keeps every 4th fc6/fc7 unit: 4096 -> 1024
FC6_TAP_STEP = 3  # and fc6 taps at 0, 3, 6 of 7: 7x7 -> 3x3
FC6_SOURCE_SIZE = 7  # VGG's pool5 map for 224 px inputs


class WeightsError(ValueError):
  """A weight file that cannot be read or does not fit the backbone."""


@dataclasses.dataclass(frozen=True)
class Preprocess:
  """The input a weight file's conv1_1 expects: channel order, and mean/std on
  the 0..255 scale listed in that channel order."""
  name: str
  bgr: bool
  mean: tuple[float, float, float]
  std: tuple[float, float, float]


PRESETS = {
    # torchvision: (x / 255 - m) / s == (x - 255 m) / (255 s)
    'imagenet': Preprocess('imagenet', False, tuple(255 * m for m in (0.485, 0.456, 0.406)),
                           tuple(255 * s for s in (0.229, 0.224, 0.225))),
    'caffe': Preprocess('caffe', True, (103.939, 116.779, 123.68), (1.0, 1.0, 1.0)),
}


def _preset(src: str | Preprocess) -> Preprocess:
  if isinstance(src, Preprocess):
    return src
  if src not in PRESETS:
    raise WeightsError(f'unknown preprocessing {src!r}; expected one of {sorted(PRESETS)}')
  return PRESETS[src]


def _model_stats(mean, std) -> tuple[np.ndarray, np.ndarray]:
  """Our model's RGB mean/std (0..255), `constants.PIXEL_MEAN/STD` unless given."""
  mean = constants.PIXEL_MEAN if mean is None else mean
  std = constants.PIXEL_STD if std is None else std
  return np.asarray(mean, np.float64).reshape(3), np.asarray(std, np.float64).reshape(3)


# ---------------------------------------------------------------------------------------------
# Conversions.

def convert_first_layer(w, b, src: str | Preprocess, mean=None, std=None):
  """conv1_1 (HWIO in the source's channel order, bias) -> the same function of
  the raw RGB pixels p, fed as (p - mean) / std (default: `constants.PIXEL_MEAN/STD`).

  The source computes sum W (p_src - M) / S + b; substituting p = std x + mean
  gives W' = W std / S (channels reordered to RGB) and
  b' = b + sum_{h,w,c} W / S (mean - M). Exact for windows inside the image;
  at the 1-pixel border the padded zeros differ (our mean vs the source's).
  """
  pre = _preset(src)
  mean_t, std_t = _model_stats(mean, std)
  w = np.asarray(w, np.float64)
  b = np.asarray(b, np.float64)
  if w.ndim != 4 or w.shape[2] != 3 or b.shape != (w.shape[3],):
    raise WeightsError(f'conv1_1 must be HWIO (kh, kw, 3, O) with bias (O,), '
                       f'got {w.shape} and {b.shape}')
  m_src, s_src = np.asarray(pre.mean, np.float64), np.asarray(pre.std, np.float64)
  if pre.bgr:
    w, m_src, s_src = w[:, :, ::-1], m_src[::-1], s_src[::-1]
  w_pix = w / s_src[:, None]  # weight per raw 0..255 pixel value
  w_new = w_pix * std_t[:, None]
  b_new = b + np.einsum('hwco,c->o', w_pix, mean_t - m_src)
  return w_new.astype(np.float32), b_new.astype(np.float32)


def decimate_fc(name: str, w, b):
  """DeepLab-LargeFOV's subsampling of VGG-16's fc layers: fc6 (7, 7, C, 4F) ->
  (3, 3, C, F) taking taps 0, 3, 6 and output units 0, 4, 8, ...; fc7
  (1, 1, 4F, 4F) -> (1, 1, F, F) taking every 4th input and output unit."""
  w, b = np.asarray(w), np.asarray(b)
  u = FC_UNIT_STEP
  if name == 'fc6':
    t = FC6_TAP_STEP
    return w[::t, ::t, :, ::u], b[::u]
  if name == 'fc7':
    return w[:, :, ::u, ::u], b[::u]
  raise ValueError(f'decimate_fc: only fc6 and fc7 are decimated, got {name!r}')


def _order(name: str) -> tuple[int, int] | None:
  """Network position of an importable layer (convB_J, fc6, fc7), else None."""
  m = re.fullmatch(r'conv(\d+)_(\d+)', name)
  if m:
    return int(m[1]), int(m[2])
  if name in ('fc6', 'fc7'):
    return int(name[2:]), 0
  return None


def _shape(a) -> tuple[int, ...]:
  return tuple(int(d) for d in np.shape(a))


def convert_vgg16(src: Mapping[str, Mapping[str, Any]], preprocess: str | Preprocess,
                  params: Mapping[str, Any], *, source: str = 'weights', mean=None,
                  std=None) -> dict[str, Any]:
  """Backbone params with conv1_1..fc7 replaced by `src` (our layout, as from
  `load_vgg16`) converted for `model.preprocess`; fc8 and anything else kept.

  fc6/fc7 are taken as they are when they already have the target's shape,
  decimated (`decimate_fc`) when they have VGG-16's. The first missing,
  unexpected or mis-shaped layer (in network order) raises `WeightsError`.
  """
  import jax.numpy as jnp

  wanted = {k for k in params if _order(k)}
  found = {k for k in src if _order(k)}
  fail = lambda msg: WeightsError(f'{source}: {msg}')
  converted = {}
  for name in sorted(wanted | found, key=_order):
    if name not in found:
      want = _shape(params[name]['w'])
      raise fail(f'layer {name} is missing from the file (the model needs w {want})')
    w, b = src[name].get('w'), src[name].get('b')
    if name not in wanted:
      raise fail(f'the file has layer {name} (w {_shape(w)}) that the backbone lacks '
                 f'(a VGG-19 file, or a backbone config with fewer convs per block?)')
    want_w, want_b = _shape(params[name]['w']), _shape(params[name]['b'])
    if w is None or b is None:
      raise fail(f'layer {name} lacks its {"weight" if w is None else "bias"} in the file')
    got_w, got_b = _shape(w), _shape(b)
    if name in ('fc6', 'fc7') and (got_w, got_b) != (want_w, want_b):
      kh, kw, cin, cout = want_w
      u = FC_UNIT_STEP
      full = ((FC6_SOURCE_SIZE, FC6_SOURCE_SIZE, cin, u * cout) if name == 'fc6'
              else (1, 1, u * cin, u * cout))
      if name == 'fc6' and (kh, kw) != (3, 3):
        full = None  # DeepLab's decimation makes 3x3 taps only
      if got_w != full or got_b != (u * cout,):
        alt = f' or the undecimated VGG-16 shape {full}' if full else ''
        raise fail(f'layer {name} has w {got_w}, b {got_b} in the file but the model needs '
                   f'w {want_w}{alt} (DeepLab keeps every {u}th unit)')
      w, b = decimate_fc(name, w, b)
    elif (got_w, got_b) != (want_w, want_b):
      raise fail(f'layer {name} has w {got_w}, b {got_b} in the file (as HWIO) but the model '
                 f'needs w {want_w}, b {want_b} (a full-width VGG-16 backbone config?)')
    if name == 'conv1_1':
      w, b = convert_first_layer(w, b, preprocess, mean, std)
    converted[name] = {'w': jnp.asarray(np.ascontiguousarray(w, np.float32)),
                       'b': jnp.asarray(np.ascontiguousarray(b, np.float32))}
  out = dict(params)
  out.update(converted)
  return out


# ---------------------------------------------------------------------------------------------
# Loaders: each returns our layout (full-size fc6 HWIO (7, 7, 512, 4096)) and the preprocessing.

def _f32(a) -> np.ndarray | None:
  return None if a is None else np.asarray(a).astype(np.float32, copy=False)


def _unflatten_fc6(w2d: np.ndarray, order: str) -> np.ndarray:
  """A dense fc6 on the flattened 7x7 pool5 map -> HWIO (7, 7, C, O).

  order 'CHW' (torch, weight (O, C*49)) or 'HWC' (Keras, kernel (H*W*C, O)).
  Left 2-D when the input size is not C*7*7, for the shape check to report."""
  s = FC6_SOURCE_SIZE
  if order == 'CHW':
    out, n = w2d.shape
    if n % (s * s):
      return w2d
    return w2d.reshape(out, n // (s * s), s, s).transpose(2, 3, 1, 0)
  n, out = w2d.shape
  if n % (s * s):
    return w2d
  return w2d.reshape(s, s, n // (s * s), out)


def _from_torchvision(tensors: Mapping[str, np.ndarray], path: str) -> NpParams:
  """torchvision VGG key names -> our layout. Blocks are told apart by the gap a
  pool leaves in the `features` indices (conv, relu, [pool,] conv)."""
  tensors = {k[7:] if k.startswith('module.') else k: v for k, v in tensors.items()}
  if any(k.startswith('features.') and k.endswith('.running_mean') for k in tensors):
    raise WeightsError(f'{path}: batch-norm VGG (vgg16_bn) is not supported; use plain vgg16')
  conv_idx = sorted(int(m[1]) for k in tensors
                    if (m := re.fullmatch(r'features\.(\d+)\.weight', k)))
  fc_idx = sorted(int(m[1]) for k in tensors
                  if (m := re.fullmatch(r'classifier\.(\d+)\.weight', k)))
  if not conv_idx:
    raise WeightsError(f'{path}: no torchvision VGG tensors (features.N.weight) in the file')
  out: NpParams = {}
  block, j, prev = 1, 0, None
  for i in conv_idx:
    if prev is not None and i - prev > 2:
      block, j = block + 1, 0
    j, prev = j + 1, i
    w = tensors[f'features.{i}.weight']
    w = _f32(w).transpose(2, 3, 1, 0) if np.ndim(w) == 4 else _f32(w)  # OIHW -> HWIO
    out[f'conv{block}_{j}'] = {'w': w, 'b': _f32(tensors.get(f'features.{i}.bias'))}
  for name, i in zip(('fc6', 'fc7'), fc_idx):
    w = _f32(tensors[f'classifier.{i}.weight'])
    if w.ndim == 2:
      w = _unflatten_fc6(w, 'CHW') if name == 'fc6' else w.T[None, None]
    out[name] = {'w': w, 'b': _f32(tensors.get(f'classifier.{i}.bias'))}
  return out


def _load_torch(path: str) -> dict[str, np.ndarray]:
  try:
    import torch
  except ImportError:
    raise WeightsError(
        f'{path}: reading .pth/.pt needs PyTorch, which is not installed. Convert the file once '
        f'where torch is available, e.g. python -c "import torch, safetensors.torch as st; '
        f'st.save_file(torch.load(\'vgg16.pth\'), \'vgg16.safetensors\')", and load the '
        f'.safetensors (or write an .npz with wsss_jax.weights.save_npz)') from None
  sd = torch.load(path, map_location='cpu', weights_only=True)
  if isinstance(sd, Mapping) and 'state_dict' in sd and isinstance(sd['state_dict'], Mapping):
    sd = sd['state_dict']
  if not isinstance(sd, Mapping):
    raise WeightsError(f'{path}: expected a state dict, found {type(sd).__name__}')
  return {k: v.detach().float().numpy() for k, v in sd.items() if hasattr(v, 'detach')}


def _load_safetensors(path: str) -> dict[str, np.ndarray]:
  from safetensors.numpy import load_file
  return load_file(path)


_KERAS = re.compile(r'block(\d+)_conv(\d+)|fc1|fc2')


def _load_keras(path: str) -> NpParams:
  """Keras VGG-16 .h5: per-layer groups anywhere in the file (under
  ``model_weights`` for whole-model saves), each holding one kernel (ndim >= 2)
  and one bias (ndim 1), whatever the dataset names (``<layer>_W_1:0``,
  ``<layer>_W``, ``<layer>/kernel:0``, ...)."""
  import h5py
  with h5py.File(path, 'r') as f:
    root = f['model_weights'] if 'model_weights' in f else f
    groups: list[str] = []
    root.visititems(lambda n, o: groups.append(n) if (
        isinstance(o, h5py.Group) and _KERAS.fullmatch(n.rsplit('/', 1)[-1])) else None)
    groups.sort(key=len)  # outermost first; nested groups of the same name are its content
    outer = [g for i, g in enumerate(groups) if not any(g.startswith(p + '/') for p in groups[:i])]
    out: NpParams = {}
    for g in outer:
      key = g.rsplit('/', 1)[-1]
      m = re.fullmatch(r'block(\d+)_conv(\d+)', key)
      name = f'conv{m[1]}_{m[2]}' if m else {'fc1': 'fc6', 'fc2': 'fc7'}[key]
      data: list[tuple[str, Any]] = []
      root[g].visititems(lambda n, o: data.append((n, o)) if isinstance(o, h5py.Dataset) else None)
      kernels = [d for n, d in data if d.ndim >= 2]
      biases = [d for n, d in data if d.ndim == 1]
      if len(kernels) != 1 or len(biases) != 1:
        raise WeightsError(f'{path}: group {g} should hold one kernel and one bias, '
                           f'found {[n for n, _ in data]}')
      w = _f32(kernels[0][()])
      if name == 'fc6' and w.ndim == 2:
        w = _unflatten_fc6(w, 'HWC')
      elif name == 'fc7' and w.ndim == 2:
        w = w[None, None]
      out[name] = {'w': w, 'b': _f32(biases[0][()])}
  if not out:
    raise WeightsError(f'{path}: no Keras VGG layer groups (block1_conv1, ..., fc1, fc2) found')
  return out


def _load_npz(path: str) -> tuple[NpParams, Preprocess]:
  with np.load(path, allow_pickle=False) as z:
    data = {k: z[k] for k in z.files}
  if 'preprocess' not in data:
    raise WeightsError(f"{path}: no 'preprocess' entry (say 'imagenet' or 'caffe'; see save_npz)")
  pre = _preset(str(data.pop('preprocess')))
  mean, std = data.pop('mean', None), data.pop('std', None)
  if mean is not None or std is not None:
    pre = dataclasses.replace(
        pre, mean=tuple(float(v) for v in (pre.mean if mean is None else mean)),
        std=tuple(float(v) for v in (pre.std if std is None else std)))
  out: NpParams = {}
  for k, v in data.items():
    layer, _, field = k.rpartition('/')
    if layer and field in ('w', 'b'):
      out.setdefault(layer, {})[field] = _f32(v)
  return out, pre


def load_vgg16(path: str | os.PathLike) -> tuple[NpParams, Preprocess]:
  """VGG-16 weights from any supported file, in our layout (numpy float32, HWIO,
  conv1_1 unconverted, fc6/fc7 as stored: full-size unless an .npz holds them
  decimated), with the preprocessing the file's conv1_1 expects."""
  path = os.fspath(path)
  ext = os.path.splitext(path)[1].lower()
  if ext not in FORMATS:
    raise WeightsError(f'{path}: unknown weight file type {ext!r}; supported: '
                       f'.pth/.pt (torchvision state dict), .safetensors (torchvision names), '
                       f'.h5/.hdf5 (Keras VGG16), .npz (wsss_jax.weights.save_npz)')
  if not os.path.isfile(path):
    raise WeightsError(f'{path}: no such file')
  fmt = FORMATS[ext]
  try:
    if fmt == 'torch':
      return _from_torchvision(_load_torch(path), path), PRESETS['imagenet']
    if fmt == 'safetensors':
      return _from_torchvision(_load_safetensors(path), path), PRESETS['imagenet']
    if fmt == 'keras':
      return _load_keras(path), PRESETS['caffe']
    return _load_npz(path)
  except WeightsError:
    raise
  except Exception as e:  # h5py, zipfile, safetensors, torch errors on bad files
    raise WeightsError(f'{path}: cannot read this {fmt} file, is it truncated or corrupt? '
                       f'({type(e).__name__}: {e})') from e


def init_backbone(params: Mapping[str, Any], path: str | os.PathLike, *, mean=None,
                  std=None) -> dict[str, Any]:
  """`params` (from `backbone.init_params`) with conv1_1..fc7 from the VGG-16 file
  at `path`, converted for `model.preprocess` (or the given RGB 0..255 mean/std);
  fc8 keeps its initialisation. Raises `WeightsError` naming the file and the
  first layer that is missing or mis-shaped."""
  src, pre = load_vgg16(path)
  return convert_vgg16(src, pre, params, source=os.fspath(path), mean=mean, std=std)


def save_npz(params: Mapping[str, Any], path: str | os.PathLike, preprocess: str | Preprocess,
             *, mean=None, std=None) -> None:
  """Write `params` (our layout: ``{'conv1_1': {'w': HWIO, 'b'}, ...}``, numpy or
  jax) as an .npz `load_vgg16` reads: keys ``<layer>/w``, ``<layer>/b``, and
  ``preprocess`` ('imagenet': RGB, (x - mean) / std; 'caffe': BGR, x - mean).
  ``mean``/``std`` (0..255, in that channel order) are stored too: the
  preset's unless given; e.g. our own backbone: 'imagenet' with
  constants.PIXEL_MEAN/PIXEL_STD, which makes `init_backbone` an identity (up to rounding).
  fc6/fc7 may be full VGG-16 size or already decimated; fc8 is written but not
  imported by `init_backbone`."""
  pre = _preset(preprocess)
  if pre.name not in PRESETS or pre.bgr != PRESETS[pre.name].bgr:
    raise WeightsError(f"save_npz: preprocess must be 'imagenet' (RGB) or 'caffe' (BGR), got {pre}")
  arrays: dict[str, np.ndarray] = {
      'preprocess': np.array(pre.name),
      'mean': np.asarray(pre.mean if mean is None else mean, np.float64).reshape(3),
      'std': np.asarray(pre.std if std is None else std, np.float64).reshape(3)}
  for layer, p in params.items():
    for field in ('w', 'b'):
      arrays[f'{layer}/{field}'] = np.asarray(p[field], np.float32)
  with open(path, 'wb') as f:  # a file object: np.savez would append '.npz' to a path
    np.savez(f, **arrays)
