"""PASCAL VOC 2012 data path on a fake tree in the real formats: TFDS build without TensorFlow,
split lists, tags, masks, augmentation, padded eval batches and bad inputs."""
import io
import os
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET

import numpy as np
import pytest
from PIL import Image

from wsss_jax import data
from wsss_jax.data import augment, fake_voc, voc

CROP = 48


def _expected_train_aug(fake):
  """train_aug written out independently of voc.train_aug_names."""
  sbd = set(fake.sbd_train) | set(fake.sbd_val) | set(fake.aug_names)
  return sorted((sbd | set(fake.voc_train)) - set(fake.voc_val))


def _file_pixels(fake, name):
  for p in (os.path.join(fake.root, 'VOCdevkit', 'VOC2012', 'JPEGImages', name + '.jpg'),
            os.path.join(fake.root, 'benchmark_RELEASE', 'dataset', 'img', name + '.jpg')):
    if os.path.exists(p):
      return np.asarray(Image.open(p).convert('RGB'))
  raise FileNotFoundError(name)


@pytest.fixture(scope='module')
def sbd_tree(tmp_path_factory):
  root = tmp_path_factory.mktemp('voc_sbd')
  fake = fake_voc.make_fake_voc(root / 'raw', n_train=5, n_val=3, n_test=2, n_sbd_extra=4, seed=0)
  builder = voc.build(root / 'raw', root / 'tfds')
  return fake, str(root / 'tfds'), builder


@pytest.fixture(scope='module')
def aug_tree(tmp_path_factory):
  root = tmp_path_factory.mktemp('voc_aug')
  fake = fake_voc.make_fake_voc(root / 'raw', n_train=3, n_val=2, n_test=0, n_sbd_extra=3, sbd=False,
                                aug_png=True, aug_location='vocdevkit', seed=1)
  builder = voc.build(root / 'raw' / 'VOCdevkit', root / 'tfds')  # manual_dir = VOCdevkit itself
  return fake, str(root / 'tfds'), builder


def test_class_names_palette_and_mask_png_round_trip():
  assert len(voc.CLASS_NAMES) == 21 and voc.CLASS_NAMES[0] == 'background'
  assert voc.CLASS_NAMES[15] == 'person' and voc.CLASS_NAMES[20] == 'tvmonitor'
  assert voc.PALETTE.shape == (256, 3) and voc.PALETTE.dtype == np.uint8
  known = {0: (0, 0, 0), 1: (128, 0, 0), 2: (0, 128, 0), 3: (128, 128, 0), 8: (64, 0, 0),
           15: (192, 128, 128), 20: (0, 64, 128), 255: (224, 224, 192)}
  for i, rgb in known.items():
    assert tuple(voc.PALETTE[i]) == rgb
  rng = np.random.default_rng(0)
  label = rng.integers(0, 21, (13, 17))
  label[3:6, 2:9] = 255
  png = voc.encode_palette_png(label)
  img = Image.open(io.BytesIO(png))
  assert img.format == 'PNG' and img.mode == 'P'
  assert np.array_equal(np.asarray(img), label)  # indices are stored, not colours
  assert img.getpalette()[:3 * 21] == voc.PALETTE[:21].ravel().tolist()
  dec = voc.decode_mask(png)
  assert dec.dtype == np.int32 and np.array_equal(dec, label)
  for mode_png in (Image.fromarray(label.astype(np.uint8)),  # grayscale index PNG (SegmentationClassAug)
                   Image.fromarray(voc.PALETTE[label])):  # an RGB colour-coded mask
    buf = io.BytesIO()
    mode_png.save(buf, 'PNG')
    assert np.array_equal(voc.decode_mask(buf.getvalue()), label)


def test_train_aug_list_arithmetic():
  voc_train, voc_val = ['2007_a', '2008_b', '2009_c'], ['2007_v', '2008_w']
  sbd_train, sbd_val = ['2008_b', '2008_w', '2010_e', '2010_e'], ['2011_f', '2007_a', '2007_v']
  assert voc.train_aug_names(voc_train, voc_val, sbd_train, sbd_val) == [
      '2007_a', '2008_b', '2009_c', '2010_e', '2011_f']
  assert voc.train_aug_names([], ['x'], ['x'], []) == []


