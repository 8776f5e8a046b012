"""train.py then eval.py from the command line: outputs, variants, and one-line refusals."""
import json
import os
import shutil

import numpy as np
import pytest

from configs import tiny

import helpers


def test_train_then_eval_outputs_and_refusals(tiny_straight, tmp_path):
  """train.py (the session's shared tiny run, tests/conftest.py) then eval.py from the command
  line: the table, JSON and PNG, a variant's own files, and one-line refusals that leave the
  workdir as it was. (Resume after SIGKILL/SIGTERM equals an uninterrupted run: test_faults.py.)"""
  straight = str(tmp_path / 'straight')
  shutil.copytree(tiny_straight[0], straight)  # (the shared run stays as train.py left it)
  total = 20
  assert 'val mIoU:' in tiny_straight[1]
  config = tiny.get_config()
  assert helpers.restored(straight, config)[0] == total

  # eval.py on the finished workdir: table, JSON and PNG.
  res = helpers.run('eval.py', f'--workdir={straight}')
  assert res.returncode == 0, res.stderr[-2000:]
  assert any('mIoU' in l and 'backgr' in l
             for l in res.stdout.splitlines()) and 'val mIoU:' in res.stdout
  assert 'class threshold' in res.stdout  # tuned on the val tags
  report = json.load(open(os.path.join(straight, 'eval_val.json')))
  conf = np.array(report['confusion'])
  assert conf.sum() == 16 * 32 * 32 and report['step'] == total
  # the image classifier's per-class AP on the val tags (the warm-up diagnostic), background
  # excluded
  assert list(report['tag_ap']) == [n for n in report['iou'] if n != 'background']
  assert report['tag_map'] == pytest.approx(np.nanmean([v for v in report['tag_ap'].values()
                                                        if v is not None]))
  assert 'image classification on val: mAP' in res.stdout
  assert os.path.getsize(os.path.join(straight, 'examples_val.png')) > 0
  # An inference variant (B6 + a fixed threshold) writes its own files, leaving the others as they
  # were.
  before = open(os.path.join(straight, 'eval_val.json')).read()
  res = helpers.run('eval.py', f'--workdir={straight}', '--noattention', '--class_threshold=0.3')
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
  res = helpers.run('eval.py', f'--workdir={other}')
  assert res.returncode != 0 and 'Traceback' not in res.stderr
  assert res.stderr.strip().splitlines()[-1].startswith('error: ')
  assert 'checkpoint architecture differs' in res.stderr and 'conv1_1' in res.stderr
  assert sorted(os.listdir(os.path.join(other, 'checkpoints'))) == before
  # train.py with a different model into an existing workdir refuses rather than mixing runs.
  res = helpers.run('train.py', *helpers.TINY_FLAGS, f'--workdir={straight}',
                    '--config.model.backbone.width=0.125')
  assert res.returncode != 0 and 'Traceback' not in res.stderr and 'different model' in res.stderr
  assert helpers.complete_steps(os.path.join(straight, 'checkpoints'))[-1] == total


@pytest.mark.parametrize('args, message', [
    (['--config.train.nope=1'], 'config.train.nope'),
    (['--config=configs/missing.py'], 'configs/missing.py'),
])
def test_bad_flags_give_one_error_line(args, message):
  res = helpers.run('train.py', '--config=configs/tiny.py', *args, timeout=120)
  assert res.returncode != 0 and 'Traceback' not in res.stderr
  lines = res.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith('error: ') and message in lines[0]


def test_unknown_key_in_config_file_and_workdir_that_is_a_file(tmp_path):
  cfg = tmp_path / 'typo.py'
  cfg.write_text('from configs import tiny\n\ndef get_config():\n  c = tiny.get_config()\n'
                 '  c.unlock()\n  c.train.num_step = 3\n  return c\n')
  res = helpers.run('train.py', f'--config={cfg}', f'--workdir={tmp_path / "w"}', timeout=120)
  assert res.returncode != 0 and 'Traceback' not in res.stderr
  assert res.stderr.strip().splitlines() == [res.stderr.strip().splitlines()[-1]]
  assert 'unknown config key config.train.num_step' in res.stderr
  afile = tmp_path / 'afile'
  afile.write_text('keep me')
  res = helpers.run('train.py', '--config=configs/tiny.py', f'--workdir={afile}', timeout=120)
  assert res.returncode != 0 and 'Traceback' not in res.stderr
  assert 'is not a directory' in res.stderr and afile.read_text() == 'keep me'
