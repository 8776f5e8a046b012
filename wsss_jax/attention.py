"""Top-down attention (Sec. 4): excitation backprop (Eqs. 5-6) and the per-layer MAP (Eqs. 2-4).

The marginal winning probability of a neuron i at a layer is
    P(a_i) = sum_j p(a_i | a_j) P(a_j),
    p(a_i | a_j) = w+_ij a_i / sum_{i' in C_j} w+_i'j a_i'  (Eq. 6)
walked from the class unit down the backbone's layer list. Every rule is a
vector-Jacobian product of a forward function, so it works for any layer the
backbone emits and is batched over images and classes:
* conv / FCL (nonnegative-weight linear maps L+): P_in = a * L+^T (P_out / (L+ a + eps));
* average pooling: the same rule with the pool as L+ (mass splits in proportion to a);
* max pooling: P_out is routed to the argmax child (the pool's own VJP);
* ReLU and dropout (identity at inference): P passes through.
Mass is conserved layer to layer wherever a parent with mass has a child with positive
activation and weight; what a parent with L+ a = 0 holds is lost (reported by the tests).
`attention_maps` adds the per-layer rectified-Gaussian MAP (Eqs. 2-3, 7-9) and Eq. (4).
"""
from __future__ import annotations

from typing import Any, Mapping

import jax
import jax.numpy as jnp

from wsss_jax import backbone, bilateral, qp

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
    return _pos_linear_backward(lambda x: backbone.conv(x, w, None, layer.dilation), a_in, p_out,
                                eps)
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
  w = jnp.ones(scores.shape[1:], scores.dtype) if fcl_weights is None else jnp.maximum(
      fcl_weights, 0.0)
  wa = w * a  # (B, h, w, K)
  total = jnp.sum(wa, axis=(1, 2), keepdims=True)
  p = jnp.where(total > eps, wa / jnp.maximum(total, eps),
                1.0 / (scores.shape[1] * scores.shape[2]))
  onehot = jax.nn.one_hot(classes, scores.shape[-1], dtype=scores.dtype)  # (C, K) or (B, C, K)
  if onehot.ndim == 2:
    onehot = jnp.broadcast_to(onehot, (scores.shape[0],) + onehot.shape)
  return p[:, None] * onehot[:, :, None, None, :]


def exclusive_scores(scores: jax.Array, class_mask: jax.Array) -> jax.Array:
  """Each selected foreground class's score map minus the best positive score of the other
  selected foreground classes, clipped at 0: a position seeds the walk of the class that wins
  it among the image's classes (a class alone in its image keeps relu(f)). Background (class
  0) and unselected classes are left as they are. scores (B, h, w, K), class_mask (B, K)."""
  sel = class_mask[:, None, None, 1:] > 0
  fg = jnp.where(sel, scores[..., 1:], -jnp.inf)
  top2 = jax.lax.top_k(fg, 2)[0] if fg.shape[-1] > 1 else jnp.concatenate(
      [fg, jnp.full_like(fg, -jnp.inf)], -1)
  other = jnp.where(fg >= top2[..., :1], top2[..., 1:2], top2[..., :1])  # best of the others
  ex = jnp.maximum(scores[..., 1:] - jnp.maximum(other, 0.0), 0.0)
  return jnp.concatenate([scores[..., :1], jnp.where(sel, ex, scores[..., 1:])], -1)


