"""Predictions on a user's own images: for every image (paths, globs or folders), a label map (VOC
palette PNG), an overlay of it on the image, and optionally each class's attention heat map, all
at the image's original size and written under `out` only.

Any size and mode: EXIF orientation applied, grayscale / palette / CMYK converted, alpha dropped,
16-bit and float images scaled to 8 bits. A file that cannot be read is reported and skipped; the
rest go on. Without `tags`, classes are predicted as in evaluation (the class threshold of the
run's config); with `tags`, attention and the CRF-RNN use those classes (as for training images).
Images are padded to a multiple of 64 px (one compilation per padded size).
"""
from __future__ import annotations

import glob
import os
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image, ImageOps

from wsss_jax import config_lib, evaluation, model, visualize
from wsss_jax.data import augment

IMAGE_EXTENSIONS = ('.jpg', '.jpeg', '.png', '.bmp', '.gif', '.tif', '.tiff', '.webp', '.ppm')
BUCKET = 64


def expand(inputs: Sequence[str]) -> list[str]:
  """Image files named by paths, globs and folders (a folder's images, sorted), in order."""
  out = []
  for item in inputs:
    if os.path.isdir(item):
      out += sorted(os.path.join(item, f) for f in os.listdir(item)
                    if f.lower().endswith(IMAGE_EXTENSIONS))
    elif any(c in item for c in '*?['):
      out += sorted(glob.glob(item))
    else:
      out.append(item)
  return out


def read_image(path: str) -> np.ndarray:
  """uint8 (H, W, 3) RGB of any image file: EXIF orientation applied, every mode converted."""
  with Image.open(path) as img:
    img.load()
    img = ImageOps.exif_transpose(img)
    if img.mode in ('I;16', 'I;16B', 'I;16L', 'I;16N', 'I', 'F'):
      a = np.asarray(img, np.float64)
      top = 65535.0 if img.mode.startswith('I;16') or a.max() > 255 else 255.0
      img = Image.fromarray(np.clip(a * 255.0 / top, 0, 255).astype(np.uint8))
    return np.asarray(img.convert('RGB'))


def _stem(path: str, used: set) -> str:
  stem = os.path.splitext(os.path.basename(path))[0] or 'image'
  name, i = stem, 1
  while name in used:  # two inputs with one file name: keep both
    i += 1
    name = f'{stem}_{i}'
  used.add(name)
  return name


def predict(workdir: str, inputs: Sequence[str], out: str, *, step: int | None = None,
            tags: Sequence[str] | None = None, attention: bool = False,
            report=print) -> dict[str, Any]:
  """Write <out>/<name>.png (labels), <name>_overlay.png and, with `attention`,
  <name>_attention_<class>.png for the predicted (or given) classes. Returns {'written': [...],
  'skipped': [(path, reason), ...]}."""
  config, params, _ = evaluation.load_trained(workdir, step)
  names = list(evaluation.eval_dataset(config, config.eval.split).class_names)
  mask = None
  if tags:
    unknown = [t for t in tags if t not in names[1:]]
    if unknown:
      raise config_lib.ConfigError(f'--tags: unknown classes {unknown} (known: {names[1:]})')
    mask = np.zeros((1, len(names)), np.float32)
    mask[0, [0] + [names.index(t) for t in tags]] = 1.0
  run = jax.jit(lambda p, x, m: _predict(p, x, m, config))
  os.makedirs(out, exist_ok=True)
  written, skipped, used = [], [], set()
  for path in expand(inputs):
    try:
      image = read_image(path)
    except Exception as e:  # noqa: BLE001 (Pillow raises many types for unreadable files)
      skipped.append((path, f'{type(e).__name__}: {e}'))
      report(f'skipped {path}: cannot read it as an image ({type(e).__name__}: {e})')
      continue
    h, w = image.shape[:2]
    size = (-(-h // BUCKET) * BUCKET, -(-w // BUCKET) * BUCKET)
    padded = augment.pad_to({'image': image}, size)['image']
    labels, p_a, classes = (np.asarray(a)[0] for a in run(
        params, padded[None], jnp.asarray(mask) if mask is not None else None))
    labels, p_a = labels[:h, :w], p_a[:h, :w]
    name = _stem(path, used)
    files = [os.path.join(out, f'{name}.png'), os.path.join(out, f'{name}_overlay.png')]
    visualize.save_label_png(files[0], labels)
    _save_rgb(files[1], visualize.overlay(image, labels))
    if attention:
      for c in np.nonzero(classes)[0]:
        if c:
          files.append(os.path.join(out, f'{name}_attention_{names[c]}.png'))
          _save_rgb(files[-1], visualize.heat_overlay(image, p_a[..., c]))
    written.append({'input': path, 'files': files,
                    'classes': [names[c] for c in np.nonzero(classes)[0] if c]})
    report(f'{path} -> {files[0]} ({", ".join(written[-1]["classes"]) or "background only"})')
  return {'written': written, 'skipped': skipped}


def _predict(params, images, class_mask, config):
  """(labels, p^A, class mask) of one padded image (batch of 1)."""
  if class_mask is None:
    pred = model.infer(params, images, config)
    probs = pred.get('attention_probs',
                     jnp.zeros(images.shape[:3] + (config.data.num_classes + 1,)))
    return pred['final'], probs, (jnp.max(probs, (1, 2)) > 0) | (jnp.arange(probs.shape[-1]) == 0)
  out = model.segment(params, images, config, class_mask, train=False)
  probs = out.get('crf_probs', out['p_s'])
  p_a = out.get('attention', jnp.zeros_like(probs))
  return jnp.argmax(probs * class_mask[:, None, None, :], -1), p_a, class_mask > 0


def _save_rgb(path: str, rgb: np.ndarray) -> None:
  tmp = path + '.tmp.png'
  Image.fromarray(rgb).save(tmp)
  os.replace(tmp, path)
