"""The files of PASCAL VOC 2012 and SBD as they lie on disk: class names and palette, the split
lists and where the VOC tree, SBD and SegmentationClassAug were extracted (`find_layout`), and
reading one image's files into a record (`make_example`), checking each and naming it.

Bad inputs: a missing directory or list file is one `DatasetError` naming every missing path
and where to download it. Per file: a corrupt or unreadable image, a missing image or mask, a
mask whose size differs from its image or that holds labels outside 0..20/255 are skipped with
a message naming the file; a grayscale/CMYK/RGBA/palette image is converted to RGB (stored
losslessly as PNG) and reported.
"""
from __future__ import annotations

import dataclasses
import io
import os
import xml.etree.ElementTree as ET
from typing import Any, Iterable

import numpy as np
from PIL import Image

from wsss_jax.constants import IGNORE_LABEL
from wsss_jax.data.augment import DataError, image_error
from wsss_jax.visualize import encode_palette_png, voc_palette

CLASS_NAMES = ('background', 'aeroplane', 'bicycle', 'bird', 'boat', 'bottle', 'bus', 'car', 'cat',
               'chair', 'cow', 'diningtable', 'dog', 'horse', 'motorbike', 'person', 'pottedplant',
               'sheep', 'sofa', 'train', 'tvmonitor')
NUM_CLASSES = len(CLASS_NAMES) - 1  # foreground classes: the length of `tags`

VOC_URL = 'http://host.robots.ox.ac.uk/pascal/VOC/voc2012/VOCtrainval_11-May-2012.tar'
VOC_TEST_URL = ('http://host.robots.ox.ac.uk:8080/eval/downloads/VOC2012test.tar '
                '(needs a PASCAL evaluation-server account)')
SBD_URL = 'http://www.eecs.berkeley.edu/Research/Projects/CS/vision/grouping/semantic_contours/benchmark.tgz'
AUG_HINT = ('or, instead of SBD, the SegmentationClassAug.zip of index PNGs that DeepLab-style '
            'weakly/semi-supervised segmentation repositories mirror')

PALETTE = voc_palette()  # the VOC devkit colour map, 256 x RGB


class DatasetError(DataError):
  """Missing or unreadable VOC/SBD data, reported with the path and where to get it."""


class DatasetWarning(UserWarning):
  """A file skipped or converted while building; the message names the file."""


# ---------------------------------------------------------------------------------------------
# Masks: palette PNGs hold class indices; read them as indices, never as colours.

_COLOUR_TO_INDEX = {(int(r) << 16) | (int(g) << 8) | int(b): i
                    for i, (r, g, b) in enumerate(PALETTE)}


def decode_mask(png_bytes: bytes, name: str = 'mask') -> np.ndarray:
  """int32 (H, W) class indices of a mask PNG. 'P' and 'L' images are read as indices;
  an RGB colour mask is mapped back through the VOC palette (an unknown colour is an error)."""
  try:
    img = Image.open(io.BytesIO(png_bytes))
    img.load()
  except Exception as e:
    raise DatasetError(f'{name}: cannot decode mask ({image_error(e)})') from e
  if img.mode in ('P', 'L'):
    return np.asarray(img).astype(np.int32)
  if img.mode in ('PA', 'LA'):
    return np.asarray(img)[..., 0].astype(np.int32)
  if img.mode in ('I', 'I;16', 'I;16B', 'I;16L'):
    a = np.asarray(img).astype(np.int64)
    if a.size and (a.min() < 0 or a.max() > 255):
      raise DatasetError(f'{name}: mask values {a.min()}..{a.max()} are not class indices 0..255')
    return a.astype(np.int32)
  if img.mode in ('RGB', 'RGBA'):
    rgb = np.asarray(img.convert('RGB')).astype(np.int64)
    code = (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]
    uniq, inv = np.unique(code, return_inverse=True)
    unknown = [u for u in uniq.tolist() if u not in _COLOUR_TO_INDEX]
    if unknown:
      u = unknown[0]
      rgb = (u >> 16, (u >> 8) & 255, u & 255)
      raise DatasetError(f'{name}: RGB mask colour {rgb} is not in the VOC palette')
    return np.array([_COLOUR_TO_INDEX[u] for u in uniq.tolist()], np.int32)[inv.reshape(code.shape)]
  raise DatasetError(f'{name}: unsupported mask image mode {img.mode!r} '
                     '(expected a palette or grayscale PNG)')