def test_build_without_tensorflow_splits_tags_masks(sbd_tree):
  fake, data_dir, builder = sbd_tree
  assert 'tensorflow' not in sys.modules  # built and (below) read without importing TF
  expected = {'train': fake.voc_train, 'val': fake.voc_val, 'test': fake.test,
              'train_aug': _expected_train_aug(fake)}
  assert len(expected["train_aug"]) == 5 + 4  # VOC train + the SBD-only images (SBD's VOC val ones dropped)
  assert {s: i.num_examples for s, i in builder.info.splits.items()} == {
      s: len(v) for s, v in expected.items()}
  voc_dir = os.path.join(fake.root, 'VOCdevkit', 'VOC2012')
  for split, names in expected.items():
    src = voc.load(data_dir, split)
    assert src.class_names == voc.CLASS_NAMES and len(src) == len(names)
    for i, name in enumerate(names):
      assert src.name(i) == name
      ex = src[i]
      assert ex['image'].dtype == np.uint8 and ex['image'].shape == fake.sizes[name] + (3,)
      assert np.array_equal(ex['image'], _file_pixels(fake, name))  # the JPEG bytes are stored as is
      assert ex['mask'].dtype == np.int32 and ex['tags'].dtype == np.uint8 and int(ex['index']) == i
      assert np.array_equal(ex['tags'], fake.tags[name]), (split, name)
      if split == 'test':
        assert (ex['mask'] == 255).all() and not ex['tags'].any()
      elif name in fake.voc_masks:  # VOC SegmentationClass wins over SBD, byte for byte
        assert np.array_equal(ex['mask'], fake.voc_masks[name])
        with open(os.path.join(voc_dir, 'SegmentationClass', name + '.png'), 'rb') as f:
          assert src.record(i)['mask'] == f.read()
      else:  # SBD-only image: mask from cls/<name>.mat
        assert np.array_equal(ex['mask'], fake.sbd_masks[name])
  # The difficult first object of each image counts as a tag (XML <name>s, difficult included).
  root = ET.parse(os.path.join(voc_dir, 'Annotations', fake.voc_val[0] + '.xml')).getroot()
  first = root.find('object')
  assert first.findtext('difficult') == '1'
  tags = voc.load(data_dir, 'val')[0]['tags']
  assert tags[voc.CLASS_NAMES.index(first.findtext('name')) - 1] == 1
  # The all-background training image: no tags, mask all 0.
  empty = fake.voc_train[-1]
  train = voc.load(data_dir, 'train')
  ex = train[fake.voc_train.index(empty)]
  assert not ex['tags'].any() and (ex['mask'] == 0).all()
  assert 'tensorflow' not in sys.modules


def test_segmentation_class_aug_variant_and_no_test_split(aug_tree):
  fake, data_dir, builder = aug_tree
  assert fake.aug_dir.endswith(os.path.join('VOCdevkit', 'SegmentationClassAug'))
  assert sorted(builder.info.splits) == ['train', 'train_aug', 'val']  # no test.txt, no test split
  names = _expected_train_aug(fake)
  assert names == sorted(set(fake.aug_names) - set(fake.voc_val))
  src = voc.load(data_dir, 'train_aug')
  assert [src.name(i) for i in range(len(src))] == names
  for i, name in enumerate(names):
    want = fake.voc_masks[name] if name in fake.voc_masks else fake.sbd_masks[name]
    assert np.array_equal(src[i]['mask'], want)
    assert np.array_equal(src[i]['tags'], fake.tags[name])
  with pytest.raises(voc.DatasetError, match="no split 'test'"):
    voc.load(data_dir, 'test')


