"""Aggregation of pixel scores into image-level class scores (Sec. 3, Table 5).

The paper's FCL connects each class's score map {f_i(y)}_i to that class's
output unit only: s(y) = sum_i W_i(y) f_i(y) + c(y), p(y|x) = sigmoid(s(y)).
Its weights are per spatial position, so the score map has a fixed size
(41x41 for 321x321 inputs). GMP, GAP and LSE are the heuristic alternatives
compared in Table 5. Every head returns logits s (N, K); probabilities are
sigmoid(s).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

HEADS = ('fcl', 'gap', 'gmp', 'lse')


def init_fcl(map_size: tuple[int, int], num_classes: int) -> dict[str, jax.Array]:
  """FCL parameters, initialised to GAP (W = 1/N, c = 0) so training starts from the GAP baseline."""
  h, w = map_size
  return {'w': jnp.full((h, w, num_classes), 1.0 / (h * w), jnp.float32),
          'b': jnp.zeros((num_classes,), jnp.float32)}


def fcl(params: dict[str, jax.Array], scores: jax.Array) -> jax.Array:
  """Per-class fully connected layer: (N, h, w, K) -> (N, K)."""
  if scores.shape[1:] != params['w'].shape:
    raise ValueError(f'FCL expects score maps of shape {params["w"].shape} (h, w, K), '
                     f'got {scores.shape[1:]}: the FCL needs a fixed input size')
  return jnp.einsum('nhwk,hwk->nk', scores, params['w']) + params['b']


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
              lse_r: float = 5.0) -> jax.Array:
  """Image logits (N, K) from score maps (N, h, w, K) with the named head."""
  if head == 'fcl':
    return fcl(params, scores)
  if head == 'gap':
    return gap(scores)
  if head == 'gmp':
    return gmp(scores)
  if head == 'lse':
    return lse(scores, lse_r)
  raise ValueError(f'model.aggregation must be one of {HEADS}, got {head!r}')
