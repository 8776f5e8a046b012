"""The PASCAL VOC 2012 builder and reader on fake trees in the real formats: TFDS build without
TensorFlow, split lists, tags, masks and bad inputs."""
import io
import os
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET

import numpy as np
import pytest
from PIL import Image

from wsss_jax import data, visualize
from wsss_jax.data import fake_voc, voc

import helpers


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
  png = visualize.encode_palette_png(label)
  img = Image.open(io.BytesIO(png))
  assert img.format == 'PNG' and img.mode == 'P'
  assert np.array_equal(np.asarray(img), label)  # indices are stored, not colours
  assert img.getpalette()[:3 * 21] == voc.PALETTE[:21].ravel().tolist()
  dec = voc.decode_mask(png)
  assert dec.dtype == np.int32 and np.array_equal(dec, label)
  for mode_png in (Image.fromarray(label.astype(np.uint8)),  # grayscale index PNG
                                                             # (SegmentationClassAug)
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
              'train_aug': helpers.expected_train_aug(fake)}
  # VOC train + the SBD-only images (SBD's VOC val ones dropped)
  assert len(expected['train_aug']) == 5 + 4
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
      # the JPEG bytes are stored as is
      assert np.array_equal(ex['image'], helpers.file_pixels(fake, name))
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
  names = helpers.expected_train_aug(fake)
  assert names == sorted(set(fake.aug_names) - set(fake.voc_val))
  src = voc.load(data_dir, 'train_aug')
  assert [src.name(i) for i in range(len(src))] == names
  for i, name in enumerate(names):
    want = fake.voc_masks[name] if name in fake.voc_masks else fake.sbd_masks[name]
    assert np.array_equal(src[i]['mask'], want)
    assert np.array_equal(src[i]['tags'], fake.tags[name])
  with pytest.raises(voc.DatasetError, match="no split 'test'"):
    voc.load(data_dir, 'test')


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
    data.make_dataset({'name': 'voc2012', 'data_dir': str(tmp_path / 'tfds'), 'manual_dir': '/m'},
                      'val')
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
  pixels = {n: helpers.file_pixels(fake, n) for n in (gray, cmyk, rgba, palette_img)}
  _save(jpg(gray), Image.fromarray(pixels[gray]).convert('L'), 'JPEG')
  _save(jpg(cmyk), Image.fromarray(pixels[cmyk]).convert('CMYK'), 'JPEG')
  rgba_img = np.concatenate([pixels[rgba], np.full(pixels[rgba].shape[:2] + (1,), 128, np.uint8)],
                            -1)
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
  with pytest.raises(voc.DatasetError, match=rf'{fake.voc_val[1]}: cannot decode mask \(not a '
                     r'format Pillow can identify\)$'):
    bad_mask[0]
  wrong_size = voc.VOCSource([dict(rec, height=np.int32(7))], 'val')
  with pytest.raises(voc.DatasetError, match=fake.voc_val[1]):
    wrong_size[0]


def test_command_lines(tmp_path):
  run = lambda *a: helpers.run('-m', *a, timeout=120)  # noqa: E731
  r = run('wsss_jax.data.fake_voc', f'--root={tmp_path / "raw"}', '--n_train=2', '--n_val=2',
          '--n_test=0', '--n_sbd_extra=1')
  assert r.returncode == 0, r.stderr
  assert (tmp_path / 'raw' / 'benchmark_RELEASE' / 'dataset' / 'train.txt').exists()
  r = run('wsss_jax.data.voc', f'--manual_dir={tmp_path / "raw"}',
          f'--data_dir={tmp_path / "tfds"}')
  assert r.returncode == 0, r.stderr
  assert 'train_aug: 3 examples' in r.stdout and 'val: 2 examples' in r.stdout
  r = run('wsss_jax.data.voc', f'--manual_dir={tmp_path / "nope"}',
          f'--data_dir={tmp_path / "tfds2"}')
  assert (r.returncode == 1 and r.stderr.startswith('error: manual_dir')
          and str(tmp_path / 'nope') in r.stderr)


def _build_cli(raw, data_dir, *flags, env_warnings=None):
  """`python -m wsss_jax.data.voc` (optionally under PYTHONWARNINGS)."""
  args = ('-m', 'wsss_jax.data.voc', f'--manual_dir={raw}', f'--data_dir={data_dir}', *flags)
  if env_warnings is None:
    return helpers.run(*args, timeout=120)
  env = helpers.env()
  env['PYTHONWARNINGS'] = env_warnings
  return subprocess.run([sys.executable, *args], cwd=helpers.ROOT, env=env, capture_output=True,
                        text=True, timeout=120)


