"""The train step under pmap (2 devices equal 1, every parameter group trained), the log window,
and training on images with more tags than the default class bound."""
import os
import re

import jax
import numpy as np
import pytest
from flax import jax_utils

from wsss_jax import data, losses, trainer

import helpers


@pytest.mark.parametrize('mode', ['weak', 'fully_supervised'])
def test_pmap_two_devices_equal_one_device(mode):
  assert jax.device_count() >= 2, 'conftest sets two host devices'
  # the reference below is SGD
  config = helpers.tiny_config(mode=mode, batch_size=4, optimizer='sgd', learning_rate=0.01)
  state = trainer.create_state(config, jax.random.key_data(jax.random.key(0)))
  ds = data.make_dataset(config.data, 'train')
  batch = next(data.train_batches(ds, global_batch=4, seed=0))
  p2, l2 = helpers.one_step(config, state, batch, jax.devices()[:2])
  # Reference: one device's unsharded SGD step on the whole batch, written with jax.grad here.
  loss_grad = jax.value_and_grad(lambda p: losses.training_loss(p, batch, None, config)[0])
  l1, grads = jax.jit(loss_grad)(state.params)
  lr, wd = config.train.learning_rate, config.train.weight_decay
  # first step: no momentum yet
  ref = jax.tree.map(lambda w, g: w - lr * (g + wd * w), state.params, grads)
  assert float(l1) == pytest.approx(l2, rel=1e-5)
  moved = 0.0
  for a, r, w0 in zip(jax.tree.leaves(p2), jax.tree.leaves(ref), jax.tree.leaves(state.params)):
    np.testing.assert_allclose(a, r, rtol=1e-4, atol=1e-6)
    moved = max(moved, float(np.max(np.abs(a - w0))))
  assert moved > 0  # the step did change the parameters


@pytest.mark.parametrize('seg_loss_on,seg_target', [('cnn', 'attention'), ('crf', 'attention'),
                                                     ('cnn', 'crf')])
def test_full_step_on_two_devices_updates_every_group(seg_loss_on, seg_target):
  """Default (Delta^S on p^S): backbone and FCL move, mu gets no loss gradient and keeps its
  Potts init (no weight decay on it); Delta^S on the CRF-RNN output also trains mu. With the
  CRF-refined target (seg_target = 'crf') the CRF-RNN runs but the target is fixed: mu stays."""
  assert jax.device_count() >= 2
  config = helpers.tiny_config()
  config.train.warmup_steps = 0
  config.train.seg_loss_on = seg_loss_on
  config.train.seg_target = seg_target
  config.train.batch_size = 4
  config.model.crf.lattice_capacity = 16   # too small on purpose: lattice_fill must say so
  state = trainer.create_state(config, jax.random.key_data(jax.random.key(0)))
  assert set(state.params) == {'backbone', 'fcl', 'crf'}
  ds = data.make_dataset(config.data, 'train')
  batch = next(data.train_batches(ds, global_batch=4, seed=0))
  devices = jax.devices()[:2]
  p = jax.pmap(lambda s, b, r: trainer.train_step(s, b, r, config), axis_name=trainer.AXIS,
               devices=devices)
  sharded = {k: v.reshape((2, 2) + v.shape[1:]) for k, v in batch.items()}
  new, aux = p(jax_utils.replicate(state, devices=devices), sharded,
               jax.random.split(jax.random.key(1), 2))
  aux = {k: float(v[0]) for k, v in aux.items()}
  assert np.isfinite(aux['loss']) and aux['seg_loss'] > 0 and aux['cls_loss'] > 0
  assert aux['loss'] == pytest.approx(aux['cls_loss'] + 1.5 * aux['seg_loss'], rel=1e-5)
  # the CRF-RNN is computed (and its lattice checked) only when a loss reaches it
  crf_runs = seg_loss_on == 'crf' or seg_target == 'crf'
  assert ('lattice_fill' in aux) == crf_runs
  if crf_runs:
    assert aux['lattice_fill'] > 1.0
  new = jax.tree.map(lambda x: np.asarray(x)[0], new.params)
  for group in ('backbone', 'fcl', 'crf'):
    moved = max(float(np.max(np.abs(a - b))) for a, b in
                zip(jax.tree.leaves(new[group]), jax.tree.leaves(state.params[group])))
    if group == 'crf' and seg_loss_on == 'cnn':  # (also with seg_target = 'crf': a fixed target)
      assert moved == 0.0, 'mu moved without a loss reaching it'
    else:
      assert moved > 1e-7, f'{group} did not change'


def test_log_window_keeps_the_worst_lattice_fill():
  """The training log window averages the metrics of its finite steps and keeps the worst step's
  CRF-RNN lattice fill (lattice_fill_max)."""
  window = [(s, {'loss': np.array([1.0]), 'nonfinite': np.array([0]),
                 'lattice_fill': np.array([f])})
            for s, f in ((1, 0.5), (2, 1.5), (3, 0.7))]
  means, bad = trainer.window_summary(window)
  assert (means['lattice_fill'] == pytest.approx(0.9) and means['lattice_fill_max'] == 1.5
          and not bad)


def test_a_world_of_five_objects_trains_and_evaluates_and_a_too_small_bound_is_refused(tmp_path):
  """train.py and its evaluation run on images with up to five tagged objects (the class bound
  comes from the data); an explicit bound below an image's tag count is one error line naming
  the image, before any step."""
  flags = [*helpers.TINY_FLAGS, '--config.data.generator.max_objects=5',
           '--config.train.num_steps=3', '--config.eval.num_images=0']
  res = helpers.run('train.py', *flags, f'--workdir={tmp_path / "five"}')
  assert res.returncode == 0, res.stderr[-3000:]
  assert 'val mIoU:' in res.stdout
  res = helpers.run('train.py', *flags, '--config.model.attention.max_classes=3',
                    f'--workdir={tmp_path / "three"}')
  assert res.returncode == 1 and 'Traceback' not in res.stderr, res.stderr[-3000:]
  line = helpers.last_error_line(res)
  assert re.match(r'error: training image train\[\d+\] has [3-5] tags, more than the 2 the '
                  r'attention walks \(model.attention.max_classes = 3', line), line
  assert not os.path.exists(tmp_path / 'three' / 'checkpoints' / '1')
