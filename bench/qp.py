"""Benchmark of wsss_jax.qp on the paper's attention QP (Eqs. 3, 8, 9): `python bench/qp.py`.

Instance: a 41x41 grid of receptive-field centres 8 px apart with random
colours, sigma_z = 10, sigma_r = 30; b = gamma + alpha with gamma, alpha
random nonnegative vectors summing to 1 (Eqs. 5, 7); a batch of 21 classes.
* nonconvex: Q = -D of Eq. (9) = 1 1^T - sym(W_n) (copositive, indefinite);
* convex:    Q = d I - sym(W_n) with d = ||sym(W_n)||_2 bound + 0.1 (positive definite).
W is windowed to radius R (default 4: exp(-(5*8)^2/10^2) ~ 1e-7 beyond it).

Prints, per solver: median time after compilation, max relative KKT residual,
mean objective; the OSQP / ours ratio measured in this run; and the
structured solver's time on 21..161 grids (growth vs. cells).
"""
from __future__ import annotations

import argparse
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
import scipy.sparse as sp

from wsss_jax import qp


def instance(rng, side, batch, radius, dtype):
  yy, xx = np.mgrid[0:side, 0:side] * 8.0 + 4.0
  pos = np.stack([yy, xx], -1)
  feat = rng.uniform(0, 255, size=(side, side, 3))
  wts = qp.bilateral_weights(jnp.asarray(pos, dtype), jnp.asarray(feat, dtype), (side, side), radius, 10.0, 30.0)
  gamma, alpha = rng.random((batch, side * side)), rng.random((batch, side * side))
  b = gamma / gamma.sum(-1, keepdims=True) + alpha / alpha.sum(-1, keepdims=True)
  return wts, jnp.asarray(-b, dtype)


def timed(fn, repeats):
  jax.block_until_ready(fn())  # compile
  times = []
  for _ in range(repeats):
    t = time.perf_counter()
    out = jax.block_until_ready(fn())
    times.append(time.perf_counter() - t)
  return statistics.median(times), out


def objective(matvec, q, x):
  return 0.5 * np.sum(x * matvec(x), -1) + np.sum(q * x, -1)


def numpy_pgs(Qd, q, tol, max_sweeps=2000):
  """Float64 numpy projected Gauss-Seidel, one problem at a time (the tests' reference)."""
  xs = []
  for qi in q:
    x = np.zeros_like(qi)
    for _ in range(max_sweeps):
      for i in range(len(qi)):
        x[i] = max(0.0, x[i] - (Qd[i] @ x + qi[i]) / Qd[i, i])
      if np.max(np.abs(x - np.maximum(0, x - (Qd @ x + qi)))) / np.max(np.abs(qi)) <= tol:
        break
    xs.append(x)
  return np.stack(xs)


def run_osqp(P, qs):
  """OSQP one problem at a time, as users call it: (seconds for all, solutions)."""
  import osqp  # pylint: disable=g-import-not-at-top
  n = P.shape[0]
  xs, t = [], time.perf_counter()
  for qi in qs:
    m = osqp.OSQP()
    m.setup(P=P, q=qi, A=sp.identity(n, format='csc'), l=np.zeros(n), u=np.full(n, np.inf),
            eps_abs=1e-9, eps_rel=1e-9, max_iter=100000, polishing=True, verbose=False)
    xs.append(m.solve(raise_error=False).x)
  return time.perf_counter() - t, np.stack(xs)


