"""The Delta^C warm-up: shared warm-ups are bit-identical to training them, their
signatures, and a warm-up through another head."""
import copy
import json
import os

import jax
import numpy as np
import pytest
from flax import jax_utils

from wsss_jax import config_lib, data, optimizers, trainer, warmup

import helpers


def test_init_from_starts_at_the_shared_warmup(tmp_path):
  """A run started from another run's warm-up checkpoint (train.init_from) ends bit-identical
  to the same run trained from scratch; a run whose warm-up would differ is refused."""
  def cfg(attention, **train):
    c = helpers.tiny_config(**{'num_steps': 4, 'warmup_steps': 2, 'checkpoint_every': 4,
                               'keep_checkpoints': 1, 'log_every': 1, **train})
    c.model.crf.enabled = False  # (compile time; the CRF-RNN does not act in the warm-up either)
    c.model.attention.enabled = attention
    c.model.attention.neighbors = False  # (plain EB: trace time; the QP is not what this tests)
    c.train.seg_loss_weight = 1.5 if attention else 0.0
    return c
  b1, scratch, forked = (str(tmp_path / n) for n in ('b1', 'scratch', 'forked'))
  trainer.train_and_evaluate(cfg(False), b1)
  # The warm-up's last step is saved (though 2 is no multiple of checkpoint_every) and kept
  # (beyond keep_checkpoints = 1).
  assert helpers.complete_steps(os.path.join(b1, 'checkpoints')) == [2, 4]
  trainer.train_and_evaluate(cfg(True), scratch)
  trainer.train_and_evaluate(cfg(True, init_from=b1), forked)
  (sa, a), (sb, b), (_, c) = (helpers.restored(w, cfg(True)) for w in (scratch, forked, b1))
  assert sa == sb == 4
  for x, y in zip(jax.tree.leaves(a.params), jax.tree.leaves(b.params)):
    np.testing.assert_array_equal(x, y)
  # ... and the steps after the warm-up did use attention (Delta^S moved the parameters).
  assert any(not np.array_equal(x, y)
             for x, y in zip(jax.tree.leaves(a.params), jax.tree.leaves(c.params)))
  read = lambda w: [json.loads(line) for line in open(os.path.join(w, 'metrics.jsonl'))]
  forked_rows, b1_rows = read(forked), read(b1)
  assert [r['step'] for r in forked_rows] == [1, 2, 3, 4]
  assert forked_rows[:2] == b1_rows[:2] and 'seg_loss' in forked_rows[3]
  # Resuming in-process on this 2-device host (restored arrays are committed to one device; the
  # pmapped step refused them before train_and_evaluate took host copies).
  trainer.train_and_evaluate(cfg(True, num_steps=5), scratch)
  assert helpers.restored(scratch, cfg(True))[0] == 5
  bad = cfg(True, init_from=b1)
  bad.seed = 1
  with pytest.raises(config_lib.ConfigError, match=r'warm-up differs .* in config\.seed'):
    trainer.train_and_evaluate(bad, str(tmp_path / 'bad'))
  assert not os.path.exists(os.path.join(tmp_path, 'bad', 'checkpoints', '2'))


def test_init_from_shares_a_warmup_across_fcl_forms(tmp_path):
  """With the warm-up classifying through another head, the FCL sits at its init through it, so
  an 'lse'-form FCL run may start from a 'linear'-form run's warm-up: it ends bit-identical to
  the same run from scratch (init_from takes this run's FCL init). A warm-up through the FCL
  itself trains it, and then the forms' warm-ups differ."""
  def cfg(form, **train):
    c = helpers.tiny_config(**{'num_steps': 4, 'warmup_steps': 2, 'checkpoint_every': 4,
                               'keep_checkpoints': 1, 'warmup_head': 'lse', **train})
    c.model.fcl_form = form
    c.model.crf.enabled = False
    c.model.attention.enabled = False
    c.train.seg_loss_weight = 0.0
    return c
  linear, scratch, forked = (str(tmp_path / n) for n in ('linear', 'scratch', 'forked'))
  trainer.train_and_evaluate(cfg('linear'), linear)
  trainer.train_and_evaluate(cfg('lse'), scratch)
  trainer.train_and_evaluate(cfg('lse', init_from=linear), forked)
  (sa, a), (sb, b) = (helpers.restored(w, cfg('lse')) for w in (scratch, forked))
  assert sa == sb == 4
  for x, y in zip(jax.tree.leaves(a.params), jax.tree.leaves(b.params)):
    np.testing.assert_array_equal(x, y)
  sig = lambda c: warmup.warmup_signature(c)
  d = config_lib.first_difference(sig(cfg('linear', warmup_head='')),
                                  sig(cfg('lse', warmup_head='')))
  assert d is not None and 'fcl_form' in d
  bad = cfg('lse')
  bad.model.fcl_form = 'max'
  with pytest.raises(config_lib.ConfigError, match='config.model.fcl_form must be one of'):
    config_lib.validate_config(bad)