def test_a_split_of_only_unusable_images_is_one_error_and_a_later_build_succeeds(tmp_path):
  raw = tmp_path / 'raw'
  fake = fake_voc.make_fake_voc(raw, n_train=3, n_val=2, n_test=1, n_sbd_extra=1, seed=3)
  jpegs = raw / 'VOCdevkit' / 'VOC2012' / 'JPEGImages'
  originals = {n: (jpegs / f'{n}.jpg').read_bytes() for n in fake.voc_val}
  for n in fake.voc_val:
    (jpegs / f'{n}.jpg').write_bytes(b'not a jpeg')
  res = _build_cli(raw, tmp_path / 'tfds')
  assert res.returncode == 1 and 'Traceback' not in res.stderr, res.stderr[-3000:]
  line = helpers.last_error_line(res)
  assert line.startswith('error: split val: none of the 2 listed images could be used'), line
  assert str(jpegs / f'{fake.voc_val[0]}.jpg') in line
  for n, data_bytes in originals.items():  # repaired: the same data_dir builds
    (jpegs / f'{n}.jpg').write_bytes(data_bytes)
  res = _build_cli(raw, tmp_path / 'tfds')
  assert res.returncode == 0, res.stderr[-3000:]
  assert 'val: 2 examples' in res.stdout
  assert len(voc.load(tmp_path / 'tfds', 'val')) == 2


@pytest.mark.parametrize('content', [
    b'<?xml version="1.0" encoding="no-such-codec"?><annotation><object><name>cat</name></object>'
    b'</annotation>',
    b'<?xml version="1.0" encoding="utf-16"?><annotation></annotation>',
    bytes(range(256)) * 4,
    b''], ids=['unknown-codec', 'wrong-codec', 'binary-junk', 'empty'])
def test_an_unreadable_annotation_takes_tags_from_the_mask(tmp_path, content):
  raw = tmp_path / 'raw'
  fake = fake_voc.make_fake_voc(raw, n_train=2, n_val=2, n_test=0, n_sbd_extra=1, seed=4)
  name = fake.voc_train[0]
  xml = raw / 'VOCdevkit' / 'VOC2012' / 'Annotations' / f'{name}.xml'
  xml.write_bytes(content)
  res = _build_cli(raw, tmp_path / 'tfds')
  assert res.returncode == 0 and 'Traceback' not in res.stderr, res.stderr[-3000:]
  assert f'notes (train): {xml}: unreadable annotation' in res.stdout, res.stdout
  train = voc.load(tmp_path / 'tfds', 'train')
  ex = train[[train.name(i) for i in range(len(train))].index(name)]
  labels = set(np.unique(fake.voc_masks[name]).tolist()) - {0, 255}
  assert labels and set((np.nonzero(ex['tags'])[0] + 1).tolist()) == labels


def test_the_build_summary_lists_every_file_whatever_the_warning_filters(tmp_path):
  """Under PYTHONWARNINGS=ignore the summary on stdout still names every converted and skipped
  file with its reason; a rerun says it reused the build; another manual_dir is refused unless
  --rebuild."""
  raw = tmp_path / 'raw'
  fake = fake_voc.make_fake_voc(raw, n_train=3, n_val=2, n_test=0, n_sbd_extra=1, seed=5)
  jpegs = raw / 'VOCdevkit' / 'VOC2012' / 'JPEGImages'
  cmyk, corrupt = fake.voc_train[0], fake.voc_train[1]
  _save(jpegs / f'{cmyk}.jpg',
        Image.fromarray(helpers.file_pixels(fake, cmyk)).convert('CMYK'), 'JPEG')
  (jpegs / f'{corrupt}.jpg').write_bytes(b'junk')
  res = _build_cli(raw, tmp_path / 'tfds', env_warnings='ignore')
  assert res.returncode == 0, res.stderr[-3000:]
  out = res.stdout
  assert out.splitlines()[0] == f'built {tmp_path / "tfds" / "voc2012_wsss" / "1.0.0"} from {raw}'
  assert 'train: 2 examples (3 listed, 1 skipped, 1 converted)' in out
  assert f'converted (train): {jpegs / f"{cmyk}.jpg"}: CMYK image converted to RGB' in out
  assert (f'skipped (train): {jpegs / f"{corrupt}.jpg"}: corrupt or unreadable image (not a '
          'format Pillow can identify); skipped') in out
  again = _build_cli(raw, tmp_path / 'tfds')
  assert again.returncode == 0 and again.stdout.splitlines()[0].startswith('reused '), again.stdout
  assert 'train: 2 examples (3 listed, 1 skipped, 1 converted)' in again.stdout
  other = tmp_path / 'other'
  shutil.copytree(raw, other)
  refused = _build_cli(other, tmp_path / 'tfds')
  assert refused.returncode == 1 and 'Traceback' not in refused.stderr
  assert f'was built from {raw}, not {other}; pass --rebuild' in helpers.last_error_line(refused)
  rebuilt = _build_cli(other, tmp_path / 'tfds', '--rebuild')
  assert rebuilt.returncode == 0 and rebuilt.stdout.startswith('built '), rebuilt.stderr[-2000:]
  assert voc.load(tmp_path / 'tfds', 'train').metadata['manual_dir'] == str(other)
