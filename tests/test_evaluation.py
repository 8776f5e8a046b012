"""Evaluation: mIoU of the final, CNN and attention maps against numpy, lattice overflow,
the eval request and its files."""
import json

import jax
import numpy as np
import pytest

from wsss_jax import config_lib, data, evaluation, model

import helpers


def _numpy_miou(pred, mask, k):
  ious = []
  for c in range(k):
    p, m = pred == c, mask == c
    union = np.sum(p | m)
    if union:
      ious.append(np.sum(p & m) / union)
  return float(np.mean(ious))


def test_eval_reports_miou_of_final_cnn_and_attention_maps():
  """evaluate() reports the mIoU of the final, CNN (argmax p^S) and attention (argmax p^A) label
  maps; each equals a numpy IoU of model.infer's maps on the same images."""
  config = helpers.tiny_config()
  config.eval.tune_threshold = False
  config.eval.class_threshold = 0.45
  config.model.attention.max_classes = 4  # (evaluate resolves 0 to the data's bound: 3 tags + bg)
  params = model.init_params(jax.random.key(3), config)
  ds = data.make_dataset(config.data, 'val')
  n = config.eval.batch_size
  res = evaluation.evaluate(params, config, 'val', limit=n)
  images = np.stack([ds[i]['image'] for i in range(n)])
  masks = np.stack([ds[i]['mask'] for i in range(n)])
  # infer per device shard, as evaluate's pmap does (p^A of an untrained net is near-uniform, so
  # its argmax is sensitive to the batch a kernel sees)
  infer = jax.jit(lambda p, x: model.infer(p, x, config))
  shards = [infer(params, x) for x in np.split(images, jax.device_count())]
  pred = {key: np.concatenate([np.asarray(s[key]) for s in shards])
          for key in ('final', 'cnn', 'attention')}
  k = config.data.num_classes + 1
  got = {key: _numpy_miou(pred[key], masks, k) for key in ('final', 'cnn', 'attention')}
  assert res['miou'] == pytest.approx(got['final'], abs=1e-6)
  assert res['miou_cnn'] == pytest.approx(got['cnn'], abs=1e-6)
  assert res['miou_attention'] == pytest.approx(got['attention'], abs=1e-6)
  assert len({round(v, 6) for v in got.values()}) > 1  # three different maps were scored


def test_too_small_lattice_capacity_is_reported(capsys):
  """A CRF-RNN lattice capacity below what an image needs drops lattice points: eval warns and
  records lattice_fill > 1 (the training log window: test_trainer.py)."""
  config = helpers.tiny_config()
  config.eval.tune_threshold = False
  config.model.crf.lattice_capacity = 16
  params = model.init_params(jax.random.key(3), config)
  res = evaluation.evaluate(params, config, 'val', limit=config.eval.batch_size)
  assert res['lattice_fill'] > 1.0
  assert 'CRF-RNN lattice rows but model.crf.lattice_capacity is 16' in capsys.readouterr().out


def test_eval_request_names_variants_and_refuses_bad_settings():
  """An inference variant travels as one EvalRequest: its file suffix, its config, its errors."""
  assert evaluation.EvalRequest().variant() == ''
  req = evaluation.EvalRequest(attention=False, dense_crf=True, scales=(0.75, 1.0), flip=True,
                               class_threshold=0.3, crf=(('sigma_z', 20.0), ('iters', 10.0)))
  assert req.variant() == 'noatt_densecrf_s0.75-1_flip_t0.3_crf-iters10-sigma_z20'
  config = req.apply(helpers.tiny_config())
  e = config.eval
  assert (e.attention, e.dense_crf.enabled, tuple(e.scales), e.flip) == (
      False, True, (0.75, 1.0), True)
  assert e.class_threshold == 0.3 and e.tune_threshold is False  # a given threshold is not tuned
  assert config.model.crf.iters == 10 and isinstance(config.model.crf.iters, int)
  assert config.model.crf.sigma_z == 20.0
  assert helpers.tiny_config().model.crf.sigma_z != 20.0  # the request copies the config
  assert evaluation.EvalRequest.parse_crf(['iters=10', ' sigma_r = 3']) == (
      ('iters', 10.0), ('sigma_r', 3.0))
  with pytest.raises(config_lib.ConfigError, match="--crf expects key=number items, got 'iters'"):
    evaluation.EvalRequest.parse_crf(['iters'])
  with pytest.raises(config_lib.ConfigError,
                     match='lattice_capacity is not a CRF-RNN inference setting'):
    evaluation.EvalRequest(crf=(('lattice_capacity', 3.0),))
  with pytest.raises(config_lib.ConfigError, match='--scales must be positive'):
    evaluation.EvalRequest(scales=(1.0, -0.5))


