"""The segmentation model as pure functions: backbone -> pixel scores -> image scores (Fig. 1).

This is the bottom-up half of Fig. 1 (Sec. 3): DeepLab-LargeFOV pixel scores
f (Eq. 1) and an aggregation head giving the image-level logits used by
Delta^C (Eq. 14). Class 0 is background; it is treated as a class present in
every image, as in the paper's K = 21 VOC classes.
"""
from __future__ import annotations

from typing import Any, Mapping

import jax
import jax.numpy as jnp

from wsss_jax import aggregation, backbone

# ImageNet RGB mean and std on the 0..255 scale.
PIXEL_MEAN = jnp.array([123.68, 116.78, 103.94], jnp.float32)
PIXEL_STD = jnp.array([58.4, 57.1, 57.4], jnp.float32)


def backbone_config(config: Mapping[str, Any]) -> backbone.BackboneConfig:
  return backbone.BackboneConfig.from_config(
      dict(config['model']['backbone'], num_classes=config['data']['num_classes'] + 1))


def score_map_size(config: Mapping[str, Any]) -> tuple[int, int]:
  s = backbone.output_size(config['data']['image_size'])
  return (s, s)


def init_params(key: jax.Array, config: Mapping[str, Any]) -> dict[str, Any]:
  """Parameter pytree {'backbone': ..., 'fcl': ...} (fcl only with the FCL head)."""
  bcfg = backbone_config(config)
  params = {'backbone': backbone.init_params(key, bcfg)}
  if config['model']['aggregation'] == 'fcl':
    params['fcl'] = aggregation.init_fcl(score_map_size(config), bcfg.num_classes)
  return params


def preprocess(images: jax.Array) -> jax.Array:
  """uint8 (N, H, W, 3) -> standardised float32."""
  return (images.astype(jnp.float32) - PIXEL_MEAN) / PIXEL_STD


def forward(params: Mapping[str, Any], images: jax.Array, config: Mapping[str, Any], *,
            train: bool, rng: jax.Array | None = None) -> dict[str, jax.Array]:
  """Pixel scores f (N, h, w, K) and image logits (N, K) for uint8 images."""
  mcfg = config['model']
  scores = backbone.apply(params['backbone'], preprocess(images), cfg=backbone_config(config),
                          train=train, rng=rng)
  agg_in = jax.nn.log_softmax(scores, -1) if mcfg['aggregate_input'] == 'log_softmax' else scores
  logits = aggregation.aggregate(mcfg['aggregation'], params.get('fcl'), agg_in, mcfg['lse_r'])
  return {'scores': scores, 'image_logits': logits}


def tags_with_background(tags: jax.Array) -> jax.Array:
  """(N, C) foreground tags -> (N, K = C + 1) with background (class 0) present in every image."""
  return jnp.concatenate([jnp.ones_like(tags[:, :1]), tags], -1)


def upsample(scores: jax.Array, size: tuple[int, int]) -> jax.Array:
  """Bilinear upsampling of score maps to the image size."""
  n, _, _, k = scores.shape
  return jax.image.resize(scores, (n, size[0], size[1], k), 'bilinear')


def predict(params, images, config) -> jax.Array:
  """Label map (N, H, W): argmax over background and classes of the upsampled scores."""
  out = forward(params, images, config, train=False)
  return jnp.argmax(upsample(out['scores'], images.shape[1:3]), -1)
