"""Evaluation (Sec. 7): predicted tags, the class threshold, the eval step, and the outputs of an
eval run (the IoU table in the layout of Table 2, eval_<split>.json, examples_<split>.png, and
the VOC test server's PNGs).

At inference there are no tags: a class is predicted when its image-level sigmoid score passes
eval.class_threshold, which eval.tune_threshold chooses on the tags of eval.tune_split (best
mean per-class F1). `evaluate_workdir` is the job behind eval.py; `EvalRequest` carries what
eval.py asks for beyond the workdir's config (an inference variant and its file-name suffix).
"""
from __future__ import annotations

import copy
import dataclasses
import json
import math
import os
from typing import Any, Sequence

import jax
import numpy as np
from flax import jax_utils
from jax.experimental import multihost_utils

from wsss_jax import checkpointing, config_lib, data, metrics, model, summaries, visualize
from wsss_jax import state as state_lib
from wsss_jax.config_lib import ConfigError
from wsss_jax.parallel import AXIS, shard

# The paper's Table 2 row (PASCAL VOC 2012 val, per-class IoU %), printed under ours for VOC.
PAPER_VOC_VAL = ('Roy&Todorovic', (85.8, 65.2, 29.4, 63.8, 31.2, 37.2, 69.6, 64.3, 76.2, 21.4, 56.3,
                                   29.8, 68.2, 60.6, 66.2, 55.8, 30.8, 66.1, 34.9, 48.8, 47.1,
                                   52.8))
PART_NAMES = {'miou_cnn': 'CNN (argmax p^S)', 'miou_attention': 'attention (argmax p^A)'}


def percent(x: float | None) -> str:
  """'74.15' for 0.7415; 'n/a' for a figure a split does not have (no labels)."""
  return 'n/a' if x is None else f'{100 * x:.2f}'


def _finite(x: float) -> float | None:
  return None if x is None or math.isnan(x) else float(x)


# ---------------------------------------------------------------------------------------------
# What eval.py asks for.

@dataclasses.dataclass(frozen=True)
class EvalRequest:
  """An inference variant of a trained model: overrides of config.eval (None keeps the config's
  value) and CRF-RNN inference settings (`crf`, pairs of a configs/default.py CRF_INFERENCE leaf
  name and its value). Its results go to files suffixed with `variant()`."""
  attention: bool | None = None
  dense_crf: bool | None = None
  scales: tuple[float, ...] | None = None
  flip: bool | None = None
  class_threshold: float | None = None
  crf: tuple[tuple[str, float], ...] = ()
  partial_archive: bool = False  # VOC test: write an archive even with listed ids missing

  def __post_init__(self):
    allowed = [k.rpartition('.')[2] for k in config_lib.declared('CRF_INFERENCE')]
    for key, _ in self.crf:
      if key not in allowed:
        raise ConfigError(f'--crf: {key} is not a CRF-RNN inference setting '
                          f'(one of {tuple(allowed)})')
    if self.scales is not None and (not self.scales or any(float(s) <= 0 for s in self.scales)):
      raise ConfigError(f'--scales must be positive numbers, got {self.scales}')

  @staticmethod
  def parse_crf(items: Sequence[str] | None) -> tuple[tuple[str, float], ...]:
    """'key=number' items (eval.py --crf) -> ((key, value), ...); a malformed item is a
    ConfigError."""
    out = []
    for item in items or ():
      key, sep, value = item.partition('=')
      try:
        number = float(value)
      except ValueError:
        sep = ''
      if not sep:
        raise ConfigError(f'--crf expects key=number items, got {item!r}')
      out.append((key.strip(), number))
    return tuple(out)

  def variant(self) -> str:
    """File-name suffix ('' for the config's own settings), e.g. 'noatt_densecrf', 'noatt_t0.3'."""
    parts = []
    if self.attention is not None:
      parts.append('att' if self.attention else 'noatt')
    if self.dense_crf is not None:
      parts.append('densecrf' if self.dense_crf else 'nodensecrf')
    if self.scales is not None:
      parts.append('s' + '-'.join(f'{float(x):g}' for x in self.scales))
    if self.flip is not None:
      parts.append('flip' if self.flip else 'noflip')
    if self.class_threshold is not None:
      parts.append(f't{float(self.class_threshold):g}')
    if self.crf:
      parts.append('crf-' + '-'.join(f'{k}{float(v):g}' for k, v in sorted(self.crf)))
    return '_'.join(parts)

  def apply(self, config: Any) -> Any:
    """A copy of `config` with this request's settings (a fixed class threshold is not tuned)."""
    config = copy.deepcopy(config)
    with config.unlocked():
      e = config.eval
      if self.attention is not None:
        e.attention = bool(self.attention)
      if self.dense_crf is not None:
        e.dense_crf.enabled = bool(self.dense_crf)
      if self.scales is not None:
        e.scales = tuple(float(s) for s in self.scales)
      if self.flip is not None:
        e.flip = bool(self.flip)
      if self.class_threshold is not None:
        e.class_threshold, e.tune_threshold = float(self.class_threshold), False
      for key, value in self.crf:  # typed as the config's own value (bool, int or float)
        config.model.crf[key] = type(config.model.crf[key])(value)
    return config


