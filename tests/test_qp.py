"""The nonnegative QP solver against OSQP, a float64 numpy projected Gauss-Seidel and finite
differences."""
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import osqp
import pytest
import scipy.sparse as sp

from wsss_jax import qp


@pytest.fixture(autouse=True)
def x64():
  with jax.enable_x64(True):
    yield


def _osqp(Q, q):
  n = len(q)
  m = osqp.OSQP()
  m.setup(P=sp.csc_matrix(np.triu(Q)), q=q, A=sp.identity(n, format='csc'), l=np.zeros(n),
          u=np.full(n, np.inf), eps_abs=1e-11, eps_rel=1e-11, max_iter=200000, polishing=True,
          verbose=False)
  return m.solve(raise_error=True).x


def _obj(Q, q, x):
  return 0.5 * x @ Q @ x + q @ x


def _kkt(Q, q, x):
  return np.max(np.abs(x - np.maximum(0, x - (Q @ x + q)))) / np.max(np.abs(q))


def _pgs(Q, q, x, sweeps=3000):
  """Float64 projected Gauss-Seidel: exact coordinate minimisation, monotone for any Q with
  Q_ii > 0."""
  x = x.copy()
  for _ in range(sweeps):
    for i in range(len(q)):
      x[i] = max(0.0, x[i] - (Q[i] @ x + q[i]) / Q[i, i])
  return x


def _convex(rng, n, batch=()):
  a = rng.normal(size=batch + (n, n))
  Q = a @ np.swapaxes(a, -1, -2) / n + 0.05 * np.eye(n)
  return Q, rng.normal(size=batch + (n,))


@pytest.mark.parametrize('n, batch', [(5, ()), (40, (3,)), (120, (2, 2))])
def test_convex_dense_matches_osqp(n, batch):
  rng = np.random.default_rng(n)
  Q, q = _convex(rng, n, batch)
  sol = qp.solve_nonneg_qp(jnp.asarray(Q), jnp.asarray(q), tol=1e-9, max_iters=20000)
  assert sol.x.shape == q.shape and sol.converged.shape == batch and bool(np.all(sol.converged))
  for idx in np.ndindex(*batch):
    x, ref = np.asarray(sol.x[idx]), _osqp(Q[idx], q[idx])
    f, fr = _obj(Q[idx], q[idx], x), _obj(Q[idx], q[idx], ref)
    assert abs(f - fr) <= 1e-5 * max(abs(fr), 1e-12)
    assert _kkt(Q[idx], q[idx], x) <= 1e-5
    np.testing.assert_allclose(float(sol.residual[idx]), _kkt(Q[idx], q[idx], x), rtol=1e-6,
                               atol=1e-14)


def _grid_problem(rng, h, w, radius, batch=()):
  """Cells 8 px apart with random colours: positions / features for Eq. (8)."""
  yy, xx = np.mgrid[0:h, 0:w] * 8.0 + 4.0
  pos = np.broadcast_to(np.stack([yy, xx], -1), batch + (h, w, 2))
  feat = rng.uniform(0, 60, size=batch + (h, w, 3))
  return pos, feat


def _np_weights(pos, feat, radius, sz, sr):
  """Dense float64 Eq. (8) restricted to a Chebyshev window, row-normalised (Eq. 9's w / sum w)."""
  h, w = pos.shape[:2]
  z, r = pos.reshape(-1, 2), feat.reshape(h * w, -1)
  cy, cx = np.divmod(np.arange(h * w), w)
  win = (np.abs(cy[:, None] - cy[None]) <= radius) & (np.abs(cx[:, None] - cx[None]) <= radius)
  W = np.exp(-((z[:, None] - z[None]) ** 2).sum(-1) / sz ** 2
             - ((r[:, None] - r[None]) ** 2).sum(-1) / sr ** 2) * win
  return W / W.sum(1, keepdims=True)


