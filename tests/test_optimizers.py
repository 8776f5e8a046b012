"""The optimizer of Sec. 7: the FCL's learning-rate multiplier."""
import copy

import jax
import numpy as np
import pytest

from wsss_jax import config_lib, data, trainer

import helpers


def test_fcl_lr_scale_scales_only_the_fcl_step():
  """train.fcl_lr_scale: one Adam step moves the FCL by that fraction of the unscaled step and
  every other parameter exactly as without it."""
  base = helpers.tiny_config(warmup_steps=0)
  base.model.crf.enabled = False
  base.model.attention.enabled = False
  base.train.seg_loss_weight = 0.0
  scaled = copy.deepcopy(base)
  scaled.train.fcl_lr_scale = 0.1
  batch = next(data.train_batches(data.make_dataset(base.data, 'train'), global_batch=4, seed=0))
  dev = jax.devices()[:1]
  key = jax.random.key_data(jax.random.key(3))
  init = jax.device_get(trainer.create_state(base, key).params)
  (p1, _), (p2, _) = (helpers.one_step(c, trainer.create_state(c, key), batch, dev)
                      for c in (base, scaled))
  for name in ('w', 'b'):
    np.testing.assert_allclose(p2['fcl'][name] - init['fcl'][name],
                               0.1 * (p1['fcl'][name] - init['fcl'][name]), rtol=1e-3, atol=1e-9)
  assert np.abs(p1['fcl']['w'] - init['fcl']['w']).max() > 1e-5
  for x, y in zip(jax.tree.leaves(p1['backbone']), jax.tree.leaves(p2['backbone'])):
    np.testing.assert_array_equal(x, y)
  bad = helpers.tiny_config(fcl_lr_scale=-1.0)
  with pytest.raises(config_lib.ConfigError, match='fcl_lr_scale must be a number >= 0'):
    config_lib.validate_config(bad)
