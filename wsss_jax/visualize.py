"""Pictures a person can read: label maps in the PASCAL VOC palette, overlays and attention heat
maps over the image, titled example grids with a legend of the classes shown, and training
curves. Pillow only (no plotting library)."""
from __future__ import annotations

import io
import os
from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont


def voc_palette(n: int = 256) -> np.ndarray:
  """The VOC devkit's colour map (label 255, 'ignore', is light grey-ish white)."""
  pal = np.zeros((n, 3), np.uint8)
  for i in range(n):
    c, r, g, b = i, 0, 0, 0
    for j in range(8):
      r |= ((c >> 0) & 1) << (7 - j)
      g |= ((c >> 1) & 1) << (7 - j)
      b |= ((c >> 2) & 1) << (7 - j)
      c >>= 3
    pal[i] = (r, g, b)
  return pal


def encode_palette_png(label_map: np.ndarray) -> bytes:
  """PNG bytes of an (H, W) label map in 0..255 as a VOC palette ('P') image (255 = ignore):
  the format of VOC's SegmentationClass masks and of the evaluation server's submissions."""
  a = np.asarray(label_map)
  if a.ndim != 2:
    raise ValueError(f'label map must be 2-D, got shape {a.shape}')
  if a.size and (a.min() < 0 or a.max() > 255):
    raise ValueError(f'label values must be in 0..255, got {a.min()}..{a.max()}')
  img = Image.frombytes('P', (a.shape[1], a.shape[0]), np.ascontiguousarray(a, np.uint8).tobytes())
  img.putpalette(voc_palette().tobytes())
  buf = io.BytesIO()
  img.save(buf, 'PNG')
  return buf.getvalue()


def save_label_png(path: str, label_map: np.ndarray) -> None:
  """Write a label map as a VOC palette PNG (temporary file, then rename)."""
  tmp = path + '.tmp.png'
  with open(tmp, 'wb') as f:
    f.write(encode_palette_png(label_map))
  os.replace(tmp, path)


def _save_png(path: str, grid: np.ndarray, scale: int) -> None:
  """Nearest-neighbour upscale by `scale`, written to a temporary file and renamed (atomic)."""
  im = Image.fromarray(grid).resize((grid.shape[1] * scale, grid.shape[0] * scale), Image.NEAREST)
  tmp = path + '.tmp.png'
  im.save(tmp)
  os.replace(tmp, path)


def _heat(m: np.ndarray) -> np.ndarray:
  """[0, 1] map -> uint8 RGB (black -> red -> yellow -> white)."""
  m = np.clip(np.asarray(m, np.float32), 0.0, 1.0)
  rgb = np.stack([np.clip(3 * m, 0, 1), np.clip(3 * m - 1, 0, 1), np.clip(3 * m - 2, 0, 1)], -1)
  return (255 * rgb).astype(np.uint8)


def save_attention_grid(path: str, image: np.ndarray, eb_maps: np.ndarray, full_maps: np.ndarray,
                        class_names: Sequence[str], scale: int = 3) -> None:
  """One row per class: image | EB-only attention | full attention (each map scaled to its max)."""
  rows = []
  for c, _ in enumerate(class_names):
    tiles = [np.asarray(image, np.uint8)]
    for m in (eb_maps[..., c], full_maps[..., c]):
      peak = float(np.max(m))
      tiles.append(_heat(m / peak if peak > 0 else m))
    rows.append(np.concatenate(tiles, 1))
  _save_png(path, np.concatenate(rows, 0), scale)


# ---------------------------------------------------------------------------------------------
# Overlays, example grids and curves.

def _font(size: int = 11):
  try:
    return ImageFont.load_default(size=size)
  except TypeError:  # Pillow without FreeType: the fixed bitmap font
    return ImageFont.load_default()


def overlay(image: np.ndarray, label_map: np.ndarray, alpha: float = 0.55) -> np.ndarray:
  """The image with each labelled pixel tinted by its class's palette colour (background and
  ignored pixels left as they are)."""
  image = np.asarray(image, np.float32)
  labels = np.asarray(label_map, np.int64)
  tint = voc_palette()[labels % 256].astype(np.float32)
  fg = ((labels > 0) & (labels < 255))[..., None]
  return np.where(fg, (1 - alpha) * image + alpha * tint, image).astype(np.uint8)


def heat_overlay(image: np.ndarray, heat: np.ndarray, alpha: float = 0.6) -> np.ndarray:
  """A [0, 1] map as a heat colour map (black-red-yellow-white) blended over the grey image,
  scaled to its own peak (as the paper's attention figures)."""
  heat = np.asarray(heat, np.float32)
  peak = float(np.max(heat))
  grey = np.repeat(np.asarray(image, np.float32).mean(-1, keepdims=True), 3, -1)
  colour = _heat(heat / peak if peak > 0 else heat).astype(np.float32)
  return ((1 - alpha) * grey + alpha * colour).astype(np.uint8)