def decode_image(data: bytes, name: str = 'image') -> np.ndarray:
  """uint8 (H, W, 3) RGB pixels of encoded image bytes; errors name the file."""
  try:
    img = Image.open(io.BytesIO(data))
    img.load()
    if img.mode != 'RGB':
      img = img.convert('RGB')
    return np.asarray(img)
  except Exception as e:
    raise DatasetError(f'{name}: cannot decode image ({image_error(e)})') from e


# ---------------------------------------------------------------------------------------------
# Lists and the on-disk layout.

def train_aug_names(voc_train: Iterable[str], voc_val: Iterable[str], sbd_train: Iterable[str],
                    sbd_val: Iterable[str]) -> list[str]:
  """The standard train_aug list: (SBD train ∪ SBD val ∪ VOC train) minus VOC val, sorted."""
  return sorted((set(sbd_train) | set(sbd_val) | set(voc_train)) - set(voc_val))


def read_list(path: str) -> list[str]:
  """Image ids of a VOC/SBD list file: the first token of each non-blank line."""
  with open(path) as f:
    return [line.split()[0] for line in f if line.strip()]


@dataclasses.dataclass(frozen=True)
class Layout:
  """Where the VOC tree, SBD and SegmentationClassAug were found under a manual dir."""
  voc: str  # .../VOC2012
  sbd: str | None  # .../benchmark_RELEASE/dataset
  aug: str | None  # .../SegmentationClassAug

  def list_file(self, split: str) -> str:
    return os.path.join(self.voc, 'ImageSets', 'Segmentation', f'{split}.txt')

  def has_test(self) -> bool:
    return os.path.isfile(self.list_file('test'))

  def split_names(self) -> dict[str, list[str]]:
    """Sorted, de-duplicated image ids of each split that this layout can build."""
    voc_train, voc_val = read_list(self.list_file('train')), read_list(self.list_file('val'))
    sbd_train, sbd_val = [], []
    if self.sbd:
      sbd_train = read_list(os.path.join(self.sbd, 'train.txt'))
      sbd_val = read_list(os.path.join(self.sbd, 'val.txt'))
    else:  # SegmentationClassAug holds train_aug ∪ val: its file names stand in for the SBD lists
      sbd_train = [f[:-4] for f in os.listdir(self.aug) if f.endswith('.png')]
    out = {'train': sorted(set(voc_train)), 'val': sorted(set(voc_val)),
           'train_aug': train_aug_names(voc_train, voc_val, sbd_train, sbd_val)}
    if self.has_test():
      out['test'] = sorted(set(read_list(self.list_file('test'))))
    return out

  def image_path(self, name: str) -> str | None:
    for p in (os.path.join(self.voc, 'JPEGImages', name + '.jpg'),
              self.sbd and os.path.join(self.sbd, 'img', name + '.jpg')):
      if p and os.path.isfile(p):
        return p
    return None

  def mask_path(self, name: str) -> str | None:
    """VOC SegmentationClass first (it has the 255 boundaries), then SegmentationClassAug,
    then SBD."""
    for p in (os.path.join(self.voc, 'SegmentationClass', name + '.png'),
              self.aug and os.path.join(self.aug, name + '.png'),
              self.sbd and os.path.join(self.sbd, 'cls', name + '.mat')):
      if p and os.path.isfile(p):
        return p
    return None

  def xml_path(self, name: str) -> str:
    return os.path.join(self.voc, 'Annotations', name + '.xml')


def _unique(paths: Iterable[str]) -> list[str]:
  out = []
  for p in paths:
    p = os.path.normpath(p)
    if p not in out:
      out.append(p)
  return out


