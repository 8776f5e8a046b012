"""The segmentation model as pure functions (Fig. 1).

Bottom-up (Sec. 3): DeepLab-LargeFOV pixel scores f and p^S (Eq. 1), aggregated by
a head into the image logits of Delta^C (Eq. 14). Top-down (Sec. 4): attention p^A
(Eqs. 2-9) seeded at the FCL output. Fusion (Sec. 5): the CRF-RNN with unary
-log(p^S p^A) (Eq. 11). Class 0 is background; it is treated as a class present in
every image, as in the paper's K = 21 VOC classes.
"""
from __future__ import annotations

from typing import Any, Mapping

import jax
import jax.numpy as jnp

from wsss_jax import aggregation, attention, backbone, crf
from wsss_jax.constants import PIXEL_MEAN, PIXEL_STD


def backbone_config(config: Mapping[str, Any]) -> backbone.BackboneConfig:
  return backbone.BackboneConfig.from_config(
      dict(config['model']['backbone'], num_classes=config['data']['num_classes'] + 1))


def score_map_size(config: Mapping[str, Any]) -> tuple[int, int]:
  s = backbone.output_size(config['data']['image_size'])
  return (s, s)


def init_params(key: jax.Array, config: Mapping[str, Any]) -> dict[str, Any]:
  """Parameter pytree {'backbone', 'fcl' (FCL head only), 'crf' (CRF-RNN only)}."""
  bcfg = backbone_config(config)
  params = {'backbone': backbone.init_params(key, bcfg)}
  if config['model']['aggregation'] == 'fcl':
    params['fcl'] = aggregation.init_fcl(score_map_size(config), bcfg.num_classes,
                                         config['model']['fcl_form'])
  if config['model']['crf']['enabled']:
    params['crf'] = crf.init_params(bcfg.num_classes)
  return params


def preprocess(images: jax.Array) -> jax.Array:
  """uint8 (N, H, W, 3) -> standardised float32."""
  return (images.astype(jnp.float32) - PIXEL_MEAN) / PIXEL_STD


def forward(params: Mapping[str, Any], images: jax.Array, config: Mapping[str, Any], *,
            train: bool, rng: jax.Array | None = None) -> dict[str, jax.Array]:
  """Pixel scores f (N, h, w, K) and image logits (N, K) (and p^S) for uint8 images: the
  bottom-up pass without the activations (unused outputs cost nothing under jit)."""
  return bottom_up(params, images, config, train=train, rng=rng)[0]


def tags_with_background(tags: jax.Array) -> jax.Array:
  """(N, C) foreground tags -> (N, K = C + 1) with background (class 0) present in every image."""
  return jnp.concatenate([jnp.ones_like(tags[:, :1]), tags], -1)


def upsample(scores: jax.Array, size: tuple[int, int]) -> jax.Array:
  """Bilinear upsampling of score maps to the image size."""
  n, _, _, k = scores.shape
  return jax.image.resize(scores, (n, size[0], size[1], k), 'bilinear')


# ---------------------------------------------------------------------------------------------
# The full method: bottom-up + top-down + CRF-RNN (Fig. 1).

def crf_kernels(config: Mapping[str, Any]) -> tuple[crf.Kernel, ...]:
  """The CRF-RNN's fixed kernels. Eq. (8) writes exp(-|dz|^2/sigma_z^2 - |dr|^2/sigma_r^2);
  in the lattice's exp(-|df|^2/2) form that is sxy = sigma_z/sqrt(2), srgb = sigma_r/sqrt(2)."""
  c = config['model']['crf']
  kernels = [crf.Kernel(c['sigma_z'] / 2 ** 0.5, c['sigma_r'] / 2 ** 0.5, c['bilateral_weight'])]
  if c['spatial_weight']:
    kernels.append(crf.Kernel(c['spatial_sxy'], None, c['spatial_weight']))
  return tuple(kernels)


