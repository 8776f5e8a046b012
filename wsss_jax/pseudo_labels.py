"""Pseudo-labels for a fully supervised second stage: the trained model's segmentation of a split's
images given their ground-truth tags (known for training images), one VOC palette PNG per image
at its original size in <out>/SegmentationClassAug/<id>.png, the layout DeepLab-style trainers
read (here: config.data.train_masks).

With the tags as the class mask, attention p^A is computed for exactly the tagged classes and
background, and the label of a pixel is the best tagged class under the CRF-RNN's output (or
p^S p^A without a CRF-RNN). `confidence` > 0 marks pixels whose top probability, renormalised
over the tagged classes, is below it as 255 (ignored by the second stage's loss), as the field's
pseudo-label pipelines do. Finished files are kept (the run resumes), and where the split has
masks the pseudo-labels' mIoU against them is reported.
"""
from __future__ import annotations

import json
import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from wsss_jax import config_lib, data, evaluation, metrics, model, visualize
from wsss_jax.constants import IGNORE_LABEL
from wsss_jax.data import label_folder
from wsss_jax.parallel import AXIS, replicate, shard


def label_with_tags(params, images, tags, config, confidence: float = 0.0):
  """(B, H, W) labels of uint8 images given (B, C) foreground tags: the best tagged class (or
  background) of the CRF-RNN's output, 255 where its renormalised probability < `confidence`."""
  mask = model.tags_with_background(tags.astype(jnp.float32))
  out = model.segment(params, images, config, mask, train=False)
  if 'crf_probs' in out:
    probs = out['crf_probs']
  elif 'attention' in out:
    probs = out['p_s'] * out['attention']
  else:
    probs = out['p_s']
  probs = probs * mask[:, None, None, :]
  probs = probs / jnp.maximum(jnp.sum(probs, -1, keepdims=True), 1e-12)
  labels = jnp.argmax(probs, -1)
  return jnp.where(jnp.max(probs, -1) < confidence, IGNORE_LABEL, labels)


def write_pseudo_labels(workdir: str, out: str, *, split: str = 'train', step: int | None = None,
                        confidence: float = 0.0, limit: int | None = None,
                        progress: bool = True) -> dict[str, Any]:
  """Write the pseudo-labels of `split` for the workdir's latest (or given) checkpoint into
  `out`; returns (and writes to <out>/pseudo_labels_<split>.json) what was done: files written
  and kept, the share of ignored pixels, and the mIoU against the split's masks."""
  config, params, step = evaluation.load_trained(workdir, step)
  if config.train.mode != 'weak':
    raise config_lib.ConfigError(f'{workdir} is a {config.train.mode} run: pseudo-labels come '
                                 'from a weakly supervised model')
  ds = data.make_dataset(config.data, split)
  n = len(ds) if limit is None else min(limit, len(ds))
  if not n:
    raise config_lib.ConfigError(f'the {split} split of data "{config.data.name}" has no examples')
  os.makedirs(os.path.join(out, label_folder.FOLDER), exist_ok=True)
  run = jax.pmap(lambda p, x, t: label_with_tags(p, x, t, config, confidence), axis_name=AXIS)
  rparams = replicate(params)
  k = config.data.num_classes + 1
  conf, stats = np.zeros((k, k), np.int64), {'written': 0, 'kept': 0, 'ignored': 0, 'pixels': 0}
  bar = tqdm(total=n, unit='img', disable=not progress or jax.process_index() != 0)
  for start, batch in zip(range(0, n, config.eval.batch_size),
                          data.eval_batches(ds, config.eval.batch_size, limit=n,
                                            pad_to=data.eval_pad_size(config.data))):
    index = batch['index'] if 'index' in batch else np.arange(start, start + len(batch['valid']))
    valid = np.nonzero(batch['valid'])[0]
    ids = {i: label_folder.example_id(ds, index[i]) for i in valid}
    todo = [i for i in valid if not os.path.isfile(label_folder.label_path(out, ids[i]))]
    labels = None
    if todo:
      labels = np.asarray(run(rparams, *(shard({'x': batch['image'], 't': batch['tags']})[key]
                                         for key in ('x', 't')))).reshape(batch['mask'].shape)
    sizes = batch.get('size', np.tile(batch['mask'].shape[1:], (len(batch['valid']), 1)))
    for i in valid:
      h, w = sizes[i]
      path = label_folder.label_path(out, ids[i])
      if i in todo:
        label = labels[i, :h, :w]
        visualize.save_label_png(path, label)
        stats['written'] += 1
      else:
        label = label_folder.read_label_png(path)
        stats['kept'] += 1
      stats['ignored'] += int(np.sum(label == IGNORE_LABEL))
      stats['pixels'] += label.size
      conf += _confusion(batch['mask'][i, :h, :w], label, k)
    bar.update(len(valid))
  bar.close()
  iou = metrics.iou_per_class(conf) if conf.sum() else None
  result = {'workdir': workdir, 'step': step, 'split': split, 'images': n,
            'confidence': confidence, 'written': stats['written'], 'kept': stats['kept'],
            'ignored_fraction': stats['ignored'] / max(stats['pixels'], 1),
            'miou': None if iou is None else metrics.mean_iou(conf),
            'iou': None if iou is None else {
                c: (None if np.isnan(v) else float(v)) for c, v in zip(ds.class_names, iou)}}
  config_lib.atomic_write(os.path.join(out, f'pseudo_labels_{split}.json'),
                          json.dumps(result, indent=1, allow_nan=False))
  return result


def _confusion(truth: np.ndarray, label: np.ndarray, k: int) -> np.ndarray:
  """(k, k) counts over the pixels both label (neither is 255), rows ground truth."""
  keep = (truth != IGNORE_LABEL) & (label != IGNORE_LABEL)
  return np.bincount(truth[keep].astype(np.int64) * k + label[keep], minlength=k * k).reshape(k, k)
