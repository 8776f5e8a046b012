"""Fully connected CRF by mean field (Sec. 5, Eqs. 10-12): the paper's CRF-RNN layer
and a drop-in ``dense_crf`` post-processing with pydensecrf's semantics.

Both run the same update, ``lax.scan`` over iterations, batched over images:

  Q_0 = softmax(-phi)
  Q_t = softmax(-phi - mu(sum_m w_m  N_m^{-1/2} K_m N_m^{-1/2} Q_{t-1}))

with K_m Gaussian kernels over pixel features filtered on a permutohedral
lattice (``wsss_jax.lattice``, built once per image and kernel; a spatial-only
kernel runs on the pixel grid with ``lattice.grid_filter``), N_m = K_m 1 the
symmetric normalisation of Kraehenbuehl & Koltun's code, and mu the label
compatibility (Potts for ``dense_crf``; a learned K x K 1x1 convolution
initialised to Potts for the CRF-RNN layer, Eq. 12).
"""
from __future__ import annotations

import functools
from typing import NamedTuple, Sequence

import jax
import jax.numpy as jnp

from wsss_jax import lattice as lattice_lib


class Kernel(NamedTuple):
  """A Gaussian pairwise kernel exp(-|dxy|^2/2 sxy^2 - |drgb|^2/2 srgb^2).

  srgb=None makes it the spatial-only (appearance-free) kernel.
  weight: the kernel's weight w_m in the message sum.
  """
  sxy: float
  srgb: float | None
  weight: float


def pixel_features(image: jax.Array, kernel: Kernel):
  """(H, W, C) image -> (H*W, d) features in pydensecrf's order (x, y, colour)
  and their static bounds for the lattice."""
  h, w = image.shape[:2]
  yy, xx = jnp.meshgrid(jnp.arange(h, dtype=jnp.float32),
             jnp.arange(w, dtype=jnp.float32), indexing='ij')
  feats = [xx / kernel.sxy, yy / kernel.sxy]
  bounds = [(0.0, (w - 1) / kernel.sxy), (0.0, (h - 1) / kernel.sxy)]
  if kernel.srgb is not None:
    for c in range(image.shape[2]):
      feats.append(image[..., c].astype(jnp.float32) / kernel.srgb)
      bounds.append((0.0, 255.0 / kernel.srgb))
  return jnp.stack(feats, -1).reshape(h * w, -1), bounds


class _Filter(NamedTuple):
  lattice: lattice_lib.Lattice | None   # None: spatial-only kernel on the pixel grid
  norm: jax.Array | None   # (N, 1) N_m^{-1/2}; None: folded into the lattice's weights
  grid: tuple | None = None             # (H, W, sxy) of a grid filter (static)

  def __call__(self, v):
    """K_m v for v (N, K)."""
    if self.lattice is not None:
      return lattice_lib.filter(self.lattice, v)
    h, w, sxy = self.grid
    return lattice_lib.grid_filter(v.reshape(h, w, -1), sxy).reshape(h * w, -1)


def _filter_from(lat):
  """The lattice filter with N^{-1/2} folded into its splat and slice weights: the filter is
  sum_r w_r(i) grid[o_r(i)] after splatting w_r(j) v_j, so N^{-1/2} K N^{-1/2} is the same
  filter with weights w_r(i) N_ii^{-1/2} (one pass over N x K fewer on each side)."""
  ones = jnp.ones((lat.offsets.shape[0], 1), jnp.float32)
  norm = jax.lax.rsqrt(lattice_lib.filter(lat, ones) + 1e-20)
  return _Filter(lat._replace(weights=lat.weights * norm), None)


def _grid_filter(shape, kernel):
  f = _Filter(None, None, (shape[0], shape[1], kernel.sxy))
  return f._replace(norm=jax.lax.rsqrt(f(jnp.ones((shape[0] * shape[1], 1), jnp.float32)) + 1e-20))


