"""The iterations behind `wsss_jax.qp.solve_nonneg_qp`: restarted FISTA in a rank-one metric,
projected Gauss-Seidel, and 'auto', which runs each element with the method that converges on
it (FISTA on convex problems, Gauss-Seidel on indefinite ones such as Eq. 9's).

Every loop works on a batch of problems (leading axes of q) and freezes an element once its
relative KKT residual is at most `tol`, so batched, vmapped and single calls give the same
iterates. The residual of the iterate in hand is evaluated at the top of each trip from the
carried Q x, so the one matvec per iteration is its trip's last operation and XLA computes it
once instead of inside each of its consumers.
"""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from wsss_jax.qp_operators import TINY


class QPSolution(NamedTuple):
  """Per batch element: solution, relative KKT residual, iterations used, converged flag."""
  x: jax.Array
  residual: jax.Array
  iterations: jax.Array
  converged: jax.Array


def kkt_residual(x, g, qnorm):
  """||x - max(0, x - g)||_inf / ||q||_inf: zero exactly at KKT points of the QP."""
  return jnp.max(jnp.abs(x - jnp.maximum(0.0, x - g)), -1) / jnp.maximum(qnorm, TINY)


def metric_projection(z: jax.Array, kappa: jax.Array, tau0: jax.Array | None = None,
                      iters: int = 50, early_exit: bool = True):
  """argmin_{x >= 0} ||x - z||_M^2 for M = alpha I + c 1 1^T, kappa = c / alpha >= 0.

  x = max(0, z - kappa tau 1) where tau = sum(x) - sum(z) solves the scalar equation
  g(tau) = sum(max(0, z - kappa tau)) - sum(z) - tau = 0. g is convex, piecewise linear and
  decreasing, so Newton stops exactly; from a start right of the root its first step lands left
  of it, and from there it increases monotonically. `tau0` (the previous iteration's tau) is a
  warm start: FISTA's successive projections differ little, so one or two steps suffice.
  Returns (x, tau).
  """
  sz = jnp.sum(z, -1)
  k = kappa[..., None]

  def body(c):
    i, tau, _ = c
    act = z - k * tau[..., None] > 0
    g = jnp.sum(jnp.where(act, z - k * tau[..., None], 0.0), -1) - sz - tau
    new = tau + g / (kappa * jnp.sum(act, -1) + 1.0)
    # after the first step the iterates are left of the root, where they only increase
    new = jnp.where(i == 0, new, jnp.maximum(new, tau))
    return i + 1, new, jnp.any(new != tau)

  init = (0, jnp.zeros(z.shape[:-1], z.dtype) if tau0 is None else tau0, jnp.array(True))
  if early_exit:
    _, tau, _ = jax.lax.while_loop(lambda c: (c[0] < iters) & c[2], body, init)
  else:  # static trip count, for reverse-mode differentiation through the iterations
    _, tau, _ = jax.lax.fori_loop(0, iters, lambda _, c: body(c), init)
  return jnp.maximum(0.0, z - k * tau[..., None]), tau


class Stall(NamedTuple):
  """Hand an element over (stop iterating it) when its residual has not fallen below
  `ratio` x its value `window` iterations earlier."""
  window: int = 50
  ratio: float = 0.5


