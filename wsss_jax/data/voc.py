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

Bad inputs (voc_files.py): a missing directory or list file is one `DatasetError`
naming every missing path and where to download it; a file that cannot be used is
skipped or converted at build time with a `DatasetWarning` naming it. At read time a
decoding failure raises a `DatasetError` naming the example's file.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import shutil
import sys
import warnings
from typing import Any, Mapping, Sequence

import numpy as np
import tensorflow_datasets as tfds

from wsss_jax.constants import IGNORE_LABEL
from wsss_jax.data.voc_files import (  # noqa: F401
  AUG_HINT,
  CLASS_NAMES,
  NUM_CLASSES,
  PALETTE,
  SBD_URL,
  VOC_TEST_URL,
  VOC_URL,
  DatasetError,
  DatasetWarning,
  Layout,
  decode_image,
  decode_mask,
  find_layout,
  make_example,
  read_list,
  train_aug_names,
)

DATASET_NAME = 'voc2012_wsss'
_log = logging.getLogger(__name__)


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
"""  # noqa: E501

  def __init__(self, **kwargs):
    super().__init__(**kwargs)
    # split -> {'skipped', 'converted', 'notes'}: every message about a file, whatever the
    # Python warning filters (`main` prints them all)
    self.report: dict[str, dict[str, list[str]]] = {}
    self.built = False  # whether the last download_and_prepare built (False: reused)

  @property
  def skipped(self) -> dict[str, list[str]]:
    """split -> messages of the files left out of it."""
    return {split: rep['skipped'] for split, rep in self.report.items()}

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
        # manual_dir, the ids listed per split, the test ids (a server submission must cover
        # them all), the most tags an image of each split has (the attention's class bound)
        # and the build report
        metadata=tfds.core.MetadataDict(),
        homepage='http://host.robots.ox.ac.uk/pascal/VOC/voc2012/',
        disable_shuffling=True,  # keep sorted file-name order: stable indices for eval and name(i)
    )

  def _split_generators(self, dl_manager):
    layout = find_layout(dl_manager.manual_dir)
    names = layout.split_names()
    if 'test' not in names:
      _log.info('no %s: building without a test split', layout.list_file('test'))
    meta = self.info.metadata
    meta['manual_dir'] = os.path.abspath(os.fspath(dl_manager.manual_dir))
    meta['listed'] = {split: len(ids) for split, ids in names.items()}
    meta['test_ids'] = list(names.get('test', []))
    meta['max_tags'], meta['report'] = {}, {}
    return {split: self._generate_examples(layout, split, ids) for split, ids in names.items()}

  def _generate_examples(self, layout: Layout, split: str, names: Sequence[str]):
    report = self.report.setdefault(split, {'skipped': [], 'converted': [], 'notes': []})

    def warn(message: str) -> None:
      kind = ('skipped' if message.endswith('; skipped') else
              'converted' if ' converted to ' in message else 'notes')
      report[kind].append(message)
      warnings.warn(f'{DATASET_NAME}/{split}: {message}', DatasetWarning, stacklevel=2)

    kept, most = 0, 0
    for name in names:
      ex = make_example(layout, name, with_mask=split != 'test', warn=warn)
      if ex is not None:
        kept += 1
        most = max(most, int(np.sum(ex['tags'])))
        yield name, ex
    if report['skipped']:
      warnings.warn(f'{DATASET_NAME}/{split}: skipped {len(report["skipped"])} of {len(names)} '
                    'listed images (see the warnings above)', DatasetWarning, stacklevel=2)
    if not kept:
      reasons = '; '.join(report['skipped'][:3])
      raise DatasetError(f'split {split}: none of the {len(names)} listed images could be used '
                         f'({reasons}{"; ..." if len(report["skipped"]) > 3 else ""})')
    self.info.metadata['max_tags'][split] = most
    self.info.metadata['report'][split] = report


def build(manual_dir: str | os.PathLike, data_dir: str | os.PathLike, *,
          rebuild: bool = False) -> Voc2012Wsss:
  """Builds the dataset under `data_dir`/voc2012_wsss/<version> from `manual_dir`, or reuses an
  existing build of the same manual_dir (`builder.built` says which). An existing build of
  another manual_dir is a DatasetError unless `rebuild`, which replaces it."""
  manual = os.path.abspath(os.fspath(manual_dir))
  find_layout(manual)  # one clear error before TFDS starts
  builder = Voc2012Wsss(data_dir=os.fspath(data_dir), file_format='array_record')
  if builder.is_prepared():
    recorded = dict(builder.info.metadata or {}).get('manual_dir')
    if rebuild:
      shutil.rmtree(builder.data_dir)
      builder = Voc2012Wsss(data_dir=os.fspath(data_dir), file_format='array_record')
    elif recorded != manual:
      source = recorded or 'an unrecorded manual_dir'
      raise DatasetError(f'{builder.data_dir} was built from {source}, not {manual}; pass '
                         '--rebuild to replace it (or another --data_dir)')
    else:
      return builder
  try:
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=manual))
  except DatasetError:
    raise
  except Exception as e:  # noqa: BLE001 (TFDS wraps generator errors in its own types)
    cause = e
    while cause is not None and not isinstance(cause, DatasetError):
      cause = cause.__cause__ or cause.__context__
    if cause is not None:
      raise cause from None
    raise
  builder.built = True
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

  def __init__(self, records, split: str = '', metadata: Mapping[str, Any] | None = None):
    self._records, self.split = records, split
    self.metadata = dict(metadata or {})

  @property
  def max_tags(self) -> int:
    """The most tags an image of this split has (the builder's record; every class when the
    build predates the record)."""
    return int(self.metadata.get('max_tags', {}).get(self.split, NUM_CLASSES))

  @property
  def listed_ids(self) -> list[str] | None:
    """The ids the devkit's list names for this split (test only; None when unrecorded)."""
    if self.split != 'test' or 'test_ids' not in self.metadata:
      return None
    return list(self.metadata['test_ids'])

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
      raise DatasetError(f'{label}: decoded image is {image.shape[0]}x{image.shape[1]}, '
                         f'record says {h}x{w}')
    if len(rec['mask']):
      mask = decode_mask(rec['mask'], label)
      if mask.shape != (h, w):
        raise DatasetError(f'{label}: mask is {mask.shape[0]}x{mask.shape[1]}, image is {h}x{w}')
    else:
      mask = np.full((h, w), IGNORE_LABEL, np.int32)
    return {'image': image, 'mask': mask, 'tags': np.asarray(rec['tags'], np.uint8),
            'index': np.int32(index)}


