"""A procedurally generated weakly supervised segmentation benchmark (no download).

Each example is ``{'image': uint8 (S, S, 3), 'tags': uint8 (C,), 'mask': int32 (S, S)}``
with mask 0 = background and 1..C = the foreground classes; tags are the
classes with at least `min_visible` visible pixels in the mask. Training
code reads `mask` only in the fully supervised oracle mode.

It is hard for weak supervision in the ways PASCAL VOC is:

* Every class is a large textured *body* plus a small saturated *part*.
  Classes come in families of two that share the body's shape, base colour
  and stripe period; within a family only the part's colour and the sign of
  the stripe contrast (light vs dark stripes) differ. The saturated part is
  the most discriminative cue, so a classifier latches onto it, while the
  body defines the true extent: the part alone covers a small fraction of
  the object (``example(i, parts=True)`` returns the part mask to measure it).
* 1..`max_objects` objects per image, scales in `scale_range`, random
  orientation, drawn in order so later objects occlude earlier ones.
* Backgrounds are textured noise fields with `clutter` random blobs; with
  probability `clutter_body_prob` a blob takes a body colour (a part-less
  distractor that only context tells from an object).
* Class a co-occurs with class (a + C//2) mod C with probability `cooccur_prob`
  (like person + bicycle).
* Object centres are uniform in the middle 70% of the image by default (so
  border cells hold objects a little less often than central ones);
  `center_bias` b in [0, 1) narrows that window to [0.15 + 0.35 b,
  0.85 - 0.35 b] of the image (a photographer's centre prior, as in VOC;
  clutter stays uniform).

Knobs (constructor arguments): `split` ('train' | 'val' | 'test' | 'tune', disjoint
random streams), `num_examples`, `image_size`, `num_classes` (2..8),
`seed` (one seed for the class definitions and all splits),
`max_objects`, `scale_range` (body diameter as a fraction of the image),
`part_scale` (part diameter as a fraction of the body's short axis),
`clutter` (max background blobs), `clutter_body_prob`, `cooccur_prob`,
`noise_std` (pixel noise), `min_visible`, `center_bias`.

Access is random by index and deterministic: example i depends only on
(seed, split, i). Generation is a few dozen vectorised numpy ops per image.
"""
from __future__ import annotations

import numpy as np

CLASS_NAMES = ('ant', 'bee', 'cat', 'dog', 'eel', 'fox', 'gnu', 'hen')
PART_COLOURS = np.array([[230, 30, 30], [30, 200, 40], [40, 70, 235], [240, 220, 20],
                         [220, 40, 220], [30, 220, 220], [250, 140, 10], [250, 250, 250]],
                        np.float32)
# Body families: base colour, stripe colour offset, stripe period (px at 64 px), superellipse
# exponent, aspect ratio.
FAMILIES = (
    ((150, 110, 70), (40, 30, 20), 6.0, 2, 0.55),
    ((90, 120, 150), (-35, -30, -25), 9.0, 4, 0.7),
    ((120, 140, 80), (30, 35, 25), 4.5, 1, 0.65),
    ((160, 130, 150), (-40, -40, -35), 7.5, 3, 0.5),
)
SPLITS = {'train': 0, 'val': 1, 'test': 2, 'tune': 3}


