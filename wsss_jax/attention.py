"""Top-down attention (Sec. 4). So far: the parent-child term, excitation backprop (Eqs. 5-6).

The marginal winning probability of a neuron i at a layer is
    P(a_i) = sum_j p(a_i | a_j) P(a_j),  p(a_i | a_j) = w+_ij a_i / sum_{i' in C_j} w+_i'j a_i'  (Eq. 6)
walked from the class unit down the backbone's layer list. Every rule is a
vector-Jacobian product of a forward function, so it works for any layer the
backbone emits and is batched over images and classes:
* conv / FCL (nonnegative-weight linear maps L+): P_in = a * L+^T (P_out / (L+ a + eps));
* average pooling: the same rule with the pool as L+ (mass splits in proportion to a);
* max pooling: P_out is routed to the argmax child (the pool's own VJP);
* ReLU and dropout (identity at inference): P passes through.
Mass is conserved layer to layer wherever a parent with mass has a child with positive
activation and weight; what a parent with L+ a = 0 holds is lost (reported by the tests).
The rectified-Gaussian MAP with lateral dependencies (Eqs. 2-4, 7-9) is the open part of the
attention issue.
"""
from __future__ import annotations

from typing import Any, Mapping

import jax
import jax.numpy as jnp

from wsss_jax import backbone

EPS = 1e-12


def _pos_linear_backward(fwd, a_in: jax.Array, p_out: jax.Array, eps: float) -> jax.Array:
  """P_in = a * L^T (P_out / (L a + eps)) for a nonnegative linear map L given as `fwd`."""
  z, vjp = jax.vjp(fwd, a_in)
  return a_in * vjp(p_out / (z + eps))[0]


def layer_backward(layer: backbone.Layer, params: Mapping[str, Any], a_in: jax.Array,
                   p_out: jax.Array, eps: float = EPS) -> jax.Array:
  """Eq. (5)-(6) through one backbone layer: winning probabilities of its inputs."""
  if layer.kind in ('relu', 'dropout'):
    return p_out
  if layer.kind == 'maxpool':
    _, vjp = jax.vjp(lambda x: backbone.max_pool(x, layer.kernel, layer.stride), a_in)
    return vjp(p_out)[0]
  if layer.kind == 'avgpool':
    return _pos_linear_backward(lambda x: backbone.avg_pool(x, layer.kernel, layer.stride),
                                a_in, p_out, eps)
  if layer.kind == 'conv':
    w = jnp.maximum(params[layer.name]['w'], 0.0)
    return _pos_linear_backward(lambda x: backbone.conv(x, w, None, layer.dilation), a_in, p_out, eps)
  raise ValueError(f'no excitation-backprop rule for layer kind {layer.kind!r} ({layer.name})')


def class_signal(scores: jax.Array, fcl_weights: jax.Array | None, classes: jax.Array,
                 eps: float = EPS) -> jax.Array:
  """Winning probabilities of the score maps given each class unit (the FCL, walked first).

  scores (B, h, w, K) are the FCL's children, with activations relu(f) (f has no ReLU of its
  own); `fcl_weights` (h, w, K) are the FCL's (None: uniform, i.e. GAP). Returns
  (B, C, h, w, K) for the C class indices in `classes`: one-hot in the class channel, summing
  to 1 over positions (uniform over the map where every relu(f) of the class is 0).
  """
  a = jnp.maximum(scores, 0.0)
  w = jnp.ones(scores.shape[1:], scores.dtype) if fcl_weights is None else jnp.maximum(fcl_weights, 0.0)
  wa = w * a  # (B, h, w, K)
  total = jnp.sum(wa, axis=(1, 2), keepdims=True)
  p = jnp.where(total > eps, wa / jnp.maximum(total, eps), 1.0 / (scores.shape[1] * scores.shape[2]))
  onehot = jax.nn.one_hot(classes, scores.shape[-1], dtype=scores.dtype)  # (C, K)
  return p[:, None] * onehot[None, :, None, None, :]


def excitation_backprop(params: Mapping[str, Any], activations: Mapping[str, jax.Array],
                        cfg: backbone.BackboneConfig, top: jax.Array, stop_at: str = 'pool4',
                        eps: float = EPS) -> dict[str, jax.Array]:
  """Walk winning probabilities from the fc8 output down to the output of `stop_at`.

  `activations` are `backbone.apply(..., return_activations=True)`'s (inference mode);
  `top` (B, C, h, w, K) is the signal on fc8's output (`class_signal`). Returns the map at the
  output of every walked layer, keyed by layer name, each (B, C, ...) like its activation.
  """
  layers = backbone.layer_specs(cfg)
  names = [l.name for l in layers]
  if stop_at not in names:
    raise ValueError(f'stop_at={stop_at!r} is not a layer of the backbone ({names})')
  stop = names.index(stop_at)
  maps = {names[-1]: top}
  p = top
  for k in range(len(layers) - 1, stop, -1):
    a_in = activations[names[k - 1]]
    step = lambda p_c, layer=layers[k], a_in=a_in: layer_backward(layer, params, a_in, p_c, eps)
    p = jax.vmap(step, in_axes=1, out_axes=1)(p)
    maps[names[k - 1]] = p
  return maps