def excitation_backprop(params: Mapping[str, Any], activations: Mapping[str, jax.Array],
                        cfg: backbone.BackboneConfig, top: jax.Array, stop_at: str = 'pool4',
                        eps: float = EPS, after_layer=None) -> dict[str, jax.Array]:
  """Walk winning probabilities from the fc8 output down to the output of `stop_at`.

  `activations` are `backbone.apply(..., return_activations=True)`'s (inference mode);
  `top` (B, C, h, w, K) is the signal on fc8's output (`class_signal`). Returns the map at the
  output of every walked layer, keyed by layer name, each (B, C, ...) like its activation.
  `after_layer(layer, input_name, a_in, p)`, if given, may replace the map p of a layer's input
  before the walk continues (the attention QP does).
  """
  layers = backbone.layer_specs(cfg)
  names = [l.name for l in layers]
  if stop_at not in names:
    raise ValueError(f'stop_at={stop_at!r} is not a layer of the backbone ({names})')
  maps = {names[-1]: top}
  p = top
  for k in range(len(layers) - 1, names.index(stop_at), -1):
    layer, a_in = layers[k], activations[names[k - 1]]
    step = lambda p_c, layer=layer, a_in=a_in: layer_backward(layer, params, a_in, p_c, eps)
    p = jax.vmap(step, in_axes=1, out_axes=1)(p)
    if after_layer is not None:
      p = after_layer(layer, names[k - 1], a_in, p)
    maps[names[k - 1]] = p
  return maps


