"""Datasets and input pipelines (Sec. 7)."""
from wsss_jax.data.pipeline import eval_batches, make_dataset, train_batches

__all__ = ['make_dataset', 'train_batches', 'eval_batches']
