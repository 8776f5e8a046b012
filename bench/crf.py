"""Benchmark of wsss_jax.crf.dense_crf against pydensecrf2: `python bench/crf.py`.

Inputs: the photographs shipped with scikit-image (astronaut, chelsea, coffee,
rocket) resized to 321x321, 21 labels, unaries from a noisy label map (a
colour quantisation plus Gaussian logit noise, so the CRF changes about two
thirds of the labels), the default kernels (Gaussian sxy 3 / compat 3,
bilateral sxy 80 / srgb 13 / compat 10), 10 mean-field iterations.

Prints, per photo: median wall time of ours (after compilation, the whole
call: both jitted phases and the host sync between them) and of pydensecrf2
(building the CRF from numpy and running inference), their ratio, and the share
of pixels where the two argmax labels agree. Then ours at 161/321/641 px (time
per pixel shows the growth) and batch 1 vs 8 (time per image).
"""
from __future__ import annotations

import argparse
import statistics
import time

import jax
import numpy as np
from PIL import Image

from wsss_jax import crf

PHOTOS = ("astronaut", "chelsea", "coffee", "rocket")
K = 21


def photo(name, side):
  import skimage.data
  im = getattr(skimage.data, name)()
  return np.array(Image.fromarray(im).resize((side, side), Image.BILINEAR))


def noisy_probs(im, rng):
  labels = ((im[..., 0] // 64) + 4 * (im[..., 1] // 128) + 8 * (im[..., 2] // 128)) % K
  logits = rng.normal(size=im.shape[:2] + (K,))
  np.put_along_axis(logits, labels[..., None], 1.5 + np.take_along_axis(logits, labels[..., None], -1), -1)
  p = np.exp(logits - logits.max(-1, keepdims=True))
  return (p / p.sum(-1, keepdims=True)).astype(np.float32)


def median_time(fn, repeats):
  fn()
  times = []
  for _ in range(repeats):
    t = time.perf_counter()
    fn()
    times.append(time.perf_counter() - t)
  return statistics.median(times)


def ours(p, im, iters):
  return np.asarray(crf.dense_crf(p, im, iters=iters))


def reference(p, im, iters):
  import pydensecrf.densecrf as dcrf
  h, w, k = p.shape
  d = dcrf.DenseCRF2D(w, h, k)
  d.setUnaryEnergy(np.ascontiguousarray(-np.log(np.clip(p, 1e-5, 1.0)).transpose(2, 0, 1).reshape(k, -1)))
  d.addPairwiseGaussian(sxy=3, compat=3)
  d.addPairwiseBilateral(sxy=80, srgb=13, rgbim=np.ascontiguousarray(im), compat=10)
  return np.array(d.inference(iters)).reshape(k, h, w).transpose(1, 2, 0)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--repeats", type=int, default=5)
  parser.add_argument("--iters", type=int, default=10)
  args = parser.parse_args()
  rng = np.random.default_rng(0)
  try:
    import pydensecrf.densecrf  # noqa: F401
  except ImportError:
    print("pydensecrf2 missing (pip install pydensecrf2): timing ours only")
    has_ref = False
  else:
    has_ref = True
  print(f"backend {jax.default_backend()}, {jax.device_count()} device(s); 321x321, {K} labels, {args.iters} iterations")
  print(f"{'photo':10s} {'ours s':>8s} {'pydensecrf2 s':>14s} {'ratio':>6s} {'agree':>7s} {'changed':>8s}")
  ratios = []
  for name in PHOTOS:
    im = photo(name, 321)
    p = noisy_probs(im, rng)
    t_ours = median_time(lambda: ours(p[None], im[None], args.iters), args.repeats)
    if not has_ref:
      print(f"{name:10s} {t_ours:8.3f}")
      continue
    t_ref = median_time(lambda: reference(p, im, args.iters), args.repeats)
    q, r = ours(p[None], im[None], args.iters)[0], reference(p, im, args.iters)
    agree = (q.argmax(-1) == r.argmax(-1)).mean()
    changed = (r.argmax(-1) != p.argmax(-1)).mean()
    ratios.append(t_ours / t_ref)
    print(f"{name:10s} {t_ours:8.3f} {t_ref:14.3f} {t_ours / t_ref:6.2f} {agree:7.4f} {changed:8.3f}")
  if ratios:
    print(f"median ratio ours / pydensecrf2: {statistics.median(ratios):.2f}")

  print("\ngrowth with pixel count (astronaut, batch 1)")
  print(f"{'side':>5s} {'pixels':>8s} {'ours s':>8s} {'us/pixel':>9s} {'pydensecrf2 s':>14s}")
  for side in (161, 321, 641):
    im = photo("astronaut", side)
    p = noisy_probs(im, rng)
    t = median_time(lambda: ours(p[None], im[None], args.iters), args.repeats)
    t_ref = median_time(lambda: reference(p, im, args.iters), max(1, args.repeats // 2)) if has_ref else float("nan")
    print(f"{side:5d} {side * side:8d} {t:8.3f} {t / side / side * 1e6:9.2f} {t_ref:14.3f}")

  print("\nbatch (321 px, the four photos repeated)")
  ims = np.stack([photo(PHOTOS[i % 4], 321) for i in range(8)])
  ps = np.stack([noisy_probs(im, rng) for im in ims])
  for b in (1, 8):
    t = median_time(lambda: ours(ps[:b], ims[:b], args.iters), args.repeats)
    print(f"batch {b}: {t:.3f} s, {t / b:.3f} s/image")


if __name__ == "__main__":
  main()
