"""The Delta^C warm-up (the first train.warmup_steps steps), our stand-in for the paper's ImageNet
initialisation (Sec. 7), and starting a run from another run's warm-up (train.init_from).

The warm-up trains Delta^C alone, classified through train.warmup_head: attention of an untrained
network is noise, and one pre-trained classifier serves every row of Tables 1 and 5. Runs whose
warm-ups are the same computation (equal `warmup_signature`) share it: a run started from
another's warm-up checkpoint ends bit-identical to the same run from scratch (tested).
"""
from __future__ import annotations

import copy
import json
import os
from typing import Any

import jax

from wsss_jax import checkpointing, config_lib
from wsss_jax.config_lib import ConfigError


def warmup_trains_other_head(config) -> bool:
  """Whether the warm-up classifies through another head than the model's (its FCL, if it has
  one, then gets no gradient until the main phase)."""
  return (config.train.mode == 'weak' and int(config.train.warmup_steps) > 0
          and config_lib.warmup_head(config) != config.model.aggregation)


def warmup_config(config):
  """The config of the first train.warmup_steps steps: Delta^C only (no attention, no Delta^S),
  classified through train.warmup_head."""
  warm = copy.deepcopy(config)
  with warm.unlocked():
    warm.model.attention.enabled = False
    warm.train.seg_loss_weight = 0.0
    warm.model.cls_from = 'cnn'
    warm.model.aggregation = config_lib.warmup_head(config)
    warm.train.warmup_head = ''
  return warm


def warmup_signature(config) -> dict[str, Any]:
  """The config values the first train.warmup_steps steps depend on: two runs with equal
  signatures compute the same warm-up (same init, batches, dropout keys and updates).

  The warm-up's training signature without what configs/default.py declares NOT_IN_WARMUP, plus
  what decides the parameter tree and decay masks (whether a CRF-RNN and an FCL exist and
  whether the FCL is decayed), without a learning-rate step that falls after the warm-up."""
  sig = config_lib.training_signature(warmup_config(config))
  for key in config_lib.declared('NOT_IN_WARMUP'):
    config_lib.pop_path(sig, key)
  other_head = warmup_trains_other_head(config)
  has_fcl = config.model.aggregation == 'fcl'
  sig['model']['crf_enabled'] = bool(config.model.crf.enabled)  # whether the CRF-RNN has parameters
  sig['model']['fcl_params'] = has_fcl  # the parameter tree (and decay mask)
  if has_fcl:
    sig['model']['fcl_decay'] = not other_head
  if other_head or not has_fcl:  # no FCL, or it gets no step in the warm-up: it ends at its
    sig['train'].pop('fcl_lr_scale')  # init, which init_from_warmup takes from this run's form
    sig['model'].pop('fcl_form', None)
  if int(config.train.lr_decay_every) >= int(config.train.warmup_steps):  # no decay in the warm-up
    sig['train'].pop('lr_decay_every')
    sig['train'].pop('lr_decay_factor')
  return sig


def init_from_warmup(config, template):
  """The state at step train.warmup_steps of the run in train.init_from, after checking that
  its warm-up is this run's (the same config values act in it)."""
  src = config.train.init_from
  step = int(config.train.warmup_steps)
  if step <= 0:
    raise ConfigError('config.train.init_from needs config.train.warmup_steps > 0 '
                      '(it shares the warm-up)')
  other = config_lib.load_config(src)
  diff = config_lib.first_difference(warmup_signature(other), warmup_signature(config))
  if diff is not None:
    raise ConfigError(f"config.train.init_from={src}: that run's warm-up differs from this one's "
                      f'in {diff}')
  mngr = checkpointing.checkpoint_manager(src, other, read_only=True)
  try:
    state = checkpointing.restore_state(mngr, template, step)
  finally:
    mngr.close()
  if warmup_trains_other_head(config) and 'fcl' in template.params:
    # The warm-up left the FCL at its init (no gradient, no decay: tested), and its Adam moments
    # at 0; this run's init is taken, so a warm-up is shared across model.fcl_form too.
    state = state.replace(params={**state.params, 'fcl': template.params['fcl']})
  return state


def copy_warmup_metrics(src: str, workdir: str, step: int) -> None:
  """Start workdir/metrics.jsonl with the warm-up's records from the run it was taken from."""
  path, dest = os.path.join(src, 'metrics.jsonl'), os.path.join(workdir, 'metrics.jsonl')
  if jax.process_index() or not os.path.isfile(path) or os.path.exists(dest):
    return
  with open(path) as f:
    rows = [line for line in f if line.strip() and json.loads(line).get('step', step + 1) <= step]
  config_lib.atomic_write(dest, ''.join(rows))