# ---------------------------------------------------------------------------------------------
# Tags and the class threshold.

def eval_dataset(config, split: str):
  """The dataset of an eval split; an empty one is a ConfigError."""
  ds = data.make_dataset(config.data, split)
  if not len(ds):
    raise ConfigError(f'the {split} split of data "{config.data.name}" has no examples')
  return ds


def _eval_stream(ds, config, limit):
  """This process's share of the eval batches (padded to data.eval_size for variable-size
  images)."""
  return data.eval_batches(ds, config.eval.batch_size, process_index=jax.process_index(),
                           process_count=jax.process_count(), limit=limit,
                           pad_to=data.eval_pad_size(config.data))


def image_scores(params, config, split: str) -> tuple[np.ndarray, np.ndarray]:
  """Sigmoid image-level scores (N, C) of the foreground classes on `split` (the model's head) and
  its tags (N, C) as booleans, gathered over all processes."""
  ds = eval_dataset(config, split)
  p_scores = jax.pmap(
      lambda p, x: jax.nn.sigmoid(model.forward(p, x, config, train=False)['image_logits'][:, 1:]),
      axis_name=AXIS)
  rparams = jax_utils.replicate(params)
  scores, tags, valid = [], [], []
  for batch in _eval_stream(ds, config, config.eval.num_examples or None):
    s = np.asarray(p_scores(rparams, shard({'image': batch['image']})['image']))
    scores.append(s.reshape(len(batch['valid']), -1))
    tags.append(batch['tags'] > 0)
    valid.append(batch['valid'] > 0)
  scores, tags, valid = np.concatenate(scores), np.concatenate(tags), np.concatenate(valid)
  if jax.process_count() > 1:  # every process sees all of the split
    scores, tags, valid = (
        np.asarray(multihost_utils.process_allgather(x)).reshape((-1,) + x.shape[1:])
        for x in (scores, tags, valid))
  return scores[valid], tags[valid]


def tune_class_threshold(scores: np.ndarray, tags: np.ndarray) -> tuple[float, float]:
  """The sigmoid threshold on the image scores (N, C) that best predicts the tags (N, C) (mean
  per-class F1 over a 0.05..0.95 grid): inference has no tags (Sec. 7). Returns (threshold, F1)."""
  best = (0.5, -1.0)
  for t in np.arange(0.05, 0.951, 0.05):
    pred = scores > t
    tp = (pred & tags).sum(0)
    f1 = np.mean(2 * tp / np.maximum(pred.sum(0) + tags.sum(0), 1))
    if f1 > best[1] + 1e-9:
      best = (float(round(t, 2)), float(f1))
  return best


def choose_class_threshold(params, config) -> tuple[float, float]:
  """(threshold, its tag F1) chosen on eval.tune_split's tags alone (the protocol: a setting is
  never chosen on the split its numbers are reported on)."""
  return tune_class_threshold(*image_scores(params, config, config.eval.tune_split))


def _tags_and_threshold(params, config, split: str, class_names: Sequence[str]):
  """(config with the class threshold to use, tag figures of `split`): the image classifier's
  per-class AP on `split`'s tags (when it has any), and the threshold chosen on
  eval.tune_split when eval.tune_threshold is set."""
  figures = {}
  scores, tags = image_scores(params, config, split)
  if tags.any():
    ap = metrics.average_precision(scores, tags)
    figures = {'tag_map': float(np.nanmean(ap)),
               'tag_ap': {n: _finite(v) for n, v in zip(list(class_names)[1:], ap)}}
    print(f'image classification on {split}: mAP {100 * figures["tag_map"]:.1f} ('
          + ', '.join(f'{n} {100 * v:.0f}' for n, v in figures['tag_ap'].items() if v is not None)
          + ')')
  if config.eval.tune_threshold:
    threshold, f1 = choose_class_threshold(params, config)
    config = copy.deepcopy(config)
    with config.unlocked():
      config.eval.class_threshold = threshold
    print(f'class threshold {threshold:.2f} (tag F1 {f1:.3f} on {config.eval.tune_split})')
  return config, figures


