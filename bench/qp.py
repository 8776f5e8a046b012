"""Benchmark of wsss_jax.qp on the paper's attention QP (Eqs. 3, 8, 9): `python bench/qp.py`.

Instances (cells of a grid 8 px apart with random colours, sigma_z = 10, sigma_r = 30;
b = gamma + alpha with gamma, alpha random nonnegative vectors summing to 1, Eqs. 5, 7; a batch
of 21 right-hand sides, q = -b):
* windowed (W restricted to radius R, default 4: exp(-(5*8)^2/10^2) ~ 1e-7 beyond it), as a
  `BilateralOperator` and as the same dense matrix:
  - convex:    Q = d I - sym(W_n), d = ||sym(W_n)||_2 bound + 0.1 (positive definite),
  - nonconvex: Q = -D of Eq. (9) = 1 1^T - sym(W_n) (copositive, indefinite);
* literal, over all cell pairs (no window), dense:
  - convex Q = d I - sym(W_n) against OSQP,
  - nonconvex Eq. (9), Q = 1 1^T - sym(W_n), on 21x21 .. 41x41 grids, solved as a user would:
    `solve_nonneg_qp(Q, q)` with default arguments, against method='pgs' and method='fista'.

Prints, per solver: median time after compilation (solvers compared with each other are timed
round-robin in one run), max relative KKT residual (recomputed in float64), mean objective,
iterations and converged count; OSQP (one problem at a time, as users call it) / ours ratios
measured in the same run; and the operator solver's time on 21..161 grids.
"""
from __future__ import annotations

import argparse
import statistics
import time
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import scipy.sparse as sp

from wsss_jax import qp


def instance(rng, side, batch, radius, dtype):
  yy, xx = np.mgrid[0:side, 0:side] * 8.0 + 4.0
  pos = np.stack([yy, xx], -1)
  feat = rng.uniform(0, 255, size=(side, side, 3))
  wts = qp.bilateral_weights(jnp.asarray(pos, dtype), jnp.asarray(feat, dtype), (side, side),
                             radius, 10.0, 30.0)
  return wts, jnp.asarray(-rhs(rng, batch, side * side), dtype)


def rhs(rng, batch, n):
  gamma, alpha = rng.random((batch, n)), rng.random((batch, n))
  return gamma / gamma.sum(-1, keepdims=True) + alpha / alpha.sum(-1, keepdims=True)


def literal_sym_wn(side, rng):
  """sym(W_n) of Eq. (8) over all pairs of a side x side grid with random colours (float64)."""
  yy, xx = np.mgrid[0:side, 0:side] * 8.0 + 4.0
  z = np.stack([yy, xx], -1).reshape(-1, 2)
  rgb = rng.uniform(0, 255, size=(side * side, 3))
  w = np.exp(-((z[:, None] - z[None]) ** 2).sum(-1) / 100.0
             - ((rgb[:, None] - rgb[None]) ** 2).sum(-1) / 900.0)
  wn = w / w.sum(1, keepdims=True)
  return 0.5 * (wn + wn.T)


def round_robin(fns, repeats):
  """{name: (median seconds, last result)}, each callable compiled first and then run in turn."""
  out = {name: jax.block_until_ready(fn()) for name, fn in fns.items()}
  times = {name: [] for name in fns}
  for _ in range(repeats):
    for name, fn in fns.items():
      t = time.perf_counter()
      out[name] = jax.block_until_ready(fn())
      times[name].append(time.perf_counter() - t)
  return {name: (statistics.median(times[name]), out[name]) for name in fns}


def kkt(Q, q, x):
  """Max over the batch of the relative KKT residual, float64."""
  return np.max(np.max(np.abs(x - np.maximum(0, x - (x @ Q.T + q))), -1)
                / np.max(np.abs(q), -1))


def objective(Q, q, x):
  return 0.5 * np.sum(x * (x @ Q.T), -1) + np.sum(q * x, -1)


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


def report(label, t, sol, Q, qn):
  x = np.asarray(sol.x, np.float64)
  print(f'  {label:26s} {t * 1e3:9.1f} ms  kkt {kkt(Q, qn, x):.2e}  '
        f'obj {objective(Q, qn, x).mean():+.6e}  iters max {int(np.max(sol.iterations)):5d}  '
        f'converged {int(np.sum(sol.converged))}/{len(qn)}')