def _build_filter(image, kernel, capacity=None):
  """K_m for one image: on the pixel grid for a spatial-only kernel, else on a
  lattice of at most ``capacity`` rows (None: the worst case)."""
  if kernel.srgb is None:
    return _grid_filter(image.shape, kernel)
  feats, bounds = pixel_features(jax.lax.stop_gradient(image), kernel)
  return _filter_from(lattice_lib.build(feats, bounds, capacity, row=image.shape[1]))


def _message(filters, weights, q):
  """sum_m w_m N_m^{-1/2} K_m N_m^{-1/2} q for q (N, K)."""
  out = 0.0
  for f, w in zip(filters, weights):
    out = out + (w * f(q) if f.norm is None else w * f.norm * f(q * f.norm))
  return out


def _mean_field(unary, filters, weights, compat, iters):
  """Mean field for one image: unary (N, K) energies -> (logits, Q) (N, K).
  compat None is Potts in pydensecrf's form (-I), without the K x K product.
  The last logits ride in the scan carry (not stacked over iterations)."""
  def step(carry, _):
    q, _ = carry
    message = _message(filters, weights, q)
    pairwise = -message if compat is None else message @ compat.T
    logits = -unary - pairwise
    return (jax.nn.softmax(logits, -1), logits), None

  q0 = jax.nn.softmax(-unary, -1)
  if iters == 0:
    return -unary, q0
  (q, logits), _ = jax.lax.scan(step, (q0, -unary), None, length=iters)
  return logits, q


# ---------------------------------------------------------------- dense_crf

def _check_inputs(probs, image):
  if probs.ndim != 4 or image.ndim != 4 or probs.shape[:3] != image.shape[:3]:
    raise ValueError(
      f'dense_crf: probs must be (B, H, W, K) and image (B, H, W, 3) with equal '
      f'B, H, W; got probs {tuple(probs.shape)}, image {tuple(image.shape)}')


def _per_image(fun, *args):
  """fun over the leading (batch) axis of args: ``lax.map`` on CPU, where one image at a time
  keeps the lattice gathers and scatters unbatched (mean-field step 17 vs 22 ms at 321 px,
  docs/DESIGN.md) and each image's lattice filter runs at its own size, ``vmap`` on
  accelerators (the batch's largest lattice sets the size)."""
  if jax.default_backend() == 'cpu':
    return jax.lax.map(lambda a: fun(*a), args)
  return jax.vmap(fun)(*args)


@functools.partial(jax.jit, static_argnames=('kernels', 'iters', 'clip', 'capacity'))
def _dense_crf(probs, image, kernels, iters, clip, capacity):
  """dense_crf for a static kernel set; ``capacity`` per kernel (None: the worst case)."""
  def one(p, im):
    h, w, k = p.shape
    unary = -jnp.log(jnp.clip(p.reshape(h * w, k).astype(jnp.float32), clip, 1.0))
    filters = [_build_filter(im, kern, cap) for kern, cap in zip(kernels, capacity)]
    _, q = _mean_field(unary, filters, [kern.weight for kern in kernels], None, iters)
    return q.reshape(h, w, k)
  return _per_image(one, probs, image)


