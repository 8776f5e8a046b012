"""Input pipelines on grain: a deterministic function of (seed, step), so resuming is exact.

The training stream is ``shuffle -> repeat -> batch(per-process batch)`` on a
grain `MapDataset`; global step k is the process-batches [k*P, (k+1)*P) and
process p reads batch k*P + p. Batch k can be recomputed from k alone, so a
resumed run sees exactly the batches an uninterrupted one would. Optional
per-example augmentation is a grain `random_map` between repeat and batch: its
generator is seeded by (seed, position in the repeated stream), so it keeps
that property (and differs between epochs).

Datasets: 'synthetic' (embedded, see synthetic.py) and 'voc2012' (the TFDS
build of voc.py, read from `data_dir`; variable-size images, so training needs
`augment` and evaluation `pad_to`: see `train_augment` and `eval_pad_size`).
"""
from __future__ import annotations

from typing import Any, Callable, Iterator, Mapping

import grain
import numpy as np

from wsss_jax.constants import IGNORE_LABEL
from wsss_jax.data import augment as augment_lib
from wsss_jax.data import label_folder
from wsss_jax.data.augment import DataError, TrainAugment
from wsss_jax.data.synthetic import SyntheticWSSS


def make_dataset(data_cfg: Mapping[str, Any], split: str):
  """The random-access dataset named by `data_cfg.name` for `split`.

  voc2012: split 'train' reads `data_cfg.train_split` (the paper trains on 'train_aug');
  'train_aug', 'val' and 'test' read that split. An unbuilt dataset is a voc.DatasetError
  carrying the build command. With `data_cfg.train_masks` set, the train split's masks are the
  label maps in that folder (label_folder.MasksFromFolder: a second stage on pseudo-labels).
  """
  ds = _dataset(data_cfg, split)
  if split == 'train' and data_cfg.get('train_masks'):
    ds = label_folder.MasksFromFolder(ds, data_cfg['train_masks'])
  return ds


def _dataset(data_cfg: Mapping[str, Any], split: str):
  name = data_cfg['name']
  if name == 'synthetic':
    sizes = {'train': data_cfg['train_size'], 'val': data_cfg['val_size'],
             'test': data_cfg['test_size'], 'tune': data_cfg.get('tune_size', 0)}
    if split not in sizes:
      raise DataError(f'unknown split {split!r}; synthetic data has {sorted(sizes)}')
    return SyntheticWSSS(split, sizes[split], image_size=data_cfg['image_size'],
                         num_classes=data_cfg['num_classes'], seed=data_cfg['seed'],
                         **dict(data_cfg.get('generator', {})))
  if name == 'voc2012':
    from wsss_jax.data import voc  # pylint: disable=import-outside-toplevel  (imports tfds)
    if split == 'train':
      split = _required(data_cfg, 'train_split')
    return voc.load(data_cfg.get('data_dir'), split, manual_dir=data_cfg.get('manual_dir'))
  raise DataError(f'config.data.name must be "synthetic" or "voc2012", got {name!r}')


def _required(data_cfg: Mapping[str, Any], key: str):
  """A data setting the VOC path needs; unset (missing, 0 or '') is a DataError naming the key."""
  value = data_cfg.get(key)
  if value in (None, 0, '', ()):
    raise DataError(f'config.data.{key} is not set: a voc2012 config states it '
                    '(configs/voc12_ours.py)')
  return value


def train_augment(data_cfg: Mapping[str, Any]) -> TrainAugment | None:
  """The training augmentation the data config asks for: for voc2012 always (its images vary
  in size: crop_size, scale_range and flip must be set), for synthetic only if it sets
  `crop_size`."""
  if data_cfg['name'] != 'voc2012' and not data_cfg.get('crop_size'):
    return None
  if data_cfg['name'] == 'voc2012':
    _required(data_cfg, 'crop_size'), _required(data_cfg, 'scale_range')
    if data_cfg.get('flip') is None:
      raise DataError('config.data.flip is not set: a voc2012 config states it')
  return TrainAugment.from_config({k: data_cfg.get(k)
                                   for k in ('crop_size', 'scale_range', 'flip')})


def eval_pad_size(data_cfg: Mapping[str, Any]) -> tuple[int, int] | None:
  """The fixed (H, W) eval batches are padded to: `eval_size` (an int or (H, W)); for voc2012 it
  must be set (its images vary in size), for synthetic 0 means no padding."""
  size = data_cfg.get('eval_size') or None  # 0: no padding
  if size is None and data_cfg['name'] == 'voc2012':
    _required(data_cfg, 'eval_size')
  if size is None:
    return None
  return (int(size), int(size)) if np.isscalar(size) else (int(size[0]), int(size[1]))


def max_tags(dataset) -> int:
  """The most tags an example of `dataset` has: its own bound (the synthetic generator's object
  count, the VOC builder's record), at most its number of foreground classes."""
  return int(min(getattr(dataset, 'max_tags', dataset.num_classes), dataset.num_classes))


