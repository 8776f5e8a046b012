"""Batched nonnegative quadratic programs in JAX: the MAP of a rectified Gaussian (Eq. 3).

    minimize_x  1/2 x^T Q x + q^T x   subject to  x >= 0

is the standard (OSQP-style) minimisation form. The paper's Eq. (3),
max_{p >= 0} 1/2 p^T D p + b^T p, is Q = -D, q = -b. For convex Q the solver
returns the global optimum; for copositive indefinite Q (what Eq. 9 gives,
and what OSQP rejects as non-convex) it returns a KKT point.

`Q` is either a dense symmetric array (..., n, n) or a *linear operator*:
any pytree with a `matvec(x)` method mapping (..., n) -> (..., n) and a
`norm_bound()` method returning an upper bound on ||Q||_2 (scalar or per
batch element). `DenseOperator` and `BilateralOperator` (a windowed
bilateral affinity on a grid plus a rank-one or diagonal term, applied in
O(n * window) without forming Q) are provided (qp_operators.py, importable
from here).

Methods (`method=`; the iterations are in qp_methods.py):
* 'fista': accelerated projected gradient with the gradient-based adaptive
  restart of O'Donoghue & Candes (2015), in the metric M = alpha I + c 1 1^T >= Q,
  where c is the rank-one part of Q (`rank_one_split`: Eq. 9's 1 1^T, for the
  operator and for a dense Q alike) and alpha bounds the rest. The M-projection
  onto x >= 0 is exact (a scalar Newton solve). One matvec per iteration.
  Guarantee: on convex Q, linear convergence to the optimum. On nonconvex Q
  none: it may crawl (Eq. 9 with a cell whose Q_ii is near 0 needs a step
  ~1/Q_ii along it) or stop at a poor KKT point.
* 'pgs': projected Gauss-Seidel, exact coordinate minimisation in sweeps,
  sequential over coordinates and batched over elements; needs Q_ii > 0 and
  an operator with `diagonal()` and `row_dot(i, x)`. Guarantee: monotone
  (the objective never rises) for any Q with a positive diagonal, and its
  limit points are KKT points, convex or not; on ill-conditioned convex Q it
  converges more slowly than FISTA (a rate set by the condition number, not
  its square root).
* 'auto' (default): each element with the method that converges on it.
  Elements whose Q shows an indefinite 2x2 principal submatrix (Q_ij^2 >
  Q_ii Q_jj: a certificate of nonconvexity, checked in one pass by the
  operator's `indefinite()`) run PGS; the others run FISTA, and any element
  FISTA leaves unconverged (budget spent, or its residual not halved in 50
  iterations) is finished by PGS from FISTA's iterate. Where FISTA converges
  it costs what 'fista' costs. Guarantee: PGS's where PGS runs; elements
  without a positive diagonal or an operator without `diagonal`/`row_dot`
  get FISTA's.
On nonconvex Q every method's guarantee is a KKT point, not the global
minimum, and which KKT point depends on the start: on the literal Eq. (9)
family of bench/qp.py, Gauss-Seidel from zero converges in one sweep to a
point whose objective is orders of magnitude above that of Gauss-Seidel
started from 100 FISTA iterations (`x0`; docs/PERFORMANCE.md).
Each batch element stops (is frozen) once its relative KKT residual is below
`tol`; the loop ends when all have, so batched, vmapped and single calls
give the same iterates. An eager call that returns unconverged elements
warns once, with how many.

Gradients: by default `solve_nonneg_qp` is differentiated implicitly through
the KKT conditions on the free set F = {x_i > 0}, whichever method found x:
with v = dL/dx and Q_FF w_F = v_F (solved by conjugate gradients with the
operator), dL/dq = -w and dL/dQ = -w x^T. With `implicit_diff=False` the
solver runs a fixed budget of iterations and gradients flow through them.
"""
from __future__ import annotations

import functools
import warnings
from typing import Any

import jax
import jax.numpy as jnp

from wsss_jax import qp_methods
from wsss_jax.qp_methods import QPSolution  # noqa: F401
from wsss_jax.qp_operators import (  # noqa: F401
  TINY,
  BilateralOperator,
  DenseOperator,
  StencilOperator,
  bilateral_weights,
  normalize_symmetric,
  power_iteration,
  symmetrize,
)

METHODS = ('auto', 'fista', 'pgs')


def _as_operator(Q: Any):
  if hasattr(Q, 'matvec') and hasattr(Q, 'norm_bound'):
    return Q
  Q = jnp.asarray(Q)
  if Q.ndim < 2 or Q.shape[-1] != Q.shape[-2]:
    raise ValueError(f'Q must be a square (..., n, n) array or an operator with matvec/norm_bound, '
                     f'got shape {Q.shape}')
  return DenseOperator(Q)