class _Unlabelled:
  """A split without labels or tags (as VOC test): every mask pixel ignored."""

  def __init__(self, ds):
    self.ds, self.class_names = ds, ds.class_names

  def __len__(self):
    return len(self.ds)

  def __getitem__(self, i):
    ex = dict(self.ds[i])
    ex['mask'] = np.full_like(ex['mask'], 255)
    ex['tags'] = np.zeros_like(ex['tags'])
    return ex


def test_eval_json_of_a_split_without_labels_is_valid_and_holds_its_own_figures(tmp_path,
                                                                                 monkeypatch):
  """No mIoU on a split without labels: null in the JSON (valid JSON, no NaN), 'n/a' printed, and
  no tag figures of another split; the class threshold says which split chose it."""
  config = helpers.tiny_config()
  config.eval.num_images = 0
  make = data.make_dataset
  monkeypatch.setattr(data, 'make_dataset',
                      lambda cfg, split: _Unlabelled(make(cfg, split)) if split == 'test'
                                         else make(cfg, split))
  params = model.init_params(jax.random.key(3), config)
  res = evaluation.evaluate(params, config, 'test', workdir=str(tmp_path), step=7)
  text = (tmp_path / 'eval_test.json').read_text()
  def no_constant(name):
    raise AssertionError(f'{name} in eval_test.json')
  written = json.loads(text, parse_constant=no_constant)
  assert written['miou'] is None and res['miou'] is None and written['split'] == 'test'
  assert all(v is None for v in written['iou'].values())
  assert 'tag_map' not in written and 'tag_ap' not in written
  assert written['class_threshold_split'] == 'tune'
  assert evaluation.percent(None) == 'n/a' and evaluation.percent(0.74154) == '74.15'


class _Sealed:
  """A split whose examples must not be read."""

  def __init__(self, ds):
    self.ds, self.class_names = ds, ds.class_names

  def __len__(self):
    return len(self.ds)

  def __getitem__(self, i):
    raise AssertionError('the sealed split was read')


def test_the_class_threshold_is_chosen_on_the_tune_split_alone(monkeypatch):
  """The protocol: choosing the class threshold reads the tune split only, so a number reported
  on val or test was not tuned on its own tags. (The same check with tune_split = 'val' reads
  val: the test can fail.)"""
  config = helpers.tiny_config()
  params = model.init_params(jax.random.key(3), config)
  make = data.make_dataset
  monkeypatch.setattr(data, 'make_dataset', lambda cfg, split: _Sealed(make(cfg, split))
                      if split in ('val', 'test', 'train') else make(cfg, split))
  assert config.eval.tune_split == 'tune'
  threshold, f1 = evaluation.choose_class_threshold(params, config)
  scores, tags = evaluation.image_scores(params, config, 'tune')
  assert (threshold, f1) == evaluation.tune_class_threshold(scores, tags)
  config.eval.tune_split = 'val'
  with pytest.raises(AssertionError, match='sealed split was read'):
    evaluation.choose_class_threshold(params, config)