class TagBound:
  """`dataset` whose examples may hold at most `bound` tags: one with more is a DataError naming
  it (the attention walks a static number of classes per image; a tag beyond it would silently
  get no attention)."""

  def __init__(self, dataset, bound: int):
    self.dataset, self.bound = dataset, int(bound)

  def __len__(self) -> int:
    return len(self.dataset)

  def __getitem__(self, index):
    ex = self.dataset[index]
    n = int(np.sum(np.asarray(ex['tags']) > 0))
    if n > self.bound:
      name = (self.dataset.name(int(index)) if hasattr(self.dataset, 'name')
              else f'{getattr(self.dataset, "split", "")}[{int(index)}]')
      raise DataError(f'training image {name} has {n} tags, more than the {self.bound} the '
                      f'attention walks (model.attention.max_classes = {self.bound + 1}, '
                      "background included): raise it, or set 0 (the data's bound)")
    return ex


def train_batches(dataset, *, global_batch: int, seed: int, start_step: int = 0,
                  process_index: int = 0, process_count: int = 1, num_threads: int = 2,
                  augment: Callable[[dict, np.random.Generator], dict] | Mapping[str, Any]
                           | None = None
                  ) -> Iterator[dict[str, np.ndarray]]:
  """Endless iterator over this process's share of the global batches, from `start_step`.

  `augment`: None, a callable `(example, rng) -> example`, or a mapping of
  TrainAugment settings (crop_size, scale_range, flip), applied per example
  before batching with a generator that depends only on (seed, stream position).
  """
  if global_batch % process_count:
    raise ValueError(f'global batch {global_batch} is not divisible by {process_count} processes')
  local = global_batch // process_count
  ds = grain.MapDataset.source(dataset).seed(seed).shuffle().repeat()
  if augment is not None:
    ds = ds.random_map(augment if callable(augment) else TrainAugment.from_config(augment))
  ds = ds.batch(local, drop_remainder=True)
  ds = ds[start_step * process_count + process_index::process_count]
  opts = grain.ReadOptions(num_threads=num_threads, prefetch_buffer_size=4 * max(num_threads, 1))
  return iter(ds.to_iter_dataset(opts))


def eval_batches(dataset, batch_size: int, *, process_index: int = 0,
                 process_count: int = 1, limit: int | None = None,
                 pad_to: tuple[int, int] | None = None) -> Iterator[dict[str, np.ndarray]]:
  """One pass over `dataset` in global batches of `batch_size`; this process yields its
  contiguous 1/process_count slice of each, so every process yields the same number of
  batches (collectives in the eval step never wait for a process that has run out). Slots
  past the end are filler: ignored pixels (mask = 255, tags = 0) and 'valid' = 0, so they
  add nothing to metrics.

  With `pad_to` = (H, W), variable-size images are padded bottom/right to (H, W)
  (mean colour, mask 255) and the batch gains 'size' int32 (B, 2), the original
  (h, w) (0 for filler), and 'index' int32 (B,), the example index (-1 for filler).
  """
  if batch_size % process_count:
    raise ValueError(f'eval batch {batch_size} is not divisible by {process_count} processes')
  n = len(dataset) if limit is None else min(limit, len(dataset))
  local = batch_size // process_count
  keys = ('image', 'tags', 'mask') + (('size',) if pad_to is not None else ())
  for start in range(0, n, batch_size):
    first = start + process_index * local
    chunk_idx = np.arange(min(first, n), min(first + local, n))
    chunk = [dataset[int(i)] for i in chunk_idx]
    if pad_to is not None:
      chunk = [_pad_example(dataset, ex, int(i), pad_to) for ex, i in zip(chunk, chunk_idx)]
    like = chunk[0] if chunk else _filler(dataset, pad_to)
    batch = {k: np.zeros((local,) + np.shape(like[k]), np.asarray(like[k]).dtype) for k in keys}
    for j, ex in enumerate(chunk):
      for k in keys:
        batch[k][j] = ex[k]
    batch['mask'][len(chunk):] = IGNORE_LABEL
    batch['valid'] = (np.arange(local) < len(chunk)).astype(np.int32)
    if pad_to is not None:
      batch['index'] = np.concatenate([chunk_idx, np.full(local - len(chunk), -1)]).astype(np.int32)
    yield batch


def _filler(dataset, pad_to):
  """An example with the dataset's shapes, for a process whose slice of the last batch is empty."""
  ex = dataset[0]
  return augment_lib.pad_to(ex, pad_to) if pad_to is not None else ex


def _pad_example(dataset, example, index: int, size) -> dict[str, np.ndarray]:
  try:
    return augment_lib.pad_to(example, size)
  except ValueError as e:
    name = f' ({dataset.name(index)})' if hasattr(dataset, 'name') else ''
    raise DataError(f'example {index}{name}: {e}') from e