def test_bilateral_operator_matches_dense_numpy_and_solutions_agree():
  rng = np.random.default_rng(0)
  h, w, radius = 5, 6, 2
  pos, feat = _grid_problem(rng, h, w, radius)
  wts = qp.bilateral_weights(jnp.asarray(pos), jnp.asarray(feat), (h, w), radius, 10.0, 30.0)
  Wn = _np_weights(pos, feat, radius, 10.0, 30.0)
  # Convex variant: Q = 2 I + sym(Wn).
  op = qp.BilateralOperator(wts, jnp.asarray(1.0), jnp.asarray(2.0), jnp.asarray(0.0), radius)
  np.testing.assert_allclose(op.dense(), 2.0 * np.eye(h * w) + 0.5 * (Wn + Wn.T), atol=1e-12)
  Qd = 2.0 * np.eye(h * w) + 0.5 * (Wn + Wn.T)
  x = rng.normal(size=h * w)
  np.testing.assert_allclose(op.matvec(jnp.asarray(x)), Qd @ x, rtol=1e-12, atol=1e-12)
  assert float(op.norm_bound()) >= np.linalg.norm(Qd, 2)
  q = rng.normal(size=(4, h * w))
  s_op = qp.solve_nonneg_qp(op, jnp.asarray(q), tol=1e-10)
  s_dense = qp.solve_nonneg_qp(jnp.asarray(Qd), jnp.asarray(q), tol=1e-10)
  np.testing.assert_allclose(s_op.x, s_dense.x, atol=1e-8)
  for i in range(4):
    ref = _osqp(Qd, q[i])
    assert abs(_obj(Qd, q[i], np.asarray(s_op.x[i]))
               - _obj(Qd, q[i], ref)) <= 1e-5 * abs(_obj(Qd, q[i], ref))


@pytest.mark.parametrize('radius, colour_range',
                         [(2, 60), (7, 60), (3, 255)])  # 7: the whole 8x8 map
def test_copositive_eq9_reaches_kkt_and_pgs_matches_reference(radius, colour_range):
  rng = np.random.default_rng(radius)
  h = w = 8
  pos, _ = _grid_problem(rng, h, w, radius, batch=(3,))
  feat = rng.uniform(0, colour_range, size=(3, h, w, 3))
  wts = qp.bilateral_weights(jnp.asarray(pos), jnp.asarray(feat), (h, w), radius, 10.0, 30.0)
  op = qp.BilateralOperator(wts, jnp.full((3,), -1.0), jnp.zeros(3), jnp.ones(3), radius)
  gamma, alpha = rng.random((3, h * w)), rng.random((3, h * w))
  b = gamma / gamma.sum(-1, keepdims=True) + alpha / alpha.sum(-1, keepdims=True)
  fista = qp.solve_nonneg_qp(op, jnp.asarray(-b), tol=1e-8, max_iters=50000)
  pgs = qp.solve_nonneg_qp(op, jnp.asarray(-b), tol=1e-8, method='pgs')
  assert bool(np.all(fista.converged)) and bool(np.all(pgs.converged))
  for i in range(3):
    Wn = _np_weights(pos[i], feat[i], radius, 10.0, 30.0)
    Q = np.ones((h * w, h * w)) - 0.5 * (Wn + Wn.T)  # -D of Eq. (9), symmetrised
    assert np.min(np.linalg.eigvalsh(Q)) < 0  # indefinite: OSQP would refuse it
    dense_pgs = qp.solve_nonneg_qp(jnp.asarray(Q), jnp.asarray(-b[i]), tol=1e-8, method='pgs')
    ref = _pgs(Q, -b[i], np.zeros(h * w))
    for x in (np.asarray(fista.x[i]), np.asarray(pgs.x[i]), np.asarray(dense_pgs.x)):
      assert _kkt(Q, -b[i], x) <= 1e-5
    # PGS from zero: no worse than the float64 numpy reference from zero (dense and operator forms).
    for x in (np.asarray(pgs.x[i]), np.asarray(dense_pgs.x)):
      assert _obj(Q, -b[i], x) <= _obj(Q, -b[i], ref) + 1e-9 * abs(_obj(Q, -b[i], ref))