# ---------------------------------------------------------------------------------------------
# The eval step and the outputs.

def eval_step(params, batch, config):
  """Confusion matrices of this shard's label maps (final; CNN argmax p^S; attention argmax
  p^A, for the predicted classes), summed over all devices (and processes), the largest
  CRF-RNN lattice any of them needed (0 without a CRF-RNN), the attention QPs that converged
  and their number (summed), and the maps."""
  k = config.data.num_classes + 1
  pred = model.infer(params, batch['image'], config)
  size = pred.pop('lattice_size', jax.numpy.zeros((), jax.numpy.int32))
  qp = {key: pred.pop(key, jax.numpy.zeros((), jax.numpy.int32))
        for key in ('qp_converged', 'qp_problems')}
  conf = {name: metrics.confusion_matrix(batch['mask'], maps, k) for name, maps in pred.items()
          if name != 'attention_probs'}
  return jax.lax.psum(conf, AXIS), jax.lax.pmax(size, AXIS), jax.lax.psum(qp, AXIS), pred


def evaluate(params, config, split: str, *, workdir: str | None = None, step: int | None = None,
             limit: int | None = None, variant: str = '', partial_archive: bool = False
             ) -> dict[str, Any]:
  """mIoU on `split` (all processes and devices pooled); writes the table/JSON/PNG to workdir.

  Images are scored at their original resolution (padding is ignored by the metrics and
  cropped off predictions). On a split without labels (VOC test) it writes the predictions
  as VOC palette PNGs for the evaluation server instead (`data.voc_server`), and the archive
  only when every id the devkit lists has one (`partial_archive`: a clearly named partial one).
  The attention's class bound (model.attention.max_classes = 0) is the training data's.
  """
  config = config_lib.with_class_bound(
      config, data.max_tags(data.make_dataset(config.data, 'train')))
  ds = eval_dataset(config, split)
  names = list(ds.class_names)
  tag_figures = {}
  if config.train.mode == 'weak':
    config, tag_figures = _tags_and_threshold(params, config, split, names)
  p_eval = jax.pmap(lambda p, b: eval_step(p, b, config), axis_name=AXIS)
  rparams = jax_utils.replicate(params)
  k = config.data.num_classes + 1
  confs, shown, predictions = {}, [], {}
  limit = limit if limit is not None else (config.eval.num_examples or None)
  unlabelled = split == 'test' and hasattr(ds, 'name')
  lattice_rows, qp = 0, np.zeros(2, np.int64)
  for batch in _eval_stream(ds, config, limit):
    c, size, qp_counts, pred = p_eval(rparams, shard({kk: batch[kk] for kk in ('image', 'tags',
                                                                               'mask')}))
    lattice_rows = max(lattice_rows, int(np.asarray(size)[0]))
    qp += [int(np.asarray(qp_counts[key])[0]) for key in ('qp_converged', 'qp_problems')]
    for name, m in c.items():
      confs[name] = confs.get(name, 0) + np.asarray(m[0], np.int64)
    if len(shown) < config.eval.num_images or unlabelled:
      probs = pred.pop('attention_probs', None)
      pred = {kk: np.asarray(v).reshape(batch['mask'].shape) for kk, v in pred.items()}
      if probs is not None and len(shown) < config.eval.num_images:
        probs = np.asarray(probs).reshape(batch['mask'].shape + (k,))
      sizes = batch.get('size', np.tile(batch['mask'].shape[1:], (len(batch['mask']), 1)))
      for i in np.nonzero(batch['valid'])[0]:
        h, w = sizes[i]
        if unlabelled:
          predictions[ds.name(int(batch['index'][i]))] = pred['final'][i, :h, :w]
        if len(shown) < config.eval.num_images:
          row = {'image': batch['image'][i, :h, :w], 'cnn': pred['cnn'][i, :h, :w],
                 'final': pred['final'][i, :h, :w],
                 'truth': None if unlabelled else batch['mask'][i, :h, :w]}
          if probs is not None:  # heat maps of the predicted foreground classes
            row['attention'] = probs[i, :h, :w]
            row['classes'] = [int(c) for c in range(1, k) if probs[i, :h, :w, c].max() > 0]
          shown.append(row)
  conf = confs.get('final', np.zeros((k, k), np.int64))
  iou = metrics.iou_per_class(conf)
  # The parts of the pipeline on their own (diagnostics: what the CRF-RNN adds to p^S, how good
  # the attention map for the predicted classes is).
  parts = {f'miou_{name}': _finite(metrics.mean_iou(m)) for name, m in confs.items()
           if name != 'final'}
  result = {'split': split, 'variant': variant, 'step': step,
            'miou': _finite(metrics.mean_iou(conf)), **parts,
            'class_threshold': float(config.eval.class_threshold),
            'class_threshold_split': (config.eval.tune_split if config.eval.tune_threshold
                                      and config.train.mode == 'weak' else None),
            **tag_figures,
            'model_crf': {key.rpartition('.')[2]: config_lib.get_path(config, key)
                          for key in config_lib.declared('CRF_INFERENCE')},
            'iou': {n: _finite(v) for n, v in zip(names, iou)},
            'confusion': conf.tolist()}
  if qp[1]:
    result['qp_converged'] = float(qp[0] / qp[1])
    if qp[0] < 0.99 * qp[1] and jax.process_index() == 0:
      att = config.model.attention
      print(f'warning: {qp[1] - qp[0]} of the {qp[1]} attention QPs on {split} stopped at '
            f'model.attention.qp_iters = {att.qp_iters} before reaching qp_tol = {att.qp_tol} '
            '(their maps are not KKT points): raise qp_iters')
  capacity = config.model.crf.lattice_capacity
  if capacity and lattice_rows:
    result['lattice_fill'] = lattice_rows / capacity
    if lattice_rows > capacity and jax.process_index() == 0:
      print(f'warning: an image of {split} needs {lattice_rows} CRF-RNN lattice rows but '
            f'model.crf.lattice_capacity is {capacity}: lattice points past it were dropped '
            f'(their message mass is lost); raise it or set it to 0 (worst case)')
  suffix = f'{split}_{variant}' if variant else split
  if workdir is not None and unlabelled:
    from wsss_jax.data import voc_server  # pylint: disable=import-outside-toplevel
    covered = {ds.name(i) for i in range(len(ds) if limit is None else min(limit, len(ds)))}
    missing = sorted(set(ds.listed_ids or ()) - covered)
    config_lib.atomic_write(os.path.join(workdir, f'eval_{suffix}.json'),
                            json.dumps(result, indent=1, allow_nan=False))
    result['server_archive'] = voc_server.write_server_results(
        workdir, suffix, predictions, names=sorted(covered), missing=missing,
        partial=partial_archive)
  if workdir is not None and jax.process_index() == 0:
    if not unlabelled:
      reference = PAPER_VOC_VAL if config.data.name == 'voc2012' and split == 'val' else None
      print(metrics.format_iou_table(conf, names, title=f'{config.train.mode}@{step}',
                                     reference=reference))
      if parts:
        print('mIoU of the parts: '
              + ', '.join(f'{PART_NAMES[n]} {percent(v)}' for n, v in parts.items()))
    config_lib.atomic_write(os.path.join(workdir, f'eval_{suffix}.json'),
                            json.dumps(result, indent=1, allow_nan=False))
    visualize.save_examples(os.path.join(workdir, f'examples_{suffix}.png'), shown, names)
    log = summaries.RunLog(workdir)
    log.evaluation(result)
    log.close()
  return result