def windowed(args, dtype, one):
  """Convex and nonconvex windowed instances: every method, operator and dense forms."""
  rng = np.random.default_rng(0)
  wts, q = instance(rng, args.side, args.batch, args.radius, dtype)
  qn = np.asarray(q, np.float64)
  wsym = qp.BilateralOperator(wts, one(1.0), one(0.0), one(0.0), args.radius)
  ops = {'convex': qp.BilateralOperator(wts, one(-1.0), one(float(wsym.norm_bound()) + 0.1),
                                        one(0.0), args.radius),
         'nonconvex': qp.BilateralOperator(wts, one(-1.0), one(0.0), one(1.0), args.radius)}
  for name, op in ops.items():
    dense = np.asarray(op.dense(), np.float64)
    print(f'windowed radius {args.radius}, {name}:')
    fns = {}
    for method in ('auto', 'fista', 'pgs'):
      if name == 'nonconvex' and method == 'fista':
        continue  # reported once below: it does not converge
      for form, Q in (('operator', op), ('dense', jnp.asarray(dense, dtype))):
        solve = jax.jit(lambda QQ, qq, m=method: qp.solve_nonneg_qp(
            QQ, qq, tol=args.tol, max_iters=20000 if m != 'pgs' else 2000, method=m))
        fns[f'ours {method} ({form})'] = lambda solve=solve, Q=Q: solve(Q, q)
    results = round_robin(fns, args.repeats)
    for label, (t, sol) in results.items():
      report(label, t, sol, dense, qn)
    if name == 'nonconvex':
      solve = jax.jit(lambda QQ, qq: qp.solve_nonneg_qp(QQ, qq, tol=args.tol, max_iters=2000,
                                                        method='fista'))
      (t, sol), = round_robin({'fista': lambda: solve(op, q)}, 1).values()
      report('ours fista (operator, 2000)', t, sol, dense, qn)
    k = min(3, args.batch)
    t = time.perf_counter()
    with np.errstate(divide='ignore', invalid='ignore'):
      xr = numpy_pgs(dense, qn[:k], args.tol)
    t_np = (time.perf_counter() - t) / k * args.batch
    print(f'  {"numpy PGS (float64)":26s} {t_np * 1e3:9.1f} ms  kkt {kkt(dense, qn[:k], xr):.2e}  '
          f'obj {objective(dense, qn[:k], xr).mean():+.6e} on the first {k} (time scaled to '
          f'{args.batch}); ours there: ' + ', '.join(
              f'{lab} {objective(dense, qn[:k], np.asarray(s.x, np.float64)[:k]).mean():+.6e}'
              for lab, (_, s) in results.items()))
    if name == 'convex' and not args.skip_osqp:
      t_osqp, xo = run_osqp(sp.csc_matrix(np.triu(dense)), qn)
      print(f'  {"osqp (1 at a time)":26s} {t_osqp * 1e3:9.1f} ms  kkt {kkt(dense, qn, xo):.2e}  '
            f'obj {objective(dense, qn, xo).mean():+.6e}')
      print('  ratio osqp / ours: ' + ', '.join(f'{lab} {t_osqp / t:.1f}x'
                                                for lab, (t, _) in results.items()))


def literal_convex(args, dtype):
  """Eq. (8) over all cell pairs (no window), convex variant Q = d I - sym(W_n): ours (dense,
  default method) vs OSQP."""
  rng = np.random.default_rng(0)
  s_ = literal_sym_wn(args.side, rng)
  Q = (np.abs(s_).sum(1).max() + 0.1) * np.eye(args.side ** 2) - s_
  qn = -rhs(rng, args.batch, args.side ** 2)
  solve = jax.jit(lambda QQ, qq: qp.solve_nonneg_qp(QQ, qq, tol=args.tol, max_iters=20000))
  (t_ours, sol), = round_robin({'ours': lambda: solve(jnp.asarray(Q, dtype),
                                                      jnp.asarray(qn, dtype))},
                               args.repeats).values()
  P = sp.csc_matrix(np.triu(Q))
  t_osqp, xo = run_osqp(P, qn)
  print(f'literal dense Eq. (8) (no window), convex, {P.nnz} nonzeros in triu(Q):')
  report('ours auto (dense)', t_ours, sol, Q, qn)
  print(f'  {"osqp (1 at a time)":26s} {t_osqp * 1e3:9.1f} ms  kkt {kkt(Q, qn, xo):.2e}  '
        f'obj {objective(Q, qn, xo).mean():+.6e}')
  print(f'  ratio osqp / ours = {t_osqp / t_ours:.1f}x')


