"""Configuration: keys from configs/default.py, validation, older workdirs, and the
signatures that decide whether two runs compute the same thing."""
import copy
import importlib
import inspect
import json

import jax
import numpy as np
import pytest

from configs import ablation, tiny
from wsss_jax import attention, config_lib, crf, evaluation, trainer
from wsss_jax.data import synthetic

import helpers


@pytest.mark.parametrize('name', sorted(ablation.ABLATIONS))
def test_every_ablation_config_validates(name):
  config = ablation.get_config(name)
  config_lib.validate_config(config)


@pytest.mark.parametrize('stop_at, message', [('pool2', 'below the score grid'),
                                              ('conv9', 'must be a backbone layer')])
def test_bad_attention_stop_layer_is_one_config_error(stop_at, message):
  config = helpers.tiny_config()
  config.model.attention.stop_at = stop_at
  with pytest.raises(config_lib.ConfigError, match=f'config.model.attention.stop_at.*{message}'):
    config_lib.validate_config(config)
  config.model.attention.neighbors = False  # plain excitation backprop may stop anywhere
  if stop_at == 'pool2':
    config_lib.validate_config(config)


def test_workdir_of_an_older_version_still_loads(tmp_path):
  """config.json written before the keys of config_lib.ADDED_KEYS existed: eval/resume still work,
  with the values that reproduce the older behaviour."""
  config = tiny.get_config()
  raw = json.loads(config.to_json())
  del raw['init_weights'], raw['train']['nonfinite'], raw['data']['eval_size'], \
      raw['data']['crop_size']
  (tmp_path / 'config.json').write_text(json.dumps(raw))
  loaded = config_lib.load_config(str(tmp_path))
  config_lib.validate_config(loaded)
  assert (loaded.train.nonfinite == 'skip' and loaded.data.eval_size == 0
          and loaded.init_weights == '')
  assert json.loads(loaded.to_json()) == json.loads(config.to_json())


def test_keys_come_from_the_default_config(monkeypatch):
  """Validation accepts exactly the keys of configs/default.py: a key added there is accepted
  with no other edit (nothing keeps a copy of the key list), and a config without it is refused
  naming it."""
  module = config_lib._default_module()  # pylint: disable=protected-access

  class WithNewKey:
    BOOKKEEPING, CRF_INFERENCE, NOT_IN_WARMUP = (module.BOOKKEEPING, module.CRF_INFERENCE,
                                                 module.NOT_IN_WARMUP)

    @staticmethod
    def get_config():
      config = module.get_config()
      config.train.new_knob = 7
      return config

  monkeypatch.setattr(config_lib, '_default_module', lambda: WithNewKey)
  config = helpers.tiny_config()
  with config.unlocked():
    config.train.new_knob = 3
  config_lib.validate_config(config)
  with pytest.raises(config_lib.ConfigError, match='missing config key config.train.new_knob'):
    config_lib.validate_config(helpers.tiny_config())
  monkeypatch.undo()
  with pytest.raises(config_lib.ConfigError, match='unknown config key config.train.new_knob'):
    config_lib.validate_config(config)


@pytest.mark.parametrize('path', ['default', 'fully_supervised', 'tiny', 'paper', 'voc12_ours',
                                  'voc12_paper', 'voc12_smoke'])
def test_every_config_file_has_exactly_the_default_keys(path):
  config = importlib.import_module(f'configs.{path}').get_config()
  assert config_lib.leaf_paths(config_lib.as_dict(config)) == config_lib.leaf_paths(
      config_lib.as_dict(config_lib.default_config()))
  config_lib.validate_config(config)


def test_declared_key_groups_name_existing_keys():
  default = config_lib.as_dict(config_lib.default_config())
  for group in ('BOOKKEEPING', 'CRF_INFERENCE', 'NOT_IN_WARMUP'):
    for key in config_lib.declared(group):
      config_lib.get_path(default, key)  # KeyError names a stale entry
  for key in config_lib.ADDED_KEYS:
    config_lib.get_path(default, key)


