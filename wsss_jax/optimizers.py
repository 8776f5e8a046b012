"""The optimizer of Sec. 7 as optax transforms: the step schedule, weight decay with per-group
masks, and the FCL's learning-rate multiplier."""
from __future__ import annotations

from typing import Any, Mapping

import jax
import optax


def learning_rate_schedule(config) -> optax.Schedule:
  """Step schedule of Sec. 7: lr multiplied by `lr_decay_factor` every `lr_decay_every` steps."""
  t = config.train
  return optax.exponential_decay(t.learning_rate, transition_steps=t.lr_decay_every,
                                 decay_rate=t.lr_decay_factor, staircase=True)


def _group_mask(params: Mapping[str, Any], groups: set[str], inside: bool):
  """A mask pytree over {group: subtree} params: True on the leaves of the named groups
  (inside=True) or of the others (inside=False)."""
  return {k: jax.tree.map(lambda _, k=k: (k in groups) == inside, v) for k, v in params.items()}


def make_optimizer(config, *, fcl_frozen_in_warmup: bool = False) -> optax.GradientTransformation:
  """SGD with momentum and weight decay (Sec. 7); 'adam' is offered for short CPU runs.

  No weight decay on the CRF-RNN compatibility: with Adam a decay-only gradient moves it by ~lr
  per step, which would erase the Potts init in runs where no loss reaches it (B1, B2, warm-up).
  For the same reason none on the FCL when the warm-up trains another head
  (`fcl_frozen_in_warmup`): the FCL then starts the main phase at its init.

  `train.fcl_lr_scale` != 1 scales the FCL's update (Caffe's lr_mult for a new layer: Adam moves
  every weight by ~lr per step whatever its scale, and the FCL's start at 1/N). At 1 the chain
  has no such stage, so the optimizer state (and checkpoints) keep their structure.
  """
  t = config.train
  if t.optimizer == 'sgd':
    opt = optax.sgd(learning_rate_schedule(config), momentum=t.momentum)
  else:
    opt = optax.adam(learning_rate_schedule(config))
  no_decay = {'crf'} | ({'fcl'} if fcl_frozen_in_warmup else set())
  chain = [optax.add_decayed_weights(t.weight_decay,
                                     mask=lambda p: _group_mask(p, no_decay, inside=False)), opt]
  if t.fcl_lr_scale != 1.0:
    chain.append(optax.masked(optax.scale(t.fcl_lr_scale),
                              lambda p: _group_mask(p, {'fcl'}, inside=True)))
  return optax.chain(*chain)
