"""The independent references of the lattice and dense-CRF tests: exact float64 numpy
Gaussian filtering and mean field, pydensecrf2's mean field, and test images."""
import numpy as np


def blob_image(rng, h=24, w=28, noise=8.0):
  yy, xx = np.mgrid[:h, :w]
  im = np.full((h, w, 3), 40.0)
  for _ in range(3):
    cy, cx, r = rng.uniform(0, h), rng.uniform(0, w), rng.uniform(4, 10)
    im[(yy - cy) ** 2 + (xx - cx) ** 2 < r * r] = rng.uniform(0, 255, 3)
  im += rng.normal(0, noise, im.shape)
  return np.clip(im, 0, 255).astype(np.uint8)


def np_features(im, sxy, srgb):
  """Features as pydensecrf defines them: (x, y[, r, g, b]) / widths."""
  h, w = im.shape[:2]
  yy, xx = np.mgrid[:h, :w].astype(np.float64)
  f = [xx / sxy, yy / sxy]
  if srgb is not None:
    f += [im[..., c].astype(np.float64) / srgb for c in range(3)]
  return np.stack(f, -1).reshape(h * w, -1)


def np_gauss(f):
  d2 = ((f[:, None, :] - f[None, :, :]) ** 2).sum(-1)
  return np.exp(-0.5 * d2)


def noisy_probs(labels, k, rng, strength=1.5):
  logits = rng.normal(size=labels.shape + (k,))
  np.put_along_axis(logits, labels[..., None], strength + np.take_along_axis(
    logits, labels[..., None], -1), -1)
  p = np.exp(logits - logits.max(-1, keepdims=True))
  return (p / p.sum(-1, keepdims=True)).astype(np.float32)


def np_mean_field(p, im, iters, kernels, clip=1e-5):
  """Float64 mean field with exact kernels, pydensecrf semantics."""
  h, w, k = p.shape
  u = -np.log(np.clip(p.reshape(-1, k).astype(np.float64), clip, 1.0))
  mats = []
  for sxy, srgb, weight in kernels:
    km = np_gauss(np_features(im, sxy, srgb))
    s = 1.0 / np.sqrt(km.sum(1))
    mats.append(weight * s[:, None] * km * s[None, :])
  q = np.exp(-u - (-u).max(1, keepdims=True))
  q /= q.sum(1, keepdims=True)
  for _ in range(iters):
    logits = -u + sum(m @ q for m in mats)
    q = np.exp(logits - logits.max(1, keepdims=True))
    q /= q.sum(1, keepdims=True)
  return q.reshape(h, w, k), u, mats


def pydensecrf_marginals(p, image, *, iters=10, gaussian_sxy=3.0, gaussian_compat=3.0,
                         bilateral_sxy=80.0, bilateral_srgb=13.0, bilateral_compat=10.0):
  """pydensecrf2's marginals (H, W, K) for probabilities p (H, W, K) of a uint8 image (H, W, 3):
  unary -log(clip(p, 1e-5, 1)), a Gaussian and a bilateral Potts kernel (crf.dense_crf's setup)."""
  import pydensecrf.densecrf as dcrf  # pylint: disable=import-outside-toplevel
  h, w, k = p.shape
  d = dcrf.DenseCRF2D(w, h, k)
  d.setUnaryEnergy(np.ascontiguousarray(
      -np.log(np.clip(p, 1e-5, 1.0)).transpose(2, 0, 1).reshape(k, -1).astype(np.float32)))
  d.addPairwiseGaussian(sxy=gaussian_sxy, compat=gaussian_compat)
  d.addPairwiseBilateral(sxy=bilateral_sxy, srgb=bilateral_srgb,
                         rgbim=np.ascontiguousarray(image), compat=bilateral_compat)
  return np.array(d.inference(iters)).reshape(k, h, w).transpose(1, 2, 0)
