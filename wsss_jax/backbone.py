"""DeepLab-LargeFOV on VGG-16 as pure functions over a parameter pytree (Sec. 3).

The network produces the pixel scores f_i(y) of Eq. (1) at output stride 8
(321x321 -> 41x41), exactly as DeepLab v1's LargeFOV model:

  conv1_{1,2}  pool1 (3x3 max, stride 2)
  conv2_{1,2}  pool2 (3x3 max, stride 2)
  conv3_{1..3} pool3 (3x3 max, stride 2)
  conv4_{1..3} pool4 (3x3 max, stride 1)
  conv5_{1..3} (dilation 2) pool5 (3x3 max, stride 1) pool5a (3x3 avg, stride 1)
  fc6 (3x3, dilation 12, 1024) dropout  fc7 (1x1, 1024) dropout  fc8 (1x1, K)

The topology is a flat list of `Layer` records (`layer_specs`), walked forwards
by `apply` and, in the attention module, backwards for the top-down pass.
Parameters are a plain dict ``{'conv1_1': {'w': HWIO, 'b': O}, ...}``.
A width multiplier, per-block depth, fc width and fc6 dilation give a tiny
variant of the same topology for CPU runs and tests.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np

Params = dict[str, dict[str, jax.Array]]

VGG_CHANNELS = (64, 128, 256, 512, 512)
VGG_DEPTH = (2, 2, 3, 3, 3)
POOL_STRIDES = (2, 2, 2, 1, 1)


@dataclasses.dataclass(frozen=True)
class Layer:
  """One layer of the network: kind is 'conv', 'relu', 'maxpool', 'avgpool' or 'dropout'."""
  name: str
  kind: str
  features: int = 0  # conv output channels
  kernel: int = 3
  stride: int = 1
  dilation: int = 1


@dataclasses.dataclass(frozen=True)
class BackboneConfig:
  """Static description of a DeepLab-LargeFOV variant.

  The defaults are the paper's network; `width` scales every channel count
  (VGG and fc layers), `depth` gives the convs per VGG block.
  """
  num_classes: int = 21
  width: float = 1.0
  depth: tuple[int, ...] = VGG_DEPTH
  fc_features: int = 1024
  fc6_dilation: int = 12
  dropout_rate: float = 0.5

  @classmethod
  def from_config(cls, cfg: Mapping[str, Any]) -> 'BackboneConfig':
    return cls(num_classes=int(cfg['num_classes']), width=float(cfg['width']),
               depth=tuple(int(d) for d in cfg['depth']),
               fc_features=int(cfg['fc_features']),
               fc6_dilation=int(cfg['fc6_dilation']),
               dropout_rate=float(cfg['dropout_rate']))


def _scaled(c: int, width: float) -> int:
  return max(1, int(round(c * width)))


def layer_specs(cfg: BackboneConfig) -> tuple[Layer, ...]:
  """The forward layer sequence of DeepLab-LargeFOV for `cfg`."""
  if len(cfg.depth) != 5 or min(cfg.depth) < 1:
    raise ValueError(f'backbone depth must list 5 positive block depths, got {cfg.depth}')
  layers: list[Layer] = []
  for block, (ch, n, stride) in enumerate(zip(VGG_CHANNELS, cfg.depth, POOL_STRIDES), 1):
    dil = 2 if block == 5 else 1
    for j in range(1, n + 1):
      layers.append(Layer(f'conv{block}_{j}', 'conv', _scaled(ch, cfg.width), 3, 1, dil))
      layers.append(Layer(f'relu{block}_{j}', 'relu'))
    layers.append(Layer(f'pool{block}', 'maxpool', kernel=3, stride=stride))
  fc = _scaled(cfg.fc_features, cfg.width)
  layers += [
      Layer('pool5a', 'avgpool', kernel=3, stride=1),
      Layer('fc6', 'conv', fc, 3, 1, cfg.fc6_dilation),
      Layer('relu6', 'relu'),
      Layer('drop6', 'dropout'),
      Layer('fc7', 'conv', fc, 1),
      Layer('relu7', 'relu'),
      Layer('drop7', 'dropout'),
      Layer('fc8', 'conv', cfg.num_classes, 1),
  ]
  return tuple(layers)


def init_params(key: jax.Array, cfg: BackboneConfig, in_channels: int = 3) -> Params:
  """He-normal convs with zero bias; fc8 ~ N(0, 0.01^2) as in DeepLab."""
  params: Params = {}
  cin = in_channels
  convs = [l for l in layer_specs(cfg) if l.kind == 'conv']
  for layer, k in zip(convs, jax.random.split(key, len(convs))):
    shape = (layer.kernel, layer.kernel, cin, layer.features)
    std = 0.01 if layer.name == 'fc8' else np.sqrt(2.0 / (layer.kernel * layer.kernel * cin))
    params[layer.name] = {'w': std * jax.random.normal(k, shape, jnp.float32),
                          'b': jnp.zeros((layer.features,), jnp.float32)}
    cin = layer.features
  return params


def conv(x: jax.Array, w: jax.Array, b: jax.Array | None, dilation: int = 1) -> jax.Array:
  """'Same' NHWC convolution with HWIO kernel (padding = dilation * (k - 1) / 2).

  A 1x1 kernel (fc7, fc8) is a matrix product over channels; XLA's CPU backend runs it as a dot
  1.6x faster than as a convolution, forward and backward (docs/DESIGN.md, "Network").
  """
  if w.shape[0] == 1 and w.shape[1] == 1:
    y = jax.lax.dot_general(x, w[0, 0], (((x.ndim - 1,), (0,)), ((), ())))
  else:
    pad = dilation * (w.shape[0] - 1) // 2
    y = jax.lax.conv_general_dilated(
        x, w, window_strides=(1, 1), padding=((pad, pad), (pad, pad)),
        rhs_dilation=(dilation, dilation), dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
  return y if b is None else y + b


def pool_output_size(size: int, kernel: int, stride: int) -> int:
  """Caffe's pooling output size with padding (kernel - 1) / 2: ceil((size + 2 pad - kernel) /
  stride) + 1, less one if the last window would start in the right padding. Ceil mode: an
  even input to a stride-2 pool gets one more cell than floor mode (512 -> 257, not 256)."""
  pad = (kernel - 1) // 2
  out = -(-(size + 2 * pad - kernel) // stride) + 1
  if pad and (out - 1) * stride >= size + pad:
    out -= 1
  return out


def _pool_padding(size: int, kernel: int, stride: int) -> tuple[int, int, int]:
  """(left pad, right pad, output size): the right pad also covers ceil mode's last window."""
  pad = (kernel - 1) // 2
  out = pool_output_size(size, kernel, stride)
  return pad, max(pad, (out - 1) * stride + kernel - size - pad), out


