"""Aggregation of pixel scores into image-level class scores (Sec. 3, Table 5).

The paper's FCL connects each class's score map {f_i(y)}_i to that class's
output unit only: s(y) = sum_i W_i(y) f_i(y) + c(y), p(y|x) = sigmoid(s(y)).
Its weights are per spatial position, so the score map has a fixed size
(41x41 for 321x321 inputs). GMP, GAP and LSE are the heuristic alternatives
compared in Table 5. Every head returns logits s (N, K); probabilities are
sigmoid(s).

The paper gives the FCL no formula. `form='linear'` is the reading above, GAP at its init;
`form='lse'` puts the same per-position weights inside LSE's sum,
s(y) = (1/r) log((1/N) sum_i exp(W_i(y)) exp(r f_i(y))) + c(y), i.e. log-weights W, LSE at
its init (W = 0): a learned pooling that starts from the max-like heuristic instead of the
average (docs/DESIGN.md, "FCL form").
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

HEADS = ('fcl', 'gap', 'gmp', 'lse')
FCL_FORMS = ('linear', 'lse')


def _check_form(form: str) -> None:
  if form not in FCL_FORMS:
    raise ValueError(f'FCL form must be one of {FCL_FORMS}, got {form!r}')


def init_fcl(map_size: tuple[int, int], num_classes: int,
             form: str = 'linear') -> dict[str, jax.Array]:
  """FCL parameters at the heuristic head they generalise: GAP for 'linear' (W = 1/N),
  LSE for 'lse' (log-weights W = 0); c = 0."""
  h, w = map_size
  _check_form(form)
  w0 = 1.0 / (h * w) if form == 'linear' else 0.0
  return {'w': jnp.full((h, w, num_classes), w0, jnp.float32),
          'b': jnp.zeros((num_classes,), jnp.float32)}


def fcl(params: dict[str, jax.Array], scores: jax.Array, form: str = 'linear',
        r: float = 5.0) -> jax.Array:
  """Per-class fully connected layer: (N, h, w, K) -> (N, K); `r` is LSE's, for form 'lse'."""
  _check_form(form)
  if scores.shape[1:] != params['w'].shape:
    raise ValueError(f'FCL expects score maps of shape {params["w"].shape} (h, w, K), '
                     f'got {scores.shape[1:]}: the FCL needs a fixed input size')
  if form == 'lse':
    n = scores.shape[1] * scores.shape[2]
    z = (r * scores + params['w']).reshape(scores.shape[0], n, scores.shape[3])
    return (jax.nn.logsumexp(z, axis=1) - jnp.log(n)) / r + params['b']
  return jnp.einsum('nhwk,hwk->nk', scores, params['w']) + params['b']


def fcl_positional_weights(params: dict[str, jax.Array], form: str = 'linear') -> jax.Array:
  """The FCL's weight on each position of each class map, (h, w, K): what the top-down pass
  distributes a class unit's signal by (exp of the log-weights for form 'lse')."""
  return jnp.exp(params['w']) if form == 'lse' else params['w']


def gap(scores: jax.Array) -> jax.Array:
  return jnp.mean(scores, axis=(1, 2))


def gmp(scores: jax.Array) -> jax.Array:
  return jnp.max(scores, axis=(1, 2))


def lse(scores: jax.Array, r: float) -> jax.Array:
  """Log-sum-exp pooling (1/r) log(mean_i exp(r f_i)): GAP as r -> 0, GMP as r -> inf."""
  n = scores.shape[1] * scores.shape[2]
  flat = scores.reshape(scores.shape[0], n, scores.shape[3])
  return (jax.nn.logsumexp(r * flat, axis=1) - jnp.log(n)) / r


def aggregate(head: str, params: dict[str, jax.Array] | None, scores: jax.Array,
              lse_r: float = 5.0, fcl_form: str = 'linear') -> jax.Array:
  """Image logits (N, K) from score maps (N, h, w, K) with the named head."""
  if head == 'fcl':
    return fcl(params, scores, fcl_form, lse_r)
  if head == 'gap':
    return gap(scores)
  if head == 'gmp':
    return gmp(scores)
  if head == 'lse':
    return lse(scores, lse_r)
  raise ValueError(f'model.aggregation must be one of {HEADS}, got {head!r}')