def find_layout(manual_dir: str | os.PathLike | None) -> Layout:
  """Locates VOC2012 and SBD / SegmentationClassAug under `manual_dir`, or raises one
  DatasetError that lists every missing piece, where it was looked for and where to get it."""
  if not manual_dir:
    raise DatasetError(f'no manual_dir given: pass the directory that holds VOCdevkit/ '
                       f'(extracted from {VOC_URL}) and benchmark_RELEASE/ ({SBD_URL})')
  root = os.path.abspath(os.fspath(manual_dir))
  if not os.path.isdir(root):
    raise DatasetError(f'manual_dir {root} does not exist: create it and extract VOCdevkit/ from '
                       f'{VOC_URL} and benchmark_RELEASE/ from {SBD_URL} into it')
  candidates = [os.path.join(root, 'VOCdevkit', 'VOC2012'), os.path.join(root, 'VOC2012')]
  if os.path.basename(root) == 'VOC2012' or os.path.isdir(os.path.join(root, 'JPEGImages')):
    candidates.append(root)
  voc = next((c for c in candidates if os.path.isdir(c)), None)
  if voc is None:
    raise DatasetError(f'PASCAL VOC 2012 not found under {root}: looked for '
                       f'{", ".join(candidates[:2])}; extract {VOC_URL} there '
                       '(it unpacks to VOCdevkit/VOC2012)')
  missing = []
  for sub in ('JPEGImages', 'SegmentationClass', 'Annotations'):
    if not os.path.isdir(os.path.join(voc, sub)):
      missing.append(f'folder {os.path.join(voc, sub)}')
  for split in ('train', 'val'):
    p = os.path.join(voc, 'ImageSets', 'Segmentation', f'{split}.txt')
    if not os.path.isfile(p):
      missing.append(f'list file {p}')
  if missing:
    raise DatasetError('incomplete PASCAL VOC 2012 tree: missing ' + '; '.join(missing) +
                       f'. Re-extract {VOC_URL}')
  bases = _unique([root, os.path.dirname(voc), os.path.dirname(os.path.dirname(voc))])
  sbd = next((os.path.join(b, 'benchmark_RELEASE', 'dataset') for b in bases
              if os.path.isdir(os.path.join(b, 'benchmark_RELEASE'))), None)
  if sbd is not None:
    need = [os.path.join(sbd, 'cls'), os.path.join(sbd, 'train.txt'), os.path.join(sbd, 'val.txt')]
    gone = [p for p in need if not os.path.exists(p)]
    if gone:
      raise DatasetError(f'incomplete SBD release: missing {", ".join(gone)}. Re-extract {SBD_URL}')
  aug_candidates = _unique([os.path.join(voc, 'SegmentationClassAug'),
                            os.path.join(os.path.dirname(voc), 'SegmentationClassAug'),
                            os.path.join(root, 'SegmentationClassAug')])
  aug = next((p for p in aug_candidates if os.path.isdir(p)), None)
  if sbd is None and aug is None:
    raise DatasetError(
        'the train_aug masks are missing: no SBD release (looked for '
        f'{", ".join(os.path.join(b, "benchmark_RELEASE") for b in bases)}) and no '
        f'SegmentationClassAug folder (looked for {", ".join(aug_candidates)}). '
        f'Extract {SBD_URL} next to VOCdevkit, {AUG_HINT}')
  return Layout(voc=voc, sbd=sbd, aug=aug)


# ---------------------------------------------------------------------------------------------
# Per-file reading at build time.

def _read_sbd_mat(path: str) -> np.ndarray:
  try:
    import scipy.io  # pylint: disable=import-outside-toplevel
  except ImportError as e:
    raise DatasetError(f'reading the SBD masks ({path}) needs scipy: pip install scipy') from e
  gt = scipy.io.loadmat(path, squeeze_me=True, struct_as_record=False)['GTcls']
  return np.asarray(gt.Segmentation).astype(np.int32)