def _interior(mask: np.ndarray) -> np.ndarray:
  """Pixels whose 3x3 neighbourhood has one label (away from resampling blur; not on the border,
  whose outside neighbours were cropped away)."""
  p = np.pad(mask, 1, constant_values=-1)
  same = np.ones(mask.shape, bool)
  for dy in (0, 1, 2):
    for dx in (0, 1, 2):
      same &= p[dy:dy + mask.shape[0], dx:dx + mask.shape[1]] == mask
  return same


def _pattern(h=37, w=53):
  """An asymmetric label map and an image whose colour is a function of the label."""
  label = np.zeros((h, w), np.int32)
  label[2:15, 3:20] = 3
  label[20:35, 10:18] = 7
  label[5:30, 30:50] = 12
  label[8:12, 40:48] = 19  # gaps between labels: blending labels would make values not drawn here
  lut = np.zeros((256, 3), np.uint8)
  lut[[0, 3, 7, 12, 19]] = [[20, 20, 20], [230, 30, 30], [30, 220, 40], [40, 60, 230], [240, 240, 30]]
  return {'image': lut[label], 'mask': label, 'tags': np.ones(20, np.uint8)}, lut


def test_augmentation_keeps_image_and_mask_aligned():
  ex, lut = _pattern()
  aug = augment.TrainAugment(crop_size=(40, 48), scale_range=(0.5, 1.5), flip=True)
  shapes = set()
  for seed in range(16):
    out = aug(ex, np.random.default_rng(seed))
    assert out['image'].shape == (40, 48, 3) and out['mask'].shape == (40, 48)
    assert out['image'].dtype == np.uint8 and out['mask'].dtype == np.int32
    assert out['tags'] is ex['tags']  # other keys pass through
    m, img = out['mask'], out['image'].astype(int)
    assert set(np.unique(m).tolist()) <= {0, 3, 7, 12, 19, 255}  # nearest, not blended, labels
    pad = m == 255  # the pattern has no 255 of its own: every 255 is padding
    assert (img[pad] == augment.PAD_RGB).all()
    inner = _interior(m) & ~pad
    assert inner.sum() > 200
    assert np.abs(img[inner] - lut[m[inner]].astype(int)).max() <= 3
    shapes.add(int((m != 255).sum()))
  assert len(shapes) > 5  # scales and crops vary with the generator
  # Scale alone: with a big crop the unpadded region is the image resized by 0.5, at the top left.
  out = augment.TrainAugment(crop_size=(80, 110), scale_range=(0.5, 0.5), flip=False)(
      ex, np.random.default_rng(0))
  rows, cols = np.nonzero(out['mask'] != 255)
  assert rows.min() == 0 and cols.min() == 0
  assert rows.max() + 1 in (18, 19) and cols.max() + 1 in (26, 27)
  assert (out['mask'][rows.max() + 1:] == 255).all() and (out['mask'][:, cols.max() + 1:] == 255).all()
  # Flip and crop alone (scale 1): the output is a window of the input, mirrored about half the time.
  flips, windows = 0, set()
  for seed in range(24):
    for flip in (True, False):
      out = augment.TrainAugment(crop_size=(20, 20), scale_range=(1.0, 1.0), flip=flip)(
          ex, np.random.default_rng(seed))
      found = [(t, l, f) for t in range(18) for l in range(34) for f in (False, True)
               if np.array_equal(out['mask'], (ex['mask'][t:t + 20, l:l + 20])[:, ::-1 if f else 1])
               and np.array_equal(out['image'], (ex['image'][t:t + 20, l:l + 20])[:, ::-1 if f else 1])]
      assert found, seed
      flips += any(f for _, _, f in found) and not any(not f for _, _, f in found)
      windows.add(found[0][:2])
      if not flip:
        assert any(not f for _, _, f in found)
  assert 6 <= flips <= 18 and len(windows) > 10


