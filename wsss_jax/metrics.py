"""Segmentation metrics as the PASCAL VOC devkit computes them (Sec. 7, mIoU).

A K x K confusion matrix (rows: ground truth, columns: prediction) is summed
over all labelled pixels of all images, batches, devices and processes;
IoU_k = TP / (TP + FP + FN) and mIoU is the mean over the classes that occur
in the ground truth or the prediction. Label 255 marks ignored pixels.
"""
from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from wsss_jax.constants import IGNORE_LABEL


def confusion_matrix(labels: jax.Array, preds: jax.Array, num_classes: int,
                     ignore_label: int = IGNORE_LABEL) -> jax.Array:
  """(K, K) int32 counts of (ground truth, prediction) pairs; jit-compatible.

  Pixels with `labels == ignore_label` (or outside [0, K)) are not counted.
  """
  labels = labels.reshape(-1).astype(jnp.int32)
  preds = preds.reshape(-1).astype(jnp.int32)
  valid = (labels != ignore_label) & (labels >= 0) & (labels < num_classes)
  idx = jnp.where(valid, labels * num_classes + jnp.clip(preds, 0, num_classes - 1), 0)
  counts = jnp.bincount(idx, weights=valid.astype(jnp.int32), length=num_classes * num_classes)
  return counts.reshape(num_classes, num_classes).astype(jnp.int32)


def iou_per_class(conf: np.ndarray) -> np.ndarray:
  """IoU for each class; NaN for classes absent from both ground truth and prediction."""
  conf = np.asarray(conf, np.float64)
  tp = np.diag(conf)
  denom = conf.sum(0) + conf.sum(1) - tp
  with np.errstate(invalid='ignore', divide='ignore'):
    return np.where(denom > 0, tp / denom, np.nan)


def mean_iou(conf: np.ndarray) -> float:
  iou = iou_per_class(conf)
  return float(np.nanmean(iou)) if np.any(~np.isnan(iou)) else float('nan')


def average_precision(scores: np.ndarray, labels: np.ndarray) -> np.ndarray:
  """Per-class average precision of image-level scores (N, C) against boolean tags (N, C): the
  mean over each class's positives of the precision among the images scored at least as high
  (ties count against it). NaN for a class with no positive image. Evaluation reports it beside
  the mIoU (`tag_map`): a class the classifier does not rank is one attention cannot find."""
  scores = np.asarray(scores, np.float64)
  labels = np.asarray(labels, bool)
  out = np.full(scores.shape[1], np.nan)
  for c in range(scores.shape[1]):
    pos = scores[labels[:, c], c]
    if not len(pos):
      continue
    s = np.sort(scores[:, c])[::-1]
    ranked = np.searchsorted(-s, -pos, side='right')          # images scored >= each positive
    hits = np.searchsorted(np.sort(-pos), -pos, side='right')  # positives scored >= it
    out[c] = np.mean(hits / ranked)
  return out


def format_iou_table(conf: np.ndarray, class_names: list[str], title: str = 'method',
                     reference: tuple[str, Sequence[float]] | None = None) -> str:
  """Per-class IoU (%) in the layout of the paper's Table 2: one row, classes as columns, mIoU
  last; `reference` = (title, IoUs in % with the mean last) adds a row to compare with."""
  iou = iou_per_class(conf)
  names = [n[:6] for n in class_names] + ['mIoU']
  vals = [f'{100 * v:.1f}' if not np.isnan(v) else '-'
          for v in iou] + [f'{100 * mean_iou(conf):.1f}']
  width = max(6, *(len(n) for n in names))
  row = lambda t, vs: f'{t[:14]:<14}' + ''.join(f'{v:>{width + 1}}' for v in vs)
  lines = [row('', names), row(title, vals)]
  if reference is not None:
    lines.append(row(reference[0], [f'{v:.1f}' for v in reference[1]]))
  return '\n'.join(lines)