def attention_map(params, activations, images, class_mask, config):
  """p^A (B, H, W, K) for the classes in class_mask, from one forward pass's activations, and
  the QP statistics {'qp_converged', 'qp_problems'} (attention.attention_maps)."""
  a = config['model']['attention']
  fcl = params.get('fcl')
  fcl_w = None if fcl is None else aggregation.fcl_positional_weights(
      fcl, config['model']['fcl_form'])
  grid = activations['fc8'].shape[1:3]
  # inference on a larger image (see image_logits)
  if fcl_w is not None and fcl_w.shape[:2] != grid:
    fcl_w = jax.image.resize(fcl_w, grid + fcl_w.shape[2:], 'linear')
  return attention.attention_maps(
      params['backbone'], activations, backbone_config(config), images, fcl_w, class_mask,
      neighbors=a['neighbors'], lateral=a['lateral'],
      eps=a['eps'], radius=a['radius'], qp_tol=a['qp_tol'], qp_iters=a['qp_iters'],
      stop_at=a['stop_at'], max_classes=a['max_classes'] or None, background=a['background'],
      bg_power=a['bg_power'], feedforward_weight=a['feedforward_weight'],
      top_signal=a['top_signal'],
      return_stats=True)


def image_logits(params: Mapping[str, Any], scores: jax.Array,
                 config: Mapping[str, Any]) -> jax.Array:
  """The aggregation head on score maps (B, h, w, K) -> image logits (B, K)."""
  m = config['model']
  agg_in = jax.nn.log_softmax(scores, -1) if m['aggregate_input'] == 'log_softmax' else scores
  if m['aggregation'] == 'fcl' and agg_in.shape[1:3] != params['fcl']['w'].shape[:2]:
    # The FCL has a weight per position of the training crop's score grid; a larger image
    # at inference (VOC val at full size) is classified from its scores resized to that grid.
    agg_in = downsample(agg_in, params['fcl']['w'].shape[:2])
  return aggregation.aggregate(m['aggregation'], params.get('fcl'), agg_in, m['lse_r'],
                               m['fcl_form'])


def downsample(maps: jax.Array, size: tuple[int, int]) -> jax.Array:
  """Area-averaging resize of (B, H, W, K) maps to the score grid (for cls_from = 'crf')."""
  n, _, _, k = maps.shape
  return jax.image.resize(maps, (n, size[0], size[1], k), 'linear', antialias=True)


def bottom_up(params, images, config, *, train: bool, rng=None):
  """Scores f, image logits and p^S (Eq. 1, at image resolution), plus the activations the
  top-down pass walks."""
  scores, acts = backbone.apply(params['backbone'], preprocess(images), cfg=backbone_config(config),
                                train=train, rng=rng, return_activations=True)
  out = {'scores': scores, 'image_logits': image_logits(params, scores, config),
         'p_s': jax.nn.softmax(upsample(scores, images.shape[1:3]), -1)}
  return out, acts


def refine(params, images, out, acts, class_mask, config, *, attention_unary: bool | None = None):
  """Adds 'attention' p^A (for the classes of class_mask) and the CRF-RNN's 'crf_logits' /
  'crf_probs' to a bottom-up result, as the config enables them."""
  m = config['model']
  out = dict(out)
  p_a = None
  if m['attention']['enabled'] and class_mask is not None:
    p_a, stats = attention_map(params, acts, images, class_mask, config)
    if m['attention']['gradient'] == 'stop':
      p_a = jax.lax.stop_gradient(p_a)
    out['attention'] = p_a
    if m['attention']['neighbors']:
      out.update(stats)
  if m['crf']['enabled']:
    use_att = m['crf']['attention_unary'] if attention_unary is None else attention_unary
    logits, probs, size = crf.crf_rnn(
        params['crf'], out['p_s'], images.astype(jnp.float32), p_a if use_att else None,
        kernels=crf_kernels(config), iters=m['crf']['iters'],
        capacity=m['crf']['lattice_capacity'] or None, return_lattice_size=True)
    out['crf_logits'], out['crf_probs'], out['lattice_size'] = logits, probs, size
  return out