def test_pad_to_and_small_images():
  ex, _ = _pattern(10, 12)
  out = augment.pad_to(ex, (16, 20))
  assert out['image'].shape == (16, 20, 3) and out['mask'].shape == (16, 20)
  assert np.array_equal(out['image'][:10, :12], ex['image'])
  assert np.array_equal(out['mask'][:10, :12], ex['mask'])
  assert (out['mask'][10:] == 255).all() and (out['mask'][:, 12:] == 255).all()
  assert (out['image'][10:] == (123, 117, 104)).all() and (out['image'][:, 12:] == (123, 117, 104)).all()
  assert out['size'].tolist() == [10, 12] and out['size'].dtype == np.int32
  with pytest.raises(ValueError, match='10x12'):
    augment.pad_to(ex, (8, 20))
  # An image smaller than the crop: padded with ignore, all of it kept.
  small = augment.TrainAugment(crop_size=CROP, scale_range=(1.0, 1.0), flip=False)(
      ex, np.random.default_rng(0))
  assert small['image'].shape == (CROP, CROP, 3)
  assert np.array_equal(small['mask'][:10, :12], ex['mask']) and (small['mask'] != 255).sum() == 120


def _voc_cfg(data_dir, **kw):
  return {'name': 'voc2012', 'data_dir': data_dir, 'crop_size': CROP, **kw}


def test_train_batches_crop_determinism_and_resume(sbd_tree):
  fake, data_dir, _ = sbd_tree
  cfg = _voc_cfg(data_dir)
  ds = data.make_dataset(cfg, 'train')
  assert len(ds) == len(_expected_train_aug(fake))  # 'train' reads train_aug by default
  assert len(data.make_dataset(dict(cfg, train_split='train'), 'train')) == len(fake.voc_train)
  assert min(min(fake.sizes[n]) for n in _expected_train_aug(fake)) < CROP  # images smaller than the crop
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
  again = take(0, 5, augment_arg={'crop_size': CROP})  # a config mapping builds the same augmentation
  other = take(1, 5)
  for x, y in zip(a, again):
    assert all(np.array_equal(x[k], y[k]) for k in x)
  assert any(not np.array_equal(x['image'], y['image']) for x, y in zip(a, other))
  resumed = take(0, 2, start=3)
  for x, y in zip(a[3:], resumed):
    assert all(np.array_equal(x[k], y[k]) for k in x)
  # End to end: under each label the image shows that class's colour; tags match the indexed example.
  masks, imgs = np.concatenate([b['mask'] for b in a]), np.concatenate([b['image'] for b in a])
  assert (masks == 255).any()
  names = _expected_train_aug(fake)
  for b in a:
    for j, i in enumerate(b['index']):
      assert np.array_equal(b['tags'][j], fake.tags[names[i]])
  for c, colour in fake.class_colours.items():
    sel = np.stack([_interior(m) for m in masks]) & (masks == c)
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
    assert np.array_equal(b['image'][j, :h, :w], _file_pixels(fake, name))
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