def _fd_check(f, x0, idx, eps=1e-6):
  g = np.asarray(jax.grad(f)(jnp.asarray(x0)))
  for i in idx:
    e = np.zeros_like(x0)
    e[i] = eps
    fd = (f(jnp.asarray(x0 + e)) - f(jnp.asarray(x0 - e))) / (2 * eps)
    assert abs(g[i] - fd) <= 1e-4 * max(abs(fd), 1e-3), (i, g[i], fd)
  return g


def test_implicit_gradients_match_finite_differences():
  rng = np.random.default_rng(5)
  n = 25
  Q, q = _convex(rng, n)
  c = rng.normal(size=n)
  loss_q = lambda qq: jnp.sum(c * qp.solve_nonneg_qp(jnp.asarray(Q), qq, tol=1e-13,
                                                     max_iters=100000).x)
  x = np.asarray(qp.solve_nonneg_qp(jnp.asarray(Q), jnp.asarray(q), tol=1e-13).x)
  free = np.nonzero(x > 1e-6)[0]
  assert 3 <= len(free) < n  # both free and active coordinates are exercised
  _fd_check(loss_q, q, [(i,) for i in range(n)])
  # Q entries: the solver reads Q as given, so perturb single (i, j) entries of a symmetric Q's
  # quadratic form through a symmetric parameterisation S -> (S + S^T) / 2.
  loss_Q = lambda S: jnp.sum(c * qp.solve_nonneg_qp(0.5 * (S + S.T), jnp.asarray(q), tol=1e-13,
                                                    max_iters=100000).x)
  pairs = [(int(free[0]), int(free[1])), (int(free[2]), int(free[2])), (0, n - 1)]
  _fd_check(loss_Q, Q, pairs)


def test_pgs_gradients_match_finite_differences():
  rng = np.random.default_rng(6)
  n = 15
  Q, q = _convex(rng, n)
  c = rng.normal(size=n)
  loss = lambda qq: jnp.sum(c * qp.solve_nonneg_qp(jnp.asarray(Q), qq, tol=1e-13, max_iters=20000,
                                                   method='pgs').x)
  _fd_check(loss, q, [(i,) for i in range(n)])


def test_operator_gradients_and_unrolled_mode():
  rng = np.random.default_rng(2)
  h, w, radius = 4, 4, 1
  pos, feat = _grid_problem(rng, h, w, radius)
  wts = np.asarray(qp.bilateral_weights(jnp.asarray(pos), jnp.asarray(feat), (h, w), radius,
                                        10.0, 30.0, row_normalize=False))
  q = rng.normal(size=h * w)
  c = rng.normal(size=h * w)

  def loss(wt, implicit=True):
    op = qp.BilateralOperator(qp.symmetrize(wt, radius), jnp.asarray(1.0), jnp.asarray(1.5),
                              jnp.asarray(0.0), radius)
    return jnp.sum(c * qp.solve_nonneg_qp(op, jnp.asarray(q), tol=1e-13, max_iters=3000,
                                          implicit_diff=implicit).x)

  flat = [(i, j, k) for i in range(h) for j in range(w) for k in (0, 4, 8)][::3]
  g = _fd_check(loss, wts, flat)
  g_unrolled = jax.grad(lambda wt: loss(wt, implicit=False))(jnp.asarray(wts))
  np.testing.assert_allclose(g_unrolled, g, rtol=1e-6, atol=1e-9)