def load(data_dir: str | os.PathLike, split: str, *, manual_dir: str | None = None) -> VOCSource:
  """The random-access source of a built split; a DatasetError with the build command if it is
  not built."""
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
  return VOCSource(builder.as_data_source(split=split), split, builder.info.metadata)


def _summary(builder: Voc2012Wsss, manual_dir: str) -> list[str]:
  """The build's summary: examples per split, and every skipped, converted or noted file."""
  meta = dict(builder.info.metadata or {})
  listed, report = meta.get('listed', {}), meta.get('report', {})
  lines = [f'{"built" if builder.built else "reused"} {builder.data_dir} from '
           f'{meta.get("manual_dir", manual_dir)}']
  for split, info in sorted(builder.info.splits.items()):
    rep = report.get(split, {})
    skipped, converted = len(rep.get('skipped', [])), len(rep.get('converted', []))
    lines.append(f'{split}: {info.num_examples} examples ({listed.get(split, "?")} listed, '
                 f'{skipped} skipped, {converted} converted)')
  for split in sorted(report):
    for kind in ('skipped', 'converted', 'notes'):
      lines += [f'{kind} ({split}): {m}' for m in report[split].get(kind, [])]
  return lines


def main(argv: Sequence[str] | None = None) -> int:
  parser = argparse.ArgumentParser(prog='python -m wsss_jax.data.voc',
                                   description=__doc__.split('\n\n')[0])
  parser.add_argument('--manual_dir', required=True,
                      help='directory holding VOCdevkit/ and benchmark_RELEASE/')
  parser.add_argument('--data_dir', required=True, help='TFDS data dir to write voc2012_wsss/ into')
  parser.add_argument('--rebuild', action='store_true',
                      help='replace an existing build (needed to build from another manual_dir)')
  args = parser.parse_args(argv)
  logging.basicConfig(level=logging.WARNING, format='%(message)s')
  logging.getLogger('absl').setLevel(logging.ERROR)  # TFDS's notes on an empty data_dir
  tfds.disable_progress_bar()
  try:
    # (the summary below lists every file message; TFDS's own notes go to stderr)
    with warnings.catch_warnings(), contextlib.redirect_stdout(sys.stderr):
      warnings.simplefilter('ignore', DatasetWarning)
      builder = build(args.manual_dir, args.data_dir, rebuild=args.rebuild)
  except DatasetError as e:
    print(f'error: {e}', file=sys.stderr)
    return 1
  print('\n'.join(_summary(builder, os.path.abspath(args.manual_dir))))
  return 0


if __name__ == '__main__':
  from wsss_jax.data import voc as _voc  # the registered copy of the builder, not this __main__ one
  sys.exit(_voc.main())