def test_missing_inputs_raise_one_clear_error(tmp_path):
  with pytest.raises(voc.DatasetError, match='does not exist'):
    voc.find_layout(tmp_path / 'nowhere')
  (tmp_path / 'empty').mkdir()
  with pytest.raises(voc.DatasetError, match=r'VOCdevkit/VOC2012.*VOCtrainval_11-May-2012\.tar'):
    voc.build(tmp_path / 'empty', tmp_path / 'tfds')
  raw = tmp_path / 'raw'
  fake_voc.make_fake_voc(raw, n_train=2, n_val=2, n_test=0, n_sbd_extra=1, aug_png=True)
  vdir = raw / 'VOCdevkit' / 'VOC2012'
  # Every accepted manual_dir form finds the same tree.
  for m in (raw, raw / 'VOCdevkit', vdir):
    lay = voc.find_layout(m)
    assert lay.voc == str(vdir) and lay.sbd == str(raw / 'benchmark_RELEASE' / 'dataset')
    assert lay.aug == str(vdir / 'SegmentationClassAug')

  def fails_naming(path, *also):
    with pytest.raises(voc.DatasetError) as e:
      voc.build(raw, tmp_path / 'tfds')
    msg = str(e.value)
    assert str(path) in msg and all(a in msg for a in also), msg

  (vdir / 'SegmentationClass').rename(tmp_path / 'moved')
  os.remove(vdir / 'ImageSets' / 'Segmentation' / 'val.txt')
  fails_naming(vdir / 'SegmentationClass', str(vdir / 'ImageSets' / 'Segmentation' / 'val.txt'),
               voc.VOC_URL)
  (tmp_path / 'moved').rename(vdir / 'SegmentationClass')
  fails_naming(vdir / 'ImageSets' / 'Segmentation' / 'val.txt')
  with open(vdir / 'ImageSets' / 'Segmentation' / 'val.txt', 'w') as f:
    f.write('')
  os.remove(raw / 'benchmark_RELEASE' / 'dataset' / 'train.txt')
  fails_naming(raw / 'benchmark_RELEASE' / 'dataset' / 'train.txt', voc.SBD_URL)
  shutil.rmtree(raw / 'benchmark_RELEASE')
  shutil.rmtree(vdir / 'SegmentationClassAug')
  fails_naming(raw / 'benchmark_RELEASE', 'SegmentationClassAug', voc.SBD_URL)
  assert not (tmp_path / 'tfds').exists()  # nothing half-built
  # Not built yet: the error carries the build command.
  with pytest.raises(voc.DatasetError, match='python -m wsss_jax.data.voc --manual_dir=/m'):
    data.make_dataset({'name': 'voc2012', 'data_dir': str(tmp_path / 'tfds'), 'manual_dir': '/m'}, 'val')
  with pytest.raises(voc.DatasetError, match='data_dir is not set'):
    data.make_dataset({'name': 'voc2012'}, 'val')


def _save(path, img: Image.Image, fmt: str):
  buf = io.BytesIO()
  img.save(buf, fmt)
  with open(path, 'wb') as f:
    f.write(buf.getvalue())