def test_vmap_equals_batched_call_and_jit():
  rng = np.random.default_rng(3)
  Q, q = _convex(rng, 30, (5,))
  batched = qp.solve_nonneg_qp(jnp.asarray(Q), jnp.asarray(q), tol=1e-8)
  mapped = jax.vmap(lambda a, b: qp.solve_nonneg_qp(a, b, tol=1e-8))(jnp.asarray(Q), jnp.asarray(q))
  jitted = jax.jit(lambda a, b: qp.solve_nonneg_qp(a, b, tol=1e-8))(jnp.asarray(Q), jnp.asarray(q))
  for other in (mapped, jitted):
    np.testing.assert_allclose(other.x, batched.x, rtol=1e-12, atol=1e-12)
    np.testing.assert_array_equal(other.iterations, batched.iterations)
  # Broadcasting: one Q for a batch of q.
  shared = qp.solve_nonneg_qp(jnp.asarray(Q[0]), jnp.asarray(q), tol=1e-8)
  np.testing.assert_allclose(shared.x[0], batched.x[0], atol=1e-10)


def test_bad_input():
  Q = jnp.eye(3)
  with pytest.raises(ValueError, match='square'):
    qp.solve_nonneg_qp(jnp.ones((3, 4)), jnp.ones(3))
  with pytest.raises(ValueError, match='size 3 but q has size 4'):
    qp.solve_nonneg_qp(Q, jnp.ones(4))
  with pytest.raises(ValueError, match='method'):
    qp.solve_nonneg_qp(Q, jnp.ones(3), method='newton')
  with pytest.raises(ValueError, match='positive diagonal'):
    qp.solve_nonneg_qp(jnp.diag(jnp.array([1.0, 0.0, 1.0])), jnp.ones(3), method='pgs')
  with pytest.raises(ValueError, match='NaN'):
    qp.solve_nonneg_qp(Q, jnp.array([1.0, jnp.nan, 0.0]))
  sol = jax.jit(lambda q: qp.solve_nonneg_qp(Q, q))(jnp.array([[1.0, jnp.nan, 0.0],
                                                               [-1.0, 2.0, -3.0]]))
  assert not bool(sol.converged[0]) and np.isnan(float(sol.residual[0]))
  assert bool(sol.converged[1])
  np.testing.assert_allclose(sol.x[1], [1.0, 0.0, 3.0], atol=1e-6)


def _literal_eq9(rng, side, batch):
  """Eq. (9) over all cell pairs (no window) of a side x side grid with random colours, float64:
  Q = -D = 1 1^T - sym(W_n), q = -b."""
  yy, xx = np.mgrid[0:side, 0:side] * 8.0 + 4.0
  z = np.stack([yy, xx], -1).reshape(-1, 2)
  rgb = rng.uniform(0, 255, size=(side * side, 3))
  W = np.exp(-((z[:, None] - z[None]) ** 2).sum(-1) / 100.0
             - ((rgb[:, None] - rgb[None]) ** 2).sum(-1) / 900.0)
  Wn = W / W.sum(1, keepdims=True)
  gamma, alpha = rng.random((batch, side * side)), rng.random((batch, side * side))
  b = gamma / gamma.sum(-1, keepdims=True) + alpha / alpha.sum(-1, keepdims=True)
  return np.ones_like(W) - 0.5 * (Wn + Wn.T), -b


@pytest.mark.parametrize('dtype, bound', [('float64', 1e-8), ('float32', 1e-5)])
def test_default_method_solves_literal_dense_eq9(dtype, bound):
  """The dense all-pairs Eq. (9) with random colours (indefinite, some Q_ii near 0, where FISTA
  crawls): the default method reaches a KKT point on every element, no worse in objective than
  float64 numpy projected Gauss-Seidel from zero."""
  rng = np.random.default_rng(8)
  Q, q = _literal_eq9(rng, 12, 4)
  assert np.min(np.linalg.eigvalsh(Q)) < 0
  sol = qp.solve_nonneg_qp(jnp.asarray(Q, dtype), jnp.asarray(q, dtype))
  assert bool(np.all(sol.converged))
  for i in range(len(q)):
    x = np.asarray(sol.x[i], np.float64)
    assert _kkt(Q, q[i], x) <= bound
    ref = _pgs(Q, q[i], np.zeros(len(x)), sweeps=50)
    assert _obj(Q, q[i], x) <= _obj(Q, q[i], ref) + 1e-5 * abs(_obj(Q, q[i], ref))


