"""VOC mIoU, the IoU table and average precision against hand references."""
import jax.numpy as jnp
import numpy as np
import pytest

from wsss_jax import metrics


def test_confusion_matrix_and_miou_by_hand():
  gt = np.array([[0, 0, 1, 1], [2, 2, 255, 1]])
  pr = np.array([[0, 1, 1, 1], [2, 0, 2, 3]])
  conf = np.asarray(metrics.confusion_matrix(jnp.asarray(gt), jnp.asarray(pr), 4))
  expected = np.zeros((4, 4), int)
  for g, p in [(0, 0), (0, 1), (1, 1), (1, 1), (2, 2), (2, 0), (1, 3)]:  # the 255 pixel is skipped
    expected[g, p] += 1
  np.testing.assert_array_equal(conf, expected)
  # IoU: bg 1/(2+2-1), c1 2/(3+3-2), c2 1/(2+1-1), c3 0/(0+1-0): class 3 appears only in the
  # prediction.
  iou = metrics.iou_per_class(conf)
  np.testing.assert_allclose(iou, [1 / 3, 1 / 2, 1 / 2, 0.0])
  assert metrics.mean_iou(conf) == pytest.approx((1 / 3 + 1 / 2 + 1 / 2 + 0) / 4)
  # A class absent from both ground truth and prediction is left out of the mean (NaN IoU).
  conf5 = np.asarray(metrics.confusion_matrix(jnp.asarray(gt), jnp.asarray(pr), 5))
  assert np.isnan(metrics.iou_per_class(conf5)[4])
  assert metrics.mean_iou(conf5) == pytest.approx(metrics.mean_iou(conf))


def test_iou_table_layout():
  conf = np.array([[5, 1], [0, 4]])
  head, row = metrics.format_iou_table(conf, ['background', 'cat'], title='B1').splitlines()
  assert head.split() == ['backgr', 'cat', 'mIoU'] and row.split() == ['B1', '83.3', '80.0', '81.7']


def test_average_precision_against_pairwise_definition():
  """Tag AP (eval's image classification diagnostic) against a float64 pairwise evaluation of
  its definition, with ties, a class without positives and a hand-computed value."""
  rng = np.random.default_rng(0)
  scores = np.round(rng.random((40, 4)), 1)  # coarse: many ties
  tags = rng.random((40, 4)) < 0.4
  tags[:, 3] = False
  ap = metrics.average_precision(scores, tags)
  for c in range(3):
    s, y = scores[:, c], tags[:, c]
    prec = [np.sum(y & (s >= s[i])) / np.sum(s >= s[i]) for i in np.nonzero(y)[0]]
    assert ap[c] == pytest.approx(np.mean(prec), abs=1e-12)
  assert np.isnan(ap[3])
  # positives ranked 1st and 3rd of 4: (1/1 + 2/3) / 2
  got = metrics.average_precision(np.array([[.9], [.8], [.7], [.6]]),
                                  np.array([[1], [0], [1], [0]], bool))
  assert got[0] == pytest.approx(5 / 6)
  # a perfect ranking scores 1, a reversed one less
  assert metrics.average_precision(np.array([[2.], [1.], [0.]]),
                                   np.array([[1], [1], [0]], bool))[0] == 1.0
  assert metrics.average_precision(np.array([[0.], [1.], [2.]]),
                                   np.array([[1], [1], [0]], bool))[0] < 0.6
