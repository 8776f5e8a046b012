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


def numpy_fista(Qd, q, tol, max_iters=20000):
  """Float64 numpy reference: the same restarted projected-gradient method, one problem at a time."""
  xs = []
  L = np.linalg.norm(Qd, 2)
  for qi in q:
    x = np.zeros_like(qi)
    y, t = x.copy(), 1.0
    for _ in range(max_iters):
      g = Qd @ y + qi
      xn = np.maximum(0, y - g / L)
      if g @ (xn - x) > 0:
        t, y_next = 1.0, xn
      else:
        tn = 0.5 * (1 + np.sqrt(1 + 4 * t * t))
        y_next = xn + (t - 1) / tn * (xn - x)
        t = tn
      x, y = xn, y_next
      if np.max(np.abs(x - np.maximum(0, x - (Qd @ x + qi)))) / np.max(np.abs(qi)) <= tol:
        break
    xs.append(x)
  return np.stack(xs)


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
  d = float(wsym.norm_bound()) + 0.1
  convex = qp.BilateralOperator(wts, one(-1.0), one(d), one(0.0), args.radius)
  rows = {}
  for name, op in (('convex', convex), ('nonconvex', nonconvex)):
    dense = np.asarray(op.dense(), np.float64)
    solve_op = jax.jit(lambda qq, op=op: qp.solve_nonneg_qp(op, qq, tol=args.tol, max_iters=20000))
    t_op, s_op = timed(lambda: solve_op(q), args.repeats)
    dq = jnp.asarray(dense, dtype)
    solve_dense = jax.jit(lambda qq: qp.solve_nonneg_qp(dq, qq, tol=args.tol, max_iters=20000))
    t_dense, s_dense = timed(lambda: solve_dense(q), args.repeats)
    qn = np.asarray(q, np.float64)
    mv = lambda x: x @ dense.T
    kkt = lambda x: np.max(np.max(np.abs(x - np.maximum(0, x - (mv(x) + qn))), -1) / np.max(np.abs(qn), -1))
    for label, t, s in (('ours (operator)', t_op, s_op), ('ours (dense)', t_dense, s_dense)):
      x = np.asarray(s.x, np.float64)
      rows[(name, label)] = t
      print(f'{name:9s} {label:18s} {t * 1e3:9.1f} ms  kkt {kkt(x):.2e}  obj {objective(mv, qn, x).mean():+.6e}'
            f'  iters max {int(np.max(s.iterations))}  converged {int(np.sum(s.converged))}/{args.batch}')
    t = time.perf_counter()
    xr = numpy_fista(dense, qn[:3], args.tol)
    t_np = (time.perf_counter() - t) / 3 * args.batch
    kkt_np = max(np.max(np.abs(xi - np.maximum(0, xi - (dense @ xi + qi)))) / np.max(np.abs(qi))
                 for xi, qi in zip(xr, qn[:3]))
    print(f'{name:9s} {"numpy (float64)":18s} {t_np * 1e3:9.1f} ms  kkt {kkt_np:.2e}  '
          f'obj {objective(mv, qn[:3], xr).mean():+.6e}  (3 problems, time scaled to {args.batch})')
    if name == 'convex' and not args.skip_osqp:
      import osqp  # pylint: disable=g-import-not-at-top
      P = sp.csc_matrix(np.triu(np.where(np.abs(dense) > 0, dense, 0.0)))
      xs, t = [], time.perf_counter()
      for qi in qn:
        m = osqp.OSQP()
        m.setup(P=P, q=qi, A=sp.identity(n, format='csc'), l=np.zeros(n), u=np.full(n, np.inf),
                eps_abs=1e-9, eps_rel=1e-9, max_iter=100000, polishing=True, verbose=False)
        xs.append(m.solve(raise_error=False).x)
      t_osqp = time.perf_counter() - t
      xo = np.stack(xs)
      print(f'{name:9s} {"osqp (1 at a time)":18s} {t_osqp * 1e3:9.1f} ms  kkt {kkt(xo):.2e}  '
            f'obj {objective(mv, qn, xo).mean():+.6e}')
      print(f'ratio osqp / ours(operator) = {t_osqp / t_op:.1f}x, osqp / ours(dense) = {t_osqp / t_dense:.1f}x')
  print('scaling of the operator solver (convex, same radius):')
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
