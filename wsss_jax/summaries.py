"""Where a run's numbers go: workdir/metrics.jsonl (one JSON record per logging window), TensorBoard
event files in workdir/tensorboard/ (tensorboardX: no TensorFlow), and a PNG of the training
curves (workdir/curves.png). Only process 0 writes.

  tensorboard --logdir runs/     # every run's training and eval scalars
"""
from __future__ import annotations

import json
import os
from typing import Any, Mapping

import jax

from wsss_jax import visualize
from wsss_jax.config_lib import CheckpointError

# metrics.jsonl keys and their TensorBoard tags
_TAGS = {'loss': 'train/loss', 'cls_loss': 'train/cls_loss', 'seg_loss': 'train/seg_loss',
         'lr': 'train/lr', 'images_per_sec': 'train/images_per_sec',
         'nonfinite_steps': 'train/nonfinite_steps', 'lattice_fill': 'train/lattice_fill',
         'lattice_fill_max': 'train/lattice_fill_max', 'qp_converged': 'train/qp_converged'}
# eval JSON keys written as <split>/<key>
EVAL_SCALARS = ('miou', 'miou_cnn', 'miou_attention', 'tag_map', 'class_threshold', 'qp_converged',
                'lattice_fill')


class RunLog:
  """metrics.jsonl plus TensorBoard for one workdir (a no-op on processes other than 0)."""

  def __init__(self, workdir: str):
    self.workdir = workdir
    self.active = jax.process_index() == 0
    self._writer = None

  def _tb(self):
    if self._writer is None:
      from tensorboardX import SummaryWriter  # pylint: disable=import-outside-toplevel
      self._writer = SummaryWriter(os.path.join(self.workdir, 'tensorboard'), flush_secs=30)
    return self._writer

  def train(self, record: Mapping[str, Any]) -> None:
    """One logging window's means (with 'step') to metrics.jsonl and TensorBoard."""
    if not self.active:
      return
    path = os.path.join(self.workdir, 'metrics.jsonl')
    try:
      with open(path, 'a') as f:
        f.write(json.dumps(dict(record)) + '\n')
    except OSError as e:
      raise CheckpointError(f'cannot write {path}: {e}') from None
    tb = self._tb()
    for key, value in record.items():
      if key in _TAGS and value is not None:
        tb.add_scalar(_TAGS[key], float(value), int(record['step']))

  def evaluation(self, result: Mapping[str, Any]) -> None:
    """An eval result's scalars as <split>[_<variant>]/<key> at its step."""
    if not self.active or result.get('step') is None:
      return
    prefix = result['split'] + (f'_{result["variant"]}' if result.get('variant') else '')
    tb = self._tb()
    for key in EVAL_SCALARS:
      if result.get(key) is not None:
        tb.add_scalar(f'{prefix}/{key}', float(result[key]), int(result['step']))
    tb.flush()

  def curves(self) -> str | None:
    """Plot metrics.jsonl into workdir/curves.png; returns its path."""
    path = os.path.join(self.workdir, 'metrics.jsonl')
    if not self.active or not os.path.isfile(path):
      return None
    with open(path) as f:
      rows = [json.loads(line) for line in f if line.strip()]
    out = os.path.join(self.workdir, 'curves.png')
    visualize.save_curves(out, rows, ['loss', 'cls_loss', 'seg_loss', 'lr', 'images_per_sec',
                                      'qp_converged'])
    return out

  def close(self) -> None:
    if self._writer is not None:
      self._writer.close()
      self._writer = None