def _run(config, workdir):
  trainer.train_and_evaluate(config, workdir)
  return helpers.restored(workdir, config)[1].params


# A value that differs from tiny's for every key outside the training signature (the eval group
# aside); train.init_from is filled in with the reference run's workdir.
PERTURB = {'data.num_threads': 2, 'data.manual_dir': '/nonexistent/voc', 'train.init_from': None,
           'train.checkpoint_every': 1, 'train.keep_checkpoints': 1, 'train.log_every': 1,
           'train.progress_bar': True, 'model.crf.attention_unary': False,
           'model.crf.iters': 1, 'model.crf.sigma_z': 5.0,
           'model.crf.sigma_r': 40.0, 'model.crf.bilateral_weight': 2.0,
           'model.crf.spatial_weight': 1.5, 'model.crf.spatial_sxy': 5.0}


def test_what_the_training_signature_leaves_out_does_not_change_training(tmp_path, monkeypatch):
  """Every key the training signature leaves out (what configs/default.py declares BOOKKEEPING,
  and the CRF-RNN's inference settings while no loss reaches it) is changed in turn: the trained
  parameters stay bit-identical. A key that changes training but were left out would fail here,
  and a newly left-out key needs a value in PERTURB. (Plain excitation backprop and no final
  evaluation: compile time; neither is what this checks.)"""
  monkeypatch.setattr(evaluation, 'evaluate', lambda *a, **k: {'miou': 0.0})
  base = helpers.tiny_config(num_steps=3, warmup_steps=1, checkpoint_every=3, log_every=3)
  base.model.attention.neighbors = False
  assert not config_lib.loss_reaches_crf(base)
  sig = config_lib.training_signature(base)
  left_out = [k for k in config_lib.leaf_paths(config_lib.as_dict(base))
              if not k.startswith('eval.') and _absent(sig, k)]
  assert sorted(left_out) == sorted(PERTURB)
  reference = _run(base, str(tmp_path / 'reference'))
  for key, value in PERTURB.items():
    config = copy.deepcopy(base)
    config_lib.set_path(config, key, str(tmp_path / 'reference') if value is None else value)
    assert config_lib.first_difference(config_lib.training_signature(config), sig) is None
    params = _run(config, str(tmp_path / key))
    for x, y in zip(jax.tree.leaves(params), jax.tree.leaves(reference)):
      np.testing.assert_array_equal(x, y, err_msg=key)
  # ... and a key inside the signature does change training (the check can fail).
  config = copy.deepcopy(base)
  config.train.learning_rate *= 2
  assert config_lib.first_difference(config_lib.training_signature(config), sig) is not None
  params = _run(config, str(tmp_path / 'lr'))
  assert any(not np.array_equal(x, y)
             for x, y in zip(jax.tree.leaves(params), jax.tree.leaves(reference)))


def _absent(tree, path):
  try:
    config_lib.get_path(tree, path)
    return False
  except KeyError:
    return True


def test_signature_keeps_the_crf_settings_where_a_loss_reaches_the_crf():
  config = helpers.tiny_config()
  config.train.seg_loss_on = 'crf'
  assert config_lib.loss_reaches_crf(config)
  other = copy.deepcopy(config)
  other.model.crf.sigma_z = 5.0
  assert 'sigma_z' in config_lib.first_difference(config_lib.training_signature(config),
                                                  config_lib.training_signature(other))


def test_library_defaults_agree_with_the_default_config():
  """attention_maps' settings and the synthetic generator's default to configs/default.py's
  values."""
  default = config_lib.default_config()
  sig = inspect.signature(attention.attention_maps).parameters
  for key, value in default.model.attention.items():
    if key in sig:
      want = None if key == 'max_classes' and not value else value
      assert sig[key].default == want, key
  gen = inspect.signature(synthetic.SyntheticWSSS).parameters
  for key, value in default.data.generator.items():
    assert tuple(np.atleast_1d(gen[key].default)) == tuple(np.atleast_1d(value)), key
  assert inspect.signature(crf.crf_rnn).parameters['iters'].default == default.model.crf.iters
