"""PASCAL VOC 2012 (+ SBD "train_aug") as a TFDS dataset that builds and reads without TensorFlow.

Build once from the extracted archives (see docs/VOC.md and `MANUAL_DOWNLOAD_INSTRUCTIONS`):

  python -m wsss_jax.data.voc --manual_dir=/data/voc_raw --data_dir=/data/tfds

`manual_dir` may be the directory holding `VOCdevkit/`, `VOCdevkit/` itself or
`VOCdevkit/VOC2012/`. Next to the VOC tree it needs the SBD release
(`benchmark_RELEASE/dataset/{cls,img,train.txt,val.txt}`, looked for in
`manual_dir`, the parent of `VOC2012/` and the parent of `VOCdevkit/`) or a
`SegmentationClassAug/` folder of index PNGs (looked for inside `VOC2012/`,
next to it, or in `manual_dir`).

Splits: `train` (VOC train list, 1464), `val` (1449), `train_aug` (SBD train ∪ SBD
val ∪ VOC train, minus VOC val: 10582), `test` (images only; only when
`ImageSets/Segmentation/test.txt` exists, i.e. the VOC2012 test archive was
extracted over the tree). Examples are stored in sorted file-name order.

Features are plain bytes and tensors (`Tensor(shape=(), dtype=object)` for the
encoded image and mask, `Text` for the file name), not `tfds.features.Image`,
whose encoder needs TensorFlow. The file format is array_record, read through
`as_data_source`: neither building nor reading imports TensorFlow.

Bad inputs: a missing directory or list file is one `DatasetError` naming every
missing path and where to download it. Per file, at build time: a corrupt or
unreadable image, a missing image or mask, a mask whose size differs from its
image or that holds labels outside 0..20/255 are skipped with a `DatasetWarning`
naming the file; a grayscale/CMYK/RGBA/palette image is converted to RGB (stored
losslessly as PNG) with a warning. At read time a decoding failure raises a
`DatasetError` naming the example's file.
"""
from __future__ import annotations

import argparse
import dataclasses
import io
import logging
import os
import sys
import warnings
import xml.etree.ElementTree as ET
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
from PIL import Image
import tensorflow_datasets as tfds

from wsss_jax.data.augment import DataError
from wsss_jax.visualize import encode_palette_png, voc_palette

CLASS_NAMES = ('background', 'aeroplane', 'bicycle', 'bird', 'boat', 'bottle', 'bus', 'car', 'cat',
               'chair', 'cow', 'diningtable', 'dog', 'horse', 'motorbike', 'person', 'pottedplant',
               'sheep', 'sofa', 'train', 'tvmonitor')
NUM_CLASSES = len(CLASS_NAMES) - 1  # foreground classes: the length of `tags`
IGNORE_LABEL = 255
DATASET_NAME = 'voc2012_wsss'

VOC_URL = 'http://host.robots.ox.ac.uk/pascal/VOC/voc2012/VOCtrainval_11-May-2012.tar'
VOC_TEST_URL = ('http://host.robots.ox.ac.uk:8080/eval/downloads/VOC2012test.tar '
                '(needs a PASCAL evaluation-server account)')
SBD_URL = 'http://www.eecs.berkeley.edu/Research/Projects/CS/vision/grouping/semantic_contours/benchmark.tgz'
AUG_HINT = ('or, instead of SBD, the SegmentationClassAug.zip of index PNGs that DeepLab-style '
            'weakly/semi-supervised segmentation repositories mirror')

_log = logging.getLogger(__name__)


PALETTE = voc_palette()  # the VOC devkit colour map, 256 x RGB


class DatasetError(DataError):
  """Missing or unreadable VOC/SBD data, reported with the path and where to get it."""


class DatasetWarning(UserWarning):
  """A file skipped or converted while building; the message names the file."""


# ---------------------------------------------------------------------------------------------
# Masks: palette PNGs hold class indices; read them as indices, never as colours.

_COLOUR_TO_INDEX = {(int(r) << 16) | (int(g) << 8) | int(b): i for i, (r, g, b) in enumerate(PALETTE)}


