"""Label maps kept as files in the layout fully supervised trainers read:
<root>/SegmentationClassAug/<id>.png, VOC palette PNGs (index = class, 255 = ignore).
Pseudo-labels are written in it, and a second stage trains on them (config.data.train_masks)."""
from __future__ import annotations

import io
import os

import numpy as np
from PIL import Image

from wsss_jax.data.augment import DataError, image_error

FOLDER = 'SegmentationClassAug'


def example_id(dataset, index: int) -> str:
  """A stable file id for example `index`: the VOC file id, or <split>_<index> (synthetic)."""
  if hasattr(dataset, 'name'):
    return dataset.name(int(index))
  return f'{getattr(dataset, "split", "example")}_{int(index):06d}'


def label_path(root: str, name: str) -> str:
  return os.path.join(root, FOLDER, f'{name}.png')


def read_label_png(path: str) -> np.ndarray:
  """int32 (H, W) class indices of a palette or grayscale PNG; a DataError naming the file."""
  try:
    with open(path, 'rb') as f:
      img = Image.open(io.BytesIO(f.read()))
      img.load()
  except (OSError, ValueError) as e:
    raise DataError(f'{path}: cannot read label map ({image_error(e)})') from None
  if img.mode not in ('P', 'L'):
    raise DataError(f'{path}: label maps are palette or grayscale PNGs, got mode {img.mode}')
  return np.asarray(img).astype(np.int32)


class MasksFromFolder:
  """`dataset` with every example's mask replaced by <root>/SegmentationClassAug/<id>.png (a
  second stage trained on pseudo-labels); a missing or mis-sized file is a DataError naming it."""

  def __init__(self, dataset, root: str):
    if not os.path.isdir(os.path.join(root, FOLDER)):
      raise DataError(f'config.data.train_masks: {os.path.join(root, FOLDER)} is not a folder '
                      '(write pseudo-labels with: python pseudo_labels.py --workdir=... --out=...)')
    self.dataset, self.root = dataset, root
    for attr in ('class_names', 'num_classes', 'split', 'max_tags'):
      if hasattr(dataset, attr):
        setattr(self, attr, getattr(dataset, attr))
    if hasattr(dataset, 'name'):
      self.name = dataset.name

  def __len__(self) -> int:
    return len(self.dataset)

  def __getitem__(self, index):
    ex = dict(self.dataset[index])
    path = label_path(self.root, example_id(self.dataset, index))
    if not os.path.isfile(path):
      raise DataError(f'{path}: no label map for training example {int(index)}')
    mask = read_label_png(path)
    if mask.shape != ex['image'].shape[:2]:
      raise DataError(f'{path}: label map is {mask.shape[0]}x{mask.shape[1]}, the image '
                      f'{ex["image"].shape[0]}x{ex["image"].shape[1]}')
    ex['mask'] = mask
    return ex
