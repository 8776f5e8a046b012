"""Test session setup, before jax is imported: two host CPU devices (for the pmap tests), one
persistent XLA compilation cache for the session, shared with the train.py/eval.py
subprocesses the tests start (they compile the same tiny programs again and again), and
XLA's cheap compile mode (compile time dominates these tiny programs; -25% suite time). Under
pytest-xdist (`-n 2`, the README's command) each worker gets its own cache directory."""
import os
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
os.environ['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '')
                           + ' --xla_force_host_platform_device_count=2').strip()
os.environ.setdefault('JAX_COMPILATION_CACHE_DIR',
                      tempfile.mkdtemp(prefix='wsss-jax-test-xla-cache-'))
if os.environ.get('PYTEST_XDIST_WORKER'):
  # pytest -n: one cache per worker (jax writes cache entries without a lock, so a worker could
  # read another's half-written file), each under the one the controller made or the user set.
  os.environ['JAX_COMPILATION_CACHE_DIR'] = os.path.join(os.environ['JAX_COMPILATION_CACHE_DIR'],
                                                         os.environ['PYTEST_XDIST_WORKER'])
  os.makedirs(os.environ['JAX_COMPILATION_CACHE_DIR'], exist_ok=True)
os.environ.setdefault('XLA_PYTHON_CLIENT_PREALLOCATE', 'false')  # workers sharing one accelerator
os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS', '0')
os.environ.setdefault('JAX_DISABLE_MOST_OPTIMIZATIONS', '1')
if ROOT not in sys.path:
  sys.path.insert(0, ROOT)


import pytest  # noqa: E402

import helpers  # noqa: E402  (tests/helpers.py)


@pytest.fixture(scope='session')
def tiny_straight(tmp_path_factory):
  """One uninterrupted 20-step train.py run of the tiny config on one device, logging every step
  (workdir, stdout). Tests that only read it share it (copy it before changing it): one run and
  one compile instead of one per test."""
  workdir = str(tmp_path_factory.mktemp('straight'))
  res = helpers.run('train.py', *helpers.TINY_FLAGS, f'--workdir={workdir}',
                    '--config.train.num_steps=20', '--config.train.log_every=1',
                    '--config.train.checkpoint_every=100')
  assert res.returncode == 0, res.stderr[-3000:]
  return workdir, res.stdout


@pytest.fixture(scope='module')
def sbd_tree(tmp_path_factory):
  """A fake VOC tree with SBD, built: (fake_voc.FakeVOC, data_dir, builder)."""
  from wsss_jax.data import fake_voc, voc  # pylint: disable=import-outside-toplevel
  root = tmp_path_factory.mktemp('voc_sbd')
  fake = fake_voc.make_fake_voc(root / 'raw', n_train=5, n_val=3, n_test=2, n_sbd_extra=4, seed=0)
  builder = voc.build(root / 'raw', root / 'tfds')
  return fake, str(root / 'tfds'), builder


@pytest.fixture(scope='module')
def aug_tree(tmp_path_factory):
  """A fake VOC tree with SegmentationClassAug instead of SBD, built from VOCdevkit itself."""
  from wsss_jax.data import fake_voc, voc  # pylint: disable=import-outside-toplevel
  root = tmp_path_factory.mktemp('voc_aug')
  fake = fake_voc.make_fake_voc(root / 'raw', n_train=3, n_val=2, n_test=0, n_sbd_extra=3,
                                sbd=False, aug_png=True, aug_location='vocdevkit', seed=1)
  builder = voc.build(root / 'raw' / 'VOCdevkit', root / 'tfds')  # manual_dir = VOCdevkit itself
  return fake, str(root / 'tfds'), builder


@pytest.hookimpl(tryfirst=True)  # before xdist's own hook reads the groups (--dist=loadgroup)
def pytest_collection_modifyitems(items):
  """Tests that use tiny_straight (directly or through another fixture) form one xdist group,
  so that one worker makes the shared run, once."""
  for item in items:
    if 'tiny_straight' in getattr(item, 'fixturenames', ()):
      item.add_marker(pytest.mark.xdist_group('tiny_straight'))


def pytest_sessionfinish(session):
  """An xdist worker frees jax's compiled programs before it reports back: pytest's closing
  garbage collections otherwise outlast execnet's 5 s shutdown wait, and execnet then SIGINTs the
  worker (a KeyboardInterrupt printed from inside jax's gc callback)."""
  if os.environ.get('PYTEST_XDIST_WORKER') and 'jax' in sys.modules:
    import gc
    sys.modules['jax'].clear_caches()
    gc.collect()
