"""Datasets and input pipelines (Sec. 7): the synthetic benchmark and PASCAL VOC 2012 (voc.py,
imported on demand because it loads tensorflow_datasets)."""
from wsss_jax.data.augment import DataError, TrainAugment, pad_to
from wsss_jax.data.pipeline import (
  TagBound,
  eval_batches,
  eval_pad_size,
  make_dataset,
  max_tags,
  train_augment,
  train_batches,
)

__all__ = ['make_dataset', 'train_batches', 'eval_batches', 'train_augment', 'eval_pad_size',
           'max_tags', 'TagBound', 'TrainAugment', 'pad_to', 'DataError']
