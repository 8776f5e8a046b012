"""PNG grids of an image and label maps (attention, CNN, CRF-RNN, ground truth) in the PASCAL
VOC colour palette."""
from __future__ import annotations

import io
import os
from typing import Sequence

import numpy as np
from PIL import Image


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


def save_grid(path: str, rows: Sequence[Sequence[np.ndarray]], scale: int = 3) -> None:
  """Write rows of (uint8 image, label map, label map, ...) side by side; atomic replace."""
  if not rows:
    return
  pal = voc_palette()
  tiles = [np.concatenate([row[0]] + [pal[np.asarray(m, np.int64) % 256] for m in row[1:]], 1)
           for row in rows]
  width = max(t.shape[1] for t in tiles)  # rows of images of different sizes: pad on the right
  tiles = [np.pad(t, ((0, 0), (0, width - t.shape[1]), (0, 0))) for t in tiles]
  _save_png(path, np.concatenate(tiles, 0), scale)


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