def load_trained(workdir: str, step: int | None = None, request: EvalRequest | None = None):
  """(config, params, step) of a train.py workdir's latest (or given) checkpoint, the config with
  `request`'s inference settings and the attention's class bound resolved from the data."""
  if not os.path.isdir(workdir):
    raise ConfigError(f'workdir {workdir} is not a directory')
  config = (request or EvalRequest()).apply(config_lib.load_config(workdir))
  config_lib.validate_config(config)
  mngr = checkpointing.checkpoint_manager(workdir, config, read_only=True)
  try:
    state = checkpointing.restore_state(
        mngr, state_lib.create_state(config, jax.random.key_data(jax.random.key(0))), step)
  finally:
    mngr.close()
  config = config_lib.with_class_bound(
      config, data.max_tags(data.make_dataset(config.data, 'train')))
  return config, state.params, int(state.step)


def evaluate_workdir(workdir: str, split: str | None = None, step: int | None = None,
                     request: EvalRequest | None = None) -> dict[str, Any]:
  """Evaluate the latest (or given) checkpoint of a train.py workdir (the job behind eval.py)."""
  request = request or EvalRequest()
  config, params, step = load_trained(workdir, step, request)
  split = split or config.eval.split
  result = evaluate(params, config, split, workdir=workdir, step=step, variant=request.variant(),
                    partial_archive=request.partial_archive)
  print(f'{split} mIoU: {percent(result["miou"])} (step {step})')
  return result