def attention_maps(params: Mapping[str, Any], activations: Mapping[str, jax.Array],
                   cfg: backbone.BackboneConfig, images: jax.Array, fcl_weights: jax.Array | None,
                   class_mask: jax.Array, *, neighbors: bool = True, lateral: str = 'diffusion',
                   eps: float = 1.0, radius: int = 3, qp_tol: float = 1e-3, qp_iters: int = 50,
                   stop_at: str = 'pool4', return_layers: bool = False,
                   max_classes: int | None = None, background: str = 'complement',
                   bg_power: float = 1.0, feedforward_weight: float = 0.0,
                   top_signal: str = 'exclusive', return_stats: bool = False):
  """p^A of Eq. (4): top-down attention for every class, (B, H, W, K), summing to 1 over classes.

  Walks Eqs. (5)-(6) from the FCL down to `stop_at`; with `neighbors`, at every conv and pooling
  layer the spatial map (channels summed) is replaced by the MAP of Eq. (3), b = gamma + alpha
  (Eqs. 5, 7), D from `bilateral.lateral_operator` (one operator per image, shared by all classes
  and layers), and redistributed over channels in proportion to gamma. `class_mask` (B, K) selects
  the classes that get attention (tags + background in training, predicted classes at inference);
  the others get 0 and every pixel is normalised over the selected ones. With neighbors=False this
  is plain excitation backprop (baseline B4). `max_classes` (static) walks only that many classes
  per image, the selected ones first (an image has few tags: the walk and QP cost scale with it);
  selected classes beyond it get no attention. `background`: 'walk' treats class 0 like the
  others (its own top-down walk); 'complement' scales each foreground map to peak 1 and gives
  background (1 - max_c fg_c)^bg_power before the per-pixel normalisation (docs/DESIGN.md);
  background is then not walked and `max_classes` still counts it (4 = 3 tags + background).
  Returns p^A; with `return_layers` also the per-layer QP solutions (for KKT checks); with
  `return_stats` also {'qp_converged', 'qp_problems'}: how many of the QPs of the selected classes
  (one per class, image and layer) met `qp_tol` within `qp_iters`, and how many there were.
  The defaults are configs/default.py's model.attention values (tests/test_config_lib.py checks
  that they agree).
  """
  scores = activations['fc8']
  b, gh, gw, k = scores.shape
  if background not in ('walk', 'complement'):
    raise ValueError(f"background must be 'walk' or 'complement', got {background!r}")
  # The complement's background is not walked (its walk would be discarded): one slot fewer.
  first = 1 if background == 'complement' else 0
  slots = k - first if max_classes is None else min(max_classes - first, k - first)
  if slots < 1:
    raise ValueError(f'max_classes={max_classes} leaves no class to walk '
                     f'(background={background!r})')
  if first == 0 and slots == k:
    classes = jnp.broadcast_to(jnp.arange(k), (b, k))
  else:
    # selected classes first (ties by index), then the others as padding
    rank = jnp.where(class_mask[:, first:] > 0, 0, k) + jnp.arange(first, k)[None, :]
    classes = jnp.argsort(rank, axis=-1)[:, :slots] + first
  t = classes.shape[1]
  if top_signal not in ('scores', 'exclusive'):
    raise ValueError(f"top_signal must be 'scores' or 'exclusive', got {top_signal!r}")
  seed = exclusive_scores(scores, class_mask) if top_signal == 'exclusive' else scores
  top = class_signal(seed, fcl_weights, classes)  # (B, T, h, w, K)
  solutions = {}

  def lateral_map(layer, name, a_in, p):
    """Eq. (3) on the spatial map below a conv / pooling layer, redistributed over channels."""
    if layer.kind not in ('conv', 'maxpool', 'avgpool'):
      return p
    if a_in.shape[1:3] != (gh, gw):
      raise ValueError(f'the lateral QP needs layers on the score grid; {name} is '
                       f'{a_in.shape[1:3]}, not {(gh, gw)}: stop at pool4 or above')
    gamma = jnp.sum(p, -1)  # (B, K, h, w)
    # (B, 1, h, w)
    alpha = feedforward_weight * jnp.sum(bilateral.feedforward_term(a_in), -1)[:, None]
    bvec = (gamma + alpha).reshape(b, t, gh * gw)
    sol = qp.solve_nonneg_qp(op, -bvec, tol=qp_tol, max_iters=qp_iters)
    x = sol.x.reshape(b, t, gh, gw)
    x = x / jnp.maximum(jnp.sum(x, (2, 3), keepdims=True), 1e-12)
    share = jnp.where(gamma[..., None] > 0, p / jnp.maximum(gamma[..., None], 1e-30),
                      1.0 / p.shape[-1])
    solutions[name] = (op, -bvec, sol)
    return x[..., None] * share

  if neighbors:
    base = bilateral.lateral_operator(images, radius, lateral, eps)
    # One operator per image, broadcast over the class axis of q.
    op = qp.BilateralOperator(base.weights[:, None], base.scale[:, None], base.diag[:, None],
                              base.rank_one[:, None], radius)
  p = excitation_backprop(params, activations, cfg, top, stop_at,
                          after_layer=lateral_map if neighbors else None)[stop_at]
  selected = jnp.take_along_axis(class_mask, classes, axis=1) > 0  # (B, T)
  converged = [jnp.sum(sol.converged & selected) for _, _, sol in solutions.values()]
  stats = {'qp_converged': sum(converged), 'qp_problems': len(solutions) * jnp.sum(selected)}
  spatial = jnp.sum(p, -1)  # (B, T, h, w)
  if t < k:
    spatial = jnp.einsum('bthw,btk->bkhw', spatial, jax.nn.one_hot(classes, k, dtype=spatial.dtype))
  up = jax.image.resize(jnp.moveaxis(spatial, 1, -1), (b,) + images.shape[1:3] + (k,), 'bilinear')
  up = jnp.maximum(up, 0.0) * class_mask[:, None, None, :].astype(up.dtype)
  if background == 'complement':
    # foreground maps scaled to peak 1; background = how far a pixel is from every fg peak
    peak = jnp.max(up[..., 1:], axis=(1, 2), keepdims=True)
    fg = up[..., 1:] / jnp.maximum(peak, 1e-12)
    bg = jnp.clip(1.0 - jnp.max(fg, -1, keepdims=True), 0.0, 1.0) ** bg_power
    up = jnp.concatenate([bg * class_mask[:, None, None, :1], fg], -1)
  total = jnp.sum(up, -1, keepdims=True)
  uniform = class_mask[:, None, None, :] / jnp.maximum(
      jnp.sum(class_mask, -1), 1)[:, None, None, None]
  p_a = jnp.where(total > 1e-12, up / jnp.maximum(total, 1e-12), uniform)
  out = (p_a,) + ((solutions,) if return_layers else ()) + ((stats,) if return_stats else ())
  return out if len(out) > 1 else p_a
