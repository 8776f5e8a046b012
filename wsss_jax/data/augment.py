"""Per-example augmentation in numpy + Pillow, driven by a `np.random.Generator` (DeepLab's recipe).

Training (`TrainAugment`): random scale s ~ U(scale_range) (image bilinear, mask
nearest), pad bottom/right to at least `crop_size` (image: the mean colour,
mask: 255 = ignore), a uniformly placed `crop_size` crop, and a horizontal flip
with probability 1/2. Evaluation (`pad_to`): pad bottom/right to a fixed bucket
size without resizing and record the original (h, w) in 'size'.

Images stay uint8 RGB: the model standardises them (`constants.PIXEL_MEAN/STD`), and the
BGR/Caffe-mean convention of the VGG weights belongs to the weight import. The pad colour is
the mean rounded (`constants.PAD_RGB`), so padding is ~0 after standardisation. Keys other than
'image' and 'mask' pass through unchanged.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import numpy as np
from PIL import Image, UnidentifiedImageError

from wsss_jax.constants import IGNORE_LABEL, PAD_RGB


class DataError(ValueError):
  """Data that cannot be used as configured, reported to the user as one line naming the file."""


def image_error(e: Exception) -> str:
  """Why Pillow could not decode an image read into memory. Its UnidentifiedImageError names
  the in-memory buffer (`<_io.BytesIO object at 0x...>`), not the file, so that one is said in
  words; the caller's message names the file."""
  if isinstance(e, UnidentifiedImageError):
    return 'not a format Pillow can identify'
  return f'{type(e).__name__}: {e}'


def _pair(size) -> tuple[int, int]:
  if np.isscalar(size):
    return int(size), int(size)
  h, w = size
  return int(h), int(w)


def rescale(example: Mapping[str, Any], factor: float) -> dict[str, Any]:
  """Resizes image (bilinear) and mask (nearest) by `factor`; sides are rounded, at least 1."""
  out = dict(example)
  h, w = example['image'].shape[:2]
  nh, nw = max(1, int(round(h * factor))), max(1, int(round(w * factor)))
  if (nh, nw) == (h, w):
    return out
  out['image'] = np.asarray(
      Image.fromarray(example['image']).resize((nw, nh), Image.Resampling.BILINEAR))
  if 'mask' in example:
    m = Image.fromarray(np.asarray(example['mask']).astype(np.uint8))  # labels are 0..20 and 255
    out['mask'] = np.asarray(m.resize((nw, nh), Image.Resampling.NEAREST)).astype(np.int32)
  return out


def pad_min(example: Mapping[str, Any], size) -> dict[str, Any]:
  """Pads bottom/right so the image is at least `size` = (h, w): mean colour, mask 255."""
  th, tw = _pair(size)
  h, w = example['image'].shape[:2]
  ph, pw = max(th - h, 0), max(tw - w, 0)
  out = dict(example)
  if ph or pw:
    img = np.empty((h + ph, w + pw, 3), np.uint8)
    img[...] = np.asarray(PAD_RGB, np.uint8)
    img[:h, :w] = example['image']
    out['image'] = img
    if 'mask' in example:
      mask = np.full((h + ph, w + pw), IGNORE_LABEL, np.int32)
      mask[:h, :w] = example['mask']
      out['mask'] = mask
  return out


def crop(example: Mapping[str, Any], top: int, left: int, size) -> dict[str, Any]:
  """The (h, w) = `size` window at (top, left) of image and mask."""
  ch, cw = _pair(size)
  out = dict(example)
  out['image'] = example['image'][top:top + ch, left:left + cw]
  if 'mask' in example:
    out['mask'] = example['mask'][top:top + ch, left:left + cw]
  return out


def hflip(example: Mapping[str, Any]) -> dict[str, Any]:
  out = dict(example)
  out['image'] = example['image'][:, ::-1]
  if 'mask' in example:
    out['mask'] = example['mask'][:, ::-1]
  return out


@dataclasses.dataclass(frozen=True)
class TrainAugment:
  """`(example, rng) -> example`: random scale, pad, random crop to `crop_size`, random flip.

  The draws (scale, crop offset, flip) are made in a fixed order whatever the
  settings, so an example's augmentation depends only on the generator's state.
  """
  crop_size: int | tuple[int, int] = 321
  scale_range: tuple[float, float] = (0.5, 1.5)
  flip: bool = True

  def __post_init__(self):
    lo, hi = self.scale_range
    if not 0 < lo <= hi:
      raise ValueError(f'scale_range must satisfy 0 < lo <= hi, got {self.scale_range}')
    if min(_pair(self.crop_size)) < 1:
      raise ValueError(f'crop_size must be positive, got {self.crop_size}')

  @classmethod
  def from_config(cls, cfg: Mapping[str, Any]) -> 'TrainAugment':
    """From a mapping with optional keys crop_size, scale_range, flip."""
    kw = {}
    if cfg.get('crop_size') is not None:
      c = cfg['crop_size']
      kw['crop_size'] = int(c) if np.isscalar(c) else tuple(int(v) for v in c)
    if cfg.get('scale_range') is not None:
      kw['scale_range'] = tuple(float(v) for v in cfg['scale_range'])
    if cfg.get('flip') is not None:
      kw['flip'] = bool(cfg['flip'])
    return cls(**kw)

  def __call__(self, example: Mapping[str, Any], rng: np.random.Generator) -> dict[str, Any]:
    size = _pair(self.crop_size)
    scale = rng.uniform(*self.scale_range)
    u = rng.random(3)  # crop top, crop left, flip
    ex = rescale(example, scale)
    ex = pad_min(ex, size)
    h, w = ex['image'].shape[:2]
    top, left = int(u[0] * (h - size[0] + 1)), int(u[1] * (w - size[1] + 1))
    ex = crop(ex, top, left, size)
    if self.flip and u[2] < 0.5:
      ex = hflip(ex)
    ex['image'] = np.ascontiguousarray(ex['image'])
    if 'mask' in ex:
      ex['mask'] = np.ascontiguousarray(ex['mask'], np.int32)
    return ex


def pad_to(example: Mapping[str, Any], size) -> dict[str, Any]:
  """Pads bottom/right to exactly `size` = (H, W) (mean colour, mask 255) and adds 'size' =
  int32 [h, w] of the original; an image larger than `size` is an error (never resized)."""
  th, tw = _pair(size)
  h, w = example['image'].shape[:2]
  if h > th or w > tw:
    raise ValueError(f'image of {h}x{w} does not fit the eval size {th}x{tw}; raise data.eval_size')
  out = pad_min(example, (th, tw))
  out['size'] = np.array([h, w], np.int32)
  return out