def _pool_views(x: jax.Array, kernel: int, stride: int) -> list[jax.Array]:
  """The kernel * kernel strided views of the -inf padded input, in window scan order."""
  (top, bottom, oh), (left, right, ow) = (_pool_padding(x.shape[1], kernel, stride),
                                          _pool_padding(x.shape[2], kernel, stride))
  xp = jnp.pad(x, ((0, 0), (top, bottom), (left, right), (0, 0)), constant_values=-jnp.inf)
  return [jax.lax.slice(xp, (0, i, j, 0), (xp.shape[0], i + stride * (oh - 1) + 1,
                                           j + stride * (ow - 1) + 1, xp.shape[3]),
                        (1, stride, stride, 1))
          for i in range(kernel) for j in range(kernel)]


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2))
def max_pool(x: jax.Array, kernel: int, stride: int) -> jax.Array:
  """Caffe's 3x3 max pool with padding 1 and ceil-mode output size (`pool_output_size`:
  321 -> 161 -> 81 -> 41, 512 -> 257 -> 129 -> 65; a window never covers only padding).

  The gradient goes to the first maximum of each window in scan order, as `reduce_window`'s
  does (and as Caffe routes it); it is written out because XLA's CPU `select_and_scatter` is
  5-10x slower than this (`bench/pool.py`, docs/DESIGN.md). Excitation backprop routes
  winning probabilities through the same VJP (attention.py).
  """
  return _max_pool_fwd(x, kernel, stride)[0]


def _max_pool_fwd(x, kernel, stride):
  views = _pool_views(x, kernel, stride)
  out, arg = views[0], jnp.zeros(views[0].shape, jnp.int8)
  for k, v in enumerate(views[1:], 1):
    better = v > out  # strict: ties keep the earlier position
    out, arg = jnp.where(better, v, out), jnp.where(better, jnp.int8(k), arg)
  return out, (arg, x.shape)


def _max_pool_bwd(kernel, stride, res, g):
  arg, shape = res
  top, bottom, oh = _pool_padding(shape[1], kernel, stride)
  left, right, ow = _pool_padding(shape[2], kernel, stride)
  hp, wp = shape[1] + top + bottom, shape[2] + left + right
  zero = jnp.zeros((), g.dtype)
  total = None
  for k in range(kernel * kernel):
    i, j = divmod(k, kernel)
    # The transpose of view k: its cells spread back to their strided positions in the padding.
    dx = jax.lax.pad(jnp.where(arg == k, g, zero), zero,
                     ((0, 0, 0), (i, hp - i - stride * (oh - 1) - 1, stride - 1),
                      (j, wp - j - stride * (ow - 1) - 1, stride - 1), (0, 0, 0)))
    total = dx if total is None else total + dx
  return (total[:, top:top + shape[1], left:left + shape[2]],)


