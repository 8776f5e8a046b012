"""Aggregation heads, Delta^C (Eq. 14) and VOC mIoU against hand / float64 numpy references."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from wsss_jax import aggregation, losses, metrics


def test_heads_on_known_input():
  f = np.zeros((1, 2, 2, 2), np.float32)
  f[0, :, :, 0] = [[1, 2], [3, 6]]
  f[0, :, :, 1] = [[-1, -1], [-1, 5]]
  np.testing.assert_allclose(aggregation.gap(f), [[3.0, 0.5]])
  np.testing.assert_allclose(aggregation.gmp(f), [[6.0, 5.0]])
  r = 2.0
  ref = [np.log(np.mean(np.exp(r * f[0, :, :, k].astype(np.float64)))) / r for k in range(2)]
  np.testing.assert_allclose(aggregation.lse(f, r)[0], ref, rtol=1e-6)
  # LSE tends to GAP as r -> 0 and to GMP as r -> inf.
  np.testing.assert_allclose(aggregation.lse(f, 1e-4), aggregation.gap(f), atol=1e-3)
  np.testing.assert_allclose(aggregation.lse(f, 200.0), aggregation.gmp(f), atol=0.02)


def test_fcl_is_per_class_fully_connected():
  rng = np.random.default_rng(0)
  f = rng.normal(size=(3, 4, 5, 6)).astype(np.float32)
  p = {'w': jnp.asarray(rng.normal(size=(4, 5, 6)), jnp.float32), 'b': jnp.asarray(rng.normal(size=6), jnp.float32)}
  ref = np.array([[np.sum(f[n, :, :, k] * np.asarray(p['w'])[:, :, k]) + p['b'][k] for k in range(6)] for n in range(3)])
  np.testing.assert_allclose(aggregation.fcl(p, f), ref, rtol=1e-5, atol=1e-5)
  init = aggregation.init_fcl((4, 5), 6)
  np.testing.assert_allclose(aggregation.fcl(init, f), aggregation.gap(f), rtol=1e-5, atol=1e-6)
  with pytest.raises(ValueError, match=r'FCL expects score maps of shape \(4, 5, 6\)'):
    aggregation.fcl(p, f[:, :3])


def test_fcl_lse_form_has_positional_log_weights_inside_lse():
  """model.fcl_form = 'lse': s = (1/r) log(mean_i exp(W_i) exp(r f_i)) + c against float64 numpy;
  LSE itself at the init (W = 0), whose positional weights for the top-down pass are uniform."""
  rng = np.random.default_rng(1)
  f = rng.normal(size=(3, 4, 5, 6))
  w, b, r = rng.normal(size=(4, 5, 6)), rng.normal(size=6), 3.0
  ref = np.log(np.mean(np.exp(w)[None] * np.exp(r * f), axis=(1, 2))) / r + b
  p = {'w': jnp.asarray(w, jnp.float32), 'b': jnp.asarray(b, jnp.float32)}
  np.testing.assert_allclose(aggregation.fcl(p, jnp.asarray(f, jnp.float32), 'lse', r), ref,
                             rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(aggregation.fcl_positional_weights(p, 'lse'), np.exp(w), rtol=1e-6)
  init = aggregation.init_fcl((4, 5), 6, 'lse')
  f32 = jnp.asarray(f, jnp.float32)
  np.testing.assert_allclose(aggregation.fcl(init, f32, 'lse', r), aggregation.lse(f32, r),
                             rtol=1e-6, atol=1e-6)
  np.testing.assert_array_equal(aggregation.fcl_positional_weights(init, 'lse'), 1.0)
  # large scores stay finite (log-sum-exp in log space)
  assert np.all(np.isfinite(aggregation.fcl(init, 100.0 * f32, 'lse', r)))
  with pytest.raises(ValueError, match='FCL form must be one of'):
    aggregation.fcl(p, f32, 'max')


def _np_eq14(logits, tags):
  p = 1.0 / (1.0 + np.exp(-logits.astype(np.float64)))
  out = []
  for pi, ti in zip(p, tags):
    pos, neg = pi[ti == 1], pi[ti == 0]
    out.append((-np.mean(np.log(pos)) if len(pos) else 0.0) + (-np.mean(np.log(1 - neg)) if len(neg) else 0.0))
  return np.array(out)


def test_classification_loss_matches_eq14():
  rng = np.random.default_rng(3)
  logits = rng.normal(scale=3, size=(6, 7)).astype(np.float32)
  tags = (rng.random((6, 7)) < 0.3).astype(np.int32)
  tags[0] = 1  # all present
  tags[1] = 0  # all absent
  got = losses.classification_loss(jnp.asarray(logits), jnp.asarray(tags))
  np.testing.assert_allclose(got, _np_eq14(logits, tags), rtol=1e-5)
  g = jax.grad(lambda l: jnp.sum(losses.classification_loss(l, jnp.asarray(tags))))(jnp.asarray(logits))
  assert np.all(np.isfinite(g))


def test_classification_loss_is_finite_for_saturated_logits():
  logits = jnp.array([[80.0, -80.0]])
  got = losses.classification_loss(logits, jnp.array([[0, 1]]))
  np.testing.assert_allclose(got, [160.0], rtol=1e-5)  # -log sigma(-80) + -log(1 - sigma(80)), in log space


def test_pixel_cross_entropy_ignores_255():
  rng = np.random.default_rng(0)
  logits = rng.normal(size=(1, 2, 3, 4)).astype(np.float32)
  labels = np.array([[[0, 3, 255], [1, 255, 2]]])
  lp = logits - np.log(np.exp(logits.astype(np.float64)).sum(-1, keepdims=True))
  ref = -np.mean([lp[0, i, j, labels[0, i, j]] for i in range(2) for j in range(3) if labels[0, i, j] != 255])
  np.testing.assert_allclose(losses.pixel_cross_entropy(jnp.asarray(logits), jnp.asarray(labels)), [ref], rtol=1e-5)


def test_confusion_matrix_and_miou_by_hand():
  gt = np.array([[0, 0, 1, 1], [2, 2, 255, 1]])
  pr = np.array([[0, 1, 1, 1], [2, 0, 2, 3]])
  conf = np.asarray(metrics.confusion_matrix(jnp.asarray(gt), jnp.asarray(pr), 4))
  expected = np.zeros((4, 4), int)
  for g, p in [(0, 0), (0, 1), (1, 1), (1, 1), (2, 2), (2, 0), (1, 3)]:  # the 255 pixel is skipped
    expected[g, p] += 1
  np.testing.assert_array_equal(conf, expected)
  # IoU: bg 1/(2+2-1), c1 2/(3+3-2), c2 1/(2+1-1), c3 0/(0+1-0): class 3 appears only in the prediction.
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
  got = metrics.average_precision(np.array([[.9], [.8], [.7], [.6]]), np.array([[1], [0], [1], [0]], bool))
  assert got[0] == pytest.approx(5 / 6)
  # a perfect ranking scores 1, a reversed one less
  assert metrics.average_precision(np.array([[2.], [1.], [0.]]), np.array([[1], [1], [0]], bool))[0] == 1.0
  assert metrics.average_precision(np.array([[0.], [1.], [2.]]), np.array([[1], [1], [0]], bool))[0] < 0.6