def decode_mask(png_bytes: bytes, name: str = 'mask') -> np.ndarray:
  """int32 (H, W) class indices of a mask PNG. 'P' and 'L' images are read as indices;
  an RGB colour mask is mapped back through the VOC palette (an unknown colour is an error)."""
  try:
    img = Image.open(io.BytesIO(png_bytes))
    img.load()
  except Exception as e:
    raise DatasetError(f'{name}: cannot decode mask ({type(e).__name__}: {e})') from e
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
    raise DatasetError(f'{name}: cannot decode image ({type(e).__name__}: {e})') from e


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
    """VOC SegmentationClass first (it has the 255 boundaries), then SegmentationClassAug, then SBD."""
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
        f'{", ".join(os.path.join(b, "benchmark_RELEASE") for b in bases)}) and no SegmentationClassAug '
        f'folder (looked for {", ".join(aug_candidates)}). Extract {SBD_URL} next to VOCdevkit, {AUG_HINT}')
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
  None when the file is absent, unparsable or lists no object."""
  if not os.path.isfile(path):
    return None
  try:
    objects = ET.parse(path).getroot().findall('object')
  except ET.ParseError as e:
    warn(f'{path}: unparsable annotation ({e}); tags taken from the mask')
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
    warn(f'{path}: corrupt or unreadable image ({type(e).__name__}: {e}); skipped')
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


# ---------------------------------------------------------------------------------------------
# The TFDS builder.

class Voc2012Wsss(tfds.core.GeneratorBasedBuilder, skip_registration=__name__ == '__main__'):
  """PASCAL VOC 2012 segmentation + SBD train_aug, with image-level tags."""

  name = DATASET_NAME
  # No checksums file to locate: tfds's lookup of this module's path needs the `importlib_resources`
  # backport, which an etils installed without its `epath` extra lacks.
  code_path = None
  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'Splits train, train_aug, val and (if present) test.'}
  MANUAL_DOWNLOAD_INSTRUCTIONS = f"""\
Extract into the manual dir (the directory holding VOCdevkit/, or VOCdevkit/, or VOC2012/):
  * {VOC_URL} -> VOCdevkit/VOC2012/{{JPEGImages,SegmentationClass,Annotations,ImageSets/Segmentation}}
  * {SBD_URL} -> benchmark_RELEASE/dataset/{{img,cls,train.txt,val.txt}} next to VOCdevkit/,
    {AUG_HINT}, unpacked to VOC2012/SegmentationClassAug/ (or next to VOC2012/).
  * optional, for the test split: {VOC_TEST_URL}, extracted over the same VOCdevkit/.
