"""dense_crf and the CRF-RNN layer (Sec. 5, Eqs. 10-12) against an exact float64 numpy mean
field, pydensecrf2 (Kraehenbuehl's C++ code) on real photographs, and finite differences."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from wsss_jax import crf

from crf_references import blob_image, noisy_probs, np_mean_field, pydensecrf_marginals


def photo(name, size):
  import skimage.data
  return np.array(Image.fromarray(getattr(skimage.data, name)()).resize(size, Image.BILINEAR))


def colour_labels(im, k):
  return ((im[..., 0] // 64) + 4 * (im[..., 1] // 128) + 8 * (im[..., 2] // 128)) % k


def test_dense_crf_matches_pydensecrf2_on_photos():
  """Same labels as pydensecrf2 on >= 98% of pixels (measured 99.96% / 99.95%).
  The marginals differ a little because the spatial kernel runs on the pixel
  grid here and on a lattice there: measured mean |dQ| 5e-5, 99.9th percentile
  0.011 / 0.014, max 0.050 / 0.060 (tested: 5e-4, 0.03, 0.1)."""
  pytest.importorskip('pydensecrf.densecrf', reason='pip install pydensecrf2')
  k = 21
  rng = np.random.default_rng(0)
  for name in ('astronaut', 'coffee'):
    im = photo(name, (160, 128))
    p = noisy_probs(colour_labels(im, k), k, rng)
    ref = pydensecrf_marginals(p, im)  # pydensecrf's usual kernels, as dense_crf's defaults
    ours = np.asarray(crf.dense_crf(p[None], im[None]))[0]
    agree = (ours.argmax(-1) == ref.argmax(-1)).mean()
    changed = (ref.argmax(-1) != p.argmax(-1)).mean()
    assert changed > 0.3, f'{name}: the CRF barely acted ({changed:.2f})'
    assert agree >= 0.98, f'{name}: {agree:.4f} of pixels agree with pydensecrf2'
    diff = np.abs(ours - ref)
    assert diff.mean() < 5e-4 and np.quantile(diff, 0.999) < 0.03 and diff.max() < 0.1, (
      name, diff.mean(), np.quantile(diff, 0.999), diff.max())


def potts_energy(labels, u, mats):
  y = labels.reshape(-1)
  same = (y[:, None] == y[None, :]).astype(np.float64)
  np.fill_diagonal(same, 0.0)
  return u[np.arange(len(y)), y].sum() - 0.5 * sum((m * same).sum() for m in mats)


def test_dense_crf_energy_and_fixed_point():
  rng = np.random.default_rng(3)
  h, w, k = 14, 16, 3
  yy, xx = np.mgrid[:h, :w]
  truth = (xx > 7).astype(int) + (yy > 9)
  im = np.clip(np.stack([truth * 100.0, 80 - truth * 30.0, 60 + truth * 50.0], -1)
        + rng.normal(0, 6, (h, w, 3)), 0, 255).astype(np.uint8)
  p = noisy_probs(truth, k, rng, strength=0.8)
  kw = dict(gaussian_sxy=3.0, gaussian_compat=1.0, bilateral_sxy=6.0,
       bilateral_srgb=20.0, bilateral_compat=2.0)
  kernels = [(3.0, None, 1.0), (6.0, 20.0, 2.0)]
  _, u, mats = np_mean_field(p, im, 0, kernels)
  energies = []
  for it in (0, 1, 2, 5, 10):
    q = np.asarray(crf.dense_crf(p[None], im[None], iters=it, **kw))[0]
    energies.append(potts_energy(q.argmax(-1), u, mats))
  e0 = abs(energies[0])
  assert energies[-1] < energies[0] - 0.05 * e0
  for a, b in zip(energies, energies[1:]):
    assert b <= a + 0.01 * e0, energies
  q40 = np.asarray(crf.dense_crf(p[None], im[None], iters=40, **kw))[0]
  q41 = np.asarray(crf.dense_crf(p[None], im[None], iters=41, **kw))[0]
  assert np.abs(q41 - q40).max() < 1e-3
  ref, _, _ = np_mean_field(p, im, 40, kernels)
  assert (ref.argmax(-1) == q40.argmax(-1)).mean() >= 0.98
  assert (q40.argmax(-1) == truth).mean() > (p.argmax(-1) == truth).mean() + 0.1


def test_dense_crf_batched_zeros_and_errors():
  rng = np.random.default_rng(4)
  ims = np.stack([blob_image(rng, 18, 20) for _ in range(3)])
  p = np.stack([noisy_probs(rng.integers(0, 4, (18, 20)), 4, rng) for _ in range(3)])
  p[0, :5] = 0.0
  p[0, :5, :, 1] = 1.0                      # exact zeros and ones
  batched = np.asarray(crf.dense_crf(p, ims, iters=5))
  assert np.isfinite(batched).all()
  for i in range(3):
    single = np.asarray(crf.dense_crf(p[i:i + 1], ims[i:i + 1], iters=5))[0]
    np.testing.assert_allclose(batched[i], single, rtol=1e-5, atol=1e-6)
  jitted = np.asarray(jax.jit(lambda a, b: crf.dense_crf(a, b, iters=5))(p, ims))
  np.testing.assert_allclose(jitted, batched, rtol=1e-5, atol=1e-6)
  # vmapped, as accelerators batch it (the largest lattice of the batch sets the filter's size)
  mapped = np.asarray(jax.jit(jax.vmap(lambda a, b: crf.dense_crf(a[None], b[None], iters=5)[0]))(
    p, ims))
  np.testing.assert_allclose(mapped, batched, rtol=1e-5, atol=1e-6)
  with pytest.raises(ValueError, match=r'probs \(1, 18, 20, 4\), image \(1, 18, 21, 3\)'):
    crf.dense_crf(p[:1], np.zeros((1, 18, 21, 3), np.uint8))

KERNELS = (crf.Kernel(3.0, None, 1.0), crf.Kernel(5.0, 20.0, 2.0))


def test_crf_rnn_matches_numpy_and_potts_init():
  """With mu at its Potts init and no attention, the layer is the float64 mean
  field of pydensecrf semantics (unary -log p^S)."""
  rng = np.random.default_rng(5)
  im = blob_image(rng, 10, 12)
  k = 3
  p = noisy_probs(rng.integers(0, k, (10, 12)), k, rng)
  params = crf.init_params(k)
  _, probs = jax.jit(lambda a, b: crf.crf_rnn(params, a, b, kernels=KERNELS, iters=3))(
    jnp.asarray(p)[None], jnp.asarray(im)[None])
  ref, _, _ = np_mean_field(p, im, 3, [(3.0, None, 1.0), (5.0, 20.0, 2.0)], clip=1e-8)
  np.testing.assert_allclose(np.asarray(probs)[0], ref, atol=0.03)
  # Eq. (11): the attention factor multiplies into the unary
  att = noisy_probs(rng.integers(0, k, (10, 12)), k, rng)
  _, with_att = jax.jit(lambda a, b, c: crf.crf_rnn(params, a, b, c, kernels=KERNELS, iters=0))(
    jnp.asarray(p)[None], jnp.asarray(im)[None], jnp.asarray(att)[None])
  fused = p * att / (p * att).sum(-1, keepdims=True)
  np.testing.assert_allclose(np.asarray(with_att)[0], fused, rtol=1e-4, atol=1e-6)


def test_crf_rnn_gradients_finite_differences():
  rng = np.random.default_rng(6)
  h, w, k = 5, 6, 3
  im = jnp.asarray(blob_image(rng, h, w))
  ps = jnp.asarray(noisy_probs(rng.integers(0, k, (h, w)), k, rng))[None]
  pa = jnp.asarray(noisy_probs(rng.integers(0, k, (h, w)), k, rng))[None]
  params = {'compat': crf.init_params(k)['compat']
                      + 0.3 * jnp.asarray(rng.normal(size=(k, k)), jnp.float32)}
  target = jnp.asarray(rng.dirichlet(np.ones(k), size=(1, h, w)), jnp.float32)

  def loss(compat, ps, pa):
    _, q = crf.crf_rnn({'compat': compat}, ps, im[None], pa, kernels=KERNELS, iters=3)
    return -jnp.sum(target * jnp.log(q))

  loss = jax.jit(loss)
  grads = jax.jit(jax.grad(loss, argnums=(0, 1, 2)))(params['compat'], ps, pa)
  args = [params['compat'], ps, pa]
  for i, g in enumerate(grads):
    direction = jnp.asarray(rng.normal(size=args[i].shape), jnp.float32)
    eps = 1e-2 if i == 0 else 1e-3
    plus = list(args)
    plus[i] = args[i] + eps * direction
    minus = list(args)
    minus[i] = args[i] - eps * direction
    fd = (float(loss(*plus)) - float(loss(*minus))) / (2 * eps)
    an = float(jnp.sum(g * direction))
    assert abs(fd - an) <= 2e-2 * abs(an) + 1e-3, (i, fd, an)


def test_crf_rnn_batched_zero_probs_and_shape_error():
  rng = np.random.default_rng(7)
  k = 4
  ims = jnp.asarray(np.stack([blob_image(rng, 8, 9) for _ in range(2)]))
  ps = np.stack([noisy_probs(rng.integers(0, k, (8, 9)), k, rng) for _ in range(2)])
  ps[0, :, :, 2] = 0.0
  pa = np.zeros_like(ps)
  pa[..., 0] = 1.0                           # one-hot attention: exact zeros
  params = crf.init_params(k)
  fn = jax.jit(lambda c, a, b: crf.crf_rnn({'compat': c}, a, ims, b, kernels=KERNELS))
  logits, probs = fn(params['compat'], jnp.asarray(ps), jnp.asarray(pa))
  assert np.isfinite(np.asarray(logits)).all() and np.isfinite(np.asarray(probs)).all()
  g = jax.grad(lambda c: fn(c, jnp.asarray(ps), jnp.asarray(pa))[1].sum())(params['compat'])
  assert np.isfinite(np.asarray(g)).all()
  one = jax.jit(lambda a, im, b: crf.crf_rnn(params, a, im, b, kernels=KERNELS)[1])
  for i in range(2):
    single = one(jnp.asarray(ps[i:i + 1]), ims[i:i + 1], jnp.asarray(pa[i:i + 1]))
    np.testing.assert_allclose(np.asarray(probs[i]), np.asarray(single[0]), rtol=1e-5, atol=1e-6)
  # vmapped forward and gradient (the accelerator path) agree with the batched call
  per = lambda c, a, im, b: crf.crf_rnn({'compat': c}, a[None], im[None], b[None],
                                        kernels=KERNELS)[1][0]
  mapped = jax.jit(jax.vmap(per, in_axes=(None, 0, 0, 0)))(params['compat'], jnp.asarray(ps), ims,
                                                          jnp.asarray(pa))
  np.testing.assert_allclose(np.asarray(mapped), np.asarray(probs), rtol=1e-5, atol=1e-6)
  g_mapped = jax.grad(lambda c: jax.vmap(per, in_axes=(None, 0, 0, 0))(
    c, jnp.asarray(ps), ims, jnp.asarray(pa)).sum())(params['compat'])
  np.testing.assert_allclose(np.asarray(g_mapped), np.asarray(g), rtol=1e-4, atol=1e-5)
  with pytest.raises(ValueError, match=r'compat \(3, 3\) does not match 4 classes'):
    crf.crf_rnn(crf.init_params(3), jnp.asarray(ps), ims, kernels=KERNELS)
