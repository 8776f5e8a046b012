"""Delta^C (Eq. 14), Delta^S (Eq. 15), the pixel cross-entropy, and the training loss of
Eq. (13) on the model, against float64 numpy references."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from wsss_jax import data, losses, trainer

import helpers


def _np_eq14(logits, tags):
  p = 1.0 / (1.0 + np.exp(-logits.astype(np.float64)))
  out = []
  for pi, ti in zip(p, tags):
    pos, neg = pi[ti == 1], pi[ti == 0]
    out.append((-np.mean(np.log(pos)) if len(pos) else 0.0)
               + (-np.mean(np.log(1 - neg)) if len(neg) else 0.0))
  return np.array(out)


def test_classification_loss_matches_eq14():
  rng = np.random.default_rng(3)
  logits = rng.normal(scale=3, size=(6, 7)).astype(np.float32)
  tags = (rng.random((6, 7)) < 0.3).astype(np.int32)
  tags[0] = 1  # all present
  tags[1] = 0  # all absent
  got = losses.classification_loss(jnp.asarray(logits), jnp.asarray(tags))
  np.testing.assert_allclose(got, _np_eq14(logits, tags), rtol=1e-5)
  g = jax.grad(lambda l: jnp.sum(losses.classification_loss(l, jnp.asarray(tags))))(
      jnp.asarray(logits))
  assert np.all(np.isfinite(g))


def test_classification_loss_is_finite_for_saturated_logits():
  logits = jnp.array([[80.0, -80.0]])
  got = losses.classification_loss(logits, jnp.array([[0, 1]]))
  # -log sigma(-80) + -log(1 - sigma(80)), in log space
  np.testing.assert_allclose(got, [160.0], rtol=1e-5)


def test_pixel_cross_entropy_ignores_255():
  rng = np.random.default_rng(0)
  logits = rng.normal(size=(1, 2, 3, 4)).astype(np.float32)
  labels = np.array([[[0, 3, 255], [1, 255, 2]]])
  lp = logits - np.log(np.exp(logits.astype(np.float64)).sum(-1, keepdims=True))
  ref = -np.mean([lp[0, i, j, labels[0, i, j]] for i in range(2) for j in range(3)
                  if labels[0, i, j] != 255])
  np.testing.assert_allclose(losses.pixel_cross_entropy(jnp.asarray(logits), jnp.asarray(labels)),
                             [ref], rtol=1e-5)


def test_segmentation_loss_matches_numpy_eq15():
  rng = np.random.default_rng(0)
  b, h, w, k = 2, 5, 6, 4
  att = rng.dirichlet(np.ones(k), size=(b, h, w))
  seg = rng.dirichlet(np.ones(k), size=(b, h, w))
  seg[0, 0, 0] = [1.0, 0.0, 0.0, 0.0]  # exact 0 and 1 stay finite
  tags = np.array([[1, 0, 1, 0], [1, 1, 1, 1]], np.float32)
  ref = []
  for n in range(b):
    present = np.nonzero(tags[n])[0]
    total = 0.0
    for i in range(h * w):
      for y in present:
        a = att[n].reshape(-1, k)[i, y]
        s = np.clip(seg[n].reshape(-1, k)[i, y], 1e-6, 1 - 1e-6)
        total += a * np.log(s) + (1 - a) * np.log(1 - s)
    ref.append(-total / (h * w * len(present)))
  ours = losses.segmentation_loss(jnp.asarray(att, jnp.float32), jnp.asarray(seg, jnp.float32),
                                  jnp.asarray(tags))
  # rtol: float32 stores the clip bound 1 - 1e-6 as 1 - 1.013e-6 (image 0 holds an exact 1)
  np.testing.assert_allclose(np.asarray(ours), ref, rtol=5e-4)
  assert abs(float(ours[1]) - ref[1]) < 1e-5 * ref[1]


@pytest.mark.parametrize('which', ['single', 'all'])
def test_loss_finite_with_one_tag_and_all_tags(which):
  config = helpers.tiny_config()
  state = trainer.create_state(config, jax.random.key_data(jax.random.key(0)))
  ds = data.make_dataset(config.data, 'train')
  batch = dict(next(data.train_batches(ds, global_batch=2, seed=0)))
  c = config.data.num_classes
  tags = np.zeros((2, c), np.float32)
  if which == 'single':
    tags[:, 2] = 1.0
  else:
    tags[:] = 1.0
  batch['tags'] = tags
  (loss, aux), grads = jax.jit(jax.value_and_grad(
      lambda p, b: losses.training_loss(p, b, jax.random.key(0), config),
      has_aux=True))(state.params, batch)
  assert np.isfinite(float(loss)) and all(np.isfinite(float(v)) for v in jax.tree.leaves(aux))
  assert all(np.isfinite(np.asarray(g)).all() for g in jax.tree.leaves(grads))
