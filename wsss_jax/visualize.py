"""PNG grids of image | ground truth | prediction in the PASCAL VOC colour palette."""
from __future__ import annotations

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


def save_grid(path: str, rows: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray]], scale: int = 3) -> None:
  """Write rows of (uint8 image, label map, label map) side by side; atomic replace."""
  if not rows:
    return
  pal = voc_palette()
  tiles = [np.concatenate([img, pal[np.asarray(gt, np.int64) % 256], pal[np.asarray(pr, np.int64) % 256]], 1)
           for img, gt, pr in rows]
  grid = np.concatenate(tiles, 0)
  im = Image.fromarray(grid).resize((grid.shape[1] * scale, grid.shape[0] * scale), Image.NEAREST)
  tmp = path + '.tmp.png'
  im.save(tmp)
  os.replace(tmp, path)
