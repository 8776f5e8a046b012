"""Aggregation heads (Sec. 3, Table 5) against hand and float64 numpy references."""
import jax.numpy as jnp
import numpy as np
import pytest

from wsss_jax import aggregation


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
  p = {'w': jnp.asarray(rng.normal(size=(4, 5, 6)), jnp.float32),
       'b': jnp.asarray(rng.normal(size=6), jnp.float32)}
  ref = np.array([[np.sum(f[n, :, :, k] * np.asarray(p['w'])[:, :, k]) + p['b'][k]
                   for k in range(6)] for n in range(3)])
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