def target_lattice_capacity(config: Mapping[str, Any], stride: int,
                            size: tuple[int, int]) -> int | None:
  """Lattice rows per image of `refine_attention` at `stride` on images of `size`:
  model.crf.lattice_capacity / stride (the rows a 64 px synthetic image needs fall about 2x per
  2x stride), at most the worst case N (d + 1); None (the worst case) when lattice_capacity is 0
  at stride 1."""
  cap = config['model']['crf']['lattice_capacity']
  if stride == 1:
    return cap or None
  h, w = size
  # the RGB bilateral lattice: d + 1 = 6 vertices per point
  worst = (h // stride) * (w // stride) * 6
  return min(worst, cap // stride) if cap else worst


def refine_attention(params, images, p_a, config, stride: int = 1):
  """p^A refined by the CRF-RNN's mean field alone (unary -log p^A, no p^S), as a fixed target
  (train.seg_target = 'crf'; not in the paper). With `stride` > 1 the mean field runs on the
  image and p^A area-averaged over stride x stride blocks (spatial kernel width / stride, lattice
  capacity `target_lattice_capacity`) and its output is upsampled bilinearly: the CNN's
  scores live on a stride-8 grid, and the lattice cost falls with the pixel count.
  Returns (probs, largest lattice size)."""
  c = config['model']['crf']
  b, h, w, k = p_a.shape
  kernels = crf_kernels(config)
  capacity = target_lattice_capacity(config, stride, (h, w))
  if stride > 1:
    if h % stride or w % stride:
      raise ValueError(f'train.seg_target_stride={stride} does not divide the image size {(h, w)}')
    hs, ws = h // stride, w // stride
    images = images.astype(jnp.float32).reshape(b, hs, stride, ws, stride, -1).mean((2, 4))
    p_a = p_a.reshape(b, hs, stride, ws, stride, k).mean((2, 4))
    kernels = tuple(kern._replace(sxy=kern.sxy / stride) for kern in kernels)
  flat = jnp.full_like(p_a, 1.0 / k)
  _, probs, size = crf.crf_rnn(
      params['crf'], flat, images.astype(jnp.float32), p_a, kernels=kernels,
      iters=c['iters'], capacity=capacity, return_lattice_size=True)
  if stride > 1:
    probs = jax.image.resize(probs, (b, h, w, k), 'bilinear')
  return jax.lax.stop_gradient(probs), size


def segment(params: Mapping[str, Any], images: jax.Array, config: Mapping[str, Any],
            class_mask: jax.Array | None, *, train: bool, rng: jax.Array | None = None,
            attention_unary: bool | None = None) -> dict[str, jax.Array]:
  """One pass of Fig. 1 for uint8 images (B, H, W, 3).

  Returns 'scores' f, 'image_logits' (Delta^C's input, from the CNN scores), 'p_s' (Eq. 1 at
  image resolution), and, when enabled in the config, 'attention' p^A for the classes of
  `class_mask` (B, K) (tags + background in training, predicted classes at inference) and the
  CRF-RNN's 'crf_logits' / 'crf_probs' with unary -log(p^S p^A) (Eq. 11), or -log p^S when
  `attention_unary` is False (B3 in training, B6 at inference). p^A is a target, so no gradient
  flows into it unless model.attention.gradient = 'through'.
  """
  out, acts = bottom_up(params, images, config, train=train, rng=rng)
  if train and not config['model']['attention']['walk_dropout']:
    # the top-down walk of the inference-mode network, as at test time (no dropout masks)
    acts = backbone.inference_activations(params['backbone'], acts, backbone_config(config))
  return refine(params, images, out, acts, class_mask, config, attention_unary=attention_unary)


def _multiscale_p_s(params, images, config, p_s):
  """p^S averaged over config.eval.scales and (with eval.flip) horizontal flips."""
  views = []
  h, w = images.shape[1:3]
  for scale in config['eval']['scales']:
    for flip in ((False, True) if config['eval']['flip'] else (False,)):
      if float(scale) == 1.0 and not flip:
        views.append(p_s)
        continue
      size = (max(8, round(h * float(scale))), max(8, round(w * float(scale))))
      im = jax.image.resize(images.astype(jnp.float32), (images.shape[0],) + size + (3,),
                            'bilinear')
      im = im[:, :, ::-1] if flip else im
      scores = backbone.apply(params['backbone'], preprocess(im), cfg=backbone_config(config),
                              train=False)
      scores = scores[:, :, ::-1] if flip else scores
      views.append(jax.nn.softmax(upsample(scores, (h, w)), -1))
  return sum(views) / len(views)


def infer(params: Mapping[str, Any], images: jax.Array,
          config: Mapping[str, Any]) -> dict[str, jax.Array]:
  """Inference without tags (Sec. 7): classes predicted from the image scores
  (eval.class_threshold), attention for them (unless eval.attention is False: B6), CRF-RNN,
  optional dense-CRF post-processing (eval.dense_crf: B5) and multi-scale/flip averaging of p^S.
  Returns label maps 'final', 'cnn' (argmax p^S) and, with attention, 'attention' (argmax p^A)
  and 'attention_probs' (p^A itself, zero for the classes not predicted);
  when the CRF-RNN ran, also 'lattice_size': the lattice rows its largest image needed (more than
  model.crf.lattice_capacity means lattice points were dropped); with the lateral QP, also
  'qp_converged' / 'qp_problems' (attention.attention_maps)."""
  e = config['eval']
  out, acts = bottom_up(params, images, config, train=False)
  if len(e['scales']) > 1 or e['flip'] or float(e['scales'][0]) != 1.0:
    out['p_s'] = _multiscale_p_s(params, images, config, out['p_s'])
  use_att = bool(e['attention']) and config['model']['attention']['enabled']
  mask = predicted_classes(out['image_logits'], e['class_threshold'], max_foreground(config))
  out = refine(params, images, out, acts, mask if use_att else None, config,
               attention_unary=use_att and config['model']['crf']['attention_unary'])
  probs = out.get('crf_probs', out['p_s'])
  if e['dense_crf']['enabled']:
    unary = out['p_s'] * out['attention'] if 'attention' in out else out['p_s']
    unary = unary / jnp.maximum(jnp.sum(unary, -1, keepdims=True), 1e-12)
    d = e['dense_crf']
    probs = crf.dense_crf(unary, jnp.clip(images, 0, 255), iters=d['iters'],
                          gaussian_sxy=d['gaussian_sxy'], gaussian_compat=d['gaussian_compat'],
                          bilateral_sxy=d['bilateral_sxy'], bilateral_srgb=d['bilateral_srgb'],
                          bilateral_compat=d['bilateral_compat'])
  pred = {'final': jnp.argmax(probs, -1), 'cnn': jnp.argmax(out['p_s'], -1)}
  if 'attention' in out:
    pred['attention'] = jnp.argmax(out['attention'], -1)
    pred['attention_probs'] = out['attention']
  for key in ('lattice_size', 'qp_converged', 'qp_problems'):
    if key in out:
      pred[key] = out[key]
  return pred


def predicted_classes(image_logits: jax.Array, threshold: float,
                      max_foreground: int | None = None) -> jax.Array:
  """(B, K) class mask at inference: foreground classes with sigmoid score > threshold (at most
  the `max_foreground` best-scoring ones: the walk's static class bound), and background always
  (an image with no confident class falls back to background only)."""
  scores = jax.nn.sigmoid(image_logits)
  mask = scores > threshold
  fg = scores.shape[-1] - 1
  if max_foreground is not None and max_foreground < fg:
    best = jax.lax.top_k(scores[:, 1:], max_foreground)[1] + 1  # (B, max_foreground)
    mask = mask & (jnp.sum(jax.nn.one_hot(best, fg + 1, dtype=jnp.int32), 1) > 0)
  return mask.at[:, 0].set(True).astype(jnp.float32)


def max_foreground(config: Mapping[str, Any]) -> int | None:
  """Foreground classes the attention walks per image: model.attention.max_classes less the
  background's slot. None (every class) for 0, the data's bound, until the trainer or the
  evaluation resolves it from the dataset (`config_lib.with_class_bound`)."""
  bound = config['model']['attention']['max_classes']
  return int(bound) - 1 if bound else None