def literal_nonconvex(args, dtype):
  """The literal Eq. (9) over all cell pairs, Q = 1 1^T - sym(W_n), dense, several grid sizes:
  `solve_nonneg_qp(Q, q)` with default arguments vs method='pgs' and Gauss-Seidel started from
  100 FISTA iterations (timed round-robin), and method='fista' (defaults, one run)."""
  print('literal dense Eq. (9) (no window), nonconvex, default arguments:')
  for side in args.nonconvex_sides:
    rng = np.random.default_rng(side)
    Q = 1.0 - literal_sym_wn(side, rng)
    qn = -rhs(rng, args.batch, side * side)
    Qj, qj = jnp.asarray(Q, dtype), jnp.asarray(qn, dtype)
    default = jax.jit(lambda QQ, qq: qp.solve_nonneg_qp(QQ, qq))
    pgs = jax.jit(lambda QQ, qq: qp.solve_nonneg_qp(QQ, qq, method='pgs'))
    fista = jax.jit(lambda QQ, qq: qp.solve_nonneg_qp(QQ, qq, method='fista'))
    # another KKT point: Gauss-Seidel started from 100 FISTA iterations (x0) instead of zero
    fista100 = jax.jit(lambda QQ, qq: qp.solve_nonneg_qp(QQ, qq, method='fista', max_iters=100))
    warm = jax.jit(lambda QQ, qq: qp.solve_nonneg_qp(QQ, qq, method='pgs',
                                                     x0=fista100(QQ, qq).x))
    with warnings.catch_warnings():
      warnings.simplefilter('ignore', RuntimeWarning)  # FISTA's unconverged start
      res = round_robin({'default (auto)': lambda: default(Qj, qj),
                         'pgs': lambda: pgs(Qj, qj),
                         'pgs from 100 fista iterations': lambda: warm(Qj, qj)}, args.repeats)
      res.update(round_robin({'fista': lambda: fista(Qj, qj)}, 1))
    print(f' {side}x{side} cells, n = {side * side}, min Q_ii {np.min(np.diag(Q)):.1e}:')
    for label, (t, sol) in res.items():
      report(label, t, sol, Q, qn)
    print(f"  default / pgs time = {res['default (auto)'][0] / res['pgs'][0]:.2f}")


def scaling(args, dtype, one):
  print('scaling of the operator solver (convex, default method, same radius):')
  base = None
  for side in (21, 41, 81, 161):
    w2, q2 = instance(np.random.default_rng(1), side, args.batch, args.radius, dtype)
    ws = qp.BilateralOperator(w2, one(1.0), one(0.0), one(0.0), args.radius)
    op = qp.BilateralOperator(w2, one(-1.0), one(float(ws.norm_bound()) + 0.1), one(0.0),
                              args.radius)
    solve = jax.jit(lambda qq, op=op: qp.solve_nonneg_qp(op, qq, tol=args.tol, max_iters=20000))
    (t, s), = round_robin({'s': lambda: solve(q2)}, max(1, args.repeats // 2)).values()
    per_cell = t / side ** 2
    base = base or per_cell
    print(f'  {side:4d}x{side:<4d} cells {side * side:6d}  {t * 1e3:9.1f} ms  '
          f'iters max {int(np.max(s.iterations)):5d}  time/cell vs 21x21: {per_cell / base:.2f}')


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument('--side', type=int, default=41)
  ap.add_argument('--batch', type=int, default=21)
  ap.add_argument('--radius', type=int, default=4)
  ap.add_argument('--tol', type=float, default=1e-6)
  ap.add_argument('--repeats', type=int, default=5)
  ap.add_argument('--nonconvex_sides', type=int, nargs='+', default=[21, 31, 41])
  ap.add_argument('--x64', action='store_true', help='solve in float64')
  ap.add_argument('--skip_osqp', action='store_true')
  ap.add_argument('--only', choices=('windowed', 'literal_convex', 'literal_nonconvex',
                                     'scaling'), nargs='+')
  args = ap.parse_args()
  if args.x64:
    jax.config.update('jax_enable_x64', True)
  warnings.simplefilter('ignore', RuntimeWarning)  # unconverged elements are reported below
  dtype = jnp.float64 if args.x64 else jnp.float32
  one = lambda v: jnp.asarray(v, dtype)
  print(f'device: {jax.devices()[0].device_kind}, n = {args.side ** 2}, batch = {args.batch}, '
        f'radius = {args.radius}, tol = {args.tol}, dtype = {jnp.dtype(dtype).name}')
  only = set(args.only or ('windowed', 'literal_convex', 'literal_nonconvex', 'scaling'))
  if 'windowed' in only:
    windowed(args, dtype, one)
  if 'literal_convex' in only and not args.skip_osqp:
    literal_convex(args, dtype)
  if 'literal_nonconvex' in only:
    literal_nonconvex(args, dtype)
  if 'scaling' in only:
    scaling(args, dtype, one)


if __name__ == '__main__':
  main()
