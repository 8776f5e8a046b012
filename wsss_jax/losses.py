"""Training losses (Sec. 6)."""
from __future__ import annotations

import jax
import jax.numpy as jnp


def classification_loss(logits: jax.Array, tags: jax.Array) -> jax.Array:
  """Delta^C of Eq. (14), per image: (N, K) logits, (N, K) multi-hot tags -> (N,).

  Mean of -log p(y|x) over present classes plus mean of -log(1 - p(y|x)) over
  absent ones, p = sigmoid(logits) in log-space for stability. A term whose
  class set is empty contributes 0 (no 0/0).
  """
  tags = tags.astype(logits.dtype)
  pos = -jax.nn.log_sigmoid(logits)   # -log p
  neg = -jax.nn.log_sigmoid(-logits)  # -log (1 - p)
  n_pos = jnp.sum(tags, axis=-1)
  n_neg = jnp.sum(1.0 - tags, axis=-1)
  return (jnp.sum(tags * pos, -1) / jnp.maximum(n_pos, 1.0)
          + jnp.sum((1.0 - tags) * neg, -1) / jnp.maximum(n_neg, 1.0))


def pixel_cross_entropy(logits: jax.Array, labels: jax.Array, ignore_label: int = 255) -> jax.Array:
  """Mean softmax cross-entropy over labelled pixels, per image: (N, H, W, K), (N, H, W) -> (N,).

  Used only by the fully supervised oracle; pixels equal to `ignore_label` are skipped.
  """
  valid = labels != ignore_label
  safe = jnp.where(valid, labels, 0)
  logp = jax.nn.log_softmax(logits, axis=-1)
  nll = -jnp.take_along_axis(logp, safe[..., None], axis=-1)[..., 0]
  return jnp.sum(nll * valid, axis=(1, 2)) / jnp.maximum(jnp.sum(valid, axis=(1, 2)), 1)


def segmentation_loss(attention: jax.Array, seg_probs: jax.Array, tags: jax.Array,
                      eps: float = 1e-6) -> jax.Array:
  """Delta^S of Eq. (15), per image: binary cross-entropy between the attention p^A (the
  target) and a segmentation's probabilities, over the N pixels and the |Y_x| present classes.

  attention, seg_probs: (B, H, W, K); tags: (B, K) multi-hot over all K classes (background
  included, as in Delta^C). Probabilities are clipped to [eps, 1 - eps] so exact 0/1 stay finite.
  """
  tags = tags.astype(seg_probs.dtype)
  s = jnp.clip(seg_probs, eps, 1.0 - eps)
  bce = attention * jnp.log(s) + (1.0 - attention) * jnp.log(1.0 - s)  # (B, H, W, K)
  per_class = jnp.mean(bce, axis=(1, 2))                                 # (B, K): 1/N sum_i
  return -jnp.sum(per_class * tags, -1) / jnp.maximum(jnp.sum(tags, -1), 1.0)
