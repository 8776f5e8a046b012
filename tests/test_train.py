"""pmap data parallelism, end-to-end CLI (train -> eval), shared warm-ups and bad-input errors."""
import copy
import json
import os
import shutil
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import jax_utils

import conftest  # tests/conftest.py (pytest puts tests/ on sys.path)

from configs import tiny
from wsss_jax import data, model, train_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _tiny(**train):
  config = tiny.get_config()
  config.model.backbone.dropout_rate = 0.0  # so 1- and 2-device runs draw no different masks
  config.train.update(train)
  return config


def _one_step(config, state, batch, devices):
  n = len(devices)
  p = jax.pmap(lambda s, b, r: train_lib.train_step(s, b, r, config), axis_name=train_lib.AXIS,
               devices=devices)
  sharded = {k: v.reshape((n, v.shape[0] // n) + v.shape[1:]) for k, v in batch.items()}
  rngs = jax.random.split(jax.random.key(5), n)
  new, aux = p(jax_utils.replicate(state, devices=devices), sharded, rngs)
  return jax.tree.map(lambda x: np.asarray(x)[0], new.params), float(aux['loss'][0])


@pytest.mark.parametrize('mode', ['weak', 'fully_supervised'])
def test_pmap_two_devices_equal_one_device(mode):
  assert jax.device_count() >= 2, 'conftest sets two host devices'
  config = _tiny(mode=mode, batch_size=4, optimizer='sgd', learning_rate=0.01)  # the reference below is SGD
  state = train_lib.create_state(config, jax.random.key_data(jax.random.key(0)))
  ds = data.make_dataset(config.data, 'train')
  batch = next(data.train_batches(ds, global_batch=4, seed=0))
  p2, l2 = _one_step(config, state, batch, jax.devices()[:2])
  # Reference: one device's unsharded SGD step on the whole batch, written with jax.grad here.
  loss_grad = jax.value_and_grad(lambda p: train_lib.compute_loss(p, batch, None, config)[0])
  l1, grads = jax.jit(loss_grad)(state.params)
  lr, wd = config.train.learning_rate, config.train.weight_decay
  ref = jax.tree.map(lambda w, g: w - lr * (g + wd * w), state.params, grads)  # first step: no momentum yet
  assert float(l1) == pytest.approx(l2, rel=1e-5)
  moved = 0.0
  for a, r, w0 in zip(jax.tree.leaves(p2), jax.tree.leaves(ref), jax.tree.leaves(state.params)):
    np.testing.assert_allclose(a, r, rtol=1e-4, atol=1e-6)
    moved = max(moved, float(np.max(np.abs(a - w0))))
  assert moved > 0  # the step did change the parameters


def test_replicated_state_is_laid_out_as_the_steps_outputs():
  """A pmapped step fed train_lib.replicate's tree compiles once, not again when it is fed its
  own output (jax_utils.replicate's layout made the second call compile the step again)."""
  compiles = []
  listen = lambda name, _, **kw: compiles.append(name) if name.endswith('backend_compile_duration') else None
  step = jax.pmap(lambda s, x: ({'w': s['w'] + x}, jnp.sum(x)), axis_name=train_lib.AXIS,
                  donate_argnums=(0,))
  s, x = train_lib.replicate({'w': jnp.zeros(3)}), np.ones((jax.local_device_count(), 3), np.float32)
  per_call = []
  jax.monitoring.register_event_duration_secs_listener(listen)
  try:
    for _ in range(3):
      n = len(compiles)
      s, _ = step(s, x)
      per_call.append(len(compiles) - n)
  finally:
    jax.monitoring.unregister_event_duration_listener(listen)
  assert per_call == [1, 0, 0]
  np.testing.assert_array_equal(np.asarray(s['w']), 3.0)


def _run(script, *args, timeout=300):
  return subprocess.run([sys.executable, script, *args], cwd=ROOT, capture_output=True, text=True,
                        timeout=timeout, env=_env())


def _env():
  env = dict(os.environ)
  env.pop('XLA_FLAGS', None)  # the CLI runs on one device, like a plain laptop run
  return env


def _params(workdir, config):
  mngr = train_lib.checkpoint_manager(workdir, config)
  state = train_lib.restore_state(mngr, train_lib.create_state(config, jax.random.key_data(jax.random.key(9))))
  mngr.close()
  return int(state.step), jax.device_get(state)


def _complete_steps(ckpt_dir):
  if not os.path.isdir(ckpt_dir):
    return []
  return sorted(int(d) for d in os.listdir(ckpt_dir) if d.isdigit())


def test_train_then_eval_outputs_and_refusals(tiny_straight, tmp_path):
  """train.py (the session's shared tiny run, tests/conftest.py) then eval.py from the command
  line: the table, JSON and PNG, a variant's own files, and one-line refusals that leave the
  workdir as it was. (Resume after SIGKILL/SIGTERM equals an uninterrupted run: test_faults.py.)"""
  straight = str(tmp_path / 'straight')
  shutil.copytree(tiny_straight[0], straight)  # (the shared run stays as train.py left it)
  total = 20
  assert 'val mIoU:' in tiny_straight[1]
  config = tiny.get_config()
  assert _params(straight, config)[0] == total

  # eval.py on the finished workdir: table, JSON and PNG.
  res = _run('eval.py', f'--workdir={straight}')
  assert res.returncode == 0, res.stderr[-2000:]
  assert any('mIoU' in l and 'backgr' in l for l in res.stdout.splitlines()) and 'val mIoU:' in res.stdout
  assert 'class threshold' in res.stdout  # tuned on the val tags
  report = json.load(open(os.path.join(straight, 'eval_val.json')))
  conf = np.array(report['confusion'])
  assert conf.sum() == 16 * 32 * 32 and report['step'] == total
  # the image classifier's per-class AP on the val tags (the warm-up diagnostic), background excluded
  assert list(report['tag_ap']) == [n for n in report['iou'] if n != 'background']
  assert report['tag_map'] == pytest.approx(np.nanmean([v for v in report['tag_ap'].values() if v is not None]))
  assert 'image classification on val: mAP' in res.stdout
  assert os.path.getsize(os.path.join(straight, 'examples_val.png')) > 0
  # An inference variant (B6 + a fixed threshold) writes its own files, leaving the others as they were.
  before = open(os.path.join(straight, 'eval_val.json')).read()
  res = _run('eval.py', f'--workdir={straight}', '--noattention', '--class_threshold=0.3')
  assert res.returncode == 0, res.stderr[-2000:]
  variant = json.load(open(os.path.join(straight, 'eval_val_noatt_t0.3.json')))
  assert variant['class_threshold'] == pytest.approx(0.3) and variant['variant'] == 'noatt_t0.3'
  assert os.path.exists(os.path.join(straight, 'examples_val_noatt_t0.3.png'))
  assert open(os.path.join(straight, 'eval_val.json')).read() == before

  # A checkpoint of another architecture: one clear line naming it, nothing overwritten.
  other = str(tmp_path / 'other')
  shutil.copytree(straight, other)
  cfg = json.load(open(os.path.join(other, 'config.json')))
  cfg['model']['backbone']['width'] = 0.125
  json.dump(cfg, open(os.path.join(other, 'config.json'), 'w'))
  before = sorted(os.listdir(os.path.join(other, 'checkpoints')))
  res = _run('eval.py', f'--workdir={other}')
  assert res.returncode != 0 and 'Traceback' not in res.stderr
  assert res.stderr.strip().splitlines()[-1].startswith('error: ')
  assert 'checkpoint architecture differs' in res.stderr and 'conv1_1' in res.stderr
  assert sorted(os.listdir(os.path.join(other, 'checkpoints'))) == before
  # train.py with a different model into an existing workdir refuses rather than mixing runs.
  res = _run('train.py', *conftest.TINY_FLAGS, f'--workdir={straight}', '--config.model.backbone.width=0.125')
  assert res.returncode != 0 and 'Traceback' not in res.stderr and 'different model' in res.stderr
  assert _complete_steps(os.path.join(straight, 'checkpoints'))[-1] == total


@pytest.mark.parametrize('args, message', [
    (['--config.train.nope=1'], 'config.train.nope'),
    (['--config=configs/missing.py'], 'configs/missing.py'),
])
def test_bad_flags_give_one_error_line(args, message):
  res = _run('train.py', '--config=configs/tiny.py', *args, timeout=120)
  assert res.returncode != 0 and 'Traceback' not in res.stderr
  lines = res.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith('error: ') and message in lines[0]


def test_unknown_key_in_config_file_and_workdir_that_is_a_file(tmp_path):
  cfg = tmp_path / 'typo.py'
  cfg.write_text('from configs import tiny\n\ndef get_config():\n  c = tiny.get_config()\n'
                 '  c.unlock()\n  c.train.num_step = 3\n  return c\n')
  res = _run('train.py', f'--config={cfg}', f'--workdir={tmp_path / "w"}', timeout=120)
  assert res.returncode != 0 and 'Traceback' not in res.stderr
  assert res.stderr.strip().splitlines() == [res.stderr.strip().splitlines()[-1]]
  assert 'unknown config key config.train.num_step' in res.stderr
  afile = tmp_path / 'afile'
  afile.write_text('keep me')
  res = _run('train.py', '--config=configs/tiny.py', f'--workdir={afile}', timeout=120)
  assert res.returncode != 0 and 'Traceback' not in res.stderr
  assert 'is not a directory' in res.stderr and afile.read_text() == 'keep me'


def test_init_from_starts_at_the_shared_warmup(tmp_path):
  """A run started from another run's warm-up checkpoint (train.init_from) ends bit-identical
  to the same run trained from scratch; a run whose warm-up would differ is refused."""
  def cfg(attention, **train):
    c = _tiny(**{'num_steps': 4, 'warmup_steps': 2, 'checkpoint_every': 4, 'keep_checkpoints': 1,
                 'log_every': 1, **train})
    c.model.crf.enabled = False  # (compile time; the CRF-RNN does not act in the warm-up either)
    c.model.attention.enabled = attention
    c.model.attention.neighbors = False  # (plain EB: trace time; the QP is not what this tests)
    c.train.seg_loss_weight = 1.5 if attention else 0.0
    return c
  b1, scratch, forked = (str(tmp_path / n) for n in ('b1', 'scratch', 'forked'))
  train_lib.train_and_evaluate(cfg(False), b1)
  # The warm-up's last step is saved (though 2 is no multiple of checkpoint_every) and kept
  # (beyond keep_checkpoints = 1).
  assert _complete_steps(os.path.join(b1, 'checkpoints')) == [2, 4]
  train_lib.train_and_evaluate(cfg(True), scratch)
  train_lib.train_and_evaluate(cfg(True, init_from=b1), forked)
  (sa, a), (sb, b), (_, c) = (_params(w, cfg(True)) for w in (scratch, forked, b1))
  assert sa == sb == 4
  for x, y in zip(jax.tree.leaves(a.params), jax.tree.leaves(b.params)):
    np.testing.assert_array_equal(x, y)
  # ... and the steps after the warm-up did use attention (Delta^S moved the parameters).
  assert any(not np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a.params), jax.tree.leaves(c.params)))
  read = lambda w: [json.loads(line) for line in open(os.path.join(w, 'metrics.jsonl'))]
  forked_rows, b1_rows = read(forked), read(b1)
  assert [r['step'] for r in forked_rows] == [1, 2, 3, 4]
  assert forked_rows[:2] == b1_rows[:2] and 'seg_loss' in forked_rows[3]
  # Resuming in-process on this 2-device host (restored arrays are committed to one device; the
  # pmapped step refused them before train_and_evaluate took host copies).
  train_lib.train_and_evaluate(cfg(True, num_steps=5), scratch)
  assert _params(scratch, cfg(True))[0] == 5
  bad = cfg(True, init_from=b1)
  bad.seed = 1
  with pytest.raises(train_lib.ConfigError, match=r'warm-up differs .* in config\.seed'):
    train_lib.train_and_evaluate(bad, str(tmp_path / 'bad'))
  assert not os.path.exists(os.path.join(tmp_path, 'bad', 'checkpoints', '2'))


def test_init_from_shares_a_warmup_across_fcl_forms(tmp_path):
  """With the warm-up classifying through another head, the FCL sits at its init through it, so
  an 'lse'-form FCL run may start from a 'linear'-form run's warm-up: it ends bit-identical to
  the same run from scratch (init_from takes this run's FCL init). A warm-up through the FCL
  itself trains it, and then the forms' warm-ups differ."""
  def cfg(form, **train):
    c = _tiny(**{'num_steps': 4, 'warmup_steps': 2, 'checkpoint_every': 4, 'keep_checkpoints': 1,
                 'warmup_head': 'lse', **train})
    c.model.fcl_form = form
    c.model.crf.enabled = False
    c.model.attention.enabled = False
    c.train.seg_loss_weight = 0.0
    return c
  linear, scratch, forked = (str(tmp_path / n) for n in ('linear', 'scratch', 'forked'))
  train_lib.train_and_evaluate(cfg('linear'), linear)
  train_lib.train_and_evaluate(cfg('lse'), scratch)
  train_lib.train_and_evaluate(cfg('lse', init_from=linear), forked)
  (sa, a), (sb, b) = (_params(w, cfg('lse')) for w in (scratch, forked))
  assert sa == sb == 4
  for x, y in zip(jax.tree.leaves(a.params), jax.tree.leaves(b.params)):
    np.testing.assert_array_equal(x, y)
  sig = lambda c: train_lib.warmup_signature(c)
  d = train_lib._first_difference(sig(cfg('linear', warmup_head='')), sig(cfg('lse', warmup_head='')))
  assert d is not None and 'fcl_form' in d
  bad = cfg('lse')
  bad.model.fcl_form = 'max'
  with pytest.raises(train_lib.ConfigError, match='config.model.fcl_form must be one of'):
    train_lib.validate_config(bad)


def test_warmup_signature_ignores_what_acts_after_the_warmup():
  """A learning-rate step at or after train.warmup_steps (a longer run from a shared warm-up),
  or another Delta^S target, leaves the warm-up unchanged; a step inside it does not."""
  base = _tiny(warmup_steps=6, lr_decay_every=8)
  def differs(**changes):
    c = copy.deepcopy(base)
    for key, value in changes.items():
      c.train[key] = value
    return train_lib._first_difference(train_lib.warmup_signature(base), train_lib.warmup_signature(c))
  assert differs(lr_decay_every=6, num_steps=40) is None
  assert differs(lr_decay_every=30, lr_decay_factor=0.5) is None
  assert differs(lr_decay_factor=0.5) is None
  assert differs(seg_target='crf') is None
  assert differs(seg_target_stride=2) is None
  assert 'lr_decay_every' in differs(lr_decay_every=5)
  # the schedule behind it: a step at 5 lowers the warm-up's last learning rate, one at 6 does not
  lr = lambda every: float(train_lib.learning_rate_schedule(_tiny(lr_decay_every=every))(5))
  assert lr(6) == lr(8) == pytest.approx(base.train.learning_rate) and lr(5) < 0.5 * lr(6)


def test_warmup_head_pretrains_through_another_head():
  """train.warmup_head = 'lse' on an FCL model: the warm-up steps are exactly an LSE model's
  (same backbone after them), the FCL keeps its init through them (no gradient, no decay)
  and the main phase then trains it; the warm-up signature tells the two heads' runs apart."""
  fcl = _tiny(warmup_steps=2, warmup_head='lse')
  lse = _tiny(warmup_steps=2)
  lse.model.aggregation = 'lse'
  for c in (fcl, lse):
    c.model.crf.enabled = False
    train_lib.validate_config(c)
  batch = next(data.train_batches(data.make_dataset(fcl.data, 'train'), global_batch=4, seed=0))
  dev = jax.devices()[:1]
  key = jax.random.key_data(jax.random.key(3))
  s_fcl, s_lse = train_lib.create_state(fcl, key), train_lib.create_state(lse, key)
  init_fcl = jax.device_get(s_fcl.params['fcl'])
  step = lambda cfg: jax.pmap(lambda s, b, r: train_lib.train_step(s, b, r, cfg)[0],
                              axis_name=train_lib.AXIS, devices=dev)
  rng = jax.random.split(jax.random.key(5), 1)
  shard = {k: v[None] for k, v in batch.items()}
  a, b = jax_utils.replicate(s_fcl, devices=dev), jax_utils.replicate(s_lse, devices=dev)
  warm_a, warm_b = step(train_lib.warmup_config(fcl)), step(train_lib.warmup_config(lse))
  for _ in range(2):
    a, b = warm_a(a, shard, rng), warm_b(b, shard, rng)
  pa, pb = jax.device_get(a.params), jax.device_get(b.params)
  for x, y in zip(jax.tree.leaves(pa['backbone']), jax.tree.leaves(pb['backbone'])):
    np.testing.assert_allclose(np.asarray(x)[0], np.asarray(y)[0], rtol=1e-5, atol=1e-7)
  assert any(not np.array_equal(np.asarray(x)[0], y) for x, y in
             zip(jax.tree.leaves(pa['backbone']), jax.tree.leaves(jax.device_get(s_fcl.params['backbone']))))
  for name in ('w', 'b'):
    np.testing.assert_array_equal(np.asarray(pa['fcl'][name])[0], init_fcl[name])
  main = step(fcl)(a, shard, rng)
  assert not np.array_equal(np.asarray(jax.device_get(main.params['fcl']['w']))[0], init_fcl['w'])
  # the two heads' runs share no warm-up (another parameter tree), and the head is checked
  d = train_lib._first_difference(train_lib.warmup_signature(lse), train_lib.warmup_signature(fcl))
  assert d is not None and 'fcl' in d
  bad = _tiny(warmup_head='max')
  with pytest.raises(train_lib.ConfigError, match='config.train.warmup_head must be'):
    train_lib.validate_config(bad)
  bad = _tiny(warmup_head='fcl')
  bad.model.aggregation = 'gap'
  with pytest.raises(train_lib.ConfigError, match='warmup_head=fcl needs'):
    train_lib.validate_config(bad)


def test_fcl_lr_scale_scales_only_the_fcl_step():
  """train.fcl_lr_scale: one Adam step moves the FCL by that fraction of the unscaled step and
  every other parameter exactly as without it."""
  base = _tiny(warmup_steps=0)
  base.model.crf.enabled = False
  base.model.attention.enabled = False
  base.train.seg_loss_weight = 0.0
  scaled = copy.deepcopy(base)
  scaled.train.fcl_lr_scale = 0.1
  batch = next(data.train_batches(data.make_dataset(base.data, 'train'), global_batch=4, seed=0))
  dev = jax.devices()[:1]
  key = jax.random.key_data(jax.random.key(3))
  init = jax.device_get(train_lib.create_state(base, key).params)
  (p1, _), (p2, _) = (_one_step(c, train_lib.create_state(c, key), batch, dev) for c in (base, scaled))
  for name in ('w', 'b'):
    np.testing.assert_allclose(p2['fcl'][name] - init['fcl'][name],
                               0.1 * (p1['fcl'][name] - init['fcl'][name]), rtol=1e-3, atol=1e-9)
  assert np.abs(p1['fcl']['w'] - init['fcl']['w']).max() > 1e-5
  for x, y in zip(jax.tree.leaves(p1['backbone']), jax.tree.leaves(p2['backbone'])):
    np.testing.assert_array_equal(x, y)
  bad = _tiny(fcl_lr_scale=-1.0)
  with pytest.raises(train_lib.ConfigError, match='fcl_lr_scale must be a number >= 0'):
    train_lib.validate_config(bad)