def literal_dense(args, dtype, q):
  """Eq. (8) over all cell pairs (no window), convex variant Q = d I - sym(W_n): ours (dense) vs OSQP."""
  side = args.side
  rng = np.random.default_rng(0)
  yy, xx = np.mgrid[0:side, 0:side] * 8.0 + 4.0
  z = np.stack([yy, xx], -1).reshape(-1, 2)
  rgb = rng.uniform(0, 255, size=(side * side, 3))
  w = np.exp(-((z[:, None] - z[None]) ** 2).sum(-1) / 100.0 - ((rgb[:, None] - rgb[None]) ** 2).sum(-1) / 900.0)
  wn = w / w.sum(1, keepdims=True)
  s_ = 0.5 * (wn + wn.T)
  Q = (np.abs(s_).sum(1).max() + 0.1) * np.eye(side * side) - s_
  qn = np.asarray(q, np.float64)
  solve = jax.jit(lambda QQ, qq: qp.solve_nonneg_qp(QQ, qq, tol=args.tol, max_iters=20000))
  t_ours, sol = timed(lambda: solve(jnp.asarray(Q, dtype), q), args.repeats)
  x = np.asarray(sol.x, np.float64)
  kkt = lambda x: np.max(np.max(np.abs(x - np.maximum(0, x - (x @ Q + qn))), -1) / np.max(np.abs(qn), -1))
  P = sp.csc_matrix(np.triu(Q))
  t_osqp, xo = run_osqp(P, qn)
  obj = lambda x: (0.5 * np.sum(x * (x @ Q), -1) + np.sum(qn * x, -1)).mean()
  print(f'literal dense Eq. (8) (no window), convex, {P.nnz} nonzeros in triu(Q):')
  print(f'  ours fista (dense)   {t_ours * 1e3:9.1f} ms  kkt {kkt(x):.2e}  obj {obj(x):+.6e}  iters max {int(np.max(sol.iterations))}')
  print(f'  osqp (1 at a time)   {t_osqp * 1e3:9.1f} ms  kkt {kkt(xo):.2e}  obj {obj(xo):+.6e}')
  print(f'  ratio osqp / ours = {t_osqp / t_ours:.1f}x')


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument('--side', type=int, default=41)
  ap.add_argument('--batch', type=int, default=21)
  ap.add_argument('--radius', type=int, default=4)
  ap.add_argument('--tol', type=float, default=1e-6)
  ap.add_argument('--repeats', type=int, default=5)
  ap.add_argument('--x64', action='store_true', help='solve in float64')
  ap.add_argument('--skip_osqp', action='store_true')
  args = ap.parse_args()
  if args.x64:
    jax.config.update('jax_enable_x64', True)
  dtype = jnp.float64 if args.x64 else jnp.float32
  rng = np.random.default_rng(0)
  n = args.side ** 2
  wts, q = instance(rng, args.side, args.batch, args.radius, dtype)
  print(f'device: {jax.devices()[0].device_kind}, n = {n}, batch = {args.batch}, radius = {args.radius}, '
        f'tol = {args.tol}, dtype = {jnp.dtype(dtype).name}')
  one = lambda v: jnp.asarray(v, dtype)
  nonconvex = qp.BilateralOperator(wts, one(-1.0), one(0.0), one(1.0), args.radius)
  wsym = qp.BilateralOperator(wts, one(1.0), one(0.0), one(0.0), args.radius)
  convex = qp.BilateralOperator(wts, one(-1.0), one(float(wsym.norm_bound()) + 0.1), one(0.0), args.radius)
  for name, op in (('convex', convex), ('nonconvex', nonconvex)):
    dense = np.asarray(op.dense(), np.float64)
    dq = jnp.asarray(dense, dtype)
    qn = np.asarray(q, np.float64)
    mv = lambda x: x @ dense.T
    kkt = lambda x: np.max(np.max(np.abs(x - np.maximum(0, x - (mv(x) + qn))), -1) / np.max(np.abs(qn), -1))
    times, sols = {}, {}
    for method in ('fista', 'pgs'):
      for form, Q in (('operator', op), ('dense', dq)):
        if name == 'nonconvex' and method == 'fista' and form == 'dense':
          print(f'{name:9s} ours fista (dense)     skipped: a dense Q hides the rank-one part, and plain steps '
                f'1/||Q|| need ~n times more iterations (the operator form exposes it)')
          continue
        label = f'ours {method} ({form})'
        solve = jax.jit(lambda QQ, qq, method=method: qp.solve_nonneg_qp(
            QQ, qq, tol=args.tol, max_iters=20000 if method == 'fista' else 2000, method=method))
        t, s = timed(lambda: solve(Q, q), args.repeats)
        x = np.asarray(s.x, np.float64)
        times[label], sols[label] = t, x
        print(f'{name:9s} {label:22s} {t * 1e3:9.1f} ms  kkt {kkt(x):.2e}  obj {objective(mv, qn, x).mean():+.6e}'
              f'  iters max {int(np.max(s.iterations))}  converged {int(np.sum(s.converged))}/{args.batch}')
    k = min(3, args.batch)
    t = time.perf_counter()
    xr = numpy_pgs(dense, qn[:k], args.tol)
    t_np = (time.perf_counter() - t) / k * args.batch
    kkt_np = max(np.max(np.abs(xi - np.maximum(0, xi - (dense @ xi + qi)))) / np.max(np.abs(qi))
                 for xi, qi in zip(xr, qn[:k]))
    ours_k = {lab: objective(mv, qn[:k], x[:k]).mean() for lab, x in sols.items()}
    print(f'{name:9s} {"numpy PGS (float64)":22s} {t_np * 1e3:9.1f} ms  kkt {kkt_np:.2e}  '
          f'obj {objective(mv, qn[:k], xr).mean():+.6e} on the first {k} (time scaled to {args.batch}); '
          f'ours there: ' + ', '.join(f'{lab} {v:+.6e}' for lab, v in ours_k.items()))
    if name == 'convex' and not args.skip_osqp:
      t_osqp, xo = run_osqp(sp.csc_matrix(np.triu(dense)), qn)
      print(f'{name:9s} {"osqp (1 at a time)":22s} {t_osqp * 1e3:9.1f} ms  kkt {kkt(xo):.2e}  '
            f'obj {objective(mv, qn, xo).mean():+.6e}')
      print('ratio osqp / ours: ' + ', '.join(f'{lab} {t_osqp / v:.1f}x' for lab, v in times.items()))
  if not args.skip_osqp:
    literal_dense(args, dtype, q)
  print('scaling of the operator solver (convex, fista, same radius):')
  base = None
  for side in (21, 41, 81, 161):
    w2, q2 = instance(np.random.default_rng(1), side, args.batch, args.radius, dtype)
    ws = qp.BilateralOperator(w2, one(1.0), one(0.0), one(0.0), args.radius)
    op = qp.BilateralOperator(w2, one(-1.0), one(float(ws.norm_bound()) + 0.1), one(0.0), args.radius)
    solve = jax.jit(lambda qq, op=op: qp.solve_nonneg_qp(op, qq, tol=args.tol, max_iters=20000))
    t, s = timed(lambda: solve(q2), max(1, args.repeats // 2))
    per_cell = t / side ** 2
    base = base or per_cell
    print(f'  {side:4d}x{side:<4d} cells {side * side:6d}  {t * 1e3:9.1f} ms  iters max {int(np.max(s.iterations)):5d}'
          f'  time/cell vs 21x21: {per_cell / base:.2f}')


if __name__ == '__main__':
  main()
