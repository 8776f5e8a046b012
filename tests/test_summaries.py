"""metrics.jsonl, TensorBoard event files (read with the tensorboard package's own reader) and the
curves PNG of a training run."""
import json
import os

import numpy as np
import pytest
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator


def test_tensorboard_scalars_match_metrics_jsonl_and_eval(tiny_straight):
  workdir = tiny_straight[0]
  rows = [json.loads(line) for line in open(os.path.join(workdir, 'metrics.jsonl'))]
  events = EventAccumulator(os.path.join(workdir, 'tensorboard'), size_guidance={'scalars': 0})
  events.Reload()
  tags = set(events.Tags()['scalars'])
  assert {'train/loss', 'train/cls_loss', 'train/seg_loss', 'train/lr', 'train/images_per_sec',
          'train/qp_converged', 'val/miou', 'val/miou_cnn', 'val/class_threshold'} <= tags, tags
  loss = events.Scalars('train/loss')
  assert [e.step for e in loss] == [r['step'] for r in rows] == list(range(1, 21))
  np.testing.assert_allclose([e.value for e in loss], [r['loss'] for r in rows], rtol=1e-6)
  seg = events.Scalars('train/seg_loss')  # Delta^S from the end of the warm-up (step 2) on
  assert [e.step for e in seg] == [r['step'] for r in rows if 'seg_loss' in r]
  report = json.load(open(os.path.join(workdir, 'eval_val.json')))
  (miou,) = events.Scalars('val/miou')
  assert miou.step == 20 and miou.value == pytest.approx(report['miou'], rel=1e-6)


def test_curves_png_is_written(tiny_straight):
  with Image.open(os.path.join(tiny_straight[0], 'curves.png')) as img:
    assert img.mode == 'RGB' and img.size[0] >= 640 and img.size[1] >= 190
    a = np.asarray(img)
  assert (np.all(a == (200, 30, 30), -1)).sum() > 100  # the plotted lines
