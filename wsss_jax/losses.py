"""Training losses (Sec. 6): Delta^C (Eq. 14), Delta^S (Eq. 15), the pixel cross-entropy of the
fully supervised bound, and their sum of Eq. (13) on the model's outputs (`training_loss`)."""
from __future__ import annotations

import jax
import jax.numpy as jnp

from wsss_jax import model
from wsss_jax.constants import IGNORE_LABEL


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


def pixel_cross_entropy(logits: jax.Array, labels: jax.Array,
                        ignore_label: int = IGNORE_LABEL) -> jax.Array:
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


def training_loss(params, batch, rng, config):
  """The training loss of the configured mode on one batch (Sec. 6), for `jax.value_and_grad`
  with `has_aux`: returns (loss, (terms, telemetry)).

  Weakly supervised: Delta = Delta^C + lambda Delta^S (Eq. 13), with background present in every
  image; terms {'cls_loss', 'seg_loss'}. Fully supervised (the upper bound): pixel cross-entropy
  on the masks; terms {'seg_loss'}. Telemetry holds what is measured along the way without being
  part of the loss: 'lattice_fill', the largest (rows needed / capacity) of the CRF-RNN mean
  fields this step computes, and 'qp_converged', the share of the attention's QPs that met their
  tolerance (with the lateral term).
  """
  if config.train.mode == 'fully_supervised':
    out = model.forward(params, batch['image'], config, train=True, rng=rng)
    logits = model.upsample(out['scores'], batch['image'].shape[1:3])
    loss = jnp.mean(pixel_cross_entropy(logits, batch['mask']))
    return loss, ({'seg_loss': loss}, {})
  tags = model.tags_with_background(batch['tags'])
  out = model.segment(params, batch['image'], config, tags, train=True, rng=rng)
  image_logits = out['image_logits']
  if config.model.cls_from == 'crf':
    image_logits = model.image_logits(
        params, model.downsample(out['crf_logits'], out['scores'].shape[1:3]), config)
  cls_loss = jnp.mean(classification_loss(image_logits, tags))
  terms, telemetry = {'cls_loss': cls_loss}, {}
  loss = cls_loss
  lam = config.train.seg_loss_weight
  crf_used = config.model.cls_from == 'crf'
  fills = []  # rows needed / capacity of the CRF mean fields this step computes (not an unused one)
  cap = config.model.crf.lattice_capacity
  if 'attention' in out and lam:
    crf_used |= config.train.seg_loss_on == 'crf' and 'crf_probs' in out
    seg = out['crf_probs'] if crf_used else out['p_s']  # (cls_from = 'crf' puts Delta^S there too)
    target = out['attention']
    if config.train.seg_target == 'crf':  # p^A snapped to image edges by the CRF-RNN's mean field
      stride = int(config.train.seg_target_stride)
      target, size = model.refine_attention(params, batch['image'], out['attention'], config,
                                            stride)
      if cap:
        fills.append(size / model.target_lattice_capacity(config, stride,
                                                          batch['image'].shape[1:3]))
    seg_loss = jnp.mean(segmentation_loss(target, seg, tags))
    terms['seg_loss'] = seg_loss
    loss = loss + lam * seg_loss
  if crf_used and cap:
    fills.append(out['lattice_size'] / cap)
  if fills:
    telemetry['lattice_fill'] = jnp.max(jnp.stack(fills)).astype(jnp.float32)
  if 'qp_problems' in out:  # share of the attention QPs that met model.attention.qp_tol
    telemetry['qp_converged'] = (out['qp_converged'] / jnp.maximum(out['qp_problems'], 1)
                                 ).astype(jnp.float32)
  return loss, (terms, telemetry)
