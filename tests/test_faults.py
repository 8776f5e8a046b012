"""Multi-host training, preemption and resume, numerical faults and bad input.

Every test checks that nothing saved before the fault (checkpoints, outputs) was lost.
The subprocess runs share a persistent XLA compilation cache (tests/conftest.py), so
the tiny config compiles once for all of them.
"""
import gc
import json
import os
import signal
import socket
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import jax_utils

from configs import tiny
from wsss_jax import checkpointing, config_lib, data, losses, trainer

import helpers

TINY = helpers.TINY_FLAGS


def _train(workdir, *flags, fault=None, devices=1, timeout=300):
  script = ('tests/fault_driver.py', fault) if fault else ('train.py',)
  return helpers.run(*script, *TINY, f'--workdir={workdir}', *flags, devices=devices,
                     timeout=timeout)


def _steps(workdir):
  d = os.path.join(workdir, 'checkpoints')
  return sorted(int(x) for x in os.listdir(d) if x.isdigit()) if os.path.isdir(d) else []


def _restore(workdir, step=None):
  config = config_lib.load_config(workdir)
  mngr = checkpointing.checkpoint_manager(workdir, config)
  state = checkpointing.restore_state(
      mngr, trainer.create_state(config, jax.random.key_data(jax.random.key(9))), step)
  mngr.close()
  return jax.device_get(state)


def _metrics(workdir):
  rows = [json.loads(l) for l in open(os.path.join(workdir, 'metrics.jsonl'))]
  return [{k: v for k, v in r.items() if k != 'images_per_sec'} for r in rows]


def _assert_same_params(a, b):
  for (path, x), y in zip(jax.tree_util.tree_flatten_with_path(a.params)[0],
                          jax.tree.leaves(b.params)):
    np.testing.assert_array_equal(x, y, err_msg=jax.tree_util.keystr(path))


@pytest.fixture(scope='module')
def straight(tiny_straight):
  """An uninterrupted 20-step tiny run, logging every step (tests/conftest.py; read only)."""
  return tiny_straight[0]


def test_importing_the_package_initialises_no_backend():
  # jax.distributed.initialize() must come before any backend use: importing must not use one.
  for script in ('train', 'eval'):  # (each defines its own flags: one per process)
    code = (f'import {script}, wsss_jax.weights, wsss_jax.data.voc; '
            'from jax._src import xla_bridge; '
            'assert not xla_bridge.backends_are_initialized(), '
            '"a module touched a JAX backend at import"')
    res = helpers.run('-c', code, timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]


def test_sigterm_saves_then_resume_equals_uninterrupted_run(straight, tmp_path):
  workdir = str(tmp_path / 'preempted')
  proc = helpers.run('train.py', *TINY, f'--workdir={workdir}', '--config.train.num_steps=20',
                     '--config.train.log_every=1', '--config.train.checkpoint_every=100',
                     background=True)
  metrics = os.path.join(workdir, 'metrics.jsonl')
  deadline = time.time() + 240
  while time.time() < deadline and proc.poll() is None:
    if os.path.exists(metrics) and len(open(metrics).readlines()) >= 3:
      break
    time.sleep(0.05)
  proc.send_signal(signal.SIGTERM)
  out, err = proc.communicate(timeout=240)
  assert proc.returncode == trainer.PREEMPTED_EXIT_CODE, err[-3000:]
  assert 'Traceback' not in err
  # the warm-up's end (step 2 of the tiny config) is always kept; one more save: the preemption's
  assert _steps(workdir)[0] == 2, _steps(workdir)
  saved = _steps(workdir)[1:]
  assert len(saved) == 1 and 3 <= saved[0] < 20, saved
  assert f'preempted: saved a checkpoint at step {saved[0]}' in out
  res = _train(workdir, '--config.train.num_steps=20', '--config.train.log_every=1',
               '--config.train.checkpoint_every=100')
  assert res.returncode == 0, res.stderr[-3000:]
  assert f'resumed from step {saved[0]}' in res.stdout
  _assert_same_params(_restore(workdir, 20), _restore(straight, 20))
  # Determinism: the interrupted run (an independent process with the same config and seed)
  # logged exactly the uninterrupted run's metrics for all 20 steps.
  assert _metrics(workdir) == _metrics(straight)
  assert [r['step'] for r in _metrics(straight)] == list(range(1, 21))