def _tags_from_xml(path: str, warn) -> np.ndarray | None:
  """Multi-hot of the <object><name> entries (difficult and truncated objects included);
  None when the file is absent, cannot be read or parsed (empty, binary junk, an unknown or
  wrong encoding: reported through `warn`) or lists no object."""
  if not os.path.isfile(path):
    return None
  try:
    objects = ET.parse(path).getroot().findall('object')
  except (ET.ParseError, LookupError, UnicodeError, ValueError, OSError) as e:
    warn(f'{path}: unreadable annotation ({type(e).__name__}: {e}); tags taken from the mask')
    return None
  if not objects:
    return None
  tags = np.zeros(NUM_CLASSES, np.uint8)
  for obj in objects:
    cls = (obj.findtext('name') or '').strip()
    if cls in CLASS_NAMES[1:]:
      tags[CLASS_NAMES.index(cls) - 1] = 1
    else:
      warn(f'{path}: unknown object name {cls!r} ignored')
  return tags


def _tags_from_mask(mask: np.ndarray) -> np.ndarray:
  labels = np.unique(mask)
  labels = labels[(labels > 0) & (labels <= NUM_CLASSES)]
  tags = np.zeros(NUM_CLASSES, np.uint8)
  tags[labels - 1] = 1
  return tags


def _encode_png(img: Image.Image) -> bytes:
  buf = io.BytesIO()
  img.save(buf, 'PNG')
  return buf.getvalue()


def make_example(layout: Layout, name: str, *, with_mask: bool, warn) -> dict[str, Any] | None:
  """The feature dict of image `name`, or None when it must be skipped. Every skip and
  conversion is reported through `warn(message)`; skip messages end in '; skipped'."""
  path = layout.image_path(name)
  if path is None:
    warn(f'{name}: image not found in {os.path.join(layout.voc, "JPEGImages")}'
         + (f' or {os.path.join(layout.sbd, "img")}' if layout.sbd else '') + '; skipped')
    return None
  with open(path, 'rb') as f:
    image_bytes = f.read()
  try:
    img = Image.open(io.BytesIO(image_bytes))
    img.load()
  except Exception as e:
    warn(f'{path}: corrupt or unreadable image ({image_error(e)}); skipped')
    return None
  if img.mode != 'RGB':
    warn(f'{path}: {img.mode} image converted to RGB')
    img = img.convert('RGB')
    image_bytes = _encode_png(img)  # lossless: no second JPEG generation
  width, height = img.size
  mask_bytes, mask = b'', None
  if with_mask:
    mpath = layout.mask_path(name)
    if mpath is None:
      warn(f'{name}: no mask in SegmentationClass'
           + (', SegmentationClassAug' if layout.aug else '') + (', SBD cls' if layout.sbd else '')
           + '; skipped')
      return None
    try:
      if mpath.endswith('.mat'):
        mask = _read_sbd_mat(mpath)
        mask_bytes = encode_palette_png(mask)
      else:
        with open(mpath, 'rb') as f:
          raw = f.read()
        mask = decode_mask(raw, mpath)
        keep = Image.open(io.BytesIO(raw)).mode in ('P', 'L')
        mask_bytes = raw if keep else encode_palette_png(mask)
    except Exception as e:
      warn(f'{mpath}: unreadable mask ({type(e).__name__}: {e}); skipped')
      return None
    if mask.shape != (height, width):
      warn(f'{mpath}: mask size {mask.shape[0]}x{mask.shape[1]} differs from the image size '
           f'{height}x{width} of {path}; skipped')
      return None
    bad = np.setdiff1d(np.unique(mask), np.r_[0:NUM_CLASSES + 1, IGNORE_LABEL])
    if bad.size:
      warn(f'{mpath}: labels {bad.tolist()} outside 0..{NUM_CLASSES} and {IGNORE_LABEL}; skipped')
      return None
  tags = _tags_from_xml(layout.xml_path(name), warn)
  if tags is None:
    tags = _tags_from_mask(mask) if mask is not None else np.zeros(NUM_CLASSES, np.uint8)
  return {'image': image_bytes, 'mask': mask_bytes, 'tags': tags, 'file_name': name,
          'height': np.int32(height), 'width': np.int32(width)}
