"""Input pipelines: deterministic, resumable training batches and padded eval batches."""
import numpy as np
import pytest

from wsss_jax import data
from wsss_jax.data import augment

import helpers

CROP = 48


def _voc_cfg(data_dir, **kw):
  """A voc2012 data config states every value the VOC path reads (no defaults in data code)."""
  return {'name': 'voc2012', 'data_dir': data_dir, 'train_split': 'train_aug', 'crop_size': CROP,
          'scale_range': (0.5, 1.5), 'flip': True, 'eval_size': 512, **kw}


def test_train_batches_crop_determinism_and_resume(sbd_tree):
  fake, data_dir, _ = sbd_tree
  cfg = _voc_cfg(data_dir)
  ds = data.make_dataset(cfg, 'train')
  assert len(ds) == len(helpers.expected_train_aug(fake))  # 'train' reads data.train_split
  assert len(data.make_dataset(dict(cfg, train_split='train'), 'train')) == len(fake.voc_train)
  # images smaller than the crop
  assert min(min(fake.sizes[n]) for n in helpers.expected_train_aug(fake)) < CROP
  aug = data.train_augment(cfg)
  assert aug == augment.TrainAugment(crop_size=CROP, scale_range=(0.5, 1.5), flip=True)

  def take(seed, n, start=0, augment_arg=aug):
    it = data.train_batches(ds, global_batch=4, seed=seed, start_step=start, augment=augment_arg)
    return [next(it) for _ in range(n)]

  a = take(0, 5)
  for b in a:
    assert b['image'].shape == (4, CROP, CROP, 3) and b['image'].dtype == np.uint8
    assert b['mask'].shape == (4, CROP, CROP) and b['mask'].dtype == np.int32
    assert b['tags'].shape == (4, 20) and b['index'].dtype == np.int32
  # a config mapping builds the same augmentation
  again = take(0, 5, augment_arg={'crop_size': CROP})
  other = take(1, 5)
  for x, y in zip(a, again):
    assert all(np.array_equal(x[k], y[k]) for k in x)
  assert any(not np.array_equal(x['image'], y['image']) for x, y in zip(a, other))
  resumed = take(0, 2, start=3)
  for x, y in zip(a[3:], resumed):
    assert all(np.array_equal(x[k], y[k]) for k in x)
  # End to end: under each label the image shows that class's colour; tags match the indexed
  # example.
  masks, imgs = np.concatenate([b['mask'] for b in a]), np.concatenate([b['image'] for b in a])
  assert (masks == 255).any()
  names = helpers.expected_train_aug(fake)
  for b in a:
    for j, i in enumerate(b['index']):
      assert np.array_equal(b['tags'][j], fake.tags[names[i]])
  for c, colour in fake.class_colours.items():
    sel = np.stack([helpers.interior(m) for m in masks]) & (masks == c)
    if sel.sum() > 20:
      assert np.abs(np.median(imgs[sel].astype(int), axis=0) - colour).max() < 25, c


def test_eval_batches_pad_to(sbd_tree):
  fake, data_dir, _ = sbd_tree
  cfg = _voc_cfg(data_dir, eval_size=(100, 140))
  ds = data.make_dataset(cfg, 'val')
  size = data.eval_pad_size(cfg)
  assert size == (100, 140)
  batches = list(data.eval_batches(ds, 2, pad_to=size))
  assert len(batches) == 2
  b = {k: np.concatenate([x[k] for x in batches]) for k in batches[0]}
  assert b['image'].shape == (4, 100, 140, 3) and b['mask'].shape == (4, 100, 140)
  assert b['valid'].tolist() == [1, 1, 1, 0] and b['index'].tolist() == [0, 1, 2, -1]
  assert b['size'].dtype == np.int32 and b['index'].dtype == np.int32
  for j, name in enumerate(fake.voc_val):
    h, w = fake.sizes[name]
    assert b['size'][j].tolist() == [h, w]
    assert np.array_equal(b['image'][j, :h, :w], helpers.file_pixels(fake, name))
    assert np.array_equal(b['mask'][j, :h, :w], fake.voc_masks[name])
    assert (b['mask'][j, h:] == 255).all() and (b['mask'][j, :, w:] == 255).all()
    assert (b['image'][j, h:] == augment.PAD_RGB).all()
  assert (b['mask'][3] == 255).all()
  with pytest.raises(ValueError, match=fake.voc_val[0]):
    next(data.eval_batches(ds, 2, pad_to=(20, 20)))
  # The test split evaluates with an all-ignore mask.
  test = next(data.eval_batches(data.make_dataset(cfg, 'test'), 2, pad_to=size))
  assert (test['mask'] == 255).all() and test['valid'].tolist() == [1, 1]


def test_synthetic_configs_unchanged():
  cfg = {'name': 'synthetic', 'image_size': 32, 'num_classes': 4, 'train_size': 8, 'val_size': 3,
         'test_size': 2, 'seed': 0}
  assert data.train_augment(cfg) is None and data.eval_pad_size(cfg) is None
  b = list(data.eval_batches(data.make_dataset(cfg, 'val'), 2))
  assert sorted(b[0]) == ['image', 'mask', 'tags', 'valid'] and b[1]['valid'].tolist() == [1, 0]
  t = next(data.train_batches(data.make_dataset(cfg, 'train'), global_batch=2, seed=0))
  assert sorted(t) == ['image', 'mask', 'tags'] and t['image'].shape == (2, 32, 32, 3)


@pytest.mark.parametrize('key, value, reader', [
    ('train_split', '', lambda c: data.make_dataset(c, 'train')),
    ('crop_size', 0, data.train_augment),
    ('scale_range', (), data.train_augment), ('flip', None, data.train_augment),
    ('eval_size', 0, data.eval_pad_size)])
def test_a_voc_config_states_every_value(key, value, reader):
  """No defaults in data code: a voc2012 data config without a value is one error naming the key."""
  with pytest.raises(data.DataError, match=f'config.data.{key} is not set'):
    reader(dict(_voc_cfg('/nonexistent'), **{key: value}))