def iterate(step, resid, state, tol: float, max_iters: int, early_exit: bool,
            frozen: jax.Array | None = None, stall: Stall | None = None):
  """Run `step(state) -> state` until `resid(state) <= tol` for every batch element.

  `state[0]` is x. Elements in `frozen` (and, with `stall`, elements that stop making progress)
  are left as they are. With early_exit a while_loop stops once no element is active;
  otherwise exactly `max_iters` steps run in a fori_loop (reverse-mode differentiable).
  Returns (QPSolution, stalled mask).
  """
  res0 = resid(state)
  shape = res0.shape
  frozen = jnp.zeros(shape, bool) if frozen is None else jnp.broadcast_to(frozen, shape)

  def body(carry):
    k, state, done, stalled, ref, iters = carry
    res = resid(state)
    done = done | (res <= tol)
    if stall is not None:
      check = (k > 0) & (k % stall.window == 0)
      stalled = stalled | (check & ~done & (res > stall.ratio * ref))
      ref = jnp.where(check, res, ref)
    idle = done | stalled | frozen
    new = step(state)
    keep = lambda old, nw: jnp.where(idle.reshape(shape + (1,) * (nw.ndim - len(shape))), old, nw)
    return (k + 1, jax.tree.map(keep, state, new), done, stalled,
            ref, jnp.where(idle, iters, k + 1))

  init = (jnp.int32(0), state, jnp.zeros(shape, bool), jnp.zeros(shape, bool), res0,
          jnp.zeros(shape, jnp.int32))
  if early_exit:
    active = lambda c: ~jnp.all(c[2] | c[3] | frozen)
    out = jax.lax.while_loop(lambda c: (c[0] < max_iters) & active(c), body, init)
  else:
    out = jax.lax.fori_loop(0, max_iters, lambda _, c: body(c), init)
  _, state, _, stalled, _, iters = out
  res = resid(state)
  x = state[0]
  bad = ~jnp.all(jnp.isfinite(x), -1) | ~jnp.isfinite(res)
  sol = QPSolution(x=x, residual=jnp.where(bad, jnp.nan, res), iterations=iters,
                   converged=(res <= tol) & ~bad)
  return sol, stalled


def fista(op, q, x0, alpha, c, max_iters: int, tol: float, early_exit: bool = True,
          frozen=None, stall=None):
  """Restarted FISTA in the metric M = alpha I + c 1 1^T (M >= Q); returns (QPSolution, stalled).

  c = 0 is plain projected FISTA with step 1/alpha. With c > 0 (the rank-one part of Q, e.g.
  Eq. 9's 1 1^T) the step M^{-1} grad and the M-projection absorb the rank-one curvature, so the
  iteration count no longer grows with n c / ||Q - c 1 1^T||. Momentum is reset whenever it
  points uphill (the gradient scheme of O'Donoghue & Candes, 2015). One matvec per iteration:
  Q y is carried as a combination of Q x_k and Q x_{k-1}.
  """
  n = q.shape[-1]
  qnorm = jnp.max(jnp.abs(q), -1)
  kappa = c / alpha
  sm = (c / (alpha + c * n))[..., None]
  inv_a = (1.0 / alpha)[..., None]
  precond = lambda g: inv_a * (g - sm * jnp.sum(g, -1, keepdims=True))  # Sherman-Morrison

  def project(z, tau):
    # No rank-one part anywhere in the batch: the plain projection, without the Newton loop.
    return jax.lax.cond(jnp.all(kappa == 0), lambda z, tau: (jnp.maximum(0.0, z), tau),
                        lambda z, tau: metric_projection(z, kappa, tau, early_exit=early_exit),
                        z, tau)

  def step(state):
    x, qx, xp, qxp, beta, t, tau = state
    b = beta[..., None]
    y = x + b * (x - xp)
    g = qx + b * (qx - qxp) + q
    x_new, tau = project(y - precond(g), tau)
    restart = jnp.sum(g * (x_new - x), -1) > 0
    t_new = 0.5 * (1.0 + jnp.sqrt(1.0 + 4.0 * t * t))
    beta_new = jnp.where(restart, 0.0, (t - 1.0) / t_new)
    return (x_new, op.matvec(x_new), x, qx, beta_new, jnp.where(restart, 1.0, t_new), tau)

  qx0 = op.matvec(x0)
  zero = jnp.zeros(q.shape[:-1], q.dtype)
  state = (x0, qx0, x0, qx0, zero, jnp.ones_like(zero), zero)
  return iterate(step, lambda s: kkt_residual(s[0], s[1] + q, qnorm), state, tol, max_iters,
                 early_exit, frozen, stall)