max_pool.defvjp(_max_pool_fwd, _max_pool_bwd)


def avg_pool(x: jax.Array, kernel: int, stride: int) -> jax.Array:
  """Caffe AVE pool: the divisor counts the padding cells within the padded input (kernel *
  kernel for windows inside it), not those ceil mode's last window reaches beyond it."""
  (top, bottom, _), (left, right, _) = (_pool_padding(x.shape[1], kernel, stride),
                                        _pool_padding(x.shape[2], kernel, stride))
  window, strides = (1, kernel, kernel, 1), (1, stride, stride, 1)
  padding = ((0, 0), (top, bottom), (left, right), (0, 0))
  s = jax.lax.reduce_window(x, 0.0, jax.lax.add, window, strides, padding)
  if bottom == top and right == left:
    return s / (kernel * kernel)
  inside = jnp.pad(jnp.ones((1,) + x.shape[1:3] + (1,), x.dtype),
                   ((0, 0), (top, top), (left, left), (0, 0)), constant_values=1.0)
  count = jax.lax.reduce_window(inside, 0.0, jax.lax.add, window, strides,
                                ((0, 0), (0, bottom - top), (0, right - left), (0, 0)))
  return s / count


def _apply_layer(layer: Layer, params: Params, x: jax.Array, train: bool, rng):
  """One layer forward; returns (output, rng left for the next dropout)."""
  if layer.kind == 'conv':
    p = params[layer.name]
    return conv(x, p['w'], p['b'], layer.dilation), rng
  if layer.kind == 'relu':
    return jax.nn.relu(x), rng
  if layer.kind == 'maxpool':
    return max_pool(x, layer.kernel, layer.stride), rng
  if layer.kind == 'avgpool':
    return avg_pool(x, layer.kernel, layer.stride), rng
  if layer.kind == 'dropout':
    return x, rng
  raise ValueError(f'unknown layer kind {layer.kind!r}')  # pragma: no cover


def apply(params: Params, images: jax.Array, *, cfg: BackboneConfig, train: bool,
          rng: jax.Array | None = None, return_activations: bool = False):
  """Pixel scores f (N, H/8, W/8, K) for float images (N, H, W, 3).

  With `return_activations`, also returns a dict layer name -> output of that
  layer (the input is under 'input'), for the top-down attention pass.
  """
  if images.ndim != 4:
    raise ValueError(f'images must be (N, H, W, C), got shape {images.shape}')
  if train and cfg.dropout_rate > 0 and rng is None:
    raise ValueError('apply(train=True) with dropout needs an rng')
  x = images
  acts = {'input': x}
  for layer in layer_specs(cfg):
    if layer.kind == 'dropout' and train and cfg.dropout_rate > 0:
      rng, sub = jax.random.split(rng)
      keep = jax.random.bernoulli(sub, 1.0 - cfg.dropout_rate, x.shape)
      x = jnp.where(keep, x / (1.0 - cfg.dropout_rate), 0.0)
    else:
      x, rng = _apply_layer(layer, params, x, train, rng)
    if return_activations:
      acts[layer.name] = x
  return (x, acts) if return_activations else x


def inference_activations(params: Params, activations: dict[str, jax.Array],
                          cfg: BackboneConfig) -> dict[str, jax.Array]:
  """The activations of the inference-mode network (no dropout) from a training-mode pass's
  (`apply(..., train=True, return_activations=True)`): the layers before the first dropout are
  shared, the rest (fc7, fc8 in DeepLab-LargeFOV: cheap 1x1 convolutions) are recomputed
  without the masks."""
  layers = layer_specs(cfg)
  out, x = dict(activations), None
  for i, layer in enumerate(layers):
    if x is None and layer.kind == 'dropout':
      x = activations[layers[i - 1].name]
    if x is not None:
      x, _ = _apply_layer(layer, params, x, False, None)
      out[layer.name] = x
  return out


def output_size(size: int) -> int:
  """Spatial size of the score map for an input side of `size` pixels (Caffe's pooling
  arithmetic: 321 -> 41, 512 or 513 -> 65, 64 -> 9)."""
  for stride in POOL_STRIDES:
    size = pool_output_size(size, 3, stride)
  return size
