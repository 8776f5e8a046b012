"""Benchmark of wsss_jax.crf.dense_crf against pydensecrf2, called as users call it:
`python bench/crf.py`.

Inputs: eight RGB photographs shipped with scikit-image, of different content (astronaut,
chelsea, coffee, rocket, immunohistochemistry, hubble_deep_field, retina, stereo_motorcycle),
resized to 321x321; 21 labels; unaries from a noisy label map (a colour quantisation plus
Gaussian logit noise, so the CRF changes most labels); the default kernels (Gaussian sxy 3 /
compat 3, bilateral sxy 80 / srgb 13 / compat 10); 10 mean-field iterations.

Per photo, timed round-robin in one run (after compilation; median of --repeats): ours called
directly, ours under the caller's `jax.jit` (`jax.jit(lambda p, im: crf.dense_crf(p, im))`),
and pydensecrf2 (building the CRF from numpy and running inference); both ratios, and the share
of pixels where our argmax label agrees with pydensecrf2's. Then the eight photos as one batch
of 8 (direct and under jit, time per image) against batch 1, and ours at 161/321/641 px.
"""
from __future__ import annotations

import argparse
import statistics
import time

import jax
import numpy as np
from PIL import Image

from wsss_jax import crf

PHOTOS = ('astronaut', 'chelsea', 'coffee', 'rocket', 'immunohistochemistry',
          'hubble_deep_field', 'retina', 'stereo_motorcycle')
K = 21


def photo(name, side):
  import skimage.data
  im = getattr(skimage.data, name)()
  im = im[0] if isinstance(im, tuple) else im  # stereo pairs: the left view
  return np.array(Image.fromarray(im[..., :3]).resize((side, side), Image.BILINEAR))


def noisy_probs(im, rng):
  labels = ((im[..., 0] // 64) + 4 * (im[..., 1] // 128) + 8 * (im[..., 2] // 128)) % K
  logits = rng.normal(size=im.shape[:2] + (K,))
  np.put_along_axis(logits, labels[..., None],
                    1.5 + np.take_along_axis(logits, labels[..., None], -1), -1)
  p = np.exp(logits - logits.max(-1, keepdims=True))
  return (p / p.sum(-1, keepdims=True)).astype(np.float32)


def round_robin(fns, repeats):
  """Median seconds of each callable, run in turn (one warm-up call each first), so that load
  from other processes falls on all of them alike."""
  for fn in fns.values():
    fn()
  times = {name: [] for name in fns}
  for _ in range(repeats):
    for name, fn in fns.items():
      t = time.perf_counter()
      fn()
      times[name].append(time.perf_counter() - t)
  return {name: statistics.median(ts) for name, ts in times.items()}


def reference(p, im, iters):
  import pydensecrf.densecrf as dcrf
  h, w, k = p.shape
  d = dcrf.DenseCRF2D(w, h, k)
  d.setUnaryEnergy(np.ascontiguousarray(
    -np.log(np.clip(p, 1e-5, 1.0)).transpose(2, 0, 1).reshape(k, -1)))
  d.addPairwiseGaussian(sxy=3, compat=3)
  d.addPairwiseBilateral(sxy=80, srgb=13, rgbim=np.ascontiguousarray(im), compat=10)
  return np.array(d.inference(iters)).reshape(k, h, w).transpose(1, 2, 0)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--repeats', type=int, default=5)
  parser.add_argument('--iters', type=int, default=10)
  args = parser.parse_args()
  rng = np.random.default_rng(0)
  try:
    import pydensecrf.densecrf  # noqa: F401
  except ImportError:
    parser.error('pydensecrf2 missing (pip install pydensecrf2): it is the reference')
  direct = lambda p, im: np.asarray(crf.dense_crf(p, im, iters=args.iters))
  jitted = jax.jit(lambda p, im: crf.dense_crf(p, im, iters=args.iters))
  outer = lambda p, im: np.asarray(jitted(p, im))
  print(f'backend {jax.default_backend()}, {jax.device_count()} device(s); 321x321, {K} labels, '
        f'{args.iters} iterations; median of {args.repeats}, round-robin')
  print(f"{'photo':22s} {'direct s':>9s} {'jit s':>7s} {'pydensecrf2 s':>14s} {'direct/ref':>10s} "
        f"{'jit/ref':>8s} {'agree':>7s} {'changed':>8s}")
  ims, ps, ratios = [], [], {'direct': [], 'jit': []}
  for name in PHOTOS:
    im = photo(name, 321)
    p = noisy_probs(im, rng)
    ims.append(im)
    ps.append(p)
    t = round_robin({'direct': lambda: direct(p[None], im[None]),
                     'jit': lambda: outer(p[None], im[None]),
                     'ref': lambda: reference(p, im, args.iters)}, args.repeats)
    q, r = direct(p[None], im[None])[0], reference(p, im, args.iters)
    agree = (q.argmax(-1) == r.argmax(-1)).mean()
    changed = (r.argmax(-1) != p.argmax(-1)).mean()
    for key in ratios:
      ratios[key].append(t[key] / t['ref'])
    print(f"{name:22s} {t['direct']:9.3f} {t['jit']:7.3f} {t['ref']:14.3f} "
          f"{t['direct'] / t['ref']:10.2f} {t['jit'] / t['ref']:8.2f} {agree:7.4f} {changed:8.3f}")
  print(f"median ratio to pydensecrf2: direct {statistics.median(ratios['direct']):.2f}, "
        f"under jit {statistics.median(ratios['jit']):.2f}")

  print(f'\nbatch of the {len(PHOTOS)} photos vs one at a time (seconds per image)')
  ims, ps = np.stack(ims), np.stack(ps)
  b = len(PHOTOS)
  t = round_robin({'direct 1': lambda: [direct(ps[i:i + 1], ims[i:i + 1]) for i in range(b)],
                   f'direct {b}': lambda: direct(ps, ims),
                   'jit 1': lambda: [outer(ps[i:i + 1], ims[i:i + 1]) for i in range(b)],
                   f'jit {b}': lambda: outer(ps, ims),
                   'pydensecrf2': lambda: [reference(ps[i], ims[i], args.iters)
                                           for i in range(b)]}, max(1, args.repeats // 2))
  for name, s in t.items():
    print(f'  {name:12s} {s / b:.3f} s/image')

  print('\ngrowth with pixel count (astronaut, batch 1, direct)')
  print(f"{'side':>5s} {'pixels':>8s} {'ours s':>8s} {'us/pixel':>9s} {'pydensecrf2 s':>14s}")
  for side in (161, 321, 641):
    im = photo('astronaut', side)
    p = noisy_probs(im, rng)
    t = round_robin({'ours': lambda: direct(p[None], im[None]),
                     'ref': lambda: reference(p, im, args.iters)}, max(1, args.repeats // 2))
    print(f"{side:5d} {side * side:8d} {t['ours']:8.3f} {t['ours'] / side / side * 1e6:9.2f} "
          f"{t['ref']:14.3f}")


if __name__ == '__main__':
  main()
