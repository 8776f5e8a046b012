"""Fully connected CRF by mean field (Sec. 5, Eqs. 10-12): the paper's CRF-RNN layer
and a drop-in ``dense_crf`` post-processing with pydensecrf's semantics.

Both run the same update, ``lax.scan`` over iterations, batched over images:

  Q_0 = softmax(-phi)
  Q_t = softmax(-phi - mu(sum_m w_m  N_m^{-1/2} K_m N_m^{-1/2} Q_{t-1}))

with K_m Gaussian kernels over pixel features filtered on a permutohedral
lattice (``wsss_jax.lattice``, built once per image and kernel), N_m = K_m 1 the
symmetric normalisation of Kraehenbuehl & Koltun's code, and mu the label
compatibility (Potts for ``dense_crf``; a learned K x K 1x1 convolution
initialised to Potts for the CRF-RNN layer, Eq. 12).
"""
from __future__ import annotations

import functools
from typing import NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

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
             jnp.arange(w, dtype=jnp.float32), indexing="ij")
  feats = [xx / kernel.sxy, yy / kernel.sxy]
  bounds = [(0.0, (w - 1) / kernel.sxy), (0.0, (h - 1) / kernel.sxy)]
  if kernel.srgb is not None:
    for c in range(image.shape[2]):
      feats.append(image[..., c].astype(jnp.float32) / kernel.srgb)
      bounds.append((0.0, 255.0 / kernel.srgb))
  return jnp.stack(feats, -1).reshape(h * w, -1), bounds


class _Filter(NamedTuple):
  lattice: lattice_lib.Lattice
  norm: jax.Array      # (N, 1) N_m^{-1/2}


def _filter_from(lat):
  ones = jnp.ones((lat.offsets.shape[0], 1), jnp.float32)
  return _Filter(lat, jax.lax.rsqrt(lattice_lib.filter(lat, ones) + 1e-20))


def _build_filter(image, kernel, capacity=None):
  feats, bounds = pixel_features(image, kernel)
  return _filter_from(lattice_lib.build(jax.lax.stop_gradient(feats), bounds, capacity))


def _message(filters, weights, q):
  """sum_m w_m N_m^{-1/2} K_m N_m^{-1/2} q for q (N, K)."""
  out = 0.0
  for f, w in zip(filters, weights):
    out = out + w * f.norm * lattice_lib.filter(f.lattice, q * f.norm)
  return out


def _mean_field(unary, filters, weights, compat, iters):
  """Mean field for one image: unary (N, K) energies -> (logits, Q) (N, K).
  compat None is Potts in pydensecrf's form (-I), without the K x K product."""
  def step(q, _):
    message = _message(filters, weights, q)
    pairwise = -message if compat is None else message @ compat.T
    logits = -unary - pairwise
    return jax.nn.softmax(logits, -1), logits

  q0 = jax.nn.softmax(-unary, -1)
  if iters == 0:
    return -unary, q0
  q, logits = jax.lax.scan(step, q0, None, length=iters)
  return logits[-1], q


# ---------------------------------------------------------------- dense_crf

def _check_inputs(probs, image):
  if probs.ndim != 4 or image.ndim != 4 or probs.shape[:3] != image.shape[:3]:
    raise ValueError(
      f"dense_crf: probs must be (B, H, W, K) and image (B, H, W, 3) with equal "
      f"B, H, W; got probs {tuple(probs.shape)}, image {tuple(image.shape)}")


@functools.partial(jax.jit, static_argnames=("kernels",))
def _hash_all(image, kernels):
  """Phase 1 of dense_crf: each kernel's lattice keys for every image."""
  def one(im):
    return tuple(lattice_lib.hash_points(*pixel_features(im, k)) for k in kernels)
  return jax.vmap(one)(image)


@functools.partial(jax.jit, static_argnames=("kernels", "iters", "clip", "capacity"))
def _dense_crf(probs, image, hashed, kernels, iters, clip, capacity):
  """Phase 2: lattices cut to ``capacity`` rows, then mean field."""
  def one(p, im, hashed):
    h, w, k = p.shape
    unary = -jnp.log(jnp.clip(p.reshape(h * w, k).astype(jnp.float32), clip, 1.0))
    if hashed is None:
      hashed = [lattice_lib.hash_points(*pixel_features(im, kern)) for kern in kernels]
    filters = [_filter_from(lattice_lib.connect(hs, pixel_features(im, kern)[1], cap))
         for hs, kern, cap in zip(hashed, kernels, capacity)]
    _, q = _mean_field(unary, filters, [kern.weight for kern in kernels], None, iters)
    return q.reshape(h, w, k)
  if hashed is None:
    return jax.vmap(lambda p, im: one(p, im, None))(probs, image)
  return jax.vmap(one)(probs, image, hashed)


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

  capacity: lattice rows for the (gaussian, bilateral) kernels. By default
  they are measured on the images (one cheap sort) and rounded up to a
  multiple of 4096, so filtering costs what the image needs, not the worst
  case N(d+1) (one host sync between the two jitted phases; a new capacity
  compiles once more); inside an outer ``jit`` the worst case is used.
  """
  _check_inputs(probs, image)
  kernels = []
  if gaussian_compat:
    kernels.append(Kernel(float(gaussian_sxy), None, float(gaussian_compat)))
  if bilateral_compat:
    kernels.append(Kernel(float(bilateral_sxy), float(bilateral_srgb),
               float(bilateral_compat)))
  kernels = tuple(kernels)
  probs, image = jnp.asarray(probs), jnp.asarray(image)
  if capacity is not None:
    return _dense_crf(probs, image, None, kernels, int(iters), float(clip),
             tuple(int(c) for c in capacity))
  if isinstance(probs, jax.core.Tracer) or isinstance(image, jax.core.Tracer):
    return _dense_crf(probs, image, None, kernels, int(iters), float(clip),
             tuple(None for _ in kernels))
  hashed = _hash_all(image, kernels)
  sizes = [int(np.max(np.asarray(hs.size))) for hs in hashed]
  capacity = tuple(-(-s // 4096) * 4096 for s in sizes)
  return _dense_crf(probs, image, hashed, kernels, int(iters), float(clip), capacity)


# ---------------------------------------------------------------- CRF-RNN layer

def init_params(num_classes: int) -> dict:
  """CRF-RNN parameters: the label compatibility mu of Eq. (12) as a K x K 1x1
  convolution, initialised to Potts (mu(l, l') = [l != l']), which equals
  pydensecrf's -I up to a per-pixel constant that the softmax removes."""
  k = num_classes
  return {"compat": jnp.ones((k, k), jnp.float32) - jnp.eye(k, dtype=jnp.float32)}


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
  if params["compat"].shape != (k, k):
    raise ValueError(f"crf_rnn: compat {params['compat'].shape} does not match "
                     f"{k} classes of seg_probs {seg_probs.shape}")
  unary = -jnp.log(seg_probs + eps)
  if attention is not None:
    unary = unary - jnp.log(attention + eps)
  kernels = tuple(kernels)

  def one(u, im):
    filters = [_build_filter(im, kern, capacity) for kern in kernels]
    logits, q = _mean_field(u.reshape(h * w, k), filters,
                            [kern.weight for kern in kernels], params["compat"], iters)
    size = jnp.max(jnp.stack([f.lattice.size for f in filters]))
    return logits.reshape(h, w, k), q.reshape(h, w, k), size

  logits, probs, size = jax.vmap(one)(unary, image)
  return (logits, probs, jnp.max(size)) if return_lattice_size else (logits, probs)