class SyntheticWSSS:
  """Random-access synthetic dataset; see the module docstring for the knobs."""

  def __init__(self, split: str = 'train', num_examples: int = 10000, *, image_size: int = 64,
               num_classes: int = 6, seed: int = 0, max_objects: int = 3,
               scale_range: tuple[float, float] = (0.35, 0.7), part_scale: float = 0.3,
               clutter: int = 4, clutter_body_prob: float = 0.3, cooccur_prob: float = 0.5,
               noise_std: float = 6.0, min_visible: int = 12, center_bias: float = 0.0):
    if split not in SPLITS:
      raise ValueError(f'split must be one of {sorted(SPLITS)}, got {split!r}')
    if not 2 <= num_classes <= len(CLASS_NAMES):
      raise ValueError(f'num_classes must be in [2, {len(CLASS_NAMES)}], got {num_classes}')
    if image_size < 16:
      raise ValueError(f'image_size must be >= 16, got {image_size}')
    if not 0.0 <= center_bias < 1.0:
      raise ValueError(f'center_bias must be in [0, 1), got {center_bias}')
    self.split, self.num_examples, self.size = split, int(num_examples), int(image_size)
    self.num_classes, self.seed = int(num_classes), int(seed)
    self.max_objects, self.scale_range, self.part_scale = int(max_objects), scale_range, part_scale
    self.clutter, self.clutter_body_prob = int(clutter), clutter_body_prob
    self.cooccur_prob, self.noise_std, self.min_visible = cooccur_prob, noise_std, int(min_visible)
    self.center_window = (0.15 + 0.35 * center_bias, 0.85 - 0.35 * center_bias)
    self.class_names = ('background',) + CLASS_NAMES[:num_classes]
    s = self.size
    self._yy, self._xx = np.mgrid[0:s, 0:s].astype(np.float32)
    bank_rng = np.random.default_rng([self.seed, 99])
    self._textures = self._make_textures(bank_rng, 8)
    # Pixel noise is cropped from one pre-drawn field: drawing it per image costs more than the
    # rest.
    self._noise = bank_rng.standard_normal((2 * s, 2 * s, 3), dtype=np.float32)

  def _make_textures(self, rng: np.random.Generator, n: int) -> np.ndarray:
    """Bank of n smooth-plus-fine noise fields (2S x 2S, zero mean, unit-ish scale)."""
    s2 = 2 * self.size
    out = np.empty((n, s2, s2), np.float32)
    for t in range(n):
      coarse = rng.normal(size=(s2 // 8 + 1, s2 // 8 + 1)).astype(np.float32)
      up = np.kron(coarse, np.ones((8, 8), np.float32))[:s2, :s2]
      k = np.ones(5, np.float32) / 5
      up = np.apply_along_axis(lambda r: np.convolve(r, k, 'same'), 0, up)
      up = np.apply_along_axis(lambda r: np.convolve(r, k, 'same'), 1, up)
      fine = rng.normal(size=(s2, s2)).astype(np.float32) * 0.35
      out[t] = up + fine
    return out

  def __len__(self) -> int:
    return self.num_examples

  @property
  def max_tags(self) -> int:
    """The most tags an image can have: one per object, at most one per class."""
    return min(self.max_objects, self.num_classes)

  def __getitem__(self, index: int) -> dict[str, np.ndarray]:
    return self.example(index)

  def _draws(self, index: int) -> '_Draws':
    rng = np.random.default_rng([self.seed, SPLITS[self.split], int(index)])
    n = self.clutter + self.max_objects
    return _Draws(rng.random(16 + 16 * n), rng.standard_normal(3 * n))

  def _object_classes(self, d: '_Draws') -> list[int]:
    n = d.integer(1, self.max_objects + 1)
    classes = [d.integer(1, self.num_classes + 1)]
    while len(classes) < n:
      if d.uniform(0, 1) < self.cooccur_prob:
        classes.append((classes[0] - 1 + self.num_classes // 2) % self.num_classes + 1)
      else:
        classes.append(d.integer(1, self.num_classes + 1))
    return classes

  def _shape_mask(self, cy, cx, a, b, theta, power):
    """Superellipse |u/a|^p + |v/b|^p <= 1 (integer p) in a frame rotated by theta.

    Returns the bounding-box slices and the boolean mask inside them, so each
    object costs work proportional to its area, not the image's.
    """
    r = max(a, b)
    y0, y1 = max(0, int(cy - r)), min(self.size, int(cy + r) + 2)
    x0, x1 = max(0, int(cx - r)), min(self.size, int(cx + r) + 2)
    box = (slice(y0, y1), slice(x0, x1))
    dy, dx = self._yy[box] - cy, self._xx[box] - cx
    c, s = np.cos(theta), np.sin(theta)
    tu, tv = np.abs((dx * c + dy * s) / a), np.abs((dy * c - dx * s) / b)
    pu, pv = tu, tv
    for _ in range(int(power) - 1):  # integer powers: repeated products are ~10x faster than pow
      pu, pv = pu * tu, pv * tv
    return box, pu + pv <= 1.0

  def example(self, index: int, parts: bool = False) -> dict[str, np.ndarray]:
    if not 0 <= index < self.num_examples:
      raise IndexError(f'index {index} out of range for {self.split} split of {self.num_examples}')
    d = self._draws(index)
    s = self.size
    # Background: a tinted crop of a noise texture plus a linear colour gradient.
    tex = self._textures[d.integer(0, len(self._textures))]
    oy, ox = d.integer(0, s), d.integer(0, s)
    field = tex[oy:oy + s, ox:ox + s]
    base = d.uniform(50, 200, 3)
    tint = d.uniform(-35, 35, 3)
    grad = d.uniform(-0.5, 0.5, 2)
    ramp = (grad[0] * (self._yy - s / 2) + grad[1] * (self._xx - s / 2))[..., None]
    img = base + field[..., None] * tint + ramp
    mask = np.zeros((s, s), np.int32)
    part_mask = np.zeros((s, s), np.int32)
    # Clutter: part-less blobs, some in body colours.
    for _ in range(d.integer(0, self.clutter + 1)):
      r = d.uniform(0.06, 0.2) * s
      box, m = self._shape_mask(*d.uniform(0, s, 2), r, r * d.uniform(0.4, 1),
                                d.uniform(0, np.pi), d.integer(1, 5))
      if d.uniform(0, 1) < self.clutter_body_prob:
        col = np.array(FAMILIES[d.integer(0, len(FAMILIES))][0], np.float32)
      else:
        col = d.uniform(20, 235, 3)
      img[box][m] = col + d.normal(8, 3)
    # Objects: striped body with a small part at one end of the major axis.
    for cls in self._object_classes(d):
      colour, stripe, period, power, aspect = FAMILIES[((cls - 1) // 2) % len(FAMILIES)]
      diam = d.uniform(*self.scale_range) * s
      a, b = diam / 2, diam / 2 * aspect * d.uniform(0.85, 1.15)
      lo, hi = self.center_window
      cy, cx = d.uniform(lo * s, hi * s, 2)
      theta = d.uniform(0, 2 * np.pi)
      box, body = self._shape_mask(cy, cx, a, b, theta, power)
      freq = 2 * np.pi / (period * s / 64)
      phase = (self._xx[box] * np.cos(theta + 1.0) + self._yy[box] * np.sin(theta + 1.0)) * freq
      on = np.sin(phase[body] + d.uniform(0, 2 * np.pi)) > 0
      col = np.array(colour, np.float32) + d.normal(10, 3)
      # light stripes for the first class of a family, dark for the second
      sign = 1.0 if cls % 2 else -1.0
      img[box][body] = col + on[:, None] * (sign * np.array(stripe, np.float32))
      mask[box][body] = cls
      part_mask[box][body] = 0
      pr = max(1.5, self.part_scale * b)
      off = a - 1.2 * pr
      pbox, part = self._shape_mask(cy + off * np.sin(theta), cx + off * np.cos(theta), pr, pr,
                                    0.0, 2)
      part &= mask[pbox] == cls
      img[pbox][part] = PART_COLOURS[cls - 1]
      part_mask[pbox][part] = cls
    ny, nx = d.integer(0, s), d.integer(0, s)
    img += self.noise_std * self._noise[ny:ny + s, nx:nx + s]
    counts = np.bincount(mask.ravel(), minlength=self.num_classes + 1)[1:]
    tags = (counts >= self.min_visible).astype(np.uint8)
    # Objects too occluded to count as present become background, so tags and mask agree.
    small = np.concatenate([[False], (counts > 0) & (tags == 0)])
    mask = np.where(small[mask], 0, mask)
    out = {'image': np.clip(img, 0, 255).astype(np.uint8), 'tags': tags, 'mask': mask}
    if parts:
      out['part_mask'] = np.where(small[part_mask], 0, part_mask)
    return out


class _Draws:
  """Consumes one pre-drawn block of uniforms and normals: one generator call per image instead
  of ~60."""

  def __init__(self, uniforms: np.ndarray, normals: np.ndarray):
    self._u, self._n, self._i, self._j = uniforms, normals, 0, 0

  def uniform(self, lo: float, hi: float, n: int | None = None):
    k = 1 if n is None else n
    u = self._u[self._i:self._i + k]
    self._i += k
    v = lo + (hi - lo) * u
    return float(v[0]) if n is None else v.astype(np.float32)

  def integer(self, lo: int, hi: int) -> int:
    return min(hi - 1, lo + int(self.uniform(0, hi - lo)))

  def normal(self, std: float, n: int) -> np.ndarray:
    v = self._n[self._j:self._j + n]
    self._j += n
    return (std * v).astype(np.float32)