def test_warmup_signature_ignores_what_acts_after_the_warmup():
  """A learning-rate step at or after train.warmup_steps (a longer run from a shared warm-up),
  or another Delta^S target, leaves the warm-up unchanged; a step inside it does not."""
  base = helpers.tiny_config(warmup_steps=6, lr_decay_every=8)
  def differs(**changes):
    c = copy.deepcopy(base)
    for key, value in changes.items():
      c.train[key] = value
    return config_lib.first_difference(warmup.warmup_signature(base), warmup.warmup_signature(c))
  assert differs(lr_decay_every=6, num_steps=40) is None
  assert differs(lr_decay_every=30, lr_decay_factor=0.5) is None
  assert differs(lr_decay_factor=0.5) is None
  assert differs(seg_target='crf') is None
  assert differs(seg_target_stride=2) is None
  assert 'lr_decay_every' in differs(lr_decay_every=5)
  # the schedule behind it: a step at 5 lowers the warm-up's last learning rate, one at 6 does not
  lr = lambda every: float(optimizers.learning_rate_schedule(
      helpers.tiny_config(lr_decay_every=every))(5))
  assert lr(6) == lr(8) == pytest.approx(base.train.learning_rate) and lr(5) < 0.5 * lr(6)


def test_warmup_head_pretrains_through_another_head():
  """train.warmup_head = 'lse' on an FCL model: the warm-up steps are exactly an LSE model's
  (same backbone after them), the FCL keeps its init through them (no gradient, no decay)
  and the main phase then trains it; the warm-up signature tells the two heads' runs apart."""
  fcl = helpers.tiny_config(warmup_steps=2, warmup_head='lse')
  lse = helpers.tiny_config(warmup_steps=2)
  lse.model.aggregation = 'lse'
  for c in (fcl, lse):
    c.model.crf.enabled = False
    config_lib.validate_config(c)
  batch = next(data.train_batches(data.make_dataset(fcl.data, 'train'), global_batch=4, seed=0))
  dev = jax.devices()[:1]
  key = jax.random.key_data(jax.random.key(3))
  s_fcl, s_lse = trainer.create_state(fcl, key), trainer.create_state(lse, key)
  init_fcl = jax.device_get(s_fcl.params['fcl'])
  step = lambda cfg: jax.pmap(lambda s, b, r: trainer.train_step(s, b, r, cfg)[0],
                              axis_name=trainer.AXIS, devices=dev)
  rng = jax.random.split(jax.random.key(5), 1)
  shard = {k: v[None] for k, v in batch.items()}
  a, b = jax_utils.replicate(s_fcl, devices=dev), jax_utils.replicate(s_lse, devices=dev)
  warm_a, warm_b = step(warmup.warmup_config(fcl)), step(warmup.warmup_config(lse))
  for _ in range(2):
    a, b = warm_a(a, shard, rng), warm_b(b, shard, rng)
  pa, pb = jax.device_get(a.params), jax.device_get(b.params)
  for x, y in zip(jax.tree.leaves(pa['backbone']), jax.tree.leaves(pb['backbone'])):
    np.testing.assert_allclose(np.asarray(x)[0], np.asarray(y)[0], rtol=1e-5, atol=1e-7)
  assert any(not np.array_equal(np.asarray(x)[0], y) for x, y in
             zip(jax.tree.leaves(pa['backbone']),
                 jax.tree.leaves(jax.device_get(s_fcl.params['backbone']))))
  for name in ('w', 'b'):
    np.testing.assert_array_equal(np.asarray(pa['fcl'][name])[0], init_fcl[name])
  main = step(fcl)(a, shard, rng)
  assert not np.array_equal(np.asarray(jax.device_get(main.params['fcl']['w']))[0], init_fcl['w'])
  # the two heads' runs share no warm-up (another parameter tree), and the head is checked
  d = config_lib.first_difference(warmup.warmup_signature(lse), warmup.warmup_signature(fcl))
  assert d is not None and 'fcl' in d
  bad = helpers.tiny_config(warmup_head='max')
  with pytest.raises(config_lib.ConfigError, match='config.train.warmup_head must be'):
    config_lib.validate_config(bad)
  bad = helpers.tiny_config(warmup_head='fcl')
  bad.model.aggregation = 'gap'
  with pytest.raises(config_lib.ConfigError, match='warmup_head=fcl needs'):
    config_lib.validate_config(bad)