def test_sigint_once_requests_a_stop_twice_interrupts():
  before = signal.getsignal(signal.SIGINT)  # (SIG_IGN when pytest runs as a background job)
  # No garbage collection while the signals land: a handler's KeyboardInterrupt raised inside a
  # gc callback (jax registers one) is swallowed as unraisable, and the test would flake.
  gc.disable()
  try:
    with trainer.PreemptionGuard() as guard:
      signal.raise_signal(signal.SIGINT)
      assert guard.signal == signal.SIGINT
      with pytest.raises(KeyboardInterrupt):
        signal.raise_signal(signal.SIGINT)
  finally:
    gc.enable()
  assert signal.getsignal(signal.SIGINT) is before  # the handler in place before is restored


def test_sigkill_mid_save_resumes_from_previous_checkpoint(straight, tmp_path):
  workdir = str(tmp_path / 'killed')
  res = _train(workdir, '--config.train.num_steps=20', '--config.train.checkpoint_every=4',
               '--config.train.log_every=1', fault='kill_mid_save:8')
  assert res.returncode == -signal.SIGKILL
  ckpt = os.path.join(workdir, 'checkpoints')
  # step 8 never completed (2: the warm-up's end)
  assert _steps(workdir) == [2, 4], os.listdir(ckpt)
  leftovers = [d for d in os.listdir(ckpt) if not d.isdigit() and d.startswith('8')]
  assert leftovers, os.listdir(ckpt)  # the kill did land in the middle of the save of step 8
  res = _train(workdir, '--config.train.num_steps=20', '--config.train.checkpoint_every=4',
               '--config.train.log_every=1')
  assert res.returncode == 0, res.stderr[-3000:]
  assert 'resumed from step 4' in res.stdout
  assert not [d for d in os.listdir(ckpt) if d in leftovers]  # the half-written step is cleaned up
  _assert_same_params(_restore(workdir, 20), _restore(straight, 20))


def _save_two_steps(workdir):
  config = tiny.get_config()
  os.makedirs(workdir)
  config_lib.save_config(config, workdir)
  mngr = checkpointing.checkpoint_manager(workdir, config)
  states = {}
  for step in (2, 4):
    state = trainer.create_state(config, jax.random.key_data(jax.random.key(step)))
    states[step] = state = state.replace(step=step)
    checkpointing.save_state(mngr, state)
  checkpointing.finish_saves(mngr)
  mngr.close()
  return config, states