def dense_crf(probs, image, *, iters: int = 10,
       gaussian_sxy: float = 3.0, gaussian_compat: float = 3.0,
       bilateral_sxy: float = 80.0, bilateral_srgb: float = 13.0,
       bilateral_compat: float = 10.0, clip: float = 1e-5,
       capacity: Sequence[int] | None = None) -> jax.Array:
  """Dense CRF post-processing (Kraehenbuehl & Koltun 2011) as pydensecrf does it.

  probs: (B, H, W, K) class probabilities (e.g. a softmax), any float dtype.
  image: (B, H, W, 3) uint8-range RGB image the kernels read.
  Unary -log(clip(probs, clip, 1)); a spatial Gaussian kernel (sxy, compat) and
  a bilateral kernel (sxy, srgb, compat), symmetric normalisation, Potts
  compatibility, ``iters`` mean-field iterations. Returns the (B, H, W, K)
  marginals Q. A compat of 0 drops that kernel.

  The spatial kernel runs on the pixel grid (``lattice.grid_filter``), the
  bilateral one on a permutohedral lattice whose filtering costs what the
  image's lattice needs, not the worst case N(d+1) (``wsss_jax.lattice``), the
  same called directly, under an outer ``jit`` or ``vmap``. capacity: optional
  cap on the lattice rows for the (gaussian, bilateral) kernels (points past it
  are dropped); the gaussian entry is ignored (it needs no lattice).
  """
  _check_inputs(probs, image)
  kernels = []
  if gaussian_compat:
    kernels.append(Kernel(float(gaussian_sxy), None, float(gaussian_compat)))
  if bilateral_compat:
    kernels.append(Kernel(float(bilateral_sxy), float(bilateral_srgb),
                          float(bilateral_compat)))
  kernels = tuple(kernels)
  cap = None if capacity is None else int(capacity[-1])
  return _dense_crf(jnp.asarray(probs), jnp.asarray(image), kernels, int(iters), float(clip),
                    tuple(None if k.srgb is None else cap for k in kernels))


# ---------------------------------------------------------------- CRF-RNN layer

def init_params(num_classes: int) -> dict:
  """CRF-RNN parameters: the label compatibility mu of Eq. (12) as a K x K 1x1
  convolution, initialised to Potts (mu(l, l') = [l != l']), which equals
  pydensecrf's -I up to a per-pixel constant that the softmax removes."""
  k = num_classes
  return {'compat': jnp.ones((k, k), jnp.float32) - jnp.eye(k, dtype=jnp.float32)}


def crf_rnn(params: dict, seg_probs: jax.Array, image: jax.Array,
            attention: jax.Array | None = None, *, kernels: Sequence[Kernel],
            iters: int = 3, eps: float = 1e-8, capacity: int | None = None,
            return_lattice_size: bool = False):
  """The paper's CRF-RNN layer (Sec. 5): unary phi = -log(p^S p^A) (Eq. 11),
  pairwise mu(y, y') w_ii' (Eq. 12) with fixed Gaussian kernels and learned mu,
  ``iters`` mean-field steps (3 in Sec. 7) as a ``lax.scan``.

  seg_probs: (B, H, W, K) p^S at image resolution; attention: (B, H, W, K) p^A
  or None to drop the attention factor (baselines B3/B6); image: (B, H, W, 3)
  in [0, 255]. Returns (logits, probs) of the refined segmentation; gradients
  reach p^S, p^A and mu, the kernels are fixed. ``capacity`` (static) caps the
  lattice rows per kernel (default: the worst case N(d+1); the lattice build and
  filtering cost scale with it); with ``return_lattice_size`` the largest
  lattice of the batch is returned too, to check the cap (points past it are
  dropped).
  """
  b, h, w, k = seg_probs.shape
  if params['compat'].shape != (k, k):
    raise ValueError(f"crf_rnn: compat {params['compat'].shape} does not match "
                     f"{k} classes of seg_probs {seg_probs.shape}")
  unary = -jnp.log(seg_probs + eps)
  if attention is not None:
    unary = unary - jnp.log(attention + eps)
  kernels = tuple(kernels)

  def one(u, im):
    filters = [_build_filter(im, kern, capacity) for kern in kernels]
    logits, q = _mean_field(u.reshape(h * w, k), filters,
                            [kern.weight for kern in kernels], params['compat'], iters)
    size = jnp.max(jnp.stack([jnp.int32(0)] + [f.lattice.size for f in filters
                                               if f.lattice is not None]))
    return logits.reshape(h, w, k), q.reshape(h, w, k), size

  logits, probs, size = _per_image(one, unary, image)
  return (logits, probs, jnp.max(size)) if return_lattice_size else (logits, probs)