def _fast_form(op):
  """The same Q in the form with the fastest matvecs (a windowed operator's stencil)."""
  return op.stencil() if hasattr(op, 'stencil') else op


def _batched_cg(matvec, b, iters: int, tol: float):
  """Conjugate gradients per batch element (the last axis is the vector)."""
  x = jnp.zeros_like(b)
  r = b
  p = r
  rs = jnp.sum(r * r, -1)
  bnorm = jnp.sqrt(jnp.sum(b * b, -1))

  def cond(c):
    k, _, _, _, rs = c
    return (k < iters) & jnp.any(jnp.sqrt(rs) > tol * jnp.maximum(bnorm, TINY))

  def body(c):
    k, x, r, p, rs = c
    ap = matvec(p)
    alpha = rs / jnp.where(jnp.sum(p * ap, -1) == 0, TINY, jnp.sum(p * ap, -1))
    active = (jnp.sqrt(rs) > tol * jnp.maximum(bnorm, TINY))
    alpha = jnp.where(active, alpha, 0.0)[..., None]
    x = x + alpha * p
    r = r - alpha * ap
    rs_new = jnp.sum(r * r, -1)
    beta = (rs_new / jnp.maximum(rs, TINY))[..., None]
    p = r + beta * p
    return k + 1, x, r, p, rs_new

  return jax.lax.while_loop(cond, body, (0, x, r, p, rs))[1]


def _check_inputs(op, q, x0):
  n = q.shape[-1]
  if isinstance(op, DenseOperator):
    size = op.matrix.shape[-1]
  else:
    try:
      size = jax.eval_shape(op.matvec, jax.ShapeDtypeStruct(q.shape, q.dtype)).shape[-1]
    except (ValueError, TypeError) as e:
      raise ValueError(f'Q cannot act on q of shape {q.shape}: {e}') from None
  if size != n:
    raise ValueError(f'Q acts on vectors of size {size} but q has size {n} (q shape {q.shape})')
  if x0 is not None and x0.shape[-1] != n:
    raise ValueError(f'x0 has size {x0.shape[-1]} but q has size {n}')