def pgs(op, q, x0, max_iters: int, tol: float, early_exit: bool = True, frozen=None):
  """Projected Gauss-Seidel: sweeps of exact coordinate minimisation
  x_i <- max(0, x_i - g_i / Q_ii); returns QPSolution.

  Monotone for any Q with a positive diagonal (every coordinate step lowers the objective or
  keeps it), and each coordinate's minimiser is unique, so its limit points are KKT points
  whether or not Q is convex. A coordinate with Q_ii = 0 goes to 0 where the objective rises
  along it and to inf (the QP is unbounded below) where it falls. Sequential over coordinates,
  batched over elements; `max_iters` counts sweeps.
  """
  n = q.shape[-1]
  qnorm = jnp.max(jnp.abs(q), -1)
  d = jnp.broadcast_to(op.diagonal(), q.shape)

  def coord(i, x):
    gi = op.row_dot(i, x) + jnp.take(q, i, axis=-1)
    xi = jnp.take(x, i, axis=-1)
    di = jnp.take(d, i, axis=-1)
    # Q_ii = 0: the objective is linear along e_i; x_i = 0 where it rises, unbounded (inf,
    # reported as not converged) where it falls
    flat = jnp.where(gi > 0, 0.0, jnp.where(gi == 0, xi, jnp.inf))
    return x.at[..., i].set(jnp.maximum(0.0, jnp.where(di > 0, xi - gi / jnp.where(di > 0, di, 1.0),
                                                       flat)))

  def step(state):
    x = jax.lax.fori_loop(0, n, coord, state[0])
    return x, op.matvec(x)

  sol, _ = iterate(step, lambda s: kkt_residual(s[0], s[1] + q, qnorm), (x0, op.matvec(x0)),
                   tol, max_iters, early_exit, frozen)
  return sol


def auto(op, q, x0, fista_setup, max_iters: int, pgs_sweeps: int, tol: float,
         early_exit: bool = True, certify=None):
  """FISTA where it converges, projected Gauss-Seidel where it may not; returns QPSolution.

  Elements whose Q has an indefinite 2x2 principal submatrix (a certificate that the QP is
  nonconvex, cheap to check: `op.indefinite()`) start with Gauss-Seidel, which is monotone
  there; the others run FISTA, accelerated on convex problems, and any that have not converged
  when FISTA stops (budget spent or no progress over 50 iterations) are finished by
  Gauss-Seidel from FISTA's iterate. Gauss-Seidel runs only where Q_ii >= 0. `iterations` counts
  FISTA iterations plus Gauss-Seidel sweeps. `certify` (default: op), the same Q in the form
  given, provides `indefinite()`.
  """
  certify = op if certify is None else certify
  batch = q.shape[:-1]
  has_pgs = hasattr(op, 'diagonal') and hasattr(op, 'row_dot')
  if has_pgs:
    diag_ok = jnp.broadcast_to(jnp.all(op.diagonal() >= 0, -1), batch)
    cert = diag_ok & jnp.broadcast_to(certify.indefinite(), batch) \
        if hasattr(certify, 'indefinite') else jnp.zeros(batch, bool)
  else:
    diag_ok = cert = jnp.zeros(batch, bool)

  def run_fista():
    alpha, c = fista_setup()
    sol, _ = fista(op, q, x0, alpha, c, max_iters, tol, early_exit, frozen=cert,
                   stall=Stall() if has_pgs else None)
    return sol

  def skip():
    qnorm = jnp.max(jnp.abs(q), -1)
    res = kkt_residual(x0, op.matvec(x0) + q, qnorm)
    return QPSolution(x0, res, jnp.zeros(batch, jnp.int32), res <= tol)

  first = jax.lax.cond(jnp.all(cert), skip, run_fista)
  if not has_pgs:
    return first
  todo = diag_ok & ~first.converged
  second = jax.lax.cond(jnp.any(todo),
                        lambda: pgs(op, q, first.x, pgs_sweeps, tol, early_exit,
                                    frozen=~todo),
                        lambda: first._replace(iterations=jnp.zeros(batch, jnp.int32)))
  return second._replace(iterations=first.iterations + second.iterations)
