"""Does the input pipeline keep up with the accelerator? `python bench/input_pipeline.py`.

Builds a VOC tree of `--images` VOC-sized (375 x 500) JPEGs of photographic content (crops of
scikit-image's photographs, colour-jittered, noise, JPEG quality 93: about 100 KB, as VOC's) with
wsss_jax.data.fake_voc's masks and lists, and the TFDS dataset from it (wsss_jax.data.voc). Then:

* training input: images/s of `data.train_batches` (decode, random scale 0.5-1.5, pad, 321 crop,
  flip, batch of 20: configs/voc12_ours.py's augmentation) with 1 and 2 grain threads, per core,
  and the threads a host needs for `--target` images/s (default 300: the measured H100/H200
  rate of the paper config's step, 20 images in 0.07 s);
* evaluation at full resolution: images/s of B1 (CNN + CRF-RNN) and of the full method's
  inference (+ attention for the predicted classes) on VOC-sized images padded to 512 (VGG-16,
  configs/voc12_ours.py, random weights: the cost does not depend on them), and the projected
  time of the 1,449-image val split on this machine.
"""
from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import jax  # noqa: E402
import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from configs import voc12_ours  # noqa: E402
from wsss_jax import config_lib, constants, data, model  # noqa: E402
from wsss_jax.data import fake_voc, voc  # noqa: E402

# scikit-image's photographs that ship with it (grey ones stacked to RGB)
PHOTOS = ('astronaut', 'chelsea', 'coffee', 'rocket', 'hubble_deep_field', 'immunohistochemistry',
          'retina', 'camera', 'grass', 'gravel')
SIZE = (375, 500)


def photographic_tree(root, n, seed=0):
  """A fake VOC tree whose JPEGs are crops of real photographs; returns the mean file size."""
  import skimage.data  # pylint: disable=import-outside-toplevel
  fake = fake_voc.make_fake_voc(root, n_train=n, n_val=2, n_test=0, n_sbd_extra=2, n_empty=0,
                                sbd=False, aug_png=True, seed=seed, size=SIZE)
  rng = np.random.default_rng(seed)
  photos = [np.asarray(getattr(skimage.data, p)()) for p in PHOTOS]
  photos = [np.stack([a] * 3, -1) if a.ndim == 2 else a[..., :3] for a in photos]
  jpegs = os.path.join(fake.root, 'VOCdevkit', 'VOC2012', 'JPEGImages')
  sizes = []
  for name, (h, w) in fake.sizes.items():
    photo = photos[rng.integers(len(photos))]
    ph, pw = photo.shape[:2]
    s = rng.uniform(0.5, 1.0)
    ch, cw = int(ph * s), int(pw * s)
    y, x = rng.integers(0, ph - ch + 1), rng.integers(0, pw - cw + 1)
    crop = Image.fromarray(np.ascontiguousarray(photo[y:y + ch, x:x + cw])).resize((w, h))
    # colour jitter and sensor-like noise: VOC's photographs compress to about 100 KB
    a = np.asarray(crop, np.float32) * rng.uniform(0.8, 1.2, 3) + rng.normal(0, 10, (h, w, 3))
    path = os.path.join(jpegs, f'{name}.jpg')
    Image.fromarray(np.clip(a, 0, 255).astype(np.uint8)).save(path, quality=93)
    sizes.append(os.path.getsize(path))
  return float(np.mean(sizes))


def padded_photos(root, pad_to, count=2):
  """`count` of the tree's 375 x 500 photographs padded bottom/right with the mean colour to
  pad_to, as the val pipeline pads (the fake tree also holds odd sizes made for the tests)."""
  jpegs = os.path.join(root, 'VOCdevkit', 'VOC2012', 'JPEGImages')
  out = []
  for name in sorted(os.listdir(jpegs)):
    a = np.asarray(Image.open(os.path.join(jpegs, name)).convert('RGB'))
    if a.shape[:2] == SIZE:
      canvas = np.empty(pad_to + (3,), np.uint8)
      canvas[:] = constants.PAD_RGB
      canvas[:SIZE[0], :SIZE[1]] = a
      out.append(canvas)
    if len(out) == count:
      return np.stack(out)
  raise SystemExit(f'error: fewer than {count} images of {SIZE} in {jpegs}')


def train_rate(ds, augment, threads, batches, batch=20):
  it = data.train_batches(ds, global_batch=batch, seed=0, num_threads=threads, augment=augment)
  for _ in range(2):  # warm-up: threads started, first decodes
    next(it)
  t = time.perf_counter()
  for _ in range(batches):
    next(it)
  return batches * batch / (time.perf_counter() - t)


def eval_rate(config, images, repeats):
  """Median seconds per image of model.infer at full resolution (batch 1, after compiling)."""
  params = model.init_params(jax.random.key(0), config)
  infer = jax.jit(lambda p, x: model.infer(p, x, config))
  jax.block_until_ready(infer(params, images[:1]))
  times = []
  for i in range(repeats):
    t = time.perf_counter()
    jax.block_until_ready(infer(params, images[i % len(images)][None]))
    times.append(time.perf_counter() - t)
  return statistics.median(times)


def main():
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument('--images', type=int, default=120, help='training images in the fake tree')
  ap.add_argument('--batches', type=int, default=6, help='timed batches of 20 per measurement')
  ap.add_argument('--target', type=float, default=300.0, help='images/s the host must feed')
  ap.add_argument('--eval_repeats', type=int, default=3)
  ap.add_argument('--no_eval', action='store_true', help='skip the full-resolution inference')
  args = ap.parse_args()
  cores = len(os.sched_getaffinity(0))
  print(f'host: {cores} CPU cores; jax {jax.__version__} on {jax.devices()[0].device_kind}')
  with tempfile.TemporaryDirectory() as tmp:
    size = photographic_tree(os.path.join(tmp, 'raw'), args.images)
    voc.build(os.path.join(tmp, 'raw'), os.path.join(tmp, 'tfds'))
    config = voc12_ours.get_config()
    config.data.data_dir = os.path.join(tmp, 'tfds')
    ds = data.make_dataset(config.data, 'train')
    print(f'{len(ds)} training images of {SIZE[0]}x{SIZE[1]}, JPEG mean {size / 1024:.0f} KB')
    augment = data.train_augment(config.data)
    rates = {t: train_rate(ds, augment, t, args.batches) for t in (1, 2)}
    for t, r in rates.items():
      print(f'training input, {t} thread(s): {r:.0f} images/s ({r / min(t, cores):.0f} per core)')
    per_thread = rates[1]
    print(f'threads for {args.target:.0f} images/s: {math.ceil(args.target / per_thread)} at '
          f'{per_thread:.0f} images/s per thread (2 threads scale {rates[2] / rates[1]:.2f}x)')
    if args.no_eval:
      return
    images = padded_photos(os.path.join(tmp, 'raw'), data.eval_pad_size(config.data))
    full = config_lib.with_class_bound(config, 3)
    b1 = full.copy_and_resolve_references()
    b1.model.attention.enabled = False
    for name, cfg in (('B1 (CNN + CRF-RNN)', b1), ('full method (+ attention)', full)):
      s = eval_rate(cfg, images, args.eval_repeats)
      print(f'eval at {images.shape[1]}x{images.shape[2]}, {name}: {s:.2f} s/image '
            f'({1 / s:.2f} images/s); val (1,449 images): {1449 * s / 3600:.2f} h on this host')


if __name__ == '__main__':
  main()