def test_corrupt_latest_checkpoint_falls_back_and_is_kept_aside(tmp_path):
  workdir = str(tmp_path / 'w')
  config, states = _save_two_steps(workdir)
  latest = os.path.join(workdir, 'checkpoints', '4')
  files = [os.path.join(d, f) for d, _, fs in os.walk(latest) for f in fs]
  for f in files:  # truncate every file of the latest checkpoint to half its size
    with open(f, 'r+b') as fh:
      fh.truncate(os.path.getsize(f) // 2)
  mngr = checkpointing.checkpoint_manager(workdir, config)
  template = trainer.create_state(config, jax.random.key_data(jax.random.key(0)))
  with pytest.warns(RuntimeWarning, match='checkpoint step 4 .* unreadable'):
    restored = checkpointing.restore_state(mngr, template, quarantine=True)
  assert int(restored.step) == 2
  _assert_same_params(jax.device_get(restored), jax.device_get(states[2]))
  assert mngr.all_steps() == [2]
  aside = os.listdir(os.path.join(workdir, 'checkpoints.corrupt'))
  assert len(aside) == 1 and aside[0].startswith('4-')
  kept = [f for _, _, fs in os.walk(os.path.join(workdir, 'checkpoints.corrupt')) for f in fs]
  assert sorted(kept) == sorted(os.path.basename(f) for f in files)  # moved aside, not deleted
  # An explicit step is never silently replaced by another one.
  with pytest.raises(config_lib.ConfigError, match='no checkpoint for step 4'):
    checkpointing.restore_state(mngr, template, step=4)
  mngr.close()


def test_checkpoint_of_another_optimizer_is_a_config_error_not_corruption(tmp_path):
  workdir = str(tmp_path / 'w')
  config, _ = _save_two_steps(workdir)
  config.train.optimizer = 'sgd'
  mngr = checkpointing.checkpoint_manager(workdir, config)
  with pytest.raises(config_lib.ConfigError, match='another optimizer state'):
    checkpointing.restore_state(
        mngr, trainer.create_state(config, jax.random.key_data(jax.random.key(0))),
        quarantine=True)
  assert mngr.all_steps() == [2, 4] and not os.path.exists(
      os.path.join(workdir, 'checkpoints.corrupt'))
  mngr.close()


def test_disk_full_on_save_is_one_clear_error_and_keeps_earlier_checkpoints(tmp_path):
  workdir = str(tmp_path / 'full')
  res = _train(workdir, '--config.train.num_steps=6', '--config.train.checkpoint_every=2',
               fault='enospc:4')
  assert res.returncode == 1 and 'Traceback' not in res.stderr
  last = res.stderr.strip().splitlines()[-1]
  assert (last.startswith('error: cannot write checkpoint step 4')
          and 'No space left on device' in last)
  assert _steps(workdir) == [2]
  assert int(_restore(workdir).step) == 2


def test_nonfinite_step_stop_mode_names_the_step_and_writes_nothing_after(tmp_path):
  workdir = str(tmp_path / 'nan')
  # (without attention and CRF-RNN: the poisoned loss is a program of its own, compiled for this
  # test only; what stops the run does not depend on them)
  res = _train(workdir, '--config.train.num_steps=6', '--config.train.checkpoint_every=2',
               '--config.train.log_every=2', '--config.train.nonfinite=stop',
               '--config.model.attention.enabled=False', '--config.model.crf.enabled=False',
               fault='poison:3')
  assert res.returncode == 1 and 'Traceback' not in res.stderr
  last = res.stderr.strip().splitlines()[-1]
  assert 'non-finite loss or gradient at step 3' in last and 'cls_loss=nan' in last, last
  assert _steps(workdir) == [2]
  state = _restore(workdir)
  assert all(np.all(np.isfinite(x)) for x in jax.tree.leaves(state.params))


def test_train_step_skips_a_nonfinite_update_and_handles_empty_tags(monkeypatch):
  """A poisoned step leaves params and optimizer state as they were; a batch with no
  foreground tag and all-background masks trains normally."""
  config = tiny.get_config()
  original = losses.training_loss

  def loss(params, batch, rng, cfg):
    value, aux = original(params, batch, rng, cfg)
    nan = jnp.where(jnp.max(batch['poison']) > 0, jnp.nan, 0.0)
    return value + nan, aux

  monkeypatch.setattr(losses, 'training_loss', loss)
  state = trainer.create_state(config, jax.random.key_data(jax.random.key(0)))
  ds = data.make_dataset(config.data, 'train')
  batch = next(data.train_batches(ds, global_batch=2, seed=0))
  batch['tags'][:] = 0  # no foreground class in either image
  batch['mask'][:] = 0
  step = jax.pmap(lambda s, b, r: trainer.train_step(s, b, r, config), axis_name=trainer.AXIS,
                  devices=jax.devices()[:1])
  shard = lambda b, p: {k: v[None] for k, v in dict(b, poison=np.full(2, p, np.float32)).items()}
  rng = jax.random.split(jax.random.key(1), 1)
  good, aux = step(jax_utils.replicate(state, devices=jax.devices()[:1]), shard(batch, 0.0), rng)
  assert float(aux['nonfinite'][0]) == 0 and np.isfinite(float(aux['loss'][0]))
  # (unreplicate of a 1-of-2-device pmap)
  first = lambda tree: jax.tree.map(lambda x: np.asarray(x)[0], tree)
  good = first(good)
  assert int(good.step) == 1
  moved = max(float(np.max(np.abs(a - b)))
              for a, b in zip(jax.tree.leaves(good.params), jax.tree.leaves(state.params)))
  assert moved > 0 and all(np.all(np.isfinite(x)) for x in jax.tree.leaves(good.params))
  bad, aux = step(jax_utils.replicate(good, devices=jax.devices()[:1]), shard(batch, 1.0), rng)
  assert float(aux['nonfinite'][0]) == 1
  bad = first(bad)
  assert int(bad.step) == 2  # the counter advances, so data and RNG stay keyed to the step
  for x, y in zip(jax.tree.leaves((bad.params, bad.opt_state)),
                  jax.tree.leaves((good.params, good.opt_state))):
    np.testing.assert_array_equal(x, y)


def test_nan_parameters_are_never_saved(tmp_path):
  config = tiny.get_config()
  mngr = checkpointing.checkpoint_manager(str(tmp_path), config)
  state = trainer.create_state(config, jax.random.key_data(jax.random.key(0)))
  state = state.replace(step=3, params=jax.tree.map(lambda x: x * jnp.nan, state.params))
  with pytest.raises(config_lib.NonFiniteError, match='step 3'):
    checkpointing.save_state(mngr, state)
  checkpointing.finish_saves(mngr)
  assert mngr.all_steps() == []
  mngr.close()


@pytest.mark.parametrize('flags, message', [
    (['--config.data.train_size=0'], 'the train split of data "synthetic" has 0 examples'),
    (['--config.data.val_size=0', '--config.train.num_steps=1'],
     'the val split of data "synthetic" has no examples'),
    (['--config.train.batch_size=3'], 'must be divisible by the 2 devices'),
])
def test_bad_data_and_batch_settings_are_one_line(tmp_path, flags, message):
  workdir = tmp_path / 'w'
  workdir.mkdir()
  (workdir / 'keep.txt').write_text('user file')
  res = _train(workdir, *flags, devices=2)
  assert res.returncode == 1 and 'Traceback' not in res.stderr, res.stderr[-2000:]
  lines = res.stderr.strip().splitlines()
  assert lines[-1].startswith('error: ') and message in lines[-1], lines[-1]
  assert (workdir / 'keep.txt').read_text() == 'user file'


def test_eval_without_checkpoint_is_one_line_and_writes_nothing(tmp_path):
  workdir = str(tmp_path / 'w')
  os.makedirs(workdir)
  config_lib.save_config(tiny.get_config(), workdir)
  before = sorted(os.listdir(workdir))
  res = helpers.run('eval.py', f'--workdir={workdir}')
  assert res.returncode == 1 and 'Traceback' not in res.stderr
  assert res.stderr.strip().splitlines()[-1].startswith('error: no checkpoint in ')
  assert sorted(os.listdir(workdir)) == before


def _free_port():
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def test_two_processes_equal_one_process(tmp_path):
  """2 processes x 1 CPU device (jax.distributed, gloo) == 1 process x 2 devices: same global
  batches, same parameters on both processes, same pooled eval confusion matrix. (The tiny
  config without attention and CRF-RNN, which change nothing in the multi-process plumbing
  but triple the compile time.)"""
  flags = ['--config.train.num_steps=3', '--config.train.warmup_steps=0',
           '--config.train.checkpoint_every=2', '--config.eval.num_images=1',
           '--config.model.attention.enabled=False', '--config.model.crf.enabled=False']
  multi = str(tmp_path / 'multi')
  port = _free_port()
  procs = [helpers.run('tests/fault_driver.py', f'capture_params:{tmp_path / "multi_params"}',
                       *TINY, f'--workdir={multi}', f'--coordinator_address=127.0.0.1:{port}',
                       '--num_processes=2', f'--process_id={i}', *flags, background=True)
           for i in range(2)]
  outs = [p.communicate(timeout=400) for p in procs]
  for p, (out, err) in zip(procs, outs):
    assert p.returncode == 0, err[-3000:]
  single = str(tmp_path / 'single')
  res = _train(single, *flags, fault=f'capture_params:{tmp_path / "single_params"}', devices=2)
  assert res.returncode == 0, res.stderr[-3000:]
  p0, p1, ref = (np.load(tmp_path / name) for name in ('multi_params.0.npz', 'multi_params.1.npz',
                                                       'single_params.0.npz'))
  assert sorted(p0.files) == sorted(ref.files)
  for k in ref.files:
    np.testing.assert_array_equal(p0[k], p1[k], err_msg=k)  # both processes hold the same model
    np.testing.assert_allclose(p0[k], ref[k], rtol=1e-5, atol=1e-6, err_msg=k)
  init = trainer.create_state(tiny.get_config(), jax.random.key_data(jax.random.key(0))).params
  assert any(float(np.max(np.abs(ref[jax.tree_util.keystr(k)] - np.asarray(v)))) > 0
             for k, v in jax.tree_util.tree_flatten_with_path(init)[0])
  assert _steps(multi) == _steps(single) == [2, 3]
  a = json.load(open(os.path.join(multi, 'eval_val.json')))
  b = json.load(open(os.path.join(single, 'eval_val.json')))
  assert np.sum(a['confusion']) == np.sum(b['confusion']) == 16 * 32 * 32  # every val pixel, once
  assert a['class_threshold'] == b['class_threshold']
  np.testing.assert_allclose(np.array(a['confusion']), np.array(b['confusion']), atol=8)
  assert [l for l in outs[0][0].splitlines() if 'mIoU:' in l] == [
      l for l in outs[1][0].splitlines() if 'mIoU:' in l]


@pytest.mark.parametrize('flag, message', [
    ('--crf=foo=1', 'foo is not a CRF-RNN inference setting'),
    ('--crf=iters', "--crf expects key=number items, got 'iters'"),
])
def test_eval_crf_flag_errors_are_one_line(tmp_path, flag, message):
  workdir = str(tmp_path / 'w')
  os.makedirs(workdir)
  config_lib.save_config(tiny.get_config(), workdir)
  res = helpers.run('eval.py', f'--workdir={workdir}', flag)
  assert res.returncode == 1 and 'Traceback' not in res.stderr
  assert res.stderr.strip().splitlines()[-1].startswith('error: ') and message in res.stderr