def test_sweep_subset_starts_from_the_finished_warmup_source(tmp_path):
  """bench/ablations.py --only: a row whose warm-up source is left out of the subset still
  starts from that source's finished run (no from-scratch warm-up), and a row that is an
  inference setting of a finished run is an eval of it, not a training."""
  import argparse
  import sys
  sys.path.insert(0, os.path.join(helpers.ROOT, 'bench'))
  import ablations
  root = str(tmp_path)
  for name in ('no_att', 'full'):  # finished runs of world 1: config.json + the last checkpoint
    config = ablations.config_of(name, 1, 0)
    workdir = os.path.join(root, name, 'world1')
    os.makedirs(os.path.join(workdir, 'checkpoints', str(config.train.num_steps)))
    config_lib.save_config(config, workdir)
  args = argparse.Namespace(worlds=[1], departure_worlds=[1], seed=0, root=root,
                            only=['no_seg_loss', 'printed_crf_kernel'])
  tasks, where = ablations.plan(args)
  train = tasks['train no_seg_loss w1'].args
  assert f'--config.train.init_from={os.path.join(root, "no_att", "world1")}' in train
  assert not any(k.startswith('train printed_crf_kernel') for k in tasks)
  assert where['printed_crf_kernel'][1][0] == os.path.join(root, 'full', 'world1')
  # rows left out get no tasks
  assert not any(' no_att ' in k or k.endswith(' full w1') for k in tasks)


def test_a_sweep_subset_reports_every_row_it_finds_and_leaves_the_docs_alone(tmp_path):
  """bench/ablations.py --worlds 1 --only no_att: the written tables keep the rows and worlds
  outside the subset that --root holds, and a --json outside docs/ writes its RESULTS.md beside
  it, leaving docs/RESULTS.md and README.md untouched."""
  import sys
  sys.path.insert(0, os.path.join(helpers.ROOT, 'bench'))
  import ablations
  root = tmp_path / 'runs'
  for name, world, miou in (('no_att', 1, 0.11), ('full', 1, 0.66), ('full', 0, 0.73)):
    config = ablations.config_of(name, world, 0)
    workdir = root / name / f'world{world}'
    os.makedirs(workdir / 'checkpoints' / str(config.train.num_steps))
    config_lib.save_config(config, str(workdir))
    for split in ('val', 'test'):
      (workdir / f'eval_{split}.json').write_text(
          json.dumps({'step': config.train.num_steps, 'miou': miou}))
  docs = {p: open(os.path.join(helpers.ROOT, p)).read() for p in ('README.md', 'docs/RESULTS.md')}
  out = tmp_path / 'results.json'
  argv = sys.argv
  sys.argv = ['ablations.py', f'--root={root}', f'--json={out}', '--worlds', '1', '--only',
              'no_att', '--jobs', '1']
  try:
    ablations.main()  # nothing left to run in the subset: it only writes the tables
  finally:
    sys.argv = argv
  results = json.loads(out.read_text())
  assert results['worlds'] == [0, 1, 2, 3]
  assert results['rows']['full']['0']['val']['miou'] == 0.73
  assert results['rows']['full']['1']['test']['miou'] == 0.66
  assert results['rows']['no_att']['1']['val']['miou'] == 0.11
  table = (tmp_path / 'RESULTS.md').read_text()
  assert '| Full approach (ours: configs/default.py) | 66.0 +- 0.0 (n=1) |' in table
  assert '| 73.0 | 52.8 |' in table  # world 0's column
  assert docs == {p: open(os.path.join(helpers.ROOT, p)).read() for p in docs}