def test_default_method_gradients_on_nonconvex_eq9():
  """Implicit gradients of the default method's solution of a nonconvex Eq. (9) instance (found
  by Gauss-Seidel) against central finite differences."""
  rng = np.random.default_rng(11)
  h = w = 8
  radius = 2
  pos, _ = _grid_problem(rng, h, w, radius)
  feat = rng.uniform(0, 60, size=(h, w, 3))
  wts = qp.bilateral_weights(jnp.asarray(pos), jnp.asarray(feat), (h, w), radius, 10.0, 30.0)
  op = qp.BilateralOperator(wts, jnp.asarray(-1.0), jnp.asarray(0.0), jnp.asarray(1.0), radius)
  gamma, alpha = rng.random(h * w), rng.random(h * w)
  q = -(gamma / gamma.sum() + alpha / alpha.sum())
  c = rng.normal(size=h * w)
  loss = lambda qq: jnp.sum(c * qp.solve_nonneg_qp(op, qq, tol=1e-13).x)
  x = np.asarray(qp.solve_nonneg_qp(op, jnp.asarray(q), tol=1e-13).x)
  free = np.nonzero(x > 0)[0]
  _fd_check(loss, q, [(int(free[0]),), (0,), (h * w - 1,)])


def test_eager_unconverged_call_warns_once_with_count():
  rng = np.random.default_rng(9)
  Q, q = _convex(rng, 30, (4,))
  args = (jnp.asarray(Q), jnp.asarray(q))
  with pytest.warns(RuntimeWarning, match='4 of 4 problems did not converge') as record:
    sol = qp.solve_nonneg_qp(*args, max_iters=2, tol=1e-12)
  assert len(record) == 1 and not bool(np.any(sol.converged))
  with warnings.catch_warnings():
    warnings.simplefilter('error')
    jax.jit(lambda a, b: qp.solve_nonneg_qp(a, b, max_iters=2, tol=1e-12))(*args)
    qp.solve_nonneg_qp(*args, tol=1e-9, max_iters=20000)


def test_indefiniteness_certificates_against_eigenvalues():
  """`indefinite()` claims nonconvexity only where numpy finds a negative eigenvalue, and does
  claim it on Eq. (9) (the dense matrix and the windowed operator)."""
  rng = np.random.default_rng(12)
  for n in (5, 20):
    a = rng.normal(size=(n, n))
    for Q in (a @ a.T, 0.5 * (a + a.T), np.ones((n, n))):
      if bool(qp.DenseOperator(jnp.asarray(Q)).indefinite()):
        assert np.min(np.linalg.eigvalsh(Q)) < 0
    assert not bool(qp.DenseOperator(jnp.asarray(a @ a.T)).indefinite())
  Q, _ = _literal_eq9(rng, 6, 1)
  assert bool(qp.DenseOperator(jnp.asarray(Q)).indefinite())
  h, w, radius = 6, 7, 2
  pos, feat = _grid_problem(rng, h, w, radius)
  wts = qp.bilateral_weights(jnp.asarray(pos), jnp.asarray(feat), (h, w), radius, 10.0, 30.0)
  for scale, diag, rank_one in ((-1.0, 0.0, 1.0), (-1.0, 2.0, 0.0), (1.0, 0.5, 0.0),
                                (-1.0, 0.3, 0.2)):
    op = qp.BilateralOperator(wts, jnp.asarray(scale), jnp.asarray(diag), jnp.asarray(rank_one),
                              radius)
    lam = np.min(np.linalg.eigvalsh(np.asarray(op.dense())))
    if bool(op.indefinite()):
      assert lam < 0, (scale, diag, rank_one)
    if (scale, diag, rank_one) == (-1.0, 0.0, 1.0):
      assert bool(op.indefinite())
