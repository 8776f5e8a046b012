"""Pseudo-labels: files in the SegmentationClassAug layout at original size, their mIoU against
numpy on the written files, resume, confidence, and a second stage that reads them."""
import json
import os
import shutil

import numpy as np
from PIL import Image

from wsss_jax import config_lib, data
from wsss_jax.data import label_folder

import helpers


def _numpy_miou(pairs, k):
  inter, union = np.zeros(k), np.zeros(k)
  for truth, label in pairs:
    keep = (truth != 255) & (label != 255)
    for c in range(k):
      t, p = (truth == c) & keep, (label == c) & keep
      inter[c] += np.sum(t & p)
      union[c] += np.sum(t | p)
  return float(np.mean(inter[union > 0] / union[union > 0]))


def test_pseudo_labels_written_resumed_and_read_by_a_second_stage(tiny_straight, tmp_path):
  workdir = str(tmp_path / 'run')
  shutil.copytree(tiny_straight[0], workdir)
  out = tmp_path / 'pseudo'
  res = helpers.run('pseudo_labels.py', f'--workdir={workdir}', f'--out={out}', '--num=10')
  assert res.returncode == 0, res.stderr[-3000:]
  folder = out / 'SegmentationClassAug'
  files = sorted(os.listdir(folder))
  assert files == [f'train_{i:06d}.png' for i in range(10)]
  config = config_lib.load_config(workdir)
  ds = data.make_dataset(config.data, 'train')
  pairs = []
  for i, name in enumerate(files):
    img = Image.open(folder / name)
    assert img.mode == 'P' and img.size == (32, 32)
    label = np.asarray(img).astype(np.int64)
    present = set(np.nonzero(ds[i]['tags'])[0] + 1) | {0}
    assert set(np.unique(label)) <= present  # only the image's tags (and background)
    pairs.append((ds[i]['mask'], label))
  report = json.load(open(out / 'pseudo_labels_train.json'))
  assert report['written'] == 10 and report['kept'] == 0 and report['images'] == 10
  assert abs(report['miou'] - _numpy_miou(pairs, 7)) < 1e-9
  assert f'pseudo-label mIoU on train: {100 * report["miou"]:.2f}' in res.stdout
  # Resume: finished files are kept as they are.
  stamps = {n: os.stat(folder / n).st_mtime_ns for n in files}
  res = helpers.run('pseudo_labels.py', f'--workdir={workdir}', f'--out={out}', '--num=12')
  assert res.returncode == 0, res.stderr[-3000:]
  again = json.load(open(out / 'pseudo_labels_train.json'))
  assert again['kept'] == 10 and again['written'] == 2
  assert {n: os.stat(folder / n).st_mtime_ns for n in files} == stamps
  # Confidence: uncertain pixels become 255 and leave the mIoU's pixel count.
  sure = tmp_path / 'sure'
  res = helpers.run('pseudo_labels.py', f'--workdir={workdir}', f'--out={sure}', '--num=10',
                    '--confidence=0.99')
  assert res.returncode == 0, res.stderr[-3000:]
  strict = json.load(open(sure / 'pseudo_labels_train.json'))
  assert strict['ignored_fraction'] > 0
  labels = [np.asarray(Image.open(sure / 'SegmentationClassAug' / n)) for n in files]
  assert abs(np.mean([np.mean(x == 255) for x in labels]) - strict['ignored_fraction']) < 1e-9
  # A second stage reads them as its train masks.
  with config.unlocked():
    config.data.train_masks = str(out)
  second = data.make_dataset(config.data, 'train')
  for i in range(10):
    np.testing.assert_array_equal(second[i]['mask'], pairs[i][1])
    np.testing.assert_array_equal(second[i]['image'], ds[i]['image'])
  try:
    second[11]
    second[12]
    raise AssertionError('a missing label map must be an error')
  except data.DataError as e:
    assert str(label_folder.label_path(str(out), 'train_000012')) in str(e)
