"""End to end on a fake PASCAL VOC tree: build the TFDS dataset, train configs/voc12_smoke.py
from an imported weight file, evaluate val (Table 2 layout with the paper's row) and write the
evaluation server's PNGs and archive for test."""
import json
import os
import tarfile

import jax
import numpy as np
from PIL import Image

from configs import voc12_smoke
from wsss_jax import constants, model, weights
from wsss_jax.data import fake_voc, voc

import helpers


def test_voc_smoke_train_eval_and_server_output(tmp_path):
  fake = fake_voc.make_fake_voc(tmp_path / 'raw', n_train=6, n_val=3, n_test=3, n_sbd_extra=3,
                                seed=2)
  res = helpers.run('-m', 'wsss_jax.data.voc', f'--manual_dir={tmp_path / "raw"}',
                    f'--data_dir={tmp_path / "tfds"}')
  assert res.returncode == 0, res.stderr[-3000:]
  # A backbone weight file in our .npz format (the same route as converted Caffe weights).
  config = voc12_smoke.get_config()
  init = model.init_params(jax.random.key_data(jax.random.key(7)), config)['backbone']
  weights.save_npz(jax.device_get(init), str(tmp_path / 'init.npz'), 'imagenet',
                   mean=constants.PIXEL_MEAN, std=constants.PIXEL_STD)
  workdir = tmp_path / 'run'
  res = helpers.run('train.py', '--config=configs/voc12_smoke.py', f'--workdir={workdir}',
                    f'--config.data.data_dir={tmp_path / "tfds"}',
                    f'--config.init_weights={tmp_path / "init.npz"}')
  assert res.returncode == 0, res.stderr[-3000:]
  assert 'initialised conv1_1..fc7 from' in res.stdout
  lines = res.stdout.splitlines()
  head = next(i for i, l in enumerate(lines)  # the table's header (the AP line names classes too)
              if 'aeropl' in l and 'tvmoni' in l and l.rstrip().endswith('mIoU'))
  assert lines[head + 2].startswith('Roy&Todorovic') and lines[head + 2].split()[-1] == '52.8'
  report = json.load(open(workdir / 'eval_val.json'))
  sizes = [Image.open(os.path.join(fake.root, 'VOCdevkit', 'VOC2012', 'SegmentationClass',
                                   f'{n}.png')).size
           for n in fake.voc_val]
  labelled = 0
  for n in fake.voc_val:
    m = np.asarray(Image.open(os.path.join(fake.root, 'VOCdevkit', 'VOC2012', 'SegmentationClass',
                                           f'{n}.png')))
    labelled += int(np.sum(m != 255))
  # Every labelled val pixel counted once at its original resolution (padding ignored).
  assert np.sum(report['confusion']) == labelled and len(sizes) == 3

  res = helpers.run('eval.py', f'--workdir={workdir}', '--split=test')
  assert res.returncode == 0, res.stderr[-3000:]
  out = workdir / 'server_test' / 'results' / 'VOC2012' / 'Segmentation' / 'comp5_test_cls'
  assert sorted(os.listdir(out)) == sorted(f'{n}.png' for n in fake.test)
  for n in fake.test:
    png = Image.open(out / f'{n}.png')
    image = Image.open(os.path.join(fake.root, 'VOCdevkit', 'VOC2012', 'JPEGImages', f'{n}.jpg'))
    assert png.mode == 'P' and png.size == image.size  # original size: the padding is cropped off
    labels = voc.decode_mask((out / f'{n}.png').read_bytes())
    assert labels.min() >= 0 and labels.max() <= 20
    assert np.array_equal(np.asarray(png), labels)  # palette indices are the labels, not colours
  with tarfile.open(workdir / 'server_test.tar.gz') as tar:
    members = sorted(m.name for m in tar.getmembers() if m.isfile())
  assert members == sorted(f'results/VOC2012/Segmentation/comp5_test_cls/{n}.png'
                           for n in fake.test)