"""

  def __init__(self, **kwargs):
    super().__init__(**kwargs)
    self.skipped: dict[str, list[str]] = {}  # split -> warning messages of the files left out

  def _info(self) -> tfds.core.DatasetInfo:
    obj = lambda: tfds.features.Tensor(shape=(), dtype=np.object_)  # noqa: E731
    return tfds.core.DatasetInfo(
        builder=self,
        description='PASCAL VOC 2012 segmentation with SBD train_aug and image-level tags '
                    '(encoded JPEG/PNG bytes; masks are VOC palette PNGs, 255 = ignore; '
                    'test masks are empty bytes).',
        features=tfds.features.FeaturesDict({
            'image': obj(),
            'mask': obj(),
            'tags': tfds.features.Tensor(shape=(NUM_CLASSES,), dtype=np.uint8),
            'file_name': tfds.features.Text(),
            'height': tfds.features.Scalar(dtype=np.int32),
            'width': tfds.features.Scalar(dtype=np.int32),
        }),
        homepage='http://host.robots.ox.ac.uk/pascal/VOC/voc2012/',
        disable_shuffling=True,  # keep sorted file-name order: stable indices for eval and name(i)
    )

  def _split_generators(self, dl_manager):
    layout = find_layout(dl_manager.manual_dir)
    names = layout.split_names()
    if 'test' not in names:
      _log.info('no %s: building without a test split', layout.list_file('test'))
    return {split: self._generate_examples(layout, split, ids) for split, ids in names.items()}

  def _generate_examples(self, layout: Layout, split: str, names: Sequence[str]):
    skipped = self.skipped.setdefault(split, [])

    def warn(message: str) -> None:
      if message.endswith('; skipped'):
        skipped.append(message)
      warnings.warn(f'{DATASET_NAME}/{split}: {message}', DatasetWarning, stacklevel=2)

    for name in names:
      ex = make_example(layout, name, with_mask=split != 'test', warn=warn)
      if ex is not None:
        yield name, ex
    if skipped:
      warn(f'skipped {len(skipped)} of {len(names)} listed images (see the warnings above)')


def build(manual_dir: str | os.PathLike, data_dir: str | os.PathLike) -> Voc2012Wsss:
  """Builds (or reuses) the dataset under `data_dir`/voc2012_wsss/<version> from `manual_dir`."""
  find_layout(manual_dir)  # one clear error before TFDS starts
  builder = Voc2012Wsss(data_dir=os.fspath(data_dir), file_format='array_record')
  builder.download_and_prepare(
      download_config=tfds.download.DownloadConfig(manual_dir=os.fspath(manual_dir)))
  return builder


def build_command(data_dir: str | None, manual_dir: str | None = None) -> str:
  return (f'python -m wsss_jax.data.voc --manual_dir={manual_dir or "<dir holding VOCdevkit>"} '
          f'--data_dir={data_dir or "<data_dir>"}')


class VOCSource:
  """Random-access VOC split: decodes a stored record with Pillow into
  {'image': uint8 (H, W, 3) RGB, 'mask': int32 (H, W) (255 = ignore; all 255 without a mask),
  'tags': uint8 (20,), 'index': int32 ()}. Decoding errors name the file."""

  class_names = CLASS_NAMES
  num_classes = NUM_CLASSES

  def __init__(self, records, split: str = ''):
    self._records, self.split = records, split

  def __len__(self) -> int:
    return len(self._records)

  def record(self, index: int) -> Mapping[str, Any]:
    if not -len(self) <= index < len(self):
      raise IndexError(f'index {index} out of range for {self.split} split of {len(self)}')
    return self._records[index]

  def name(self, index: int) -> str:
    """The file id (e.g. '2007_000032') of example `index`."""
    n = self.record(index)['file_name']
    return n.decode() if isinstance(n, bytes) else str(n)

  def __getitem__(self, index: int) -> dict[str, np.ndarray]:
    index = int(index)
    rec = self.record(index)
    n = rec['file_name']
    label = f'{self.split}[{index}] {n.decode() if isinstance(n, bytes) else n}'
    image = decode_image(rec['image'], label)
    h, w = int(rec['height']), int(rec['width'])
    if image.shape[:2] != (h, w):
      raise DatasetError(f'{label}: decoded image is {image.shape[0]}x{image.shape[1]}, record says {h}x{w}')
    if len(rec['mask']):
      mask = decode_mask(rec['mask'], label)
      if mask.shape != (h, w):
        raise DatasetError(f'{label}: mask is {mask.shape[0]}x{mask.shape[1]}, image is {h}x{w}')
    else:
      mask = np.full((h, w), IGNORE_LABEL, np.int32)
    return {'image': image, 'mask': mask, 'tags': np.asarray(rec['tags'], np.uint8),
            'index': np.int32(index)}


def load(data_dir: str | os.PathLike, split: str, *, manual_dir: str | None = None) -> VOCSource:
  """The random-access source of a built split; a DatasetError with the build command if it is not built."""
  data_dir = os.fspath(data_dir) if data_dir else None
  if not data_dir:
    raise DatasetError(f'config.data.data_dir is not set; build the dataset with: '
                       f'{build_command(None, manual_dir)}')
  builder = Voc2012Wsss(data_dir=data_dir)
  if not builder.is_prepared():
    raise DatasetError(f'{DATASET_NAME} {builder.VERSION} is not built under {data_dir} '
                       f'(looked for {builder.data_dir}); build it with: '
                       f'{build_command(data_dir, manual_dir)}')
  if split not in builder.info.splits:
    raise DatasetError(f'{DATASET_NAME} under {data_dir} has no split {split!r} '
                       f'(it has {", ".join(sorted(builder.info.splits))})')
  return VOCSource(builder.as_data_source(split=split), split)


def main(argv: Sequence[str] | None = None) -> int:
  parser = argparse.ArgumentParser(prog='python -m wsss_jax.data.voc', description=__doc__.split('\n\n')[0])
  parser.add_argument('--manual_dir', required=True,
                      help='directory holding VOCdevkit/ and benchmark_RELEASE/')
  parser.add_argument('--data_dir', required=True, help='TFDS data dir to write voc2012_wsss/ into')
  args = parser.parse_args(argv)
  logging.basicConfig(level=logging.INFO, format='%(message)s')
  try:
    builder = build(args.manual_dir, args.data_dir)
  except DatasetError as e:
    print(f'error: {e}', file=sys.stderr)
    return 1
  for split, info in sorted(builder.info.splits.items()):
    print(f'{split}: {info.num_examples} examples')
  for split, msgs in sorted(builder.skipped.items()):
    for m in msgs:
      print(f'skipped ({split}): {m}')
  print(f'built {builder.data_dir}')
  return 0


if __name__ == '__main__':
  from wsss_jax.data import voc as _voc  # the registered copy of the builder, not this __main__ one
  sys.exit(_voc.main())