def test_bad_files_skipped_or_converted_with_file_names(tmp_path):
  raw = tmp_path / 'raw'
  fake = fake_voc.make_fake_voc(raw, n_train=6, n_val=3, n_test=1, n_sbd_extra=1, n_empty=0, seed=2)
  vdir = raw / 'VOCdevkit' / 'VOC2012'
  jpg = lambda n: vdir / 'JPEGImages' / f'{n}.jpg'  # noqa: E731
  t = fake.voc_train
  corrupt, gray, cmyk, mismatch, no_xml, rgba = t[0], t[1], t[2], t[3], t[4], t[5]
  palette_img = fake.voc_val[0]
  with open(jpg(corrupt), 'rb') as f:
    head = f.read()
  with open(jpg(corrupt), 'wb') as f:
    f.write(head[:len(head) // 3])  # truncated JPEG
  pixels = {n: _file_pixels(fake, n) for n in (gray, cmyk, rgba, palette_img)}
  _save(jpg(gray), Image.fromarray(pixels[gray]).convert('L'), 'JPEG')
  _save(jpg(cmyk), Image.fromarray(pixels[cmyk]).convert('CMYK'), 'JPEG')
  rgba_img = np.concatenate([pixels[rgba], np.full(pixels[rgba].shape[:2] + (1,), 128, np.uint8)], -1)
  _save(jpg(rgba), Image.fromarray(rgba_img), 'PNG')  # PNG bytes under a .jpg name
  pal = Image.fromarray(pixels[palette_img]).quantize(64)
  _save(jpg(palette_img), pal, 'PNG')
  h, w = fake.sizes[mismatch]
  _save(vdir / 'SegmentationClass' / f'{mismatch}.png', Image.new('P', (w + 3, h)), 'PNG')
  os.remove(vdir / 'Annotations' / f'{no_xml}.xml')

  with pytest.warns(voc.DatasetWarning) as record:
    builder = voc.build(raw, tmp_path / 'tfds')
  messages = [str(r.message) for r in record]

  def warned(*parts):
    return any(all(p in m for p in parts) for m in messages)

  assert warned(str(jpg(corrupt)), 'corrupt', 'skipped')
  assert warned(str(vdir / 'SegmentationClass' / f'{mismatch}.png'), f'{h}x{w + 3}', 'skipped')
  for name, mode in ((gray, 'L'), (cmyk, 'CMYK'), (rgba, 'RGBA'), (palette_img, 'P')):
    assert warned(str(jpg(name)), f'{mode} image converted to RGB'), (name, messages)
  assert warned('train: skipped 2 of 6')
  assert sorted(m.split(': ')[0] for m in builder.skipped['train']) == sorted(
      [str(jpg(corrupt)), str(vdir / 'SegmentationClass' / f'{mismatch}.png')])
  train = voc.load(tmp_path / 'tfds', 'train')
  names = [train.name(i) for i in range(len(train))]
  assert names == [n for n in t if n not in (corrupt, mismatch)]
  aug_names = voc.load(tmp_path / 'tfds', 'train_aug')
  assert corrupt not in [aug_names.name(i) for i in range(len(aug_names))]
  g = train[names.index(gray)]['image']
  assert g.shape == fake.sizes[gray] + (3,)
  assert (g[..., 0] == g[..., 1]).all() and (g[..., 1] == g[..., 2]).all()
  c = train[names.index(cmyk)]['image'].astype(int)
  assert c.shape == fake.sizes[cmyk] + (3,) and np.abs(c - pixels[cmyk]).mean() < 12
  assert np.array_equal(train[names.index(rgba)]['image'], pixels[rgba])  # alpha dropped, lossless
  val = voc.load(tmp_path / 'tfds', 'val')
  assert np.array_equal(val[0]['image'], np.asarray(pal.convert('RGB')))
  # No XML: tags are the labels of the mask (without background and 255).
  ex = train[names.index(no_xml)]
  labels = set(np.unique(fake.voc_masks[no_xml]).tolist()) - {0, 255}
  assert labels and set((np.nonzero(ex['tags'])[0] + 1).tolist()) == labels


def test_read_time_decode_errors_name_the_file(sbd_tree):
  fake, data_dir, _ = sbd_tree
  src = voc.load(data_dir, 'val')
  rec = dict(src.record(1))
  bad_image = voc.VOCSource([dict(rec, image=rec['image'][:200])], 'val')
  with pytest.raises(voc.DatasetError, match=rf'val\[0\] {fake.voc_val[1]}: cannot decode image'):
    bad_image[0]
  bad_mask = voc.VOCSource([dict(rec, mask=b'\x89PNG garbage')], 'val')
  with pytest.raises(voc.DatasetError, match=rf'{fake.voc_val[1]}: cannot decode mask'):
    bad_mask[0]
  wrong_size = voc.VOCSource([dict(rec, height=np.int32(7))], 'val')
  with pytest.raises(voc.DatasetError, match=fake.voc_val[1]):
    wrong_size[0]


def test_command_lines(tmp_path):
  env = dict(os.environ, PYTHONPATH=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  run = lambda *a: subprocess.run([sys.executable, '-m', *a], capture_output=True, text=True,  # noqa: E731
                                  env=env, timeout=120)
  r = run('wsss_jax.data.fake_voc', f'--root={tmp_path / "raw"}', '--n_train=2', '--n_val=2', '--n_test=0',
          '--n_sbd_extra=1')
  assert r.returncode == 0, r.stderr
  assert (tmp_path / 'raw' / 'benchmark_RELEASE' / 'dataset' / 'train.txt').exists()
  r = run('wsss_jax.data.voc', f'--manual_dir={tmp_path / "raw"}', f'--data_dir={tmp_path / "tfds"}')
  assert r.returncode == 0, r.stderr
  assert 'train_aug: 3 examples' in r.stdout and 'val: 2 examples' in r.stdout
  r = run('wsss_jax.data.voc', f'--manual_dir={tmp_path / "nope"}', f'--data_dir={tmp_path / "tfds2"}')
  assert r.returncode == 1 and r.stderr.startswith('error: manual_dir') and str(tmp_path / 'nope') in r.stderr
