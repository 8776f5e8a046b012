"""A tiny fake PASCAL VOC 2012 + SBD tree in the real file formats, for tests and smoke runs.

`make_fake_voc(root)` writes `root/VOCdevkit/VOC2012/` (JPEG images, palette PNG
masks with 255 boundary bands, XML annotations, ImageSets/Segmentation lists)
and either `root/benchmark_RELEASE/dataset/` (SBD: `cls/*.mat` with the `GTcls`
struct, `img/*.jpg`, train/val lists) or a `SegmentationClassAug/` folder of
grayscale index PNGs, or both. It returns a `FakeVOC` record of what it wrote,
so tests can compare against it. Images have varied sizes (some smaller than a
typical crop, most non-square) and show 1..3 rectangles/ellipses of a handful
of classes on a smooth background; `n_empty` training images are all background.

The lists mimic the real overlaps: SBD train/val contain VOC train images and
VOC val images (which train_aug must drop) plus `n_sbd_extra` SBD-only images;
the last SBD-only image exists only in SBD `img/` when `sbd=True`.

CLI: `python -m wsss_jax.data.fake_voc --root=/tmp/fake_voc [--aug_png] [--no_sbd]`.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
from typing import Sequence
from xml.sax.saxutils import escape

import numpy as np
from PIL import Image

from wsss_jax.constants import IGNORE_LABEL
from wsss_jax.data.voc_files import CLASS_NAMES, NUM_CLASSES, PALETTE

# Relative (height, width) of successive images: square, wide, tall, and two smaller than a 48 px
# crop.
SIZE_FACTORS = ((1.0, 1.0), (0.8, 1.25), (1.3, 0.75), (0.4, 0.5), (1.1, 1.6), (0.7, 0.45),
                (1.0, 0.8))
DEFAULT_CLASSES = (1, 8, 12, 15, 20)  # aeroplane, cat, dog, person, tvmonitor


@dataclasses.dataclass
class FakeVOC:
  """What `make_fake_voc` wrote. Masks are the exact arrays stored in the files."""
  root: str
  voc_train: list[str]
  voc_val: list[str]
  test: list[str]
  sbd_train: list[str]
  sbd_val: list[str]
  aug_names: list[str]  # images with a PNG in SegmentationClassAug (empty without aug_png)
  voc_masks: dict[str, np.ndarray]  # SegmentationClass (with 255 boundaries)
  sbd_masks: dict[str, np.ndarray]  # SBD .mat / SegmentationClassAug PNG (no boundaries)
  tags: dict[str, np.ndarray]  # (20,) multi-hot of the objects in the XML (= classes drawn
                               # and visible)
  sizes: dict[str, tuple[int, int]]  # (height, width)
  class_colours: dict[int, tuple[int, int, int]]
  aug_dir: str | None


def _draw(rng: np.random.Generator, h: int, w: int, n_objects: int, classes: Sequence[int],
          colours: dict[int, np.ndarray]):
  """Image, label map and object list ((class, box, difficult, truncated), ...) of one picture."""
  yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
  base = rng.uniform(60, 190, 3)
  slope = rng.uniform(-40, 40, (2, 3))
  img = base + (yy / h)[..., None] * slope[0] + (xx / w)[..., None] * slope[1]
  img += rng.normal(0, 3, img.shape)
  label = np.zeros((h, w), np.int32)
  objects = []
  for k in range(n_objects):
    cls = int(rng.choice(classes))
    bh, bw = int(rng.uniform(0.3, 0.6) * h) + 4, int(rng.uniform(0.3, 0.6) * w) + 4
    y0, x0 = int(rng.integers(0, max(1, h - bh + 1))), int(rng.integers(0, max(1, w - bw + 1)))
    y1, x1 = min(h, y0 + bh), min(w, x0 + bw)
    if rng.random() < 0.5:
      inside = (yy >= y0) & (yy < y1) & (xx >= x0) & (xx < x1)
    else:
      cy, cx, ry, rx = (y0 + y1 - 1) / 2, (x0 + x1 - 1) / 2, (y1 - y0) / 2, (x1 - x0) / 2
      inside = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1
    img[inside] = colours[cls] + rng.normal(0, 3, (int(inside.sum()), 3))
    label[inside] = cls
    objects.append((cls, (x0 + 1, y0 + 1, x1, y1), int(k == 0), int(k == 1)))
  visible = set(np.unique(label).tolist()) - {0}
  objects = [o for o in objects if o[0] in visible]
  return np.clip(img, 0, 255).astype(np.uint8), label, objects


def _with_boundary(label: np.ndarray) -> np.ndarray:
  """VOC-style mask: pixels whose 4-neighbourhood holds another label become 255."""
  edge = np.zeros(label.shape, bool)
  edge[1:] |= label[1:] != label[:-1]
  edge[:-1] |= label[:-1] != label[1:]
  edge[:, 1:] |= label[:, 1:] != label[:, :-1]
  edge[:, :-1] |= label[:, :-1] != label[:, 1:]
  return np.where(edge, IGNORE_LABEL, label).astype(np.int32)


def _save_palette_png(path: str, label: np.ndarray) -> None:
  img = Image.frombytes('P', (label.shape[1], label.shape[0]), label.astype(np.uint8).tobytes())
  img.putpalette(PALETTE.tobytes())
  img.save(path)


def _xml(name: str, h: int, w: int, objects) -> str:
  objs = ''.join(
      f'<object><name>{CLASS_NAMES[c]}</name><pose>Unspecified</pose><truncated>{t}</truncated>'
      f'<difficult>{d}</difficult><bndbox><xmin>{b[0]}</xmin><ymin>{b[1]}</ymin><xmax>{b[2]}</xmax>'
      f'<ymax>{b[3]}</ymax></bndbox></object>' for c, b, d, t in objects)
  return (f'<annotation><folder>VOC2012</folder><filename>{escape(name)}.jpg</filename>'
          f'<size><width>{w}</width><height>{h}</height><depth>3</depth></size>'
          f'<segmented>{int(bool(objects))}</segmented>{objs}</annotation>\n')


def _write_list(path: str, names: Sequence[str]) -> None:
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, 'w') as f:
    f.write(''.join(n + '\n' for n in names))


def make_fake_voc(root: str | os.PathLike, *, n_train: int = 4, n_val: int = 3, n_test: int = 2,
                  n_sbd_extra: int = 3, n_empty: int = 1, sbd: bool = True, aug_png: bool = False,
                  aug_location: str = 'voc2012', seed: int = 0, size: tuple[int, int] = (60, 80),
                  classes: Sequence[int] = DEFAULT_CLASSES, jpeg_quality: int = 95) -> FakeVOC:
  """Writes the fake tree under `root` (see the module docstring) and returns what it wrote.

  `aug_location` puts SegmentationClassAug inside VOC2012/ ('voc2012'), next to it
  ('vocdevkit') or in `root` ('root'). The last `n_empty` train images have no objects.
  """
  if not (sbd or aug_png):
    raise ValueError('need sbd=True or aug_png=True: train_aug needs SBD or SegmentationClassAug')
  if n_train < 2 or n_val < 2:
    raise ValueError('need n_train >= 2 and n_val >= 2 for the SBD/VOC list overlaps')
  if not all(1 <= c <= NUM_CLASSES for c in classes):
    raise ValueError(f'classes must be in 1..{NUM_CLASSES}, got {classes}')
  root = os.path.abspath(os.fspath(root))
  rng = np.random.default_rng(seed)
  voc = os.path.join(root, 'VOCdevkit', 'VOC2012')
  for sub in ('JPEGImages', 'SegmentationClass', 'Annotations', 'ImageSets/Segmentation'):
    os.makedirs(os.path.join(voc, sub), exist_ok=True)
  sbd_dir = os.path.join(root, 'benchmark_RELEASE', 'dataset')
  if sbd:
    for sub in ('cls', 'img'):
      os.makedirs(os.path.join(sbd_dir, sub), exist_ok=True)
  aug_dir = None
  if aug_png:
    aug_dir = {'voc2012': os.path.join(voc, 'SegmentationClassAug'),
               'vocdevkit': os.path.join(root, 'VOCdevkit', 'SegmentationClassAug'),
               'root': os.path.join(root, 'SegmentationClassAug')}[aug_location]
    os.makedirs(aug_dir, exist_ok=True)

  total = n_train + n_val + n_test + n_sbd_extra
  names = [f'{2007 + k % 5}_{100 + 7 * k:06d}' for k in range(total)]
  order = rng.permutation(total)  # list membership independent of sorted order
  names = [names[i] for i in order]
  voc_train = sorted(names[:n_train])
  voc_val = sorted(names[n_train:n_train + n_val])
  test = sorted(names[n_train + n_val:n_train + n_val + n_test])
  extra = sorted(names[n_train + n_val + n_test:])
  half = (len(extra) + 1) // 2
  sbd_train = sorted(extra[:half] + [voc_train[0], voc_val[0]])
  sbd_val = sorted(extra[half:] + [voc_train[1], voc_val[1]])
  empty = set(voc_train[-n_empty:]) if n_empty else set()

  colours = {c: np.array(PALETTE[c], np.float32) * 0.6 + rng.uniform(20, 80, 3) for c in classes}
  out = FakeVOC(root=root, voc_train=voc_train, voc_val=voc_val, test=test,
                sbd_train=sbd_train if sbd else [], sbd_val=sbd_val if sbd else [], aug_names=[],
                voc_masks={}, sbd_masks={}, tags={}, sizes={},
                class_colours={c: tuple(int(v) for v in col) for c, col in colours.items()},
                aug_dir=aug_dir)
  in_sbd = set(sbd_train) | set(sbd_val)
  for k, name in enumerate(sorted(names)):
    fh, fw = SIZE_FACTORS[k % len(SIZE_FACTORS)]
    h, w = max(16, int(round(size[0] * fh))), max(16, int(round(size[1] * fw)))
    n_obj = 0 if name in empty else int(rng.integers(1, 4))
    img, label, objects = _draw(rng, h, w, n_obj, classes, colours)
    out.sizes[name] = (h, w)
    is_test = name in test
    tags = np.zeros(NUM_CLASSES, np.uint8)
    for c, *_ in objects:
      tags[c - 1] = 1
    out.tags[name] = tags if not is_test else np.zeros(NUM_CLASSES, np.uint8)
    # Images: VOC JPEGImages holds every image except the last SBD-only one (when SBD has it).
    only_sbd = sbd and name == extra[-1] if extra else False
    if not only_sbd:
      Image.fromarray(img).save(os.path.join(voc, 'JPEGImages', name + '.jpg'),
                                quality=jpeg_quality)
    if sbd and name in in_sbd:
      Image.fromarray(img).save(os.path.join(sbd_dir, 'img', name + '.jpg'), quality=jpeg_quality)
    # Annotations: test XMLs list no objects (the test labels are withheld).
    with open(os.path.join(voc, 'Annotations', name + '.xml'), 'w') as f:
      f.write(_xml(name, h, w, [] if is_test else objects))
    if name in voc_train or name in voc_val:
      voc_mask = _with_boundary(label)
      _save_palette_png(os.path.join(voc, 'SegmentationClass', name + '.png'), voc_mask)
      out.voc_masks[name] = voc_mask
    if name in in_sbd or (aug_png and (name in voc_train or name in voc_val)):
      out.sbd_masks[name] = label
      if sbd and name in in_sbd:
        import scipy.io  # pylint: disable=import-outside-toplevel
        present = np.array(sorted(set(np.unique(label).tolist()) - {0}), np.uint8)
        scipy.io.savemat(os.path.join(sbd_dir, 'cls', name + '.mat'),
                         {'GTcls': {'Segmentation': label.astype(np.uint8),
                                    'CategoriesPresent': present,
                                    'Boundaries': np.zeros((NUM_CLASSES, 1), object)}},
                         do_compression=True)
      if aug_png:
        Image.frombytes('L', (w, h), label.astype(np.uint8).tobytes()).save(
            os.path.join(aug_dir, name + '.png'))
        out.aug_names.append(name)
  out.aug_names.sort()
  seg = os.path.join(voc, 'ImageSets', 'Segmentation')
  _write_list(os.path.join(seg, 'train.txt'), voc_train)
  _write_list(os.path.join(seg, 'val.txt'), voc_val)
  _write_list(os.path.join(seg, 'trainval.txt'), sorted(voc_train + voc_val))
  if n_test:
    _write_list(os.path.join(seg, 'test.txt'), test)
  if sbd:
    _write_list(os.path.join(sbd_dir, 'train.txt'), sbd_train)
    _write_list(os.path.join(sbd_dir, 'val.txt'), sbd_val)
  return out


def main(argv: Sequence[str] | None = None) -> int:
  p = argparse.ArgumentParser(prog='python -m wsss_jax.data.fake_voc',
                              description=__doc__.split('\n\n')[0])
  p.add_argument('--root', required=True,
                 help='directory to write VOCdevkit/ and benchmark_RELEASE/ into')
  p.add_argument('--n_train', type=int, default=4)
  p.add_argument('--n_val', type=int, default=3)
  p.add_argument('--n_test', type=int, default=2)
  p.add_argument('--n_sbd_extra', type=int, default=3)
  p.add_argument('--no_sbd', action='store_true', help='write no SBD release (needs --aug_png)')
  p.add_argument('--aug_png', action='store_true', help='also write SegmentationClassAug/')
  p.add_argument('--seed', type=int, default=0)
  p.add_argument('--size', type=int, nargs=2, default=(60, 80), metavar=('H', 'W'))
  a = p.parse_args(argv)
  fake = make_fake_voc(a.root, n_train=a.n_train, n_val=a.n_val, n_test=a.n_test,
                       n_sbd_extra=a.n_sbd_extra, sbd=not a.no_sbd, aug_png=a.aug_png, seed=a.seed,
                       size=tuple(a.size))
  print(f'wrote {fake.root}: {len(fake.voc_train)} train, {len(fake.voc_val)} val, '
        f'{len(fake.test)} test, {len(fake.sbd_train)}+{len(fake.sbd_val)} SBD, '
        f'{len(fake.aug_names)} SegmentationClassAug')
  return 0


if __name__ == '__main__':
  raise SystemExit(main())