def _titled(tile: np.ndarray, title: str, height: int = 14) -> np.ndarray:
  """A white band with `title` above an (H, W, 3) tile."""
  band = Image.new('RGB', (tile.shape[1], height), 'white')
  ImageDraw.Draw(band).text((2, 1), title, fill='black', font=_font(height - 3))
  return np.concatenate([np.asarray(band), tile], 0)


def save_examples(path: str, rows: Sequence[dict], class_names: Sequence[str],
                  scale: int = 3) -> None:
  """One row per image: the image, the CNN's and the final segmentation and the ground truth
  (label maps over the image), then p^A's heat map of each predicted class; every tile titled,
  and a legend of the classes the label maps show. Row keys: 'image', 'cnn', 'final', optional
  'truth', and 'attention' (H, W, K) with 'classes' (the indices to show). Atomic replace."""
  if not rows:
    return
  pal = voc_palette()
  lines, shown = [], set()
  for row in rows:
    im = np.asarray(row['image'], np.uint8)
    h, w = im.shape[:2]
    scale = max(scale, -(-160 // w))  # tiles wide enough for their titles
    big = lambda a: np.asarray(Image.fromarray(a).resize((w * scale, h * scale), Image.NEAREST))
    tiles = [_titled(big(im), 'image')]
    for key, title in (('cnn', 'CNN (argmax p^S)'), ('final', 'final'), ('truth', 'ground truth')):
      if row.get(key) is not None:
        labels = np.asarray(row[key])
        shown.update(int(c) for c in np.unique(labels) if c < len(class_names))
        tiles.append(_titled(big(overlay(im, labels)), title))
    for c in row.get('classes', ()):
      tiles.append(_titled(big(heat_overlay(im, row['attention'][..., c])),
                           f'p^A {class_names[c]}'))
    lines.append(np.concatenate(tiles, 1))
  width = max(t.shape[1] for t in lines)
  lines = [np.pad(t, ((0, 4), (0, width - t.shape[1]), (0, 0)), constant_values=255) for t in lines]
  legend = Image.new('RGB', (width, 18), 'white')
  draw, x = ImageDraw.Draw(legend), 4
  for c in sorted(shown):
    draw.rectangle([x, 4, x + 10, 14], fill=tuple(int(v) for v in pal[c]), outline='black')
    draw.text((x + 14, 3), class_names[c], fill='black', font=_font(11))
    x += 24 + 7 * len(class_names[c])
  grid = np.concatenate(lines + [np.asarray(legend)], 0)
  tmp = path + '.tmp.png'
  Image.fromarray(grid).save(tmp)
  os.replace(tmp, path)


def save_curves(path: str, rows: Sequence[dict], keys: Sequence[str]) -> None:
  """Line plots of metrics.jsonl records (each with 'step'), one titled panel per key present,
  with the value range and the step range written on the axes. Atomic replace."""
  keys = [k for k in keys if any(r.get(k) is not None for r in rows)]
  if not keys:
    return
  pw, ph, m = 320, 190, 34
  cols = min(3, len(keys))
  canvas = Image.new('RGB', (cols * pw, -(-len(keys) // cols) * ph), 'white')
  draw, font = ImageDraw.Draw(canvas), _font(11)
  for i, key in enumerate(keys):
    pts = [(r['step'], float(r[key])) for r in rows if r.get(key) is not None]
    x0, y0 = (i % cols) * pw, (i // cols) * ph
    left, top, right, bottom = x0 + m + 14, y0 + 20, x0 + pw - 10, y0 + ph - m + 8
    draw.text((x0 + m + 14, y0 + 3), key, fill='black', font=font)
    draw.rectangle([left, top, right, bottom], outline='grey')
    (s0, s1), (v0, v1) = (min(p[0] for p in pts), max(p[0] for p in pts)), (
        min(p[1] for p in pts), max(p[1] for p in pts))
    sx = (right - left) / max(s1 - s0, 1)
    sy = (bottom - top) / (v1 - v0) if v1 > v0 else 0.0
    xy = [(left + (s - s0) * sx, bottom - (v - v0) * sy if sy else (top + bottom) / 2)
          for s, v in pts]
    if len(xy) > 1:
      draw.line(xy, fill=(200, 30, 30), width=2)
    else:
      draw.ellipse([xy[0][0] - 2, xy[0][1] - 2, xy[0][0] + 2, xy[0][1] + 2], fill=(200, 30, 30))
    draw.text((x0 + 2, top - 2), f'{v1:.3g}', fill='black', font=font)
    draw.text((x0 + 2, bottom - 10), f'{v0:.3g}', fill='black', font=font)
    draw.text((left, bottom + 3), f'step {s0}', fill='black', font=font)
    draw.text((right - draw.textlength(f'{s1}', font=font), bottom + 3), f'{s1}', fill='black',
              font=font)  # right-aligned under the last step
  tmp = path + '.tmp.png'
  canvas.save(tmp)
  os.replace(tmp, path)