def solve_nonneg_qp(Q: Any, q: jax.Array, *, x0: jax.Array | None = None, max_iters: int = 5000,
                    tol: float = 1e-6, method: str = 'auto', lipschitz: jax.Array | None = None,
                    implicit_diff: bool = True, cg_iters: int = 500,
                    pgs_sweeps: int | None = None) -> QPSolution:
  """Solve min_{x >= 0} 1/2 x^T Q x + q^T x for every batch element (see the module docstring).

  Args:
    Q: dense symmetric (..., n, n) array or an operator with `matvec` and `norm_bound`;
      its batch dimensions broadcast against q's.
    q: (..., n) linear term.
    x0: optional nonnegative start, broadcastable to q (default: zeros).
    max_iters: iteration budget (static): FISTA iterations ('fista', 'auto'), sweeps ('pgs').
    tol: an element is converged (and frozen) once its relative KKT residual
      ||x - max(0, x - (Qx + q))||_inf / ||q||_inf <= tol.
    method: 'auto' (default), 'fista' or 'pgs'; what each guarantees is in the module
      docstring. 'pgs' needs Q_ii > 0 and an operator with `diagonal`/`row_dot`.
    lipschitz: optional bound on ||Q||_2 (scalar or per element) for FISTA's step; default
      from the operator.
    implicit_diff: differentiate through the KKT conditions (default, early exit in while
      loops); False runs exactly the budgets in fori_loops that reverse-mode differentiate
      through the iterations.
    cg_iters: conjugate-gradient budget of the implicit backward pass.
    pgs_sweeps: Gauss-Seidel sweeps 'auto' may spend (static; default max(1, max_iters // 10):
      a sweep costs several FISTA iterations).

  Returns:
    QPSolution(x, residual, iterations, converged), each with q's batch shape ('auto' counts
    FISTA iterations plus sweeps). Non-finite input gives residual NaN and converged False
    (jit-safe); eager calls with NaN q raise ValueError, and eager calls that leave elements
    unconverged warn.
  """
  op = _as_operator(Q)
  q = jnp.asarray(q)
  if q.ndim < 1:
    raise ValueError(f'q must have shape (..., n), got {q.shape}')
  if not jnp.issubdtype(q.dtype, jnp.floating):
    q = q.astype(jnp.float32)
  x0 = None if x0 is None else jnp.asarray(x0, q.dtype)
  _check_inputs(op, q, x0)
  if not isinstance(q, jax.core.Tracer) and not bool(jnp.all(jnp.isfinite(q))):
    raise ValueError('q contains NaN or inf')
  x0 = jnp.zeros_like(q) if x0 is None else jnp.maximum(jnp.broadcast_to(x0, q.shape), 0.0)
  if method not in METHODS:
    raise ValueError(f'method must be one of {METHODS}, got {method!r}')
  if method == 'pgs':
    if not (hasattr(op, 'diagonal') and hasattr(op, 'row_dot')):
      raise ValueError('method="pgs" needs an operator with diagonal() and row_dot(i, x)')
    d = op.diagonal()
    if not isinstance(d, jax.core.Tracer) and bool(jnp.any(d <= 0)):
      raise ValueError('method="pgs" needs a positive diagonal of Q')
  sweeps = max(1, max_iters // 10) if pgs_sweeps is None else int(pgs_sweeps)
  # one compiled program per shape and setting: eager calls (a user's loop) do not recompile
  sol = _solve(op, q, x0, lipschitz, method=method, max_iters=int(max_iters), sweeps=sweeps,
               tol=float(tol), implicit_diff=bool(implicit_diff), cg_iters=int(cg_iters))
  if not isinstance(sol.converged, jax.core.Tracer) and not bool(jnp.all(sol.converged)):
    bad = int(jnp.sum(~sol.converged))
    warnings.warn(f'solve_nonneg_qp: {bad} of {sol.converged.size} problems did not converge '
                  f'(method={method!r}, tol={tol:g}, max_iters={max_iters}); see '
                  f'QPSolution.residual', RuntimeWarning, stacklevel=2)
  return sol


@functools.partial(jax.jit, static_argnames=('method', 'max_iters', 'sweeps', 'tol',
                                             'implicit_diff', 'cg_iters'))
def _solve(op, q, x0, lipschitz, *, method, max_iters, sweeps, tol, implicit_diff, cg_iters):
  """solve_nonneg_qp after its checks."""
  batch = q.shape[:-1]

  def fista_setup(op):
    """(alpha, c) of FISTA's metric, per batch element, outside the gradient."""
    if lipschitz is not None:
      alpha, c = jnp.asarray(lipschitz, q.dtype), jnp.zeros(batch, q.dtype)
    elif hasattr(op, 'rank_one_split'):
      c, alpha = op.rank_one_split()
      c = jnp.broadcast_to(jnp.asarray(c, q.dtype), batch)
    else:
      alpha, c = op.norm_bound(), jnp.zeros(batch, q.dtype)
    alpha = jnp.broadcast_to(jnp.maximum(alpha, TINY), batch).astype(q.dtype)
    return jax.lax.stop_gradient(alpha), jax.lax.stop_gradient(c)

  def solve(op, q, x0, early_exit=True):
    it = _fast_form(op)
    if method == 'pgs':
      return qp_methods.pgs(it, q, x0, max_iters, tol, early_exit)
    if method == 'fista':
      return qp_methods.fista(it, q, x0, *fista_setup(op), max_iters, tol, early_exit)[0]
    return qp_methods.auto(it, q, x0, lambda: fista_setup(op), max_iters, sweeps, tol, early_exit,
                           certify=op)

  if not implicit_diff:
    return solve(op, q, x0, early_exit=False)
  return _implicit(solve, op, q, x0, cg_iters)


def _implicit(solve, op, q, aux, cg_iters):
  """solve(op, q, aux) with gradients from the KKT conditions instead of the iterations.

  `aux` (start point, step data) gets zero cotangents: the solution does not depend on it.
  """

  @jax.custom_vjp
  def run(op, q, aux):
    return solve(op, q, aux)

  def fwd(op, q, aux):
    sol = solve(op, q, aux)
    return sol, (op, sol.x, aux)

  def bwd(res, ct):
    op, x, aux = res
    return _kkt_vjp(op, x, ct, cg_iters) + (jax.tree.map(jnp.zeros_like, aux),)

  run.defvjp(fwd, bwd)
  return run(op, q, aux)


def _kkt_vjp(op, x, ct, cg_iters):
  free = (x > 0).astype(x.dtype)
  # Q_FF w_F = v_F on the free set, identity on the active set; then dq = -w, dQ = -w x^T.
  it = _fast_form(op)
  masked = lambda u: free * it.matvec(free * u) + (1.0 - free) * u
  cg_tol = 1e-10 if x.dtype == jnp.float64 else 1e-6
  w = free * _batched_cg(masked, free * ct.x, cg_iters, cg_tol)
  _, op_vjp = jax.vjp(lambda o: o.matvec(x), op)
  (d_op,) = op_vjp(-w)
  return d_op, -w
