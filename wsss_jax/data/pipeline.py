"""Input pipelines on grain: a deterministic function of (seed, step), so resuming is exact.

The training stream is ``shuffle -> repeat -> batch(per-process batch)`` on a
grain `MapDataset`; global step k is the process-batches [k*P, (k+1)*P) and
process p reads batch k*P + p. Batch k can be recomputed from k alone, so a
resumed run sees exactly the batches an uninterrupted one would.
"""
from __future__ import annotations

from typing import Any, Iterator, Mapping

import grain
import numpy as np

from wsss_jax.data.synthetic import SyntheticWSSS

IGNORE_LABEL = 255


def make_dataset(data_cfg: Mapping[str, Any], split: str):
  """The random-access dataset named by `data_cfg.name` for `split`."""
  name = data_cfg['name']
  if name == 'synthetic':
    sizes = {'train': data_cfg['train_size'], 'val': data_cfg['val_size'], 'test': data_cfg['test_size']}
    if split not in sizes:
      raise ValueError(f'unknown split {split!r}; synthetic data has {sorted(sizes)}')
    return SyntheticWSSS(split, sizes[split], image_size=data_cfg['image_size'],
                         num_classes=data_cfg['num_classes'], seed=data_cfg['seed'],
                         **dict(data_cfg.get('generator', {})))
  raise ValueError(f'config.data.name must be "synthetic", got {name!r}')


def train_batches(dataset, *, global_batch: int, seed: int, start_step: int = 0,
                  process_index: int = 0, process_count: int = 1,
                  num_threads: int = 2) -> Iterator[dict[str, np.ndarray]]:
  """Endless iterator over this process's share of the global batches, from `start_step`."""
  if global_batch % process_count:
    raise ValueError(f'global batch {global_batch} is not divisible by {process_count} processes')
  local = global_batch // process_count
  ds = (grain.MapDataset.source(dataset).seed(seed).shuffle().repeat()
        .batch(local, drop_remainder=True))
  ds = ds[start_step * process_count + process_index::process_count]
  opts = grain.ReadOptions(num_threads=num_threads, prefetch_buffer_size=4 * max(num_threads, 1))
  return iter(ds.to_iter_dataset(opts))


def eval_batches(dataset, batch_size: int, *, process_index: int = 0,
                 process_count: int = 1, limit: int | None = None) -> Iterator[dict[str, np.ndarray]]:
  """One pass over `dataset` in fixed-size batches; the last one is padded with
  ignored pixels (mask = 255, tags = 0) and 'valid' = 0, so it adds nothing to metrics."""
  n = len(dataset) if limit is None else min(limit, len(dataset))
  idx = np.arange(process_index, n, process_count)
  for start in range(0, len(idx), batch_size):
    chunk = [dataset[int(i)] for i in idx[start:start + batch_size]]
    pad = batch_size - len(chunk)
    batch = {k: np.stack([ex[k] for ex in chunk]) for k in ('image', 'tags', 'mask')}
    batch['valid'] = np.ones(len(chunk), np.int32)
    if pad:
      batch = {k: np.concatenate([v, np.zeros((pad,) + v.shape[1:], v.dtype)]) for k, v in batch.items()}
      batch['mask'][len(chunk):] = IGNORE_LABEL
    yield batch
